"""experiments/cpsample_regime.py --smoke: every stage runs, is recorded with its command, and is cached."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("cpsample_regime", ROOT / "experiments" / "cpsample_regime.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
def test_the_smoke_regime_runs_every_stage_then_caches_them(tmp_path):
    from privdiff.data import load_dataset

    try:
        load_dataset("fashion-mnist:train[:2]")
    except Exception:  # noqa: BLE001
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    script = _script()
    argv = ["--dataset", "fashion-mnist", "--smoke", "--out", str(tmp_path / "runs")]
    argv += ["--results", str(tmp_path / "results.json")]
    assert script.main(argv) == 0
    record = json.loads((tmp_path / "runs" / "fashion-mnist" / "regime.json").read_text())
    stages = record["stages"]
    assert list(stages) == ["general", "finetune", "classifier", "evaluate"]
    assert all(s["status"] == "ran" for s in stages.values())
    assert stages["general"]["command"].startswith("privdiff train diffusion --data 'fashion-mnist:train[1000:1064]'")
    ft = stages["finetune"]["command"]
    assert "--init-from" in ft and "--stop-at-copy-rate 0.05" in ft and "'fashion-mnist:train[:16]'" in ft
    assert stages["classifier"]["command"].startswith("privdiff protect train --data 'fashion-mnist:train[:16]'")
    # The fine-tuning run's copy curve starts at the general model (step 0) and has its files.
    curve = record["finetune"]["copy_curve"]
    assert curve[0]["step"] == 0 and curve[-1]["step"] == record["finetune"]["steps_done"]
    assert Path(record["finetune"]["files"]["copies"]).is_file()
    assert record["finetune"]["verdict"]
    ev = record["evaluation"]
    for mode in ("plain", "cpsample"):
        r = ev["replication"][mode]
        assert r["n"] == 32 and 0 <= r["low"] <= r["value"] <= r["high"] <= 1
        assert ev["distances"][mode]["fid"]["low"] <= ev["distances"][mode]["fid"]["high"]
    assert ev["guidance"]["defaults_from"]["alpha"]
    assert set(ev["aims"]) == {"plain_copies_at_least_5pc", "cpsample_copies_at_most_0.5pc", "fid_cost_at_most_10pc"}
    assert "fashion-mnist" in json.loads((tmp_path / "results.json").read_text())
    # A second invocation finds every stage's output and runs none of them again.
    assert script.main(argv) == 0
    again = json.loads((tmp_path / "runs" / "fashion-mnist" / "regime.json").read_text())
    assert all(s["status"] == "cached" for s in again["stages"].values())
    assert again["evaluation"]["replication"] == ev["replication"]


def test_a_subset_that_overlaps_the_broad_set_is_refused():
    with pytest.raises(SystemExit):
        _script().parse_args(["--dataset", "mnist5k", "--subset", "600"])


def _rows(spec: str) -> tuple[str, int, int]:
    """``kind[:split][lo:hi]`` → (kind[:split], lo, hi) with an open end as a huge number."""
    m = re.fullmatch(r"(?P<base>[^\[]+)\[(?P<lo>\d*):(?P<hi>\d*)\]", spec)
    assert m, spec
    return m["base"], int(m["lo"] or 0), int(m["hi"]) if m["hi"] else 10**9


def _overlap(a: str, b: str) -> bool:
    (base_a, lo_a, hi_a), (base_b, lo_b, hi_b) = _rows(a), _rows(b)
    return base_a == base_b and lo_a < hi_b and lo_b < hi_a


@pytest.mark.parametrize("smoke", [[], ["--smoke"]])
@pytest.mark.parametrize("dataset", ["fashion-mnist", "mnist5k"])
def test_the_subset_the_broad_set_and_the_held_out_images_are_disjoint(dataset, smoke):
    script = _script()
    sp = script.specs(script.parse_args(["--dataset", dataset, *smoke]))
    for other in ("general", "calibration", "holdout", "reference"):
        assert not _overlap(sp["subset"], sp[other]), (other, sp)
    assert not _overlap(sp["general"], sp["holdout"]) and not _overlap(sp["general"], sp["reference"])


def test_the_gpu_script_is_offline_executable_and_runs_both_datasets_on_cuda():
    sh = ROOT / "scripts" / "gpu-cpsample.sh"
    text = sh.read_text()
    assert sh.stat().st_mode & 0o111
    assert "HF_HUB_OFFLINE=1" in text and "DEVICE=cuda" in text
    assert "for dataset in fashion-mnist mnist5k" in text and "--results" in text
