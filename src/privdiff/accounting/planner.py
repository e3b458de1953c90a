"""Privacy planning: ε against the number of queries, queries per budget, concept density.

These are the paper's privacy-analysis figures (methods note §4.6–4.8), computed with the
accountants of :mod:`privdiff.accounting.accountants`, written as PNG plus JSON with the settings
that produced them.

* :func:`epsilon_curve` — ε(T) for one query setting under several accountants.
* :func:`concept_density_curve` — §4.8: for concept density r (share of the private set relevant
  to a prompt) the notebook sets k = r·N·q and minimises ε over q; bigger N gives smaller ε for
  the same r.
* :func:`run_planner` — the demo: the three figure settings of §4.6 (Shutterstock, MS-COCO,
  CIFAR-10), their ε-vs-queries curves, the queries each accountant allows at ε = 10, and the
  concept-density figure.
"""

from __future__ import annotations

import json
import math
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privdiff.accounting.accountants import ACCOUNTANTS, OrderOnEdgeWarning, compute_epsilon
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

ACCOUNTANT_STYLE = {
    "paper": dict(color="#d62728", linestyle="-", label="paper (Opacus 1.4 RDP)"),
    "rdp": dict(color="#1f77b4", linestyle="--", label="rdp (dp-accounting RDP)"),
    "pld": dict(color="#2ca02c", linestyle="-", label="pld (dp-accounting PLD)"),
}


def query_grid(max_queries: int, points: int = 25) -> list[int]:
    """Log-spaced distinct integers from 1 to ``max_queries`` (inclusive)."""
    max_queries = check_int("max_queries", max_queries, minimum=1)
    points = check_int("points", points, minimum=2)
    return sorted({int(round(t)) for t in np.geomspace(1, max_queries, points)})


def epsilon_curve(
    query: DPRDMQuery,
    delta: float,
    queries: Sequence[int],
    accountants: Sequence[str] = ACCOUNTANTS,
    progress: Callable[[], None] | None = None,
) -> dict[str, list[dict]]:
    """ε(T) for each accountant at each T in ``queries``.

    Returns ``{accountant: [{"queries": T, "epsilon": ε, "order": α or None}, ...]}``.
    ``progress`` is called once per evaluated point (for a progress bar).
    """
    delta = check_delta(delta)
    out: dict[str, list[dict]] = {}
    for acc in accountants:
        rows = []
        for t in queries:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OrderOnEdgeWarning)
                rep = compute_epsilon([(query, int(t))], delta, acc)
            rows.append({"queries": int(t), "epsilon": rep.epsilon, "order": rep.order,
                         "order_on_edge": rep.order_on_edge})
            if progress:
                progress()
        out[acc] = rows
    return out


def plot_epsilon_curves(
    panels: Sequence[tuple[str, dict[str, list[dict]], float | None]],
    path: str | Path,
    *,
    target_epsilon: float | None = 10.0,
    marks: Sequence[int | None] | None = None,
) -> Path:
    """One panel per (title, curves, δ): ε against queries (log-log), one line per accountant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.8), squeeze=False)
    for i, (title, curves, delta) in enumerate(panels):
        ax = axes[0][i]
        for acc, rows in curves.items():
            style = ACCOUNTANT_STYLE.get(acc, {"label": acc})
            ax.plot([r["queries"] for r in rows], [r["epsilon"] for r in rows], **style)
        if target_epsilon is not None:
            ax.axhline(target_epsilon, color="grey", lw=0.8, ls=":", label=f"ε = {target_epsilon:g}")
        if marks is not None and marks[i] is not None:
            ax.axvline(marks[i], color="black", lw=0.8, ls="-.", label=f"figure's T = {marks[i]}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_labels(ax.yaxis)
        ax.set_xlabel("number of queries T")
        ax.set_ylabel(f"ε at δ = {delta:.2g}" if delta else "ε")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def concept_density_curve(
    dataset_sizes: Sequence[int] = (1_000_000, 10_000_000, 100_000_000),
    densities: Sequence[float] | None = None,
    *,
    sigma: float = 0.2,
    queries: int = 1000,
    delta: float = 1e-7,
    accountant: str = "paper",
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


def plot_concept_density(curves: dict[int, list[dict]], path: str | Path, *, delta: float, sigma: float,
                         queries: int, accountant: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for n, rows in curves.items():
        ax.plot([r["density"] for r in rows], [r["epsilon"] for r in rows], marker="o", ms=3,
                label=f"N = {n:,}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concept density r (share of the private set relevant to a prompt)")
    ax.set_ylabel(f"min over q of ε at δ = {delta:g}")
    ax.set_title(f"σ = {sigma:g}, T = {queries}, k = ⌊r·N·q⌋ ({accountant})", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_planner(
    out_dir: str | Path,
    *,
    quick: bool = False,
    target_epsilon: float = 10.0,
    max_queries: int | None = None,
    command: str | None = None,
    show_progress: bool = True,
) -> dict:
    """The planner demo: write ε-vs-queries and concept-density PNGs plus ``planner.json``.

    For each §4.6 figure setting (Shutterstock, MS-COCO FB, CIFAR-10; δ = 1/N):
    ε at the figure's own T under all three accountants (the paper column must match the note),
    ε against T for T = 1…``max_queries``, and the largest T with ε ≤ ``target_epsilon`` under
    each accountant, with the PLD/paper ratio.

    Args:
        out_dir: created if missing; receives ``epsilon_vs_queries.png``, ``queries_at_target.png``,
            ``concept_density.png`` and ``planner.json``.
        quick: coarser grids (for CI); the same files are written.
        command: the command line that made the outputs, recorded in the JSON.

    Returns:
        The dictionary written to ``planner.json``.
    """
    target_epsilon = check_epsilon("target_epsilon", target_epsilon)
    max_queries = check_int("max_queries", max_queries if max_queries is not None else (10**4 if quick else 10**5))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    grid = query_grid(max_queries, 10 if quick else 25)
    densities = np.geomspace(1e-6, 1e-2, 5 if quick else 9).tolist()
    sizes = (1_000_000, 10_000_000, 100_000_000)
    total = len(FIGURE_SETTINGS) * (len(ACCOUNTANTS) * (len(grid) + 2)) + len(sizes) * len(densities)

    from tqdm import tqdm

    bar = tqdm(total=total, desc="planner", unit="eval", disable=not show_progress)
    settings_out = []
    panels = []
    for fs in FIGURE_SETTINGS:
        query, delta = fs.query, fs.delta
        at_figure = {}
        answerable = {}
        for acc in ACCOUNTANTS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OrderOnEdgeWarning)
                rep = compute_epsilon([(query, fs.queries)], delta, acc)
            at_figure[acc] = {"epsilon": rep.epsilon, "order": rep.order}
            bar.update()
            cal = solve_queries(target_epsilon, delta, sigma=fs.sigma, sample_rate=fs.sample_rate, k=fs.k,
                                accountant=acc)
            answerable[acc] = {"queries": cal.value, "epsilon": cal.epsilon}
            bar.update()
        curves = epsilon_curve(query, delta, grid, ACCOUNTANTS, progress=bar.update)
        panels.append((f"{fs.name}: σ={fs.sigma:g}, q={fs.sample_rate:g}, k={fs.k}, N={fs.dataset_size:,}", curves, delta))
        settings_out.append({
            "name": fs.name,
            "dataset_size": fs.dataset_size,
            "delta": delta,
            **query.as_dict(),
            "figure_queries": fs.queries,
            "epsilon_at_figure_queries": at_figure,
            "epsilon_paper_method_note": fs.epsilon_paper,
            "queries_at_target": answerable,
            "pld_over_paper_queries": answerable["pld"]["queries"] / max(1, answerable["paper"]["queries"]),
            "curve": curves,
        })

    density = concept_density_curve(sizes, densities, progress=bar.update)
    bar.close()

    png_curves = plot_epsilon_curves(panels, out / "epsilon_vs_queries.png", target_epsilon=target_epsilon,
                                     marks=[fs.queries for fs in FIGURE_SETTINGS])
    png_bars = _plot_answerable(settings_out, out / "queries_at_target.png", target_epsilon)
    png_density = plot_concept_density(density, out / "concept_density.png", delta=1e-7, sigma=0.2,
                                       queries=1000, accountant="paper")
    result = {
        "command": command,
        "target_epsilon": target_epsilon,
        "quick": quick,
        "max_queries": max_queries,
        "accountants": list(ACCOUNTANTS),
        "settings": settings_out,
        "concept_density": {
            "sigma": 0.2, "queries": 1000, "delta": 1e-7, "accountant": "paper",
            "curves": {str(n): rows for n, rows in density.items()},
        },
        "figures": [p.name for p in (png_curves, png_bars, png_density)],
        "seconds": round(time.time() - started, 2),
        "versions": _versions(),
    }
    (out / "planner.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    return result


def _plot_answerable(settings_out: list[dict], path: Path, target_epsilon: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    width = 0.26
    x = np.arange(len(settings_out))
    for j, acc in enumerate(ACCOUNTANTS):
        vals = [s["queries_at_target"][acc]["queries"] for s in settings_out]
        bars = ax.bar(x + (j - 1) * width, vals, width, color=ACCOUNTANT_STYLE[acc]["color"],
                      label=ACCOUNTANT_STYLE[acc]["label"])
        ax.bar_label(bars, labels=[f"{v:,}" for v in vals], fontsize=6, rotation=90, padding=2)
    ax.set_xticks(x, [s["name"] for s in settings_out])
    ax.set_yscale("log")
    _plain_log_labels(ax.yaxis)
    ax.set_ylabel(f"queries answerable at ε ≤ {target_epsilon:g}")
    ax.set_title("Largest T within the budget (δ = 1/N)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.margins(y=0.35)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plain_log_labels(axis) -> None:
    """Label a log axis 2, 5, 10, 20 … instead of 2×10⁰ (easier to read off ε)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(fmt)
    axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    axis.set_minor_formatter(fmt)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("privdiff", "dp-accounting", "opacus", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
