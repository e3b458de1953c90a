"""Calibration: the σ, q, k or number of queries T that meets a target (ε, δ).

The authors' code has ``find_sigma`` (Brent's method on [0, 120]), ``find_q`` and ``find_k``
(bisection), stopping when |ε − target| < 1e-4 (methods note §4.5). Here every solver returns a
value whose ε is **never above** the target: it searches a monotone function, then keeps the end
of the final bracket that is on the safe side, and reports the ε that value really achieves.

Monotonicity (each accountant bounds a Poisson-subsampled Gaussian with z = σk/2; all hold for the
true privacy curve and for the bounds, and ``tests/accounting`` checks them):

* ε falls as σ grows (more noise), and as k grows (z = σk/2 grows);
* ε grows with the sample rate q and with the number of queries T.

So the solved σ and k are the *smallest* safe values, q and T the *largest*. A target that no value
in the allowed range meets raises :class:`~privdiff.errors.InvalidParameter` naming the target,
the range and the best ε the range can reach.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import brentq

from privdiff.accounting.accountants import (
    DEFAULT_ACCOUNTANT,
    OrderOnEdgeWarning,
    check_accountant,
    compute_epsilon,
)
from privdiff.accounting.query import DPRDMQuery, check_delta, check_epsilon
from privdiff.errors import InvalidParameter, check_int, check_positive

SOLVABLE = ("sigma", "sample_rate", "k", "queries")

#: Default search ranges. σ follows the authors' ``find_sigma`` bracket [0, 120].
SIGMA_RANGE = (1e-4, 120.0)
SAMPLE_RATE_RANGE = (1e-12, 1.0)
K_RANGE = (1, 100_000)
QUERIES_RANGE = (0, 10**9)

#: Relative tolerance of continuous solutions (σ, q): the returned value is within this factor of
#: the exact threshold, on the safe side.
RELATIVE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Calibration:
    """Result of a solve.

    Attributes:
        parameter: which parameter was solved (``sigma``, ``sample_rate``, ``k`` or ``queries``).
        value: the solved value (int for k and queries).
        epsilon: ε the full setting achieves (≤ ``target_epsilon``).
        target_epsilon, delta, accountant: the request.
        sigma, sample_rate, k, queries: the full setting, solved value included.
        order: optimal RDP order at the solution (RDP accountants).
    """

    parameter: str
    value: float | int
    epsilon: float
    target_epsilon: float
    delta: float
    accountant: str
    sigma: float
    sample_rate: float
    k: int
    queries: int
    order: float | None = None

    @property
    def query(self) -> DPRDMQuery:
        return DPRDMQuery(self.sigma, self.sample_rate, self.k)

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate(
    solve: str,
    *,
    target_epsilon: float,
    delta: float,
    sigma: float | None = None,
    sample_rate: float | None = None,
    k: int | None = None,
    queries: int | None = None,
    accountant: str = DEFAULT_ACCOUNTANT,
    bounds: tuple[float, float] | None = None,
) -> Calibration:
    """Solve for one of σ, q, k, T so that ``queries`` × DPRDMQuery(σ, q, k) has ε ≤ target.

    Args:
        solve: ``"sigma"``, ``"sample_rate"`` (also ``"sample-rate"``/``"q"``), ``"k"`` or
            ``"queries"`` (also ``"T"``).
        target_epsilon, delta: the (ε, δ) target.
        sigma, sample_rate, k, queries: the other three parameters (the solved one must be None).
        accountant: ``paper``, ``rdp`` or ``pld``.
        bounds: search range of the solved parameter (defaults: σ ∈ [1e-4, 120],
            q ∈ [1e-12, 1], k ∈ [1, 10⁵], T ∈ [0, 10⁹]).

    Returns:
        A :class:`Calibration` whose ``epsilon`` ≤ ``target_epsilon``.

    Raises:
        InvalidParameter: bad inputs, or a target no value in ``bounds`` can meet.
    """
    solve = {"sample-rate": "sample_rate", "q": "sample_rate", "T": "queries"}.get(solve, solve)
    if solve not in SOLVABLE:
        raise InvalidParameter("solve", solve, "one of " + ", ".join(SOLVABLE))
    target = check_epsilon("target_epsilon", target_epsilon)
    delta = check_delta(delta)
    check_accountant(accountant)
    given = {"sigma": sigma, "sample_rate": sample_rate, "k": k, "queries": queries}
    if given[solve] is not None:
        raise InvalidParameter(solve, given[solve], "left out (it is the parameter being solved)")
    for name, value in given.items():
        if name != solve and value is None:
            raise InvalidParameter(name, None, f"given when solving for {solve}")
    if solve != "sigma":
        sigma = check_positive("sigma", sigma)
    if solve != "sample_rate":
        sample_rate = DPRDMQuery(1.0, sample_rate, 1).sample_rate
    if solve != "k":
        k = check_int("k", k, minimum=1)
    if solve != "queries":
        queries = check_int("queries", queries, minimum=0)

    def epsilon_at(value):
        setting = {
            "sigma": sigma,
            "sample_rate": sample_rate,
            "k": k,
            "queries": queries,
            solve: value,
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OrderOnEdgeWarning)
            return compute_epsilon(
                [
                    (
                        DPRDMQuery(setting["sigma"], setting["sample_rate"], setting["k"]),
                        setting["queries"],
                    )
                ],
                delta,
                accountant,
            )

    lo, hi = _bounds(solve, bounds)
    # For σ and k larger is safer; for q and T smaller is safer.
    safer_high = solve in ("sigma", "k")
    integer = solve in ("k", "queries")
    value = _solve_monotone(lambda v: epsilon_at(v).epsilon, target, lo, hi, safer_high, integer, solve)
    report = epsilon_at(value)
    assert report.epsilon <= target  # guaranteed by _solve_monotone; never release an unsafe value
    setting = {"sigma": sigma, "sample_rate": sample_rate, "k": k, "queries": queries, solve: value}
    return Calibration(
        parameter=solve,
        value=value,
        epsilon=report.epsilon,
        target_epsilon=target,
        delta=delta,
        accountant=accountant,
        sigma=float(setting["sigma"]),
        sample_rate=float(setting["sample_rate"]),
        k=int(setting["k"]),
        queries=int(setting["queries"]),
        order=report.order,
    )


def solve_sigma(target_epsilon, delta, *, sample_rate, k, queries, accountant=DEFAULT_ACCOUNTANT, bounds=None):
    """Smallest σ with ε ≤ target (authors' ``find_sigma``, made one-sided)."""
    return calibrate(
        "sigma",
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=sample_rate,
        k=k,
        queries=queries,
        accountant=accountant,
        bounds=bounds,
    )


def solve_sample_rate(target_epsilon, delta, *, sigma, k, queries, accountant=DEFAULT_ACCOUNTANT, bounds=None):
    """Largest q with ε ≤ target (authors' ``find_q``, made one-sided)."""
    return calibrate(
        "sample_rate",
        target_epsilon=target_epsilon,
        delta=delta,
        sigma=sigma,
        k=k,
        queries=queries,
        accountant=accountant,
        bounds=bounds,
    )


def solve_k(
    target_epsilon,
    delta,
    *,
    sigma,
    sample_rate,
    queries,
    accountant=DEFAULT_ACCOUNTANT,
    bounds=None,
):
    """Smallest integer k with ε ≤ target (authors' ``find_k``, made one-sided)."""
    return calibrate(
        "k",
        target_epsilon=target_epsilon,
        delta=delta,
        sigma=sigma,
        sample_rate=sample_rate,
        queries=queries,
        accountant=accountant,
        bounds=bounds,
    )


def solve_queries(target_epsilon, delta, *, sigma, sample_rate, k, accountant=DEFAULT_ACCOUNTANT, bounds=None):
    """Largest number of queries T with ε ≤ target."""
    return calibrate(
        "queries",
        target_epsilon=target_epsilon,
        delta=delta,
        sigma=sigma,
        sample_rate=sample_rate,
        k=k,
        accountant=accountant,
        bounds=bounds,
    )


# ---------------------------------------------------------------------------------------------


def _bounds(solve: str, bounds) -> tuple[float, float]:
    default = {
        "sigma": SIGMA_RANGE,
        "sample_rate": SAMPLE_RATE_RANGE,
        "k": K_RANGE,
        "queries": QUERIES_RANGE,
    }[solve]
    if bounds is None:
        return default
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise InvalidParameter("bounds", bounds, "a (low, high) pair") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InvalidParameter("bounds", bounds, "finite numbers with low < high")
    if lo < default[0] or hi > default[1]:
        raise InvalidParameter("bounds", bounds, f"within [{default[0]:g}, {default[1]:g}] for {solve}")
    if solve in ("k", "queries"):
        lo, hi = math.ceil(lo), math.floor(hi)
    return lo, hi


def _solve_monotone(eps, target, lo, hi, safer_high, integer, name):
    """The value nearest the threshold on the safe side, for ε monotone in the parameter.

    ``safer_high``: ε decreases in the parameter (σ, k) and we want the smallest safe value;
    otherwise ε increases (q, T) and we want the largest safe value.
    """
    safe_end, unsafe_end = (hi, lo) if safer_high else (lo, hi)
    eps_safe = eps(safe_end)
    if eps_safe > target:
        raise InvalidParameter(
            "target_epsilon",
            target,
            f"reachable with {name} in [{lo:g}, {hi:g}]: the best there is ε={eps_safe:.6g} at {name}={safe_end:g}",
            hint="relax the target or change the other parameters",
        )
    if eps(unsafe_end) <= target:
        return unsafe_end  # the whole range meets the target

    if integer:
        return _integer_threshold(eps, target, int(safe_end), int(unsafe_end))

    # Continuous: Brent's method (as the authors' find_sigma) in log space, then step from the
    # root toward the safe end until ε ≤ target, so the answer never lands on the unsafe side.
    f = lambda x: eps(math.exp(x)) - target  # noqa: E731
    a, b = math.log(safe_end), math.log(unsafe_end)
    xtol = RELATIVE_TOLERANCE / 2
    root = brentq(f, min(a, b), max(a, b), xtol=xtol, rtol=4 * np.finfo(float).eps)
    toward_safe = 1.0 if a > b else -1.0
    step = xtol
    x = root
    while f(x) > 0:
        x = root + toward_safe * step
        if (x - a) * toward_safe >= 0:
            return safe_end
        step *= 2
    return math.exp(x)


def _integer_threshold(eps, target, safe: int, unsafe: int) -> int:
    """Integer bisection keeping ``safe`` (ε ≤ target) and ``unsafe`` (ε > target) invariant.

    For T (safe end 0) it first grows a bracket exponentially from the safe end, so the usual
    answer (thousands of queries) is found without evaluating ε at 10⁸ queries.
    """
    if safe < unsafe:
        width = 1
        while safe + width < unsafe:
            if eps(safe + width) <= target:
                safe += width
                width *= 2
            else:
                unsafe = safe + width
                break
    while abs(unsafe - safe) > 1:
        mid = (safe + unsafe) // 2
        if eps(mid) <= target:
            safe = mid
        else:
            unsafe = mid
    return safe
