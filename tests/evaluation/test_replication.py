import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privdiff.errors import InvalidParameter
from privdiff.evaluation.features import extract_features, pixel_features
from privdiff.evaluation.replication import (
    RECOMMENDED_THRESHOLDS,
    ReplicationReport,
    augment_copies,
    calibrate_threshold,
    compare_rates,
    nearest_neighbours,
    recommended_threshold,
    recommended_threshold_info,
    replication_report,
    save_calibration_plot,
    save_histogram,
    save_top_pairs,
    threshold_at_fpr,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RESULTS_JSON = Path(__file__).resolve().parents[2] / "docs" / "results" / "evaluation" / "replication_threshold.json"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


# ----------------------------------------------------------------------------- feature spaces


def test_pixel_features_are_unit_norm_and_invariant_to_brightness_offset(rng):
    images = rng.integers(20, 200, size=(5, 10, 10, 1), dtype=np.uint8)
    brighter = (images.astype(np.int16) + 40).astype(np.uint8)
    f, g = pixel_features(images), pixel_features(brighter)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(f, g, atol=1e-5)


def test_pixel_features_give_constant_images_a_zero_row(rng):
    images = np.concatenate([np.full((1, 6, 6, 1), 77, np.uint8), rng.integers(0, 256, (2, 6, 6, 1), dtype=np.uint8)])
    f = pixel_features(images)
    assert np.all(f[0] == 0)
    assert np.linalg.norm(f[1]) == pytest.approx(1.0, rel=1e-5)


def test_nearest_neighbours_agree_with_numpy_argmax(rng):
    q = pixel_features(rng.integers(0, 256, (30, 8, 8, 1), dtype=np.uint8))
    r = pixel_features(rng.integers(0, 256, (50, 8, 8, 1), dtype=np.uint8))
    sims, idx = nearest_neighbours(q, r)
    gram = q @ r.T
    np.testing.assert_array_equal(idx, gram.argmax(axis=1))
    np.testing.assert_allclose(sims, gram.max(axis=1), atol=1e-5)


# ----------------------------------------------------------------------------- the report


@pytest.mark.integration
def test_exact_copies_replicate_at_rate_one_and_point_to_their_source(fashion):
    train, _ = fashion
    order = np.random.default_rng(0).permutation(100)
    generated = train[:100][order]
    report = replication_report(generated, train, feature_space="pixel")
    assert report.rate == 1.0
    assert report.n_replicated == 100
    np.testing.assert_array_equal(report.nearest_index, order)
    np.testing.assert_allclose(report.similarities, 1.0, atol=1e-5)


@pytest.mark.integration
def test_held_out_images_rarely_replicate_at_the_calibrated_threshold(fashion):
    train, test = fashion
    report = replication_report(test, train, feature_space="pixel")
    assert report.threshold == recommended_threshold("pixel")
    assert report.threshold_source.startswith("calibrated")
    assert report.rate <= 0.03


@pytest.mark.integration
def test_photometric_near_copies_replicate_at_the_calibrated_threshold(fashion):
    train, _ = fashion
    copies, _ = augment_copies(train[:100], seed=3, noise_std=8.0, brightness=0.1, max_shift=0)
    assert replication_report(copies, train, feature_space="pixel").rate >= 0.95


def test_report_json_records_settings_and_top_pairs_are_sorted(rng):
    ref = rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)
    gen = np.concatenate([ref[:3], rng.integers(0, 256, (7, 8, 8, 1), dtype=np.uint8)])
    report = replication_report(gen, ref, threshold=0.9, settings={"seed": 5, "generated": "x.npz"})
    payload = json.loads(report.to_json())
    assert payload["rate"] == pytest.approx(0.3)
    assert payload["threshold"] == 0.9 and payload["threshold_source"] == "explicit"
    assert payload["settings"] == {"seed": 5, "generated": "x.npz"}
    assert payload["feature_space"]["name"] == "pixel"
    assert len(payload["similarities"]) == 10 and len(payload["nearest_index"]) == 10
    sims = [p["similarity"] for p in payload["top_pairs"]]
    assert sims == sorted(sims, reverse=True)
    assert {p["generated_index"] for p in report.top_pairs(3)} == {0, 1, 2}


def test_top_pairs_grid_and_histograms_are_written(tmp_path, rng):
    ref = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    gen = np.concatenate([ref[:2], rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)])
    report = replication_report(gen, ref, threshold=0.95)
    assert _is_png(save_top_pairs(report, gen, ref, tmp_path / "pairs.png", n=4))
    assert _is_png(save_histogram(report, tmp_path / "hist.png"))
    other = replication_report(gen[2:], ref, threshold=0.95)
    assert _is_png(save_histogram({"baseline": report, "protected": other}, tmp_path / "overlay.png"))


def test_save_top_pairs_rejects_images_that_are_not_the_reports(tmp_path, rng):
    ref = rng.integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    report = replication_report(ref[:3], ref, threshold=0.9)
    with pytest.raises(InvalidParameter, match="generated"):
        save_top_pairs(report, ref, ref, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"feature_space": "clip"}, "feature_space"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
    ],
)
def test_replication_report_rejects_bad_parameters(kwargs, name, rng):
    ref = rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    with pytest.raises(InvalidParameter, match=name):
        replication_report(ref, ref, **kwargs)


@pytest.mark.parametrize(
    "generated",
    [
        np.zeros((0, 8, 8, 1), np.uint8),
        np.zeros((3, 8, 8, 1), np.float64),
        np.zeros((3, 8, 8), np.uint8),
        np.zeros((3, 9, 8, 1), np.uint8),  # pixel space needs equal shapes
    ],
    ids=["empty", "float", "3d", "shape-mismatch"],
)
def test_replication_report_rejects_bad_images(generated, rng):
    ref = rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    with pytest.raises(InvalidParameter):
        replication_report(generated, ref, threshold=0.9)


def test_compare_rates_finds_a_large_reduction_significant(rng):
    def report(n_rep, n):
        sims = np.r_[np.full(n_rep, 0.99), np.full(n - n_rep, 0.5)].astype(np.float32)
        return ReplicationReport(sims, np.zeros(n, np.int64), 0.9, n_rep / n, "pixel", 10)

    res = compare_rates(report(30, 100), report(0, 100))
    assert res["p_value"] < 1e-6 and res["table"] == [[30, 70], [0, 100]]
    assert compare_rates(report(3, 100), report(2, 100))["p_value"] > 0.5
    mismatched = ReplicationReport(np.ones(2, np.float32), np.zeros(2, np.int64), 0.8, 1.0, "pixel", 10)
    with pytest.raises(InvalidParameter):
        compare_rates(report(1, 2), mismatched)


# ----------------------------------------------------------------------------- calibration


def test_augment_copies_is_seeded_and_identity_without_augmentation(rng):
    images = rng.integers(0, 256, (6, 12, 12, 1), dtype=np.uint8)
    same, _ = augment_copies(images, max_shift=0, noise_std=0.0, brightness=0.0)
    np.testing.assert_array_equal(same, images)
    a, settings_a = augment_copies(images, seed=4)
    b, _ = augment_copies(images, seed=4)
    c, _ = augment_copies(images, seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.uint8 and a.shape == images.shape
    assert settings_a == {"seed": 4, "max_shift": 2, "noise_std": 8.0, "brightness": 0.1}


def test_augment_copies_shift_translates_content_without_wrap_around():
    img = np.zeros((1, 9, 9, 1), np.uint8)
    img[0, 4, 4, 0] = 255
    shifted, _ = augment_copies(np.repeat(img, 40, axis=0), seed=0, max_shift=2, noise_std=0.0, brightness=0.0)
    ys, xs = np.nonzero(shifted[..., 0].max(axis=0))
    assert set(ys) <= {2, 3, 4, 5, 6} and set(xs) <= {2, 3, 4, 5, 6}
    assert len(set(zip(ys, xs, strict=True))) > 5  # several distinct translations drawn
    assert (shifted.reshape(40, -1) == 255).sum(axis=1).tolist() == [1] * 40


@settings(max_examples=60, deadline=None)
@given(
    negatives=st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=200),
    max_fpr=st.floats(0.0, 0.5),
)
def test_threshold_at_fpr_is_the_smallest_threshold_meeting_the_fpr(negatives, max_fpr):
    neg = np.asarray(negatives)
    tau = threshold_at_fpr(neg, max_fpr)
    assert np.mean(neg > tau) <= max_fpr + 1e-12
    below = neg[neg < tau]
    if below.size:  # the next candidate down would break the FPR bound
        assert np.mean(neg > below.max()) > max_fpr


@pytest.mark.integration
def test_calibrate_threshold_meets_requested_fpr_on_the_negatives(fashion, tmp_path):
    train, test = fashion
    copies, aug = augment_copies(train[:200], seed=1, max_shift=0)
    cal = calibrate_threshold(
        train[:200],
        copies,
        test[:200],
        feature_space="pixel",
        max_fpr=0.02,
        copy_sources=np.arange(200),
        settings={"augmentation": aug},
    )
    assert cal.fpr <= 0.02
    assert np.mean(cal.noncopy_similarities > cal.threshold) == cal.fpr
    assert cal.tpr >= 0.9 and cal.auc > 0.95
    assert cal.copy_nn_is_source >= 0.95
    payload = cal.to_dict()
    assert payload["n_copies"] == payload["n_noncopies"] == 200
    assert payload["settings"]["augmentation"] == aug
    assert _is_png(save_calibration_plot(cal, tmp_path / "cal.png"))


def test_calibrate_threshold_rejects_bad_fpr_and_sources(rng):
    ref = rng.integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    with pytest.raises(InvalidParameter, match="max_fpr"):
        calibrate_threshold(ref, ref, ref, max_fpr=1.0)
    with pytest.raises(InvalidParameter, match="copy_sources"):
        calibrate_threshold(ref, ref, ref, copy_sources=np.arange(3))


# ----------------------------------------------------------------------------- recommended τ


def test_recommended_thresholds_match_the_committed_calibration_results():
    recorded = json.loads(RESULTS_JSON.read_text())["recommended"]
    assert set(RECOMMENDED_THRESHOLDS) == set(recorded)
    for space, entry in recorded.items():
        info = recommended_threshold_info(space)
        assert info["threshold"] == entry["threshold"]
        assert (info["fpr"], info["tpr"], info["auc"]) == (entry["fpr"], entry["tpr"], entry["auc"])
        assert "replication_threshold.py" in info["provenance"]


def test_recommended_threshold_for_uncalibrated_space_names_the_remedy(monkeypatch):
    monkeypatch.delitem(RECOMMENDED_THRESHOLDS, "pixel")
    with pytest.raises(InvalidParameter, match="pass an explicit threshold"):
        recommended_threshold("pixel")


@pytest.mark.integration
def test_effnet_space_ranks_exact_copies_first(fashion):
    train, _ = fashion
    feats = extract_features(train[:50], "effnet")
    sims, idx = nearest_neighbours(feats, extract_features(train, "effnet"))
    np.testing.assert_array_equal(idx, np.arange(50))
