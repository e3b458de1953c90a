"""experiments/cpsample_mia.py: its table and its choice of CPSample settings (no model needed)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np

from privdiff.cpsample import guidance as g
from privdiff.evaluation.mia import two_sided_report

ROOT = Path(__file__).resolve().parents[2]


def _experiment():
    spec = importlib.util.spec_from_file_location("cpsample_mia_exp", ROOT / "experiments" / "cpsample_mia.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_has_one_section_per_threat_model_with_cis_and_unresolvable_cells():
    exp = _experiment()
    rng = np.random.default_rng(0)
    rows = []
    for threat, attack, cond, shift in [
        ("white-box denoiser", "loss (t=100)", "DDIM", 3.0),
        ("white-box denoiser", "loss (t=100)", "CPSample", -2.0),
        ("black-box samples", "nearest sample (cosine)", "CPSample", 0.0),
        ("classifier access", "confidence |z| (t=0)", "CPSample", 4.0),
    ]:
        rep = two_sided_report(rng.normal(shift, 1, 64), rng.normal(0, 1, 128), n_boot=50)
        rows.append({"threat_model": threat, "attack": attack, "condition": cond, "report": rep})
    record = {
        "settings": {
            "members": "m",
            "nonmembers": "n",
            "n_members": 64,
            "n_nonmembers": 128,
            "cpsample": {"alpha": 0.25},
        },
        "threat_models": exp.THREAT_MODELS,
        "results": rows,
        "command": "python experiments/cpsample_mia.py",
    }
    table = exp.markdown_table(record)
    assert "### white-box denoiser" in table and "### black-box samples" in table
    assert "| confidence \\|z\\| (t=0) | CPSample |" in table  # a pipe in a name does not split the cell
    record["results"] = rows[:3]
    table = exp.markdown_table(record)
    assert "### classifier access" not in table  # no rows, no section
    cpsample_row = next(line for line in table.splitlines() if line.startswith("| loss (t=100) | CPSample"))
    auc = rows[1]["report"]["auc"]
    assert f"{auc['value']:.3f} [{auc['ci'][0]:.3f}, {auc['ci'][1]:.3f}]" in cpsample_row
    assert f"{1 - auc['value']:.3f}" in cpsample_row  # the two-sided AUC is the flipped one here
    assert "not resolvable at 128 non-members (needs >= 1000)" in cpsample_row
    assert table.rstrip().endswith("`python experiments/cpsample_mia.py`")


def test_guidance_settings_default_to_what_privdiff_sample_protect_uses():
    exp = _experiment()
    args = argparse.Namespace(alpha=None, scale=None, mode=None, gate_on=None, step=None, t_max=None)
    s = exp.guidance_settings({}, args)  # no classifier report: the library defaults
    assert s == {
        "alpha": g.DEFAULT_ALPHA,
        "scale": g.DEFAULT_SCALE,
        "mode": g.DEFAULT_MODE,
        "gate_on": g.DEFAULT_GATE_ON,
        "step": g.DEFAULT_STEP,
        "t_max": None,
    }
    args = argparse.Namespace(alpha=0.1, scale=5.0, mode="boundary", gate_on="xt", step="gradient", t_max=0)
    s = exp.guidance_settings({}, args)
    assert s == {"alpha": 0.1, "scale": 5.0, "mode": "boundary", "gate_on": "xt", "step": "gradient", "t_max": None}
