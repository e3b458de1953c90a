"""Privacy planning: ε against the number of queries, queries per budget, concept density.

These are the numbers of the paper's privacy-analysis figures (methods note §4.6–4.8), computed
with the registered accountants of :mod:`privdiff.accounting.accountants`. This module is pure
maths: the figures and files are drawn by :mod:`privdiff.report.accounting_plots`.

* :func:`epsilon_curve` — ε(T) for one query setting under several accountants.
* :func:`concept_density_curve` — §4.8: for concept density r (share of the private set relevant
  to a prompt) the notebook sets k = r·N·q and minimises ε over q; bigger N gives smaller ε for
  the same r.
* :func:`plan_figure_settings` — the demo's numbers: the three figure settings of §4.6
  (Shutterstock, MS-COCO, CIFAR-10), their ε-vs-queries curves, the queries each accountant
  allows at ε = 10, and the concept-density curves.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from privdiff.accounting.accountants import (
    OrderOnEdgeWarning,
    accountant_names,
    check_accountant,
    compute_epsilon,
)
from privdiff.accounting.calibrate import solve_queries
from privdiff.accounting.query import DPRDMQuery, check_delta, check_epsilon
from privdiff.errors import InvalidParameter, check_int, check_positive


@dataclass(frozen=True)
class FigureSetting:
    """A sample-figure configuration of the paper (methods note §4.6, table)."""

    name: str
    dataset_size: int
    sigma: float
    sample_rate: float
    k: int
    queries: int
    epsilon_paper: float  # the note's value at `queries` under the paper's accountant

    @property
    def query(self) -> DPRDMQuery:
        return DPRDMQuery(self.sigma, self.sample_rate, self.k)

    @property
    def delta(self) -> float:
        return 1.0 / self.dataset_size  # δ = 1/N, the authors' default (§4.5)


FIGURE_SETTINGS: tuple[FigureSetting, ...] = (
    FigureSetting("Shutterstock", 239_000_000, 0.07, 0.01, 17, 100, 8.209),
    FigureSetting("MS-COCO FB", 82_800, 0.04, 0.0013218, 20, 100, 6.939),
    FigureSetting("CIFAR-10", 50_000, 0.05, 0.01, 23, 1000, 9.443),
)

#: The headline comparison of the planner (a stored result field, ``pld_over_paper_queries``):
#: how many more queries the tight PLD bound buys than the authors' accounting for one budget.
HEADLINE_RATIO: tuple[str, str] = ("pld", "paper")

#: §4.8's concept-density figure: N ∈ {1M, 10M, 100M}, σ = 0.2, T = 1000, δ = 1e-7, under the
#: authors' accountant (whose order grid makes the note's ≈0.18 floor).
DENSITY_DATASET_SIZES: tuple[int, ...] = (1_000_000, 10_000_000, 100_000_000)
DENSITY_SETTING = {"sigma": 0.2, "queries": 1000, "delta": 1e-7, "accountant": "paper"}


def query_grid(max_queries: int, points: int = 25) -> list[int]:
    """Log-spaced distinct integers from 1 to ``max_queries`` (inclusive)."""
    max_queries = check_int("max_queries", max_queries, minimum=1)
    points = check_int("points", points, minimum=2)
    return sorted({int(round(t)) for t in np.geomspace(1, max_queries, points)})


def epsilon_curve(
    query: DPRDMQuery,
    delta: float,
    queries: Sequence[int],
    accountants: Sequence[str] | None = None,
    progress: Callable[[], None] | None = None,
) -> dict[str, list[dict]]:
    """ε(T) for each accountant at each T in ``queries``.

    Returns ``{accountant: [{"queries": T, "epsilon": ε, "order": α or None}, ...]}``.
    ``progress`` is called once per evaluated point (for a progress bar).
    """
    delta = check_delta(delta)
    out: dict[str, list[dict]] = {}
    for acc in accountants if accountants is not None else accountant_names():
        rows = []
        for t in queries:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OrderOnEdgeWarning)
                rep = compute_epsilon([(query, int(t))], delta, acc)
            rows.append(
                {
                    "queries": int(t),
                    "epsilon": rep.epsilon,
                    "order": rep.order,
                    "order_on_edge": rep.order_on_edge,
                }
            )
            if progress:
                progress()
        out[acc] = rows
    return out


def concept_density_curve(
    dataset_sizes: Sequence[int] = DENSITY_DATASET_SIZES,
    densities: Sequence[float] | None = None,
    *,
    sigma: float = 0.2,
    queries: int = 1000,
    delta: float = 1e-7,
    accountant: str = DENSITY_SETTING["accountant"],
    q_points: int = 8,
    progress: Callable[[], None] | None = None,
) -> dict[int, list[dict]]:
    """ε against concept density r, minimised over q (methods note §4.8, the authors' notebook).

    For each N and r the notebook sets k = r·N·q (the expected number of relevant items in the
    subsample) and minimises ε over a log grid of q from 1/(rN) to 1, at σ = 0.2, T = 1000 and a
    fixed δ = 1e-7. k must be an integer here, so k = ⌊r·N·q⌋ (rounding down only adds noise
    relative to the sensitivity, i.e. is conservative); q with k < 1 is skipped.

    The default accountant is ``paper``, which reproduces the note's table, including its floor:
    for r·N ≳ 10⁴ the optimum sits at the grid's largest order α = 63, where the conversion term
    (log(1/δ) − log α)/(α − 1) + log((α − 1)/α) alone is ≈ 0.177 at δ = 1e-7 (the note's ≈0.18).
    ``rdp`` (orders to 1024) and ``pld`` go below that floor. ε depends on r·N only and the q grid
    depends on r·N only, so the cached one-query RDP curves are shared across N.

    Returns ``{N: [{"density": r, "epsilon": ε, "sample_rate": q*, "k": k*}, ...]}``.
    """
    sigma = check_positive("sigma", sigma)
    queries = check_int("queries", queries, minimum=1)
    delta = check_delta(delta)
    if densities is None:
        densities = np.geomspace(1e-6, 1e-2, 9).tolist()
    out: dict[int, list[dict]] = {}
    for n in dataset_sizes:
        n = check_int("dataset_size", n, minimum=1)
        rows = []
        for r in densities:
            r = float(r)
            if not 0 < r <= 1:
                raise InvalidParameter("density", r, "in (0, 1]")
            best = None
            for q in np.geomspace(min(1.0, 1.0 / (r * n)), 1.0, q_points):
                k = int(math.floor(r * n * q + 1e-9))
                if k < 1:
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", OrderOnEdgeWarning)
                    eps = compute_epsilon([(DPRDMQuery(sigma, float(q), k), queries)], delta, accountant).epsilon
                if best is None or eps < best["epsilon"]:
                    best = {"density": r, "epsilon": eps, "sample_rate": float(q), "k": k}
            if progress:
                progress()
            if best is not None:
                rows.append(best)
        out[n] = rows
    return out


def plan_figure_settings(
    *,
    quick: bool = False,
    target_epsilon: float = 10.0,
    max_queries: int | None = None,
    accountants: Sequence[str] | None = None,
    progress: Callable[[], None] | None = None,
) -> dict:
    """The planner's numbers (no files): for each §4.6 figure setting (δ = 1/N), ε at the
    figure's own T under every accountant (the paper column must match the note), ε against T for
    T = 1…``max_queries``, and the largest T with ε ≤ ``target_epsilon`` under each accountant;
    plus the §4.8 concept-density curves.

    :func:`privdiff.report.accounting_plots.run_planner` draws and writes these.

    Returns:
        ``{"target_epsilon", "quick", "max_queries", "accountants", "settings": [...],
        "concept_density": {...}}``.
    """
    target_epsilon = check_epsilon("target_epsilon", target_epsilon)
    max_queries = check_int("max_queries", max_queries if max_queries is not None else (10**4 if quick else 10**5))
    names = tuple(accountants) if accountants is not None else accountant_names()
    for name in names:
        check_accountant(name)
    grid = query_grid(max_queries, 10 if quick else 25)
    densities = np.geomspace(1e-6, 1e-2, 5 if quick else 9).tolist()
    settings_out = []
    for fs in FIGURE_SETTINGS:
        query, delta = fs.query, fs.delta
        at_figure = {}
        answerable = {}
        for acc in names:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OrderOnEdgeWarning)
                rep = compute_epsilon([(query, fs.queries)], delta, acc)
            at_figure[acc] = {"epsilon": rep.epsilon, "order": rep.order}
            if progress:
                progress()
            cal = solve_queries(
                target_epsilon,
                delta,
                sigma=fs.sigma,
                sample_rate=fs.sample_rate,
                k=fs.k,
                accountant=acc,
            )
            answerable[acc] = {"queries": cal.value, "epsilon": cal.epsilon}
            if progress:
                progress()
        curves = epsilon_curve(query, delta, grid, names, progress=progress)
        row = {
            "name": fs.name,
            "dataset_size": fs.dataset_size,
            "delta": delta,
            **query.as_dict(),
            "figure_queries": fs.queries,
            "epsilon_at_figure_queries": at_figure,
            "epsilon_paper_method_note": fs.epsilon_paper,
            "queries_at_target": answerable,
            "curve": curves,
        }
        tight, authors = HEADLINE_RATIO
        if tight in answerable and authors in answerable:
            row[f"{tight}_over_{authors}_queries"] = answerable[tight]["queries"] / max(
                1, answerable[authors]["queries"]
            )
        settings_out.append(row)
    density = concept_density_curve(DENSITY_DATASET_SIZES, densities, progress=progress, **DENSITY_SETTING)
    return {
        "target_epsilon": target_epsilon,
        "quick": quick,
        "max_queries": max_queries,
        "accountants": list(names),
        "settings": settings_out,
        "concept_density": {
            **DENSITY_SETTING,
            "curves": {str(n): rows for n, rows in density.items()},
        },
    }


def planner_evaluations(*, quick: bool = False, max_queries: int | None = None, accountants: int | None = None) -> int:
    """How often :func:`plan_figure_settings` calls ``progress`` (a progress bar's total)."""
    max_queries = max_queries if max_queries is not None else (10**4 if quick else 10**5)
    n_acc = accountants if accountants is not None else len(accountant_names())
    grid = query_grid(max_queries, 10 if quick else 25)
    return len(FIGURE_SETTINGS) * n_acc * (len(grid) + 2) + len(DENSITY_DATASET_SIZES) * (5 if quick else 9)
