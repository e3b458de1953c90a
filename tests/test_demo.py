"""``privdiff demo --quick`` end to end: report.html and summary.json hold every section and sane numbers.

The demo runs on the shipped checkpoints (checkpoints/rdm/fashion-mnist, checkpoints/cpsample/fmnist64
and its classifier/). A missing one makes these tests FAIL with the demo's own reason, never skip:
the checkpoints are part of the product. The quick private index and the embeddings are cached in
<repo>/out/cache (the CLI's default cache), so only the first run encodes images (~5,700 of them).
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import pytest

from privdiff.demo import SECTIONS, demo_config, run_demo
from privdiff.errors import InvalidParameter

ROOT = Path(__file__).resolve().parents[1]


def _console():
    from rich.console import Console

    return Console(file=io.StringIO(), width=120)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    console = _console()
    run_demo(demo_config("quick", out=out, cache_dir=ROOT / "out" / "cache"),
             command="privdiff demo --quick (test)", console=console)
    # Check what was written, not the returned object.
    summary = json.loads((out / "summary.json").read_text())
    return out, summary, console.file.getvalue()


def _ok(summary: dict, name: str) -> dict:
    s = summary["sections"][name]
    assert s["status"] == "ok", f"demo section {name} {s['status']}: {s.get('reason')}"
    return s


def test_summary_records_settings_timings_and_command(quick):
    out, summary, log = quick
    assert summary["kind"] == "privdiff-demo" and summary["size"] == "quick"
    assert summary["command"] == "privdiff demo --quick (test)"
    assert set(summary["sections"]) == set(SECTIONS)
    assert summary["skipped"] == {}, f"sections skipped or failed: {summary['skipped']}"
    assert summary["settings"]["private_data"] == "fashion-mnist:dprdm-private[:3000]"
    for phase in ("dprdm.index", "dprdm.generate", "dprdm.refusal", "cpsample.sample_ddim", "cpsample.sample_cpsample",
                  "cpsample.replication", "planner", "report"):
        assert summary["timings"][phase] >= 0 and phase in summary["cpu_timings"]
    assert summary["total_seconds"] >= sum(summary["timings"].values()) - 1.0
    assert "privdiff demo: summary" in log and "time per phase" in log  # the closing terminal tables


def test_dprdm_spends_within_budget_and_refuses_the_over_budget_request(quick):
    from privdiff.accounting import Ledger

    out, summary, _ = quick
    d = _ok(summary, "dprdm")
    led = d["ledger"]
    n = d["index"]["count"]
    assert n == 3000 and led["delta"] == pytest.approx(1 / n)
    assert led["epsilon_budget"] == 10 and 0 < led["epsilon_spent"] <= 10
    assert led["queries"] == len(d["prompts"])  # one charged query per prompt, none for the baselines
    spent = [p["epsilon_spent_after"] for p in d["prompts"]]
    assert all(a < b for a, b in zip(spent, spent[1:])) and spent[-1] == pytest.approx(led["epsilon_spent"])
    for p in d["prompts"]:
        assert p["epsilon_remaining_after"] == pytest.approx(10 - p["epsilon_spent_after"])
    # The prompts emphasise footwear, include an unseen phrasing and one control.
    assert any(p["heldout"] for p in d["prompts"])
    assert sum(p["footwear"] for p in d["prompts"]) >= 2 and not all(p["footwear"] for p in d["prompts"])
    modes = d["generation"]["modes"]
    assert {"dp-rdm", "public-retrieval", "non-private"} <= set(modes)
    for p in d["prompts"]:
        for mode in modes:
            rec = p["modes"][mode]
            assert (out / rec["grid"]).read_bytes()[:4] == b"\x89PNG"
            assert rec["private"] is (mode != "non-private")
        assert p["modes"]["non-private"]["privacy"]["epsilon"] == "inf"
        assert p["modes"]["public-retrieval"]["privacy"]["epsilon"] == 0
    r = d["refused_request"]
    assert r["refused"] and r["ledger_unchanged"] and r["images_written"] == 0 and not r["output_dir_exists"]
    assert r["prompts_requested"] > r["prompts_that_would_fit"] >= 1
    assert r["epsilon_if_answered"] > 10 and r["epsilon_with_one_prompt_more_than_fits"] > 10
    assert "Nothing was charged" in r["error"]
    with Ledger.open(out / led["path"]) as ledger:  # the file agrees with the summary
        assert ledger.status().epsilon_spent == pytest.approx(led["epsilon_spent"])


def test_cpsample_rates_and_figures(quick):
    from privdiff.evaluation.replication import recommended_threshold

    out, summary, _ = quick
    c = _ok(summary, "cpsample")
    assert c["threshold"]["tau"] == pytest.approx(recommended_threshold("pixel"))
    assert c["model"]["num_train_images"] == 64
    for name in ("ddim", "cpsample"):
        cond = c["conditions"][name]
        assert 0.0 <= cond["replication_rate"] <= 1.0 and cond["n_generated"] == 16
        assert cond["n_replicated"] == round(cond["replication_rate"] * 16)
        for key in ("samples_png", "top_pairs_png"):
            assert (out / cond[key]).read_bytes()[:4] == b"\x89PNG"
    gate = c["conditions"]["cpsample"]["gate"]
    assert 0.0 <= gate["firing_rate"] <= 1.0 and gate["calls"] == c["settings"]["num_inference_steps"]
    assert c["conditions"]["ddim"]["gate"] is None
    assert 0.0 <= c["fisher_exact"]["p_value"] <= 1.0


def test_planner_section(quick):
    out, summary, _ = quick
    p = _ok(summary, "planner")
    assert [s["name"] for s in p["settings"]] == ["Shutterstock", "MS-COCO FB", "CIFAR-10"]
    for f in p["figures"]:
        assert (out / f).read_bytes()[:4] == b"\x89PNG"


def test_report_is_self_contained_and_says_what_the_guarantees_mean(quick):
    out, summary, _ = quick
    d, c = _ok(summary, "dprdm"), _ok(summary, "cpsample")
    doc = (out / "report.html").read_text()
    for heading in ("At a glance", "What the guarantees mean", "DP-RDM: answering prompts", "over budget is refused",
                    "CPSample: a memorising model", "Privacy planner", "Timings and reproduction"):
        assert heading in doc
    assert "(ε, δ)-differential privacy" in doc and "not a guarantee about the public data" in doc
    assert "no formal differential-privacy guarantee" in doc
    assert "NOT PRIVATE" in doc and "Refused." in doc
    assert f"{d['ledger']['epsilon_spent']:.3g} / 10" in doc
    rate = c["conditions"]["ddim"]["replication_rate"]
    assert f"{rate:.1%}" in doc
    # Every picture is embedded; nothing points outside the file.
    srcs = re.findall(r'src="([^"]+)"', doc)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    n_grids = len(d["prompts"]) * len(d["generation"]["modes"])
    assert len(srcs) >= n_grids + 5 + 3  # grids, CPSample figures (training set, 2 samples, 2 pairs), planner
    assert "was skipped" not in doc and "was failed" not in doc


def test_missing_checkpoints_skip_with_the_reason(tmp_path):
    fake_model = tmp_path / "cps"  # a model directory whose classifier has not been trained yet
    fake_model.mkdir()
    (fake_model / "model.json").write_text("{}")
    cfg = demo_config("quick", out=tmp_path / "d", cache_dir=tmp_path / "cache", rdm_model=tmp_path / "no-rdm",
                      cpsample_model=fake_model, sections=("dprdm", "cpsample"))
    summary = run_demo(cfg, console=_console())
    assert summary["sections"]["dprdm"]["status"] == "skipped" and "no-rdm" in summary["skipped"]["dprdm"]
    assert summary["sections"]["cpsample"]["status"] == "skipped"
    assert "no CPSample protection classifier" in summary["skipped"]["cpsample"]
    assert summary["sections"]["planner"]["status"] == "not run"
    doc = (tmp_path / "d" / "report.html").read_text()
    assert "DP-RDM was skipped" in doc and "CPSample was skipped" in doc and "no-rdm" in doc
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["skipped"] == summary["skipped"]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "d" / "rdm" / "ledger.sqlite").exists()


def test_foreign_output_directory_is_left_alone(tmp_path):
    (tmp_path / "rdm").mkdir()
    (tmp_path / "rdm" / "keep.txt").write_text("not the demo's")
    with pytest.raises(InvalidParameter, match="earlier `privdiff demo`"):
        run_demo(demo_config("quick", out=tmp_path, sections=()), console=_console())
    assert (tmp_path / "rdm" / "keep.txt").read_text() == "not the demo's"


def test_presets_grow_with_size():
    quick, default, full = (demo_config(s) for s in ("quick", "default", "full"))
    assert quick.private_data.endswith("[:3000]")
    assert default.private_data == full.private_data == "fashion-mnist:dprdm-private"
    assert len(quick.prompts) <= len(default.prompts) < len(full.prompts)
    assert "no-retrieval" in full.modes and full.images_per_prompt > default.images_per_prompt
    assert 64 <= default.cpsample_n <= 100 and quick.cpsample_n < default.cpsample_n <= full.cpsample_n
    assert all(any(p.heldout for p in c.prompts) for c in (quick, default, full))
    assert not math.isinf(default.epsilon_budget) and default.epsilon_budget == 10
    with pytest.raises(InvalidParameter):
        demo_config("huge")
    with pytest.raises(InvalidParameter):
        demo_config("quick", modes=("public-retrieval",))
