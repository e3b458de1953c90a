"""Figures of the privacy accounting: ε against queries, queries per budget, concept density.

The numbers come from :mod:`privdiff.accounting.planner` (pure maths); this module only draws
them and writes the planner's files (PNG plus a JSON of the numbers and the settings that made
them). Each accountant is drawn with its registered ``label``; its colour follows its
registration order, so the built-in three keep fixed colours (paper red, rdp blue dashed, pld
green) and a newly registered accountant gets the next one.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from privdiff.accounting import accountant_names, get_accountant
from privdiff.accounting.planner import (
    DENSITY_SETTING,
    FIGURE_SETTINGS,
    plan_figure_settings,
    planner_evaluations,
)
from privdiff.utils.atomic import atomic_write_json

#: (colour, line style) by registration order of the accountants.
_PALETTE: tuple[tuple[str, str], ...] = (
    ("#d62728", "-"),
    ("#1f77b4", "--"),
    ("#2ca02c", "-"),
    ("#9467bd", "-."),
    ("#ff7f0e", ":"),
    ("#8c564b", "--"),
)


def accountant_style(name: str) -> dict[str, str]:
    """Matplotlib ``color``/``linestyle``/``label`` of a registered accountant."""
    label = get_accountant(name).label or name
    colour, linestyle = _PALETTE[accountant_names().index(name) % len(_PALETTE)]
    return {"color": colour, "linestyle": linestyle, "label": label}


def _pyplot():
    # matplotlib costs about half a second to import; only drawing needs it, so it stays lazy.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_epsilon_curves(
    panels: Sequence[tuple[str, dict[str, list[dict]], float | None]],
    path: str | Path,
    *,
    target_epsilon: float | None = 10.0,
    marks: Sequence[int | None] | None = None,
) -> Path:
    """One panel per (title, curves, δ): ε against queries (log-log), one line per accountant."""
    plt = _pyplot()
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.8), squeeze=False)
    for i, (title, curves, delta) in enumerate(panels):
        ax = axes[0][i]
        for acc, rows in curves.items():
            ax.plot([r["queries"] for r in rows], [r["epsilon"] for r in rows], **accountant_style(acc))
        if target_epsilon is not None:
            ax.axhline(target_epsilon, color="grey", lw=0.8, ls=":", label=f"ε = {target_epsilon:g}")
        if marks is not None and marks[i] is not None:
            ax.axvline(marks[i], color="black", lw=0.8, ls="-.", label=f"figure's T = {marks[i]}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain_log_labels(ax.yaxis)
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


def plot_concept_density(
    curves: dict[int, list[dict]],
    path: str | Path,
    *,
    delta: float,
    sigma: float,
    queries: int,
    accountant: str,
) -> Path:
    """ε against concept density r, one line per N (methods note §4.8)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for n, rows in curves.items():
        ax.plot(
            [r["density"] for r in rows],
            [r["epsilon"] for r in rows],
            marker="o",
            ms=3,
            label=f"N = {int(n):,}",
        )
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


def plot_answerable(settings_out: list[dict], path: str | Path, target_epsilon: float) -> Path:
    """Bars: the largest T within ``target_epsilon`` per figure setting and accountant."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names = list(settings_out[0]["queries_at_target"]) if settings_out else []
    width = 0.78 / max(1, len(names))
    x = np.arange(len(settings_out))
    for j, acc in enumerate(names):
        vals = [s["queries_at_target"][acc]["queries"] for s in settings_out]
        style = accountant_style(acc)
        bars = ax.bar(
            x + (j - (len(names) - 1) / 2) * width,
            vals,
            width,
            color=style["color"],
            label=style["label"],
        )
        ax.bar_label(bars, labels=[f"{v:,}" for v in vals], fontsize=6, rotation=90, padding=2)
    ax.set_xticks(x, [s["name"] for s in settings_out])
    ax.set_yscale("log")
    plain_log_labels(ax.yaxis)
    ax.set_ylabel(f"queries answerable at ε ≤ {target_epsilon:g}")
    ax.set_title("Largest T within the budget (δ = 1/N)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.margins(y=0.35)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plain_log_labels(axis) -> None:
    """Label a log axis 2, 5, 10, 20 … instead of 2×10⁰ (easier to read off ε)."""
    from matplotlib.ticker import FuncFormatter, LogLocator  # lazy with matplotlib (see _pyplot)

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(fmt)
    axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    axis.set_minor_formatter(fmt)


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

    The numbers are :func:`privdiff.accounting.planner.plan_figure_settings` (for each §4.6
    figure setting, δ = 1/N: ε at the figure's own T under every accountant, ε against T for
    T = 1…``max_queries``, the largest T with ε ≤ ``target_epsilon``, the PLD/paper ratio).

    Args:
        out_dir: created if missing; receives ``epsilon_vs_queries.png``, ``queries_at_target.png``,
            ``concept_density.png`` and ``planner.json``.
        quick: coarser grids (for CI); the same files are written.
        command: the command line that made the outputs, recorded in the JSON.

    Returns:
        The dictionary written to ``planner.json``.
    """
    from tqdm import tqdm  # lazy: only this runner draws a progress bar

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    total = planner_evaluations(quick=quick, max_queries=max_queries)
    with tqdm(total=total, desc="planner", unit="eval", disable=not show_progress) as bar:
        plan = plan_figure_settings(
            quick=quick, target_epsilon=target_epsilon, max_queries=max_queries, progress=bar.update
        )
    settings_out = plan["settings"]
    panels = [
        (
            f"{s['name']}: σ={s['sigma']:g}, q={s['sample_rate']:g}, k={s['k']}, N={s['dataset_size']:,}",
            s["curve"],
            s["delta"],
        )
        for s in settings_out
    ]
    png_curves = plot_epsilon_curves(
        panels,
        out / "epsilon_vs_queries.png",
        target_epsilon=plan["target_epsilon"],
        marks=[fs.queries for fs in FIGURE_SETTINGS],
    )
    png_bars = plot_answerable(settings_out, out / "queries_at_target.png", plan["target_epsilon"])
    density = plan["concept_density"]
    png_density = plot_concept_density(
        density["curves"],
        out / "concept_density.png",
        delta=DENSITY_SETTING["delta"],
        sigma=DENSITY_SETTING["sigma"],
        queries=DENSITY_SETTING["queries"],
        accountant=DENSITY_SETTING["accountant"],
    )
    result = {
        "command": command,
        **plan,
        "figures": [p.name for p in (png_curves, png_bars, png_density)],
        "seconds": round(time.time() - started, 2),
        "versions": package_versions(),
    }
    atomic_write_json(out / "planner.json", result, indent=1)
    return result


def package_versions() -> dict[str, str]:
    """Versions of the packages that produced an accounting figure (recorded in its JSON)."""
    out = {"python": platform.python_version()}
    for pkg in ("privdiff", "dp-accounting", "opacus", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
