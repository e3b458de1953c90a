"""(ε, δ) of a history of DP-RDM queries, under three accountants behind one registry.

Every accountant implements :class:`Accountant` (``epsilon(history, δ)``, ``delta(history, ε)``)
and is registered once under its name (:func:`register_accountant`); :func:`compute_epsilon`,
:func:`compute_delta`, the calibrator, the ledger and the CLI look names up in the registry and
never switch on them. :func:`to_dp_event` exports a history as a dp-accounting ``DpEvent`` so any
dp-accounting accountant can bound it too.

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
    composed sub-histories are cached, so a sweep over T or a ledger charge rebuilds little. PLD is near-tight,
    so it answers more queries for the
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

import dataclasses
import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

import dp_accounting
import numpy as np
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.rdp import rdp_privacy_accountant

from privdiff.accounting.query import DPRDMQuery, check_delta
from privdiff.errors import InvalidParameter, check_int, check_positive

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
Groups = tuple[tuple[DPRDMQuery, int], ...]


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


def group_history(history: History) -> Groups:
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


def to_dp_event(history: History) -> dp_accounting.DpEvent:
    """The history as one dp-accounting ``DpEvent``, for any dp-accounting accountant.

    ``ComposedDpEvent([SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(z)), T), ...])``
    with one self-composed event per distinct (σ, q, k) (:meth:`DPRDMQuery.dp_event`). It is the
    event the ``rdp`` and ``pld`` accountants bound: ``RdpAccountant`` / ``PLDAccountant`` built
    with ``NeighboringRelation.ADD_OR_REMOVE_ONE`` (the relation under which Δ₂ = 2/k holds)
    report the same ε for it (``tests/accounting/test_dp_event_export.py``). An empty history is
    an empty composition (ε = 0).
    """
    return dp_accounting.ComposedDpEvent([q.dp_event(c) for q, c in group_history(history)])


def check_epsilon_value(epsilon: float) -> float:
    """An ε to convert to δ: a finite number ≥ 0 (0 is allowed here, unlike a budget)."""
    if not (isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool)) or not (
        math.isfinite(float(epsilon)) and float(epsilon) >= 0
    ):
        raise InvalidParameter("epsilon", epsilon, "a finite number >= 0")
    return float(epsilon)


# ---------------------------------------------------------------------------------------------
# The protocol and the registry
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class Accountant(Protocol):
    """What every accountant provides; register one with :func:`register_accountant`.

    ``name`` is the key users pass (``--accountant``, ``Ledger.create(accountant=...)``) and is
    stored in ledgers, so it must never change meaning; ``label`` is one line for tables and
    plot legends. Both methods take a history of ``(DPRDMQuery, count)`` pairs; ``epsilon``
    never warns (the report's ``order_on_edge`` says it), :func:`compute_epsilon` does.
    """

    name: str
    label: str

    def epsilon(self, history: History, delta: float) -> EpsilonReport: ...

    def delta(self, history: History, epsilon: float) -> float: ...

    def configured(self, *, pld_discretization: float) -> Accountant:
        """This accountant with the shared options applied (those it does not use are ignored)."""
        ...


_REGISTRY: dict[str, Accountant] = {}


def register_accountant(accountant: Accountant, *, replace: bool = False) -> Accountant:
    """Add ``accountant`` under ``accountant.name``; every entry point then accepts the name.

    Refuses to rebind a registered name unless ``replace=True``: a ledger stores the name, so
    silently changing what it means would change the ε of every existing ledger.
    """
    if not isinstance(accountant, Accountant):
        raise InvalidParameter("accountant", accountant, "an object with name, label, epsilon(), delta(), configured()")
    name = accountant.name
    if not isinstance(name, str) or not name or name == "all":
        raise InvalidParameter("accountant.name", name, "a non-empty string other than 'all'")
    if name in _REGISTRY and not replace:
        raise InvalidParameter("accountant.name", name, "a name not yet registered (pass replace=True to rebind)")
    _REGISTRY[name] = accountant
    _cached_epsilon.cache_clear()
    return accountant


def accountant_names() -> tuple[str, ...]:
    """The registered names, in registration order (the built-in three first)."""
    return tuple(_REGISTRY)


def get_accountant(name: str) -> Accountant:
    """The registered accountant called ``name`` (:class:`InvalidParameter` names the choices)."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise InvalidParameter("accountant", name, "one of " + ", ".join(_REGISTRY)) from None


def check_accountant(accountant: str) -> str:
    return get_accountant(accountant).name


# ---------------------------------------------------------------------------------------------
# Entry points (dispatch through the registry)
# ---------------------------------------------------------------------------------------------


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
        accountant: a registered name: ``paper`` (Opacus 1.4 RDP, the authors' numbers), ``rdp``
            (dp-accounting RDP) or ``pld`` (dp-accounting PLD, the default and tightest).
        pld_discretization: PLD ``value_discretization_interval`` (smaller: tighter and slower).
        warn_on_edge: emit :class:`OrderOnEdgeWarning` when the optimal order is on the grid edge
            (the report's ``order_on_edge`` is set either way).

    Returns:
        An :class:`EpsilonReport`. Results are cached per grouped history, so re-accounting an
        unchanged ledger costs nothing.
    """
    delta = check_delta(delta)
    acc = get_accountant(accountant)
    pld_discretization = check_positive("pld_discretization", pld_discretization)
    report = acc.configured(pld_discretization=pld_discretization).epsilon(history, delta)
    if report.order_on_edge and warn_on_edge:
        warnings.warn(
            f"{report.accountant} accountant: the optimal RDP order α={report.order:g} is on the edge "
            "of the order grid; the bound may be loose (ε could be smaller with a wider grid)",
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

    See each accountant's ``delta`` for the conversion it uses.
    """
    acc = get_accountant(accountant)
    epsilon = check_epsilon_value(epsilon)
    pld_discretization = check_positive("pld_discretization", pld_discretization)
    return acc.configured(pld_discretization=pld_discretization).delta(history, epsilon)


# ---------------------------------------------------------------------------------------------
# The built-in accountants
# ---------------------------------------------------------------------------------------------


class GroupedAccountant:
    """Base of the built-in accountants: validates, groups the history and caches per group key.

    Subclasses implement :meth:`epsilon_of_groups` and :meth:`delta_of_groups` on a grouped,
    non-empty history. They are frozen dataclasses, so an instance (with its options) is a
    cache key.
    """

    name: str = ""
    label: str = ""

    def configured(self, *, pld_discretization: float) -> Accountant:
        return self

    @property
    def pld_discretization(self) -> float | None:
        return None

    def epsilon(self, history: History, delta: float) -> EpsilonReport:
        delta = check_delta(delta)
        groups = group_history(history)
        key = tuple((q.sigma, q.sample_rate, q.k, c) for q, c in groups)
        return _cached_epsilon(self, key, delta)

    def delta(self, history: History, epsilon: float) -> float:
        epsilon = check_epsilon_value(epsilon)
        groups = group_history(history)
        return self.delta_of_groups(groups, epsilon) if groups else 0.0

    def common(self, groups: Groups, delta: float) -> dict:
        return dict(delta=delta, accountant=self.name, queries=sum(c for _, c in groups), groups=len(groups))

    def epsilon_of_groups(self, groups: Groups, delta: float) -> EpsilonReport:
        raise NotImplementedError

    def delta_of_groups(self, groups: Groups, epsilon: float) -> float:
        raise NotImplementedError


@functools.lru_cache(maxsize=4096)
def _cached_epsilon(
    accountant: GroupedAccountant, key: tuple[tuple[float, float, int, int], ...], delta: float
) -> EpsilonReport:
    groups = tuple((DPRDMQuery(s, q, k), c) for s, q, k, c in key)
    if not groups:
        return EpsilonReport(
            0.0,
            order=None,
            order_on_edge=False,
            pld_discretization=accountant.pld_discretization,
            **accountant.common(groups, delta),
        )
    return accountant.epsilon_of_groups(groups, delta)


@dataclass(frozen=True)
class PaperAccountant(GroupedAccountant):
    """``paper``: Opacus 1.4 RDP over the authors' orders
    (methods note §4.4–4.5; see the module docstring)."""

    name: str = "paper"
    label: str = "paper (Opacus 1.4 RDP)"

    def epsilon_of_groups(self, groups: Groups, delta: float) -> EpsilonReport:
        # Opacus imports torch (seconds); only this accountant needs it, so it stays lazy.
        from opacus.accountants.analysis.rdp import get_privacy_spent

        rdp = _paper_rdp(groups)
        with warnings.catch_warnings():
            # Opacus warns on an edge optimum itself; we report that through our own field and
            # warning class so callers can filter it.
            warnings.simplefilter("ignore")
            eps, order = get_privacy_spent(orders=list(PAPER_ORDERS), rdp=rdp, delta=delta)
        return _rdp_report(float(eps), order, PAPER_ORDERS, self.common(groups, delta))

    def delta_of_groups(self, groups: Groups, epsilon: float) -> float:
        """The Opacus 1.4 conversion inverted order by order:
        log δ = (α − 1)(ε_RDP(α) − ε + log((α − 1)/α)) − log α, minimised over the grid
        (Balle et al. 2020, Thm 21, solved for δ)."""
        orders = np.asarray(PAPER_ORDERS)
        rdp = _paper_rdp(groups)
        with np.errstate(over="ignore", invalid="ignore"):
            log_delta = (orders - 1) * (rdp - epsilon + np.log((orders - 1) / orders)) - np.log(orders)
        return float(min(1.0, np.exp(np.nanmin(log_delta))))


@dataclass(frozen=True)
class LibraryRdpAccountant(GroupedAccountant):
    """``rdp``: dp-accounting's ``RdpAccountant`` and its own RDP→(ε, δ) conversion
    (Canonne, Kamath & Steinke 2020, Prop. 12 / Asoodeh et al. 2021)."""

    name: str = "rdp"
    label: str = "rdp (dp-accounting RDP)"

    def epsilon_of_groups(self, groups: Groups, delta: float) -> EpsilonReport:
        eps_rdp, order = rdp_privacy_accountant.compute_epsilon(RDP_ORDERS, _library_rdp(groups), delta)
        return _rdp_report(float(eps_rdp), order, RDP_ORDERS, self.common(groups, delta))

    def delta_of_groups(self, groups: Groups, epsilon: float) -> float:
        """dp-accounting's ``compute_delta`` on the composed RDP curve."""
        return float(
            min(
                1.0,
                rdp_privacy_accountant.compute_delta(RDP_ORDERS, _library_rdp(groups), epsilon)[0],
            )
        )


@dataclass(frozen=True)
class PldAccountant(GroupedAccountant):
    """``pld``: dp-accounting privacy loss distributions (Koskela et al. 2020; Doroshenko et al.
    2022), pessimistic discretisation, reported as the smaller of the PLD and RDP bounds."""

    name: str = "pld"
    label: str = "pld (dp-accounting PLD)"
    discretization: float = PLD_DISCRETIZATION

    def configured(self, *, pld_discretization: float) -> Accountant:
        if pld_discretization == self.discretization:
            return self
        return dataclasses.replace(self, discretization=check_positive("pld_discretization", pld_discretization))

    @property
    def pld_discretization(self) -> float | None:
        return self.discretization

    def epsilon_of_groups(self, groups: Groups, delta: float) -> EpsilonReport:
        common = self.common(groups, delta)
        eps_rdp, _ = rdp_privacy_accountant.compute_epsilon(RDP_ORDERS, _library_rdp(groups), delta)
        if not eps_rdp <= PLD_MAX_EPSILON:
            # The PLD grid spans the whole privacy-loss range; for losses this large it would need
            # gigabytes, and no meaningful budget is anywhere near. The RDP bound is also a valid
            # upper bound, so report it and say so.
            return EpsilonReport(
                float(eps_rdp),
                order=None,
                order_on_edge=False,
                pld_discretization=None,
                fallback="rdp",
                **common,
            )
        vdi = _pld_interval(self.discretization, float(eps_rdp))
        pld = _composed_pld(tuple((q.noise_multiplier, q.sample_rate, c) for q, c in groups), vdi)
        # PLD and RDP are both valid upper bounds; keep the smaller one (PLD, bar discretisation).
        eps = min(float(pld.get_epsilon_for_delta(delta)), float(eps_rdp))
        return EpsilonReport(eps, order=None, order_on_edge=False, pld_discretization=vdi, **common)

    def delta_of_groups(self, groups: Groups, epsilon: float) -> float:
        """min(RDP δ, PLD ``get_delta_for_epsilon``), with the same grid-size guard as ε."""
        rdp = _library_rdp(groups)
        rdp_delta = float(min(1.0, rdp_privacy_accountant.compute_delta(RDP_ORDERS, rdp, epsilon)[0]))
        # Same grid-size guard as epsilon_of_groups, with ε_RDP at a typical δ as the loss scale.
        scale = float(rdp_privacy_accountant.compute_epsilon(RDP_ORDERS, rdp, 1e-6)[0])
        if not scale <= PLD_MAX_EPSILON:
            return rdp_delta
        vdi = _pld_interval(self.discretization, scale)
        pld = _composed_pld(tuple((q.noise_multiplier, q.sample_rate, c) for q, c in groups), vdi)
        return float(min(rdp_delta, pld.get_delta_for_epsilon(epsilon)))


# ---------------------------------------------------------------------------------------------
# Shared maths of the built-in accountants
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _paper_unit_rdp(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """RDP of one query at every paper order (Opacus ``compute_rdp`` with steps=1).

    ``compute_rdp(steps=T)`` is ``T · compute_rdp(steps=1)`` in Opacus too, so caching the unit
    curve makes composing T or 10⁵ grouped queries a vector multiply.
    """
    # Opacus imports torch (seconds); only the paper accountant needs it, so it stays lazy.
    from opacus.accountants.analysis.rdp import compute_rdp

    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(PAPER_ORDERS))
    rdp = np.asarray(rdp, dtype=np.float64)
    rdp.setflags(write=False)
    return rdp


def _paper_rdp(groups: Groups) -> np.ndarray:
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
        orders=list(RDP_ORDERS),
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
    )
    acc.compose(dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)))
    rdp = np.array(acc.rdp, dtype=np.float64)
    rdp.setflags(write=False)
    return rdp


def _library_rdp(groups: Groups) -> np.ndarray:
    total = np.zeros(len(RDP_ORDERS))
    for q, c in groups:
        total = total + c * _library_unit_rdp(q.sample_rate, q.noise_multiplier)
    return total


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


# One registration per accountant; the order is the order of tables, plots and ``--accountant all``.
for _builtin in (PaperAccountant(), LibraryRdpAccountant(), PldAccountant()):
    register_accountant(_builtin)
del _builtin

#: The built-in accountants' names (accountants added later with :func:`register_accountant` are
#: listed by :func:`accountant_names`).
ACCOUNTANTS: tuple[str, ...] = accountant_names()
