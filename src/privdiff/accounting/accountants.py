"""(ε, δ) of a history of DP-RDM queries, under three accountants.

Every query is a Poisson-subsampled Gaussian mechanism with sample rate q and noise multiplier
z = σ·k/2 (:mod:`privdiff.accounting.query`). A history is a sequence of ``(query, count)`` pairs;
queries may differ in σ, q and k. The three accountants bound the same history:

``paper``
    Exactly the authors' computation (methods note §4.4–4.5; their code pins ``opacus==1.4.0``):
    Opacus ``compute_rdp`` (RDP of the sampled Gaussian mechanism, Mironov, Talwar & Zhang 2019,
    "Rényi Differential Privacy of the Sampled Gaussian Mechanism", §3), summed over queries
    (RDP composes additively, Mironov 2017, Prop. 1), then Opacus ``get_privacy_spent``:

        ε = min_α [ ε_RDP(α) − (log δ + log α)/(α − 1) + log((α − 1)/α) ]

    (Balle et al. 2020, "Hypothesis testing interpretations and Rényi DP", Thm 21) over the
    authors' order grid α ∈ {1.1, 1.2, …, 10.9} ∪ {11, …, 63}. Opacus 1.6 ships the same
    conversion as 1.4 (``tests/accounting`` checks it against the formula above), so the library
    function is used as is.
``rdp``
    dp-accounting's ``RdpAccountant`` over its default (wider) order grid, up to α = 1024, and its
    own RDP→(ε, δ) conversion ``rdp_privacy_accountant.compute_epsilon`` (Canonne, Kamath &
    Steinke 2020, Prop. 12 / Asoodeh et al. 2021). The accountant's one-query RDP curve is cached
    and scaled by the count, which is what the accountant does for a self-composed event. At
    low fractional orders dp-accounting's one-query RDP is larger than Opacus's (9.9e-4 against
    7.8e-4 at α = 1.1 for z = 0.575, q = 0.01), so when the optimal order is small (very many
    queries) ``rdp`` reports a larger ε than ``paper`` (CIFAR-10 setting, T = 10⁵: 149.8 vs
    131.6); at the paper's operating points they agree to < 0.3 %.
``pld``  (the default)
    dp-accounting's privacy loss distributions (Koskela et al. 2020; Doroshenko et al. 2022,
    "Connect the Dots"), composed exactly as its ``PLDAccountant`` composes a
    ``ComposedDpEvent`` of ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(z)))``
    (``tests/accounting`` checks agreement with ``PLDAccountant``); single-query PLDs and
    composed sub-histories are cached, so a sweep over T or a ledger charge rebuilds little. PLD is near-tight, so it answers more queries for the
    same budget than the RDP bounds. It is discretised with the *pessimistic* estimate, so the ε
    it returns is a valid upper bound on the true ε, never an underestimate; a coarser grid only
    makes it more pessimistic. ``value_discretization_interval`` is :data:`PLD_DISCRETIZATION`
    = 1e-3, doubled until it is ≥ 10⁻⁵·ε_RDP. 1e-3 keeps one evaluation near 0.1 s for 10⁵
    queries while overestimating ε by < 0.1 % on the RESOURCES.md cross-check (6.1910 against
    6.1877 at 1e-4; ``tests/accounting`` bounds the gap); the doubling bounds the grid when the
    loss is large. As both bounds are valid, the smaller of PLD and RDP is reported.

All three use add/remove-one adjacency, the relation under which Δ₂ = 2/k holds (§4.2).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import dp_accounting
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant

from privdiff.accounting.query import DPRDMQuery, check_delta
from privdiff.errors import InvalidParameter, check_int, check_positive

ACCOUNTANTS: tuple[str, ...] = ("paper", "rdp", "pld")
DEFAULT_ACCOUNTANT = "pld"

#: The authors' RDP orders (methods note §4.5): 1.1…10.9 step 0.1, then 11…63. Opacus's own
#: ``RDPAccountant.DEFAULT_ALPHAS`` skips 11, so it is spelled out here.
PAPER_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)))

#: dp-accounting's default grid (adds 128…1024 to the paper grid).
RDP_ORDERS: tuple[float, ...] = tuple(float(a) for a in rdp_privacy_accountant.DEFAULT_RDP_ORDERS)

#: PLD ``value_discretization_interval`` (see module docstring for the accuracy/speed trade-off).
PLD_DISCRETIZATION = 1e-3
#: The interval actually used is at least ε_RDP × this, so the PLD grid has O(10⁵) points per
#: unit of ε whatever the regime (a fixed 1e-3 needs 36 GiB for z = 0.01, q = 0.2, T = 3000).
PLD_RELATIVE_DISCRETIZATION = 1e-5
#: Above this RDP bound the PLD is not built and the RDP bound is reported (``fallback="rdp"``).
PLD_MAX_EPSILON = 1e4

History = Sequence[tuple[DPRDMQuery, int]]


class OrderOnEdgeWarning(UserWarning):
    """The optimal RDP order is the smallest or largest of the grid: ε could be tighter."""


@dataclass(frozen=True)
class EpsilonReport:
    """ε of a history at a given δ.

    Attributes:
        epsilon: the bound (``inf`` when an accountant cannot bound it).
        delta: δ it holds for.
        accountant: ``paper``, ``rdp`` or ``pld``.
        order: the optimal RDP order α (RDP accountants; ``None`` for PLD or an empty history).
        order_on_edge: the optimum sits on the grid edge; a wider grid could give a smaller ε.
        queries: total number of queries composed (T).
        groups: number of distinct (σ, q, k) in the history.
        pld_discretization: the PLD discretisation interval used (``None`` for RDP accountants).
        fallback: ``"rdp"`` when the PLD accountant reported the dp-accounting RDP bound because
            the loss was too large to discretise (ε_RDP > :data:`PLD_MAX_EPSILON`), else ``None``.
    """

    epsilon: float
    delta: float
    accountant: str
    order: float | None
    order_on_edge: bool
    queries: int
    groups: int
    pld_discretization: float | None = None
    fallback: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def check_accountant(accountant: str) -> str:
    if accountant not in ACCOUNTANTS:
        raise InvalidParameter("accountant", accountant, "one of " + ", ".join(ACCOUNTANTS))
    return accountant


def group_history(history: History) -> tuple[tuple[DPRDMQuery, int], ...]:
    """Merge equal queries, drop zero counts, and order groups deterministically.

    Composition is commutative for all three accountants, so a grouped history has the same ε as
    the raw one; grouping is what keeps a ledger of 10⁵ queries cheap to re-account.
    """
    totals: dict[DPRDMQuery, int] = {}
    for item in history:
        try:
            query, count = item
        except (TypeError, ValueError):
            raise InvalidParameter("history", item, "a sequence of (DPRDMQuery, count) pairs") from None
        if not isinstance(query, DPRDMQuery):
            raise InvalidParameter("query", query, "a DPRDMQuery")
        count = check_int("queries", count, minimum=0)
        if count:
            totals[query] = totals.get(query, 0) + count
    return tuple(sorted(totals.items(), key=lambda qc: (qc[0].sigma, qc[0].sample_rate, qc[0].k)))


def history_event(history: History) -> dp_accounting.DpEvent:
    """The whole history as one dp-accounting event: a composition of self-composed groups."""
    groups = group_history(history)
    return dp_accounting.ComposedDpEvent([q.dp_event(c) for q, c in groups])


def compute_epsilon(
    history: History,
    delta: float,
    accountant: str = DEFAULT_ACCOUNTANT,
    *,
    pld_discretization: float = PLD_DISCRETIZATION,
    warn_on_edge: bool = True,
) -> EpsilonReport:
    """ε(δ) of a (possibly heterogeneous) history of DP-RDM queries.

    Args:
        history: ``(query, count)`` pairs; counts ≥ 0. An empty history (T = 0) has ε = 0.
        delta: δ in (0, 1); the authors use δ = 1/N.
        accountant: ``paper`` (Opacus 1.4 RDP, the authors' numbers), ``rdp`` (dp-accounting RDP)
            or ``pld`` (dp-accounting PLD, the default and tightest).
        pld_discretization: PLD ``value_discretization_interval`` (smaller: tighter and slower).
        warn_on_edge: emit :class:`OrderOnEdgeWarning` when the optimal order is on the grid edge
            (the report's ``order_on_edge`` is set either way).

    Returns:
        An :class:`EpsilonReport`. Results are cached per grouped history, so re-accounting an
        unchanged ledger costs nothing.
    """
    delta = check_delta(delta)
    check_accountant(accountant)
    pld_discretization = check_positive("pld_discretization", pld_discretization)
    groups = group_history(history)
    key = tuple((q.sigma, q.sample_rate, q.k, c) for q, c in groups)
    report = _epsilon_of_groups(key, delta, accountant, pld_discretization)
    if report.order_on_edge and warn_on_edge:
        warnings.warn(
            f"{accountant} accountant: the optimal RDP order α={report.order:g} is on the edge of "
            "the order grid; the bound may be loose (ε could be smaller with a wider grid)",
            OrderOnEdgeWarning,
            stacklevel=2,
        )
    return report


def epsilon_for(
    query: DPRDMQuery, queries: int, delta: float, accountant: str = DEFAULT_ACCOUNTANT, **kw
) -> EpsilonReport:
    """Shortcut: ε of ``queries`` repetitions of one query."""
    return compute_epsilon([(query, queries)], delta, accountant, **kw)


def compute_delta(
    history: History,
    epsilon: float,
    accountant: str = DEFAULT_ACCOUNTANT,
    *,
    pld_discretization: float = PLD_DISCRETIZATION,
) -> float:
    """δ(ε): the smallest δ the accountant certifies for this ε (the inverse direction).

    For ``paper`` the Opacus 1.4 conversion is inverted order by order:
    log δ = (α − 1)(ε_RDP(α) − ε + log((α − 1)/α)) − log α, minimised over the grid
    (Balle et al. 2020, Thm 21, solved for δ). ``rdp`` and ``pld`` use the libraries'
    ``get_delta``.
    """
    check_accountant(accountant)
    if not (isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool)) or not (
        math.isfinite(float(epsilon)) and float(epsilon) >= 0
    ):
        raise InvalidParameter("epsilon", epsilon, "a finite number >= 0")
    groups = group_history(history)
    if not groups:
        return 0.0
    if accountant == "paper":
        orders = np.asarray(PAPER_ORDERS)
        rdp = _paper_rdp(groups)
        with np.errstate(over="ignore", invalid="ignore"):
            log_delta = (orders - 1) * (rdp - epsilon + np.log((orders - 1) / orders)) - np.log(orders)
        return float(min(1.0, np.exp(np.nanmin(log_delta))))
    rdp = _library_rdp(groups)
    rdp_delta = float(min(1.0, rdp_privacy_accountant.compute_delta(RDP_ORDERS, rdp, float(epsilon))[0]))
    if accountant == "rdp":
        return rdp_delta
    # Same grid-size guard as compute_epsilon, with ε_RDP at a typical δ as the loss scale.
    scale = float(rdp_privacy_accountant.compute_epsilon(RDP_ORDERS, rdp, 1e-6)[0])
    if not scale <= PLD_MAX_EPSILON:
        return rdp_delta
    vdi = _pld_interval(pld_discretization, scale)
    pld = _composed_pld(tuple((q.noise_multiplier, q.sample_rate, c) for q, c in groups), vdi)
    return float(min(rdp_delta, pld.get_delta_for_epsilon(float(epsilon))))


# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _paper_unit_rdp(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """RDP of one query at every paper order (Opacus ``compute_rdp`` with steps=1).

    ``compute_rdp(steps=T)`` is ``T · compute_rdp(steps=1)`` in Opacus too, so caching the unit
    curve makes composing T or 10⁵ grouped queries a vector multiply.
    """
    from opacus.accountants.analysis.rdp import compute_rdp

    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(PAPER_ORDERS))
    rdp = np.asarray(rdp, dtype=np.float64)
    rdp.setflags(write=False)
    return rdp


def _paper_rdp(groups: tuple[tuple[DPRDMQuery, int], ...]) -> np.ndarray:
    total = np.zeros(len(PAPER_ORDERS))
    for q, c in groups:
        total = total + c * _paper_unit_rdp(q.sample_rate, q.noise_multiplier)
    return total


@functools.lru_cache(maxsize=4096)
def _library_unit_rdp(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """dp-accounting's RDP curve of one query: ``RdpAccountant`` after one composed event.

    The accountant adds ``count ×`` this curve for a self-composed event, so caching it and
    multiplying gives the same numbers without recomputing the series for every T.
    """
    acc = dp_accounting.rdp.RdpAccountant(
        orders=list(RDP_ORDERS), neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    acc.compose(
        dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    )
    rdp = np.array(acc.rdp, dtype=np.float64)
    rdp.setflags(write=False)
    return rdp


def _library_rdp(groups: tuple[tuple[DPRDMQuery, int], ...]) -> np.ndarray:
    total = np.zeros(len(RDP_ORDERS))
    for q, c in groups:
        total = total + c * _library_unit_rdp(q.sample_rate, q.noise_multiplier)
    return total


@functools.lru_cache(maxsize=4096)
def _epsilon_of_groups(
    key: tuple[tuple[float, float, int, int], ...], delta: float, accountant: str, vdi: float
) -> EpsilonReport:
    queries = sum(c for *_, c in key)
    common = dict(delta=delta, accountant=accountant, queries=queries, groups=len(key))
    pld_vdi = vdi if accountant == "pld" else None
    if not key:
        return EpsilonReport(0.0, order=None, order_on_edge=False, pld_discretization=pld_vdi, **common)
    groups = tuple((DPRDMQuery(s, q, k), c) for s, q, k, c in key)

    if accountant == "paper":
        from opacus.accountants.analysis.rdp import get_privacy_spent

        rdp = _paper_rdp(groups)
        with warnings.catch_warnings():
            # Opacus warns on an edge optimum itself; we report that through our own field and
            # warning class so callers can filter it.
            warnings.simplefilter("ignore")
            eps, order = get_privacy_spent(orders=list(PAPER_ORDERS), rdp=rdp, delta=delta)
        return _rdp_report(float(eps), order, PAPER_ORDERS, common)

    eps_rdp, order = rdp_privacy_accountant.compute_epsilon(RDP_ORDERS, _library_rdp(groups), delta)
    if accountant == "rdp":
        return _rdp_report(float(eps_rdp), order, RDP_ORDERS, common)

    if not eps_rdp <= PLD_MAX_EPSILON:
        # The PLD grid spans the whole privacy-loss range; for losses this large it would need
        # gigabytes, and no meaningful budget is anywhere near. The RDP bound is also a valid
        # upper bound, so report it and say so.
        return EpsilonReport(
            float(eps_rdp), order=None, order_on_edge=False, pld_discretization=None,
            fallback="rdp", **common,
        )
    vdi = _pld_interval(vdi, float(eps_rdp))
    pld = _composed_pld(tuple((q.noise_multiplier, q.sample_rate, c) for q, c in groups), vdi)
    # PLD and RDP are both valid upper bounds; keep the smaller one (PLD, bar discretisation).
    eps = min(float(pld.get_epsilon_for_delta(delta)), float(eps_rdp))
    return EpsilonReport(eps, order=None, order_on_edge=False, pld_discretization=vdi, **common)


def _pld_interval(requested: float, eps_rdp: float) -> float:
    """The PLD interval: ``requested``, widened by powers of two once ε_RDP·1e-5 exceeds it.

    Widening keeps the grid (memory, time) bounded when the loss is large while the relative
    pessimism stays about the same; powers of two keep the set of intervals small, so the
    single-query PLDs can be cached across histories (a T sweep reuses one).
    """
    wanted = eps_rdp * PLD_RELATIVE_DISCRETIZATION
    if wanted <= requested:
        return requested
    return requested * 2.0 ** math.ceil(math.log2(wanted / requested))


@functools.lru_cache(maxsize=64)
def _single_query_pld(noise_multiplier: float, sample_rate: float, vdi: float):
    """dp-accounting's PLD of one Poisson-subsampled Gaussian query (add/remove adjacency).

    This is what ``PLDAccountant`` builds for a ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``
    (pessimistic connect-the-dots discretisation); ``self_compose(T)`` and ``compose`` then do
    exactly what the accountant does for a self-composed / composed event. Building the single
    PLD dominates the cost, so it is cached.
    """
    from dp_accounting.pld import privacy_loss_distribution

    return privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=noise_multiplier,
        value_discretization_interval=vdi,
        sampling_prob=sample_rate,
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
    )


@functools.lru_cache(maxsize=64)
def _composed_pld(groups: tuple[tuple[float, float, int], ...], vdi: float):
    """PLD of a grouped history ((z, q, count), ...), composed as a balanced tree of cached parts.

    Composition is commutative, so the tree gives the same distribution as the accountant's
    left-to-right fold up to truncation of negligible tail mass (pessimistically, so the bound
    stays valid). Caching the subtrees is what keeps a ledger charge cheap: a charge changes one
    group's count, so only that leaf and the log₂(groups) compositions above it are recomputed;
    the cost depends on the number of distinct (σ, q, k), not on the number of queries.
    """
    if len(groups) == 1:
        z, q, count = groups[0]
        return _single_query_pld(z, q, vdi).self_compose(count)
    mid = len(groups) // 2
    return _composed_pld(groups[:mid], vdi).compose(_composed_pld(groups[mid:], vdi))


def _rdp_report(eps: float, order, grid: tuple[float, ...], common: dict) -> EpsilonReport:
    order_f = None if order is None or not math.isfinite(float(order)) else float(order)
    on_edge = order_f is not None and order_f in (grid[0], grid[-1])
    return EpsilonReport(eps, order=order_f, order_on_edge=on_edge, pld_discretization=None, **common)
