"""``privdiff demo --quick`` end to end: report.html and summary.json hold every section and sane numbers.

The demo runs on the shipped checkpoints (package data privdiff/assets/checkpoints/rdm/fashion-mnist,
cpsample/fmnist64 and its classifier/). A missing one makes these tests FAIL with the demo's own
reason, never skip: the checkpoints are part of the product. The quick demo needs the shipped
checkpoints and the real Fashion-MNIST data, so everything that runs it is in the `integration` tier. The quick
private index and the embeddings are cached in
<repo>/out/cache (the CLI's default cache), so only the first run encodes images (~5,700 of them).
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import pytest

from privdiff.demo import SECTIONS, check_complete, demo_config, run_demo
from privdiff.errors import CheckpointError, InvalidParameter

ROOT = Path(__file__).resolve().parents[1]


def _console():
    from rich.console import Console

    return Console(file=io.StringIO(), width=120)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    console = _console()
    result = run_demo(
        demo_config("quick", out=out, cache_dir=ROOT / "out" / "cache"),
        command="privdiff demo --quick (test)",
        console=console,
    )
    return out, result, console.file.getvalue()


@pytest.fixture(scope="module")
def quick(quick_run):
    out, _, log = quick_run
    # Check what was written, not the returned object.
    summary = json.loads((out / "summary.json").read_text())
    return out, summary, log


def _ok(summary: dict, name: str) -> dict:
    s = summary["sections"][name]
    assert s["status"] == "ok", f"demo section {name} {s['status']}: {s.get('reason')}"
    return s


@pytest.mark.integration
def test_sections_return_typed_results_and_summary_json_is_written_from_them(quick_run, quick):
    from privdiff.demo import CPSampleResult, DPRDMResult, PlannerResult

    out, result, _ = quick_run
    assert isinstance(result.sections["dprdm"], DPRDMResult)
    assert isinstance(result.sections["cpsample"], CPSampleResult)
    assert isinstance(result.sections["planner"], PlannerResult)
    d = result.sections["dprdm"]
    assert d.refused_request.without_effect and d.ledger.status.queries == len(d.prompts)
    assert d.prompts[-1].epsilon_spent_after == pytest.approx(d.ledger.status.epsilon_spent)
    assert result.skipped == {}
    assert quick[1] == result.to_dict()  # the file is the typed result, nothing else


@pytest.mark.integration
def test_summary_records_settings_timings_and_command(quick):
    out, summary, log = quick
    assert summary["kind"] == "privdiff-demo" and summary["size"] == "quick"
    assert summary["command"] == "privdiff demo --quick (test)"
    assert set(summary["sections"]) == set(SECTIONS)
    assert summary["skipped"] == {}, f"sections skipped or failed: {summary['skipped']}"
    assert summary["settings"]["private_data"] == "fashion-mnist:dprdm-private{classes=2,4}[:3000]"
    for phase in (
        "dprdm.index",
        "dprdm.generate",
        "dprdm.refusal",
        "cpsample.sample_ddim",
        "cpsample.sample_cpsample",
        "cpsample.replication",
        "planner",
        "report",
    ):
        assert phase in summary["timings"] and phase in summary["cpu_timings"]
    # The phases are disjoint parts of the run, so the total covers their sum.
    assert summary["total_seconds"] >= sum(summary["timings"].values()) - 1.0
    assert "privdiff demo: summary" in log and "time per phase" in log  # the closing terminal tables


@pytest.mark.integration
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


@pytest.mark.integration
def test_dprdm_tells_the_domain_story_with_in_domain_rates(quick):
    """Coarse prompts over a private domain (winter tops), every mode judged by the yardstick."""
    from privdiff.evaluation.domain import wilson_interval

    out, summary, _ = quick
    d = _ok(summary, "dprdm")
    dom = d["domain"]
    assert dom["classes"] == [2, 4] and dom["class_names"] == ["Pullover", "Coat"]
    assert dom["yardstick_test_accuracy"] >= 0.9
    texts = {p["text"] for p in d["prompts"]}
    assert texts == {"a photo of a top", "a piece of clothing"}  # coarse: no class named
    per = d["generation"]["images_per_prompt"]
    for mode in d["generation"]["modes"]:
        hits = sum(p["modes"][mode]["in_domain"] for p in d["prompts"])
        n = sum(p["modes"][mode]["n_images"] for p in d["prompts"])
        assert n == per * len(d["prompts"]) == dom["rates"][mode]["n"]
        ci = wilson_interval(hits, n)  # the rate is the per-query counts pooled, with its Wilson interval
        rate = dom["rates"][mode]
        assert (rate["value"], rate["low"], rate["high"]) == pytest.approx((ci.value, ci.low, ci.high))
        assert sum(rate["predicted_classes"]) == n
    below = [m for m, r in dom["rates"].items() if r["value"] < dom["rates"]["public-retrieval"]["value"]]
    assert dom["below_public"] == below
    # δ = 1/N: make_pipeline's warning is recorded for the page, with the cost of a stricter δ.
    note = d["delta_note"]
    assert any("1/N" in w for w in note["warnings"])
    assert note["stricter_delta"] == pytest.approx(d["ledger"]["delta"] / 100)
    assert note["epsilon_at_stricter_delta"] > d["ledger"]["epsilon_spent"]
    doc = (out / "report.html").read_text()
    assert "In-domain rate" in doc and "Why δ = 1/N here" in doc and "1/N" in note["warnings"][0]
    assert "intervals are wide" in doc  # 12 images per mode in the quick demo
    dp, pub = dom["rates"]["dp-rdm"]["value"], dom["rates"]["public-retrieval"]["value"]
    assert ("DP-RDM drew fewer in-domain images than public-only" in doc) == (dp < pub)


@pytest.mark.integration
def test_cpsample_rates_and_figures(quick):
    from privdiff.evaluation.replication import recommended_threshold

    out, summary, _ = quick
    c = _ok(summary, "cpsample")
    assert c["threshold"]["tau"] == pytest.approx(recommended_threshold("pixel"))
    assert c["model"]["num_train_images"] == 64
    counts = {}
    for name in ("ddim", "cpsample"):
        cond = c["conditions"][name]
        assert cond["n_generated"] == 16
        assert cond["replication_rate"] == pytest.approx(cond["n_replicated"] / 16)
        counts[name] = cond["n_replicated"]
        for key in ("samples_png", "top_pairs_png"):
            assert (out / cond[key]).read_bytes()[:4] == b"\x89PNG"
    # The model memorised its 64 images: plain DDIM copies some, and the protection copies fewer.
    assert counts["ddim"] >= 1 and counts["cpsample"] < counts["ddim"]
    gate = c["conditions"]["cpsample"]["gate"]
    assert gate["firing_rate"] > 0 and gate["calls"] == c["settings"]["num_inference_steps"]
    assert c["conditions"]["ddim"]["gate"] is None
    # The p-value is the two-sided Fisher exact test of exactly these counts.
    from scipy.stats import fisher_exact

    table = [[counts["ddim"], 16 - counts["ddim"]], [counts["cpsample"], 16 - counts["cpsample"]]]
    assert c["fisher_exact"]["p_value"] == pytest.approx(fisher_exact(table)[1])


@pytest.mark.integration
def test_planner_section(quick):
    out, summary, _ = quick
    p = _ok(summary, "planner")
    assert [s["name"] for s in p["settings"]] == ["Shutterstock", "MS-COCO FB", "CIFAR-10"]
    for f in p["figures"]:
        assert (out / f).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.integration
def test_report_is_self_contained_and_says_what_the_guarantees_mean(quick):
    out, summary, _ = quick
    d, c = _ok(summary, "dprdm"), _ok(summary, "cpsample")
    doc = (out / "report.html").read_text()
    for heading in (
        "At a glance",
        "What the guarantees mean",
        "DP-RDM: answering prompts",
        "over budget is refused",
        "CPSample: a memorising model",
        "Privacy planner",
        "Timings and reproduction",
    ):
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
    cfg = demo_config(
        "quick",
        out=tmp_path / "d",
        cache_dir=tmp_path / "cache",
        rdm_model=tmp_path / "no-rdm",
        cpsample_model=fake_model,
        sections=("dprdm", "cpsample"),
    )
    result = run_demo(cfg, console=_console())
    assert result.sections["dprdm"].status == "skipped" and "no-rdm" in result.skipped["dprdm"]
    assert result.sections["cpsample"].status == "skipped"
    assert "no CPSample protection classifier" in result.skipped["cpsample"]
    assert result.sections["planner"].status == "not run"
    doc = (tmp_path / "d" / "report.html").read_text()
    assert "DP-RDM was skipped" in doc and "CPSample was skipped" in doc and "no-rdm" in doc
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["skipped"] == result.skipped
    with pytest.raises(CheckpointError, match="demo incomplete: DP-RDM skipped .*no-rdm"):
        check_complete(result)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "d" / "rdm" / "ledger.sqlite").exists()


def test_foreign_output_directory_is_left_alone(tmp_path):
    (tmp_path / "rdm").mkdir()
    (tmp_path / "rdm" / "keep.txt").write_text("not the demo's")
    with pytest.raises(InvalidParameter, match="earlier `privdiff demo`"):
        run_demo(demo_config("quick", out=tmp_path, sections=()), console=_console())
    assert (tmp_path / "rdm" / "keep.txt").read_text() == "not the demo's"


def test_presets_grow_with_size():
    quick, default, full = (demo_config(s) for s in ("quick", "default", "full"))
    assert quick.private_data == "fashion-mnist:dprdm-private{classes=2,4}[:3000]"
    assert default.private_data == full.private_data == "fashion-mnist:dprdm-private{classes=2,4}"
    assert all(c.domain_classes == (2, 4) for c in (quick, default, full))
    assert len(quick.prompts) < len(default.prompts) < len(full.prompts)
    assert {"no-retrieval", "subsampled"} <= set(full.modes) and full.images_per_prompt > default.images_per_prompt
    assert 64 <= default.cpsample_n <= 100 and quick.cpsample_n < default.cpsample_n <= full.cpsample_n
    with pytest.raises(InvalidParameter, match="domain_classes"):
        demo_config("quick", domain_classes=(12,))
    assert not math.isinf(default.epsilon_budget) and default.epsilon_budget == 10
    with pytest.raises(InvalidParameter):
        demo_config("huge")
    with pytest.raises(InvalidParameter):
        demo_config("quick", modes=("public-retrieval",))


def _fake_dprdm(rates: dict[str, tuple[int, int]], per_prompt: list[dict[str, int]]):
    """A DP-RDM result with just what the in-domain part of the page reads."""
    from types import SimpleNamespace

    from privdiff.demo import DomainRate, DomainResult
    from privdiff.evaluation.domain import wilson_interval

    est = {m: wilson_interval(h, n) for m, (h, n) in rates.items()}
    pub = est["public-retrieval"].value
    domain = DomainResult(
        name="winter tops",
        classes=(2, 4),
        class_names=("Pullover", "Coat"),
        yardstick_test_accuracy=0.92,
        rates={m: DomainRate(e.value, e.low, e.high, e.n, (0, 0, rates[m][0]) + (0,) * 7) for m, e in est.items()},
        below_public=tuple(m for m, e in est.items() if e.value < pub),
        prompts_dp_below_public=tuple(i for i, p in enumerate(per_prompt) if p["dp-rdm"] < p["public-retrieval"]),
    )
    prompts = [
        SimpleNamespace(modes={m: SimpleNamespace(in_domain=c, n_images=4) for m, c in p.items()}) for p in per_prompt
    ]
    ledger = SimpleNamespace(status=SimpleNamespace(epsilon_spent=1.5))
    return SimpleNamespace(domain=domain, ledger=ledger, prompts=prompts)


def _domain_text(d) -> str:
    from privdiff.demo.report import _domain_rates
    from privdiff.report.html import HtmlReport

    rep = HtmlReport("t")
    s = rep.section("x")
    _domain_rates(s, d)
    return s.render()


def test_page_says_so_with_numbers_when_dp_rdm_is_below_public_only():
    low = _fake_dprdm(
        {"dp-rdm": (2, 40), "public-retrieval": (20, 40), "non-private": (5, 40)},
        [
            {"dp-rdm": 0, "public-retrieval": 3, "non-private": 1},
            {"dp-rdm": 2, "public-retrieval": 1, "non-private": 0},
        ],
    )
    text = _domain_text(low)
    assert "DP-RDM drew fewer in-domain images than public-only retrieval: 5% [" in text
    assert "do not overlap: here DP-RDM is worse" in text
    assert "query 1 (0 vs 3 of 4)" in text and "query 2" not in text
    assert "intervals are wide" in text  # 40 images per mode
    high = _fake_dprdm(
        {"dp-rdm": (300, 400), "public-retrieval": (10, 400), "non-private": (60, 400)},
        [{"dp-rdm": 3, "public-retrieval": 0, "non-private": 1}],
    )
    text = _domain_text(high)
    assert "fewer in-domain" not in text and "intervals are wide" not in text
    assert "drew 75% in-domain images against 2% for public-only retrieval (the intervals do not overlap)" in text
    assert "Non-private retrieval (15%) is not the ceiling here" in text
