"""Planner: §4.8 concept-density values, ε-vs-queries curves, the demo's files."""

from __future__ import annotations

import pytest

from privdiff.accounting import DPRDMQuery, compute_epsilon
from privdiff.accounting.planner import (
    FIGURE_SETTINGS,
    concept_density_curve,
    epsilon_curve,
    query_grid,
)
from privdiff.report.accounting_plots import plot_epsilon_curves


def test_concept_density_reproduces_method_note_cells():
    curves = concept_density_curve([1_000_000, 10_000_000, 100_000_000], [1e-5, 1e-4, 1e-3], q_points=4)
    one_m = {round(r["density"], 12): r for r in curves[1_000_000]}
    ten_m = {round(r["density"], 12): r for r in curves[10_000_000]}
    hundred_m = {round(r["density"], 12): r for r in curves[100_000_000]}
    # §4.8 table: N=1M → ≈678 at r=1e-5, ≈21.9 at r=1e-4; N=10M → ≈21.9 at r=1e-5, ≈1.62 at r=1e-4.
    assert one_m[1e-5]["epsilon"] == pytest.approx(678, rel=2e-3)
    assert one_m[1e-4]["epsilon"] == pytest.approx(21.9, rel=2e-3)
    assert ten_m[1e-5]["epsilon"] == pytest.approx(21.9, rel=2e-3)
    assert ten_m[1e-4]["epsilon"] == pytest.approx(1.62, rel=3e-3)
    assert ten_m[1e-3]["epsilon"] == pytest.approx(0.21, abs=5e-3)
    # The floor of the paper's order grid (α ≤ 63) at large r·N: ≈0.18.
    assert hundred_m[1e-3]["epsilon"] == pytest.approx(0.18, abs=5e-3)
    assert hundred_m[1e-3]["epsilon"] < hundred_m[1e-4]["epsilon"] < hundred_m[1e-5]["epsilon"]
    # The optimum is at q → 1 with k = r·N, and ε depends (almost) only on r·N.
    assert one_m[1e-4]["sample_rate"] == pytest.approx(1.0) and one_m[1e-4]["k"] == 100


def test_query_grid_is_sorted_distinct_and_spans_the_range():
    grid = query_grid(10_000, 12)
    assert grid[0] == 1 and grid[-1] == 10_000 and grid == sorted(set(grid))


def test_epsilon_curve_matches_compute_epsilon_and_grows(tmp_path):
    fs = FIGURE_SETTINGS[2]
    curves = epsilon_curve(fs.query, fs.delta, [10, 100, 1000], ["paper", "pld"])
    assert [r["queries"] for r in curves["paper"]] == [10, 100, 1000]
    assert curves["paper"][-1]["epsilon"] == pytest.approx(9.443, abs=6e-4)
    pld = [r["epsilon"] for r in curves["pld"]]
    assert pld == sorted(pld)
    assert pld[1] == compute_epsilon([(DPRDMQuery(0.05, 0.01, 23), 100)], 1 / 50_000, "pld").epsilon
    png = plot_epsilon_curves([("cifar", curves, fs.delta)], tmp_path / "c.png", marks=[1000])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_planner_figure_settings_reproduce_their_paper_epsilon():
    for fs in FIGURE_SETTINGS:
        eps = compute_epsilon([(fs.query, fs.queries)], fs.delta, "paper").epsilon
        assert eps == pytest.approx(fs.epsilon_paper, abs=6e-4), fs.name
