"""report.accounting_plots: the accounting figures, drawn from the registry's accountants."""

from __future__ import annotations

import dataclasses

import pytest

from privdiff.accounting import ACCOUNTANTS, get_accountant, register_accountant
from privdiff.accounting import accountants as accountants_module
from privdiff.report.accounting_plots import accountant_style, plot_answerable, plot_concept_density


def test_builtin_accountants_keep_distinct_colours_and_their_labels():
    styles = [accountant_style(n) for n in ACCOUNTANTS]
    assert len({s["color"] for s in styles}) == len(ACCOUNTANTS)
    assert [s["label"] for s in styles] == [get_accountant(n).label for n in ACCOUNTANTS]
    assert styles[0]["label"] == "paper (Opacus 1.4 RDP)"


def test_a_registered_accountant_is_drawn_with_its_label(tmp_path):
    base = get_accountant("rdp")
    extra = dataclasses.replace(base, name="rdp-copy", label="rdp copy (test)")
    register_accountant(extra)
    try:
        style = accountant_style("rdp-copy")
        assert style["label"] == "rdp copy (test)"
        assert style["color"] not in {accountant_style(n)["color"] for n in ACCOUNTANTS}
        settings = [
            {
                "name": "s",
                "queries_at_target": {n: {"queries": 10 + i} for i, n in enumerate((*ACCOUNTANTS, "rdp-copy"))},
            }
        ]
        png = plot_answerable(settings, tmp_path / "bars.png", 10.0)
        assert png.read_bytes()[:4] == b"\x89PNG"
    finally:
        accountants_module._REGISTRY.pop("rdp-copy", None)


def test_unknown_accountant_has_no_style():
    from privdiff.errors import InvalidParameter

    with pytest.raises(InvalidParameter):
        accountant_style("nope")


def test_concept_density_plot_accepts_the_planner_json_keys(tmp_path):
    curves = {"1000000": [{"density": 1e-5, "epsilon": 600.0}, {"density": 1e-4, "epsilon": 20.0}]}
    png = plot_concept_density(curves, tmp_path / "d.png", delta=1e-7, sigma=0.2, queries=1000, accountant="paper")
    assert png.read_bytes()[:4] == b"\x89PNG"
