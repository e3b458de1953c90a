"""Domain metrics: closed forms, golden values and coverage of the intervals."""

import numpy as np
import pytest

from privdiff.errors import InvalidParameter
from privdiff.evaluation.domain import (
    confusion,
    distance_with_ci,
    fid_from_features,
    in_domain_rate,
    kid_from_features,
    paired_difference,
    wilson_interval,
)


def test_wilson_golden_values():
    # Brown, Cai & DasGupta (2001) / Newcombe (1998) Table I: x=81, n=263 → (0.2553, 0.3662);
    # and 8/10 → (0.4902, 0.9433) at 95 %.
    e = wilson_interval(81, 263)
    assert (round(e.low, 4), round(e.high, 4)) == (0.2553, 0.3662)
    e = wilson_interval(8, 10)
    assert (round(e.low, 4), round(e.high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 20).low == 0.0 and wilson_interval(20, 20).high == 1.0


def test_wilson_coverage_is_close_to_nominal():
    rng = np.random.default_rng(0)
    p, n = 0.3, 60
    hits = rng.binomial(n, p, size=4000)
    covered = np.mean([wilson_interval(int(h), n).low <= p <= wilson_interval(int(h), n).high for h in hits])
    assert 0.93 <= covered <= 0.97


def test_in_domain_rate_and_errors():
    e = in_domain_rate([4, 2, 4, 0, 9, 2], domain_classes=[2, 4])
    assert e.value == pytest.approx(4 / 6) and e.n == 6
    with pytest.raises(InvalidParameter, match="predicted"):
        in_domain_rate([], [1])
    with pytest.raises(InvalidParameter, match="domain_classes"):
        in_domain_rate([1, 2], [])


def test_confusion_counts():
    c = confusion([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert c.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    with pytest.raises(InvalidParameter, match="labels"):
        confusion([0, 3], [0, 1], 3)


def test_fid_closed_form_for_shifted_gaussians():
    # Equal covariance: FID = ||Δμ||² (Heusel et al. Eq. 6 with Σ1 = Σ2).
    rng = np.random.default_rng(1)
    a = rng.standard_normal((20000, 4))
    b = rng.standard_normal((20000, 4)) + np.array([1.0, 0.0, 2.0, 0.0])
    assert fid_from_features(a, b) == pytest.approx(5.0, abs=0.1)


def test_kid_is_unbiased_zero_for_same_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(2)
    vals = [kid_from_features(rng.standard_normal((200, 8)), rng.standard_normal((300, 8))) for _ in range(50)]
    # Unbiased: the mean over repetitions is ~0 (both signs occur), unlike FID which is biased upwards.
    assert abs(np.mean(vals)) < 3 * np.std(vals) / np.sqrt(len(vals))
    assert min(vals) < 0 < max(vals)
    shifted = kid_from_features(rng.standard_normal((200, 8)) + 0.5, rng.standard_normal((300, 8)))
    assert shifted > max(vals)


@pytest.mark.parametrize("metric", ["fid", "kid"])
def test_bootstrap_interval_separates_a_real_shift_and_contains_its_estimate(metric):
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((400, 6))
    same = rng.standard_normal((400, 6))
    far = rng.standard_normal((400, 6)) + 0.6
    e_same = distance_with_ci(same, ref, metric=metric, n_boot=100)
    e_far = distance_with_ci(far, ref, metric=metric, n_boot=100)
    assert e_same.low <= e_same.value <= e_same.high
    assert e_far.low > e_same.high  # the intervals do not overlap


def test_paired_difference_cancels_shared_noise():
    rng = np.random.default_rng(4)
    ref = rng.standard_normal((500, 5))
    base = rng.standard_normal((500, 5))
    same = paired_difference(base, base.copy(), ref, n_boot=50)
    assert same.value == 0 and same.low == 0 and same.high == 0
    # b is a small systematic shift of a (same x_T, a slightly different mode): the paired interval
    # resolves a difference that two unpaired intervals would not.
    shifted = base + 0.15
    d = paired_difference(shifted, base, ref, n_boot=200)
    assert d.low > 0
    ea = distance_with_ci(shifted, ref, n_boot=200)
    eb = distance_with_ci(base, ref, n_boot=200)
    assert ea.low < eb.high  # unpaired intervals overlap


def test_bad_inputs_are_typed():
    with pytest.raises(InvalidParameter, match="metric"):
        distance_with_ci(np.zeros((5, 2)), np.zeros((5, 2)), metric="lpips")
    with pytest.raises(InvalidParameter, match="features"):
        distance_with_ci(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(InvalidParameter, match="generated"):
        distance_with_ci(np.full((5, 2), np.nan), np.zeros((5, 2)))
    with pytest.raises(InvalidParameter, match="features"):
        paired_difference(np.zeros((5, 2)), np.zeros((4, 2)), np.zeros((5, 2)))


@pytest.mark.integration
@pytest.mark.parametrize("metric", ["fid", "kid"])
def test_centred_interval_covers_the_expected_distance_at_this_sample_size(metric):
    """The interval is for E[metric_n] (module docstring): check its coverage by simulation."""
    rng = np.random.default_rng(5)
    n, d, shift = 200, 4, 0.3

    def draw():
        return rng.standard_normal((n, d)) + shift, rng.standard_normal((n, d))

    from privdiff.evaluation.domain import fid_from_features, kid_from_features

    fn = {"fid": fid_from_features, "kid": kid_from_features}[metric]
    truth = np.mean([fn(*draw()) for _ in range(300)])  # E[metric_n] by Monte Carlo
    hits = [distance_with_ci(*draw(), metric=metric, n_boot=100, seed=i).excludes(truth) is False for i in range(60)]
    assert 0.85 <= np.mean(hits) <= 1.0


def test_cli_eval_domain_reads_a_generate_folder_and_reports_intervals(tmp_path, capsys):
    import json

    from privdiff.cli import main
    from privdiff.data import load_dataset
    from privdiff.errors import DataError

    try:
        tops = load_dataset("fashion-mnist:test{classes=2,4}[:120]")
        shoes = load_dataset("fashion-mnist:test{classes=5,7,9}[:40]")
    except DataError as exc:
        pytest.skip(f"Fashion-MNIST not available ({exc})")
    folder = tmp_path / "gen"
    folder.mkdir()
    # A generate-style folder: 80 winter tops + 40 shoes in images.npz; the grid beside it is not a sample.
    np.savez(folder / "images.npz", images=np.concatenate([tops.images[:80], shoes.images]))
    (folder / "grid.png").write_bytes(b"not read")
    rc = main(
        [
            "eval",
            "domain",
            str(folder),
            "fashion-mnist:test{classes=2,4}[200:500]",
            "--classes",
            "Pullover,4",
            "--n-boot",
            "20",
            "--json",
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_generated"] == 120 and res["n_reference"] == 300
    rate = res["in_domain_rate"]
    assert 0.55 <= rate["value"] <= 0.72  # 80/120 are winter tops; the yardstick is ~93 % right on them
    assert rate["low"] < rate["value"] < rate["high"]
    assert json.loads((tmp_path / "r.json").read_text()) == res
    assert main(["eval", "domain", str(folder), "fashion-mnist:test[:10]", "--classes", "hat"]) == 2


def test_fid_in_sample_space_equals_the_covariance_route_and_serves_wide_features():
    """d > n (Inception's 2,048-d features of 1,000 images) goes through the n × m route, which
    must be the same Fréchet distance as the d × d one."""
    from privdiff.evaluation.domain import _fid_low_rank, fid_from_features
    from privdiff.evaluation.fid import frechet_distance

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(80, 20)), 1.3 * rng.normal(size=(60, 20)) + 0.2
    full = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))[0]
    assert _fid_low_rank(a, b) == pytest.approx(full, rel=1e-6)
    assert _fid_low_rank(b, a) == pytest.approx(full, rel=1e-6)
    # Wider than both samples: the covariances are singular; both routes still agree closely
    # (the d × d one needs the ε-offset fallback and is the less exact of the two).
    wa, wb = rng.normal(size=(30, 64)), rng.normal(size=(40, 64)) + 0.5
    wide = frechet_distance(wa.mean(0), np.cov(wa, rowvar=False), wb.mean(0), np.cov(wb, rowvar=False))[0]
    assert fid_from_features(wa, wb) == pytest.approx(wide, rel=1e-4)
    assert fid_from_features(wa, wb) == pytest.approx(_fid_low_rank(wa, wb))
