"""CPSample warnings (issue 12): a gate that will not fire on the training images, or that fires on
non-members too, is reported at `protect train` and `sample`, with the α that would fire."""

from __future__ import annotations

import json

import numpy as np
import pytest

from privdiff.cli import main
from privdiff.cpsample import ProtectionClassifier, evaluate_classifier
from privdiff.cpsample.diagnostics import alpha_to_fire, classifier_warnings, gate_rows

BANDS = [[0, 50], [50, 100], [100, 200], [200, 300], [300, 500], [500, 1000]]


def _rows(q01: float, median: float, *, late_q01: float = 0.5) -> list[dict]:
    """Report rows with the given confidence quantiles in the gate window (t < 300)."""
    rows = []
    for band in BANDS:
        inside = band[0] < 300
        rows.append(
            {
                "band": band,
                "accuracy": 1.0,
                "mean_confidence": median,
                "fraction_above_1_minus_alpha": {"0.5": 1.0, "0.25": 1.0, "0.001": 0.0},
                "confidence_quantiles": {
                    "0.01": q01 if inside else late_q01,
                    "0.5": median,
                    "0.99": 1.0,
                },
                "evaluations": 256,
            }
        )
    return rows


def _meta(train, holdout=None, calibration=None, small_t_max=300):
    report = {"train": train} | ({"holdout": holdout} if holdout is not None else {})
    return {
        "report": report,
        "calibration_spec": calibration,
        "train_config": {"small_t_max": small_t_max},
    }


def test_gate_window_is_the_oversampled_range():
    assert [r["band"] for r in gate_rows(_rows(0.9, 0.95), 300)] == BANDS[:4]
    assert [r["band"] for r in gate_rows(_rows(0.9, 0.95), 40)] == BANDS[:1]


def test_members_below_one_minus_alpha_warn_with_the_alpha_that_fires():
    meta = _meta(_rows(q01=0.9, median=0.97))
    (msg,) = classifier_warnings(meta)  # protect train: judged at the paper's α = 0.001
    assert "α = 0.001" in msg and "α ≥ 0.11" in msg and "t < 300" in msg
    assert alpha_to_fire(gate_rows(meta["report"]["train"], 300)) == pytest.approx(0.11)
    (msg,) = classifier_warnings(meta, alpha=0.05)
    assert "α = 0.05" in msg and "α ≥ 0.11" in msg
    assert classifier_warnings(meta, alpha=0.11) == []  # the suggested α is enough
    # Late bands (t ≥ small_t_max) do not count: the gate is judged where it matters.
    assert classifier_warnings(_meta(_rows(q01=0.9995, median=0.9999, late_q01=0.5))) == []


def test_a_classifier_that_never_gets_confident_says_no_alpha_fires():
    (msg,) = classifier_warnings(_meta(_rows(q01=0.3, median=0.6)), alpha=0.5)
    assert "no α ≤ 0.5" in msg


@pytest.mark.integration
def test_reports_without_quantiles_use_the_recorded_alphas():
    from privdiff.checkpoints import CPSAMPLE_MODEL, resolve_checkpoint

    saved = json.loads((resolve_checkpoint(CPSAMPLE_MODEL) / "classifier/report.json").read_text())
    meta = saved["settings"] | {"report": saved["report"]}
    (msg,) = classifier_warnings(meta, alpha=0.001)
    assert "α = 0.5 (the smallest recorded α that does)" in msg
    assert classifier_warnings(meta, alpha=0.5) == []


def test_confident_on_held_out_without_calibration_warns():
    train, confident = _rows(q01=0.9995, median=0.9999), _rows(q01=0.99, median=0.9999)
    (msg,) = classifier_warnings(_meta(train, holdout=confident))
    assert "without --calibration" in msg and "held-out" in msg and "0.999" in msg
    # The same numbers with calibration images, or held-out confidence near 1/2: no warning.
    assert classifier_warnings(_meta(train, holdout=confident, calibration="fashion-mnist:train[9000:9100]")) == []
    assert classifier_warnings(_meta(train, holdout=_rows(q01=0.5, median=0.56))) == []


def test_recorded_quantiles_give_an_alpha_that_fires_on_99_percent(memorised, tiny_train_set, alphas_cumprod):
    clf, labels = memorised
    rows = evaluate_classifier(
        clf,
        tiny_train_set,
        labels,
        alphas_cumprod=alphas_cumprod,
        seed=3,
        bands=((0, 20), (20, 40)),
    )
    assert all(set(r["confidence_quantiles"]) == {"0.01", "0.5", "0.99"} for r in rows)
    alpha = alpha_to_fire(rows)
    assert alpha is not None
    # Re-evaluated on the same draws (same seed) at that α, ≥ 99 % of the images exceed 1 − α.
    again = evaluate_classifier(
        clf,
        tiny_train_set,
        labels,
        alphas_cumprod=alphas_cumprod,
        seed=3,
        bands=((0, 20), (20, 40)),
        alphas=(alpha,),
    )
    assert all(r["fraction_above_1_minus_alpha"][str(alpha)] >= 0.99 for r in again)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from privdiff.diffusion import TrainConfig, train_diffusion, unet_config

    out = tmp_path_factory.mktemp("model")
    images = np.random.default_rng(0).integers(0, 256, size=(4, 8, 8, 1), dtype=np.uint8)
    train_diffusion(
        images,
        out,
        unet_config=unet_config("tiny"),
        progress=False,
        config=TrainConfig(steps=2, batch_size=4, checkpoint_every=2),
    )
    return out


def test_sample_warns_before_generating(tmp_path, tiny_model_dir, memorised, capsys, monkeypatch):
    import privdiff.diffusion.generate
    from privdiff.errors import PrivdiffError

    clf, labels = memorised
    clf_dir = tmp_path / "clf"
    ProtectionClassifier(classifier=clf, labels=labels, meta=_meta(_rows(q01=0.9, median=0.97))).save(clf_dir)

    def stop(*args, **kwargs):
        raise PrivdiffError("generation reached")

    monkeypatch.setattr(privdiff.diffusion.generate, "generate", stop)
    code = main(
        [
            "sample",
            "--model",
            str(tiny_model_dir),
            "--protect",
            str(clf_dir),
            "--alpha",
            "0.001",
            "-n",
            "1",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    lines = err.splitlines()
    assert lines[0].startswith("warning: CPSample: at α = 0.001") and "α ≥ 0.11" in lines[0]
    assert lines[-1] == "error: generation reached"  # the warning came first


@pytest.mark.integration
def test_protect_train_table_fits_80_columns_and_warns(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from privdiff.data import load_dataset

    try:
        load_dataset("fashion-mnist:train[:2]")
    except Exception:  # noqa: BLE001
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(tmp_path)  # a short --out, so the closing "saved clf" line is short too
    code = main(
        [
            "protect",
            "train",
            "--data",
            "fashion-mnist:train[:8]",
            "--size",
            "8",
            "--model",
            str(tiny_model_dir),
            "--out",
            "clf",
            "--holdout",
            "fashion-mnist:test[:8]",
            "--steps",
            "2",
            "--batch-size",
            "8",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert "…" not in out  # no header or cell cut short
    for lo, hi in BANDS:  # every band on one line with all its numbers
        (row,) = [line for line in out.splitlines() if line.split() and line.split()[0] == f"{lo}-{hi}"]
        assert len(row.split()) == 1 + 2 + 3 + 2
    assert "warning: CPSample:" in err and "α" in err
    saved = json.loads((tmp_path / "clf" / "report.json").read_text())
    assert "confidence_quantiles" in saved["report"]["train"][0]
    assert "--size 8" in saved["settings"]["command"]


def test_fire_window_is_the_top_band_where_members_can_exceed_one_minus_alpha():
    from privdiff.cpsample.diagnostics import fire_window

    rows = _rows(q01=0.9, median=0.97)
    for r, q99 in zip(rows, [1.0, 0.99, 0.95, 0.8, 0.7, 0.6]):
        r["confidence_quantiles"]["0.99"] = q99
    assert fire_window(rows, 0.1) == 200  # 0.95 > 0.9 in [100, 200); never above 0.9 from t = 200 on
    assert fire_window(rows, 0.25) == 300
    assert fire_window(rows, 0.5) is None  # some member exceeds 0.5 in every band: no window
    # Without quantiles, from the recorded share above 1 − α; an unrecorded α gives no window.
    for r, share in zip(rows, [1.0, 1.0, 0.5, 0.1, 0.0, 0.0]):
        del r["confidence_quantiles"]
        r["fraction_above_1_minus_alpha"]["0.25"] = share
    assert fire_window(rows, 0.25) == 300
    assert fire_window(rows, 0.1) is None


def test_x0_gate_is_judged_on_the_lowest_band_and_suggests_its_alpha():
    from privdiff.cpsample.diagnostics import suggest_alpha

    rows = _rows(q01=0.6, median=0.97)
    rows[0]["confidence_quantiles"]["0.01"] = 0.95  # members are confident at t < 50 only
    meta = _meta(rows)
    assert suggest_alpha(meta, "x0") == pytest.approx(0.051)
    assert suggest_alpha(meta, "xt") == pytest.approx(0.41)
    assert classifier_warnings(meta, alpha=0.06, gate_on="x0") == []
    (msg,) = classifier_warnings(meta, alpha=0.06, gate_on="xt")
    assert "t < 300" in msg and "α ≥ 0.41" in msg
    (msg,) = classifier_warnings(meta, alpha=0.01, gate_on="x0")
    assert "x̂_0" in msg and "α ≥ 0.051" in msg
    assert suggest_alpha({"report": {}}) is None
