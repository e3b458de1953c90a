"""Two-sided membership reporting and the SecMI, classifier-confidence and nearest-sample attacks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from privdiff.errors import InvalidParameter
from privdiff.evaluation.mia import (
    auc_score,
    classifier_confidence_scores,
    fpr_resolvable,
    nearest_sample_scores,
    roc_summary,
    run_attacks,
    secmi_errors,
    secmi_scores,
    tpr_at_fpr,
    two_sided_report,
)


@pytest.fixture(scope="module")
def acp():
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02
    ).alphas_cumprod


# --- two-sided statistics -----------------------------------------------------------------------


@pytest.mark.parametrize("d", [1.0, -1.0])
def test_two_gaussians_give_the_known_auc_and_tpr_in_both_directions(d):
    """Members ~ N(d, 1), non-members ~ N(0, 1): AUC = Φ(d/√2), TPR@f = 1 − Φ(Φ⁻¹(1−f) − d)."""
    rng = np.random.default_rng(0)
    m, n = rng.normal(d, 1, 4000), rng.normal(0, 1, 4000)
    r = two_sided_report(m, n, n_boot=200, seed=1)
    true_auc = norm.cdf(d / math.sqrt(2))
    assert r["auc"]["value"] == pytest.approx(true_auc, abs=0.015)
    assert r["auc"]["ci"][0] < true_auc < r["auc"]["ci"][1]
    assert r["auc_flipped"]["value"] == pytest.approx(1 - r["auc"]["value"])
    assert r["auc_two_sided"]["value"] == pytest.approx(norm.cdf(abs(d) / math.sqrt(2)), abs=0.015)
    assert r["better_direction"] == ("as_scored" if d > 0 else "flipped")
    for direction, shift in (("as_scored", d), ("flipped", -d)):
        for f in (0.01, 0.001):
            cell = r["tpr_at_fpr"][direction][f"{f:g}"]
            true_tpr = norm.sf(norm.isf(f) - shift)
            assert cell["resolvable"] is True
            assert cell["value"] == pytest.approx(true_tpr, abs=0.03)
            assert cell["ci"][0] <= cell["value"] <= cell["ci"][1]


def test_identical_distributions_have_auc_near_half_and_two_sided_ci_reaching_half():
    rng = np.random.default_rng(3)
    r = two_sided_report(rng.normal(0, 1, 500), rng.normal(0, 1, 500), n_boot=300)
    assert abs(r["auc"]["value"] - 0.5) < 0.05
    lo, hi = r["auc"]["ci"]
    assert lo < 0.5 < hi
    assert r["auc_two_sided"]["ci"][0] < 0.53  # max(AUC, 1 − AUC) is ≥ 0.5 but its CI starts near it


@pytest.mark.parametrize(
    ("members", "nonmembers", "auc"),
    [
        ([3.0, 4.0], [1.0, 2.0], 1.0),
        ([1.0, 2.0], [3.0, 4.0], 0.0),
        ([1.0, 2.0], [1.0, 2.0], 0.5),
        ([1.0, 3.0], [2.0], 0.5),
        ([2.0], [1.0, 2.0, 3.0], 0.5),
        ([3.0, 3.0], [3.0, 1.0], 0.75),  # ties count ½: (½ + 1 + ½ + 1) / 4
    ],
)
def test_auc_exact_small_cases(members, nonmembers, auc):
    assert auc_score(members, nonmembers) == auc
    r = two_sided_report(members, nonmembers, n_boot=10)
    assert r["auc"]["value"] == auc
    assert r["auc_flipped"]["value"] == 1 - auc
    assert r["auc_two_sided"]["value"] == max(auc, 1 - auc)


def test_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    m, n = rng.integers(0, 5, 37).astype(float), rng.integers(0, 4, 53).astype(float)
    y = np.r_[np.ones(m.size), np.zeros(n.size)]
    assert auc_score(m, n) == pytest.approx(roc_auc_score(y, np.r_[m, n]), rel=1e-12)


def test_tpr_at_fpr_exact_and_equal_to_the_roc_curve():
    n = np.arange(100.0)  # 0..99
    m = np.array([99.5, 98.5, 50.0, 97.0])
    # 1 % of 100 = one false positive allowed: τ = 98 (second largest), members above: 99.5, 98.5.
    assert tpr_at_fpr(m, n, 0.01) == 0.5
    assert tpr_at_fpr(m, n, 0.0) == 0.25  # τ = 99
    assert tpr_at_fpr(m, n, 1.0) == 1.0
    assert tpr_at_fpr([98.0], n, 0.01) == 0.0  # tied with τ: that threshold would admit the non-member
    rng = np.random.default_rng(5)
    m, n = rng.normal(1, 1, 300), rng.normal(0, 1, 700)
    # roc_summary's rule is "lower error ⇒ member", so pass it −score.
    assert tpr_at_fpr(m, n, 0.01) == pytest.approx(roc_summary(-m, -n, max_fpr=0.01)["tpr_at_fpr"])


def test_flipping_the_score_swaps_the_directions():
    rng = np.random.default_rng(6)
    m, n = rng.normal(0.4, 1, 200), rng.normal(0, 1, 1500)
    a = two_sided_report(m, n, n_boot=100, seed=2)
    b = two_sided_report(-m, -n, n_boot=100, seed=2)
    assert b["auc"]["value"] == pytest.approx(a["auc_flipped"]["value"])
    assert b["auc_flipped"]["value"] == pytest.approx(a["auc"]["value"])
    assert b["auc_two_sided"]["value"] == pytest.approx(a["auc_two_sided"]["value"])
    np.testing.assert_allclose(b["auc"]["ci"], a["auc_flipped"]["ci"], atol=1e-12)
    np.testing.assert_allclose(b["auc_two_sided"]["ci"], a["auc_two_sided"]["ci"], atol=1e-12)
    assert b["tpr_at_fpr"]["as_scored"] == a["tpr_at_fpr"]["flipped"]
    assert b["tpr_at_fpr"]["flipped"] == a["tpr_at_fpr"]["as_scored"]
    assert a["better_direction"] == "as_scored" and b["better_direction"] == "flipped"


def test_too_few_nonmembers_make_low_fpr_not_resolvable():
    rng = np.random.default_rng(7)
    r = two_sided_report(rng.normal(1, 1, 64), rng.normal(0, 1, 128), n_boot=20)
    for direction in ("as_scored", "flipped"):
        assert r["tpr_at_fpr"][direction]["0.01"]["resolvable"] is True
        cell = r["tpr_at_fpr"][direction]["0.001"]
        assert cell["value"] is None and cell["ci"] is None and cell["resolvable"] is False
        assert "not resolvable at 128 non-members" in cell["note"] and "1000" in cell["note"]
    r64 = two_sided_report(rng.normal(1, 1, 64), rng.normal(0, 1, 64), n_boot=20)
    assert r64["tpr_at_fpr"]["as_scored"]["0.01"]["value"] is None
    assert fpr_resolvable(1000, 0.001) and not fpr_resolvable(999, 0.001)
    assert fpr_resolvable(100, 0.01) and not fpr_resolvable(99, 0.01)


def test_report_is_reproducible_with_its_seed():
    rng = np.random.default_rng(8)
    m, n = rng.normal(0.5, 1, 50), rng.normal(0, 1, 120)
    assert two_sided_report(m, n, n_boot=50, seed=9) == two_sided_report(m, n, n_boot=50, seed=9)


@pytest.mark.parametrize(
    ("members", "nonmembers", "match"),
    [
        ([], [1.0], "member_scores"),
        ([1.0], [], "nonmember_scores"),
        ([1.0, float("nan")], [1.0], "non-finite"),
        ([1.0], [float("inf")], "non-finite"),
        ([[1.0, 2.0]], [1.0], "1-d"),
        (["a"], [1.0], "member_scores"),
    ],
)
def test_bad_scores_are_typed_errors(members, nonmembers, match):
    with pytest.raises(InvalidParameter, match=match):
        two_sided_report(members, nonmembers, n_boot=5)
    with pytest.raises(InvalidParameter):
        auc_score(members, nonmembers)


@pytest.mark.parametrize(
    "kwargs", [{"n_boot": 0}, {"confidence": 1.0}, {"confidence": 0.0}, {"fprs": (0.0,)}, {"fprs": (1.0,)}]
)
def test_bad_report_settings_are_typed_errors(kwargs):
    with pytest.raises(InvalidParameter):
        two_sided_report([1.0, 2.0], [0.0, 1.0], **kwargs)


# --- attacks --------------------------------------------------------------------------------------


def _memoriser(members: torch.Tensor, acp: torch.Tensor):
    """ε-model whose x̂_0 is the nearest member (an ideal memoriser)."""

    def eps(x_t, t):
        a = acp[t].view(-1, 1, 1, 1)
        resid = x_t[:, None] - a.sqrt()[:, None] * members[None]
        nearest = members[resid.pow(2).flatten(2).sum(-1).argmin(1)]
        return (x_t - a.sqrt() * nearest) / (1 - a).sqrt().clamp_min(1e-4)

    return eps


def test_secmi_follows_the_ddim_inversion_schedule_and_is_zero_for_a_null_model(acp):
    x = torch.rand((3, 1, 4, 4), generator=torch.Generator().manual_seed(0)) * 2 - 1
    calls = []

    def zero(x_t, t):
        calls.append(int(t[0]))
        return torch.zeros_like(x_t)

    e = secmi_errors(zero, x, 40, alphas_cumprod=acp, interval=10)
    # inversion 0 → 10 → 20 → 30, one step up 30 → 40, one step down 40 → 30
    assert calls == [0, 10, 20, 30, 40]
    # ε̂ = 0: each move rescales x by √(ᾱ_to/ᾱ_from), so the round trip returns exactly.
    np.testing.assert_allclose(e, 0.0, atol=1e-9)
    with pytest.raises(InvalidParameter, match="multiple of interval"):
        secmi_errors(zero, x, 45, alphas_cumprod=acp, interval=10)
    with pytest.raises(InvalidParameter, match="multiple of interval"):
        secmi_errors(zero, x, 10, alphas_cumprod=acp, interval=10)


def test_secmi_detects_an_ideal_memoriser(acp):
    g = torch.Generator().manual_seed(1)
    members = torch.rand((24, 1, 6, 6), generator=g) * 2 - 1
    nonmembers = torch.rand((24, 1, 6, 6), generator=g) * 2 - 1
    sm = secmi_scores(_memoriser(members, acp), members, 100, alphas_cumprod=acp)
    sn = secmi_scores(_memoriser(members, acp), nonmembers, 100, alphas_cumprod=acp)
    assert auc_score(sm, sn) > 0.95
    res = run_attacks(
        _memoriser(members, acp), members, nonmembers, alphas_cumprod=acp, timesteps=(100,), attacks=("secmi",)
    )
    assert res[0].attack == "secmi" and res[0].auc > 0.95


def test_classifier_confidence_is_the_logit_magnitude_on_the_noised_image(acp):
    x = torch.rand((5, 1, 4, 4), generator=torch.Generator().manual_seed(2)) * 2 - 1

    def clf(x_t, t):
        return x_t.flatten(1).sum(1) - 0.5

    s = classifier_confidence_scores(clf, x, 200, alphas_cumprod=acp, seed=3)
    g = torch.Generator().manual_seed(3)
    a = acp[200]
    x_t = a.sqrt() * x + (1 - a).sqrt() * torch.randn(x.shape, generator=g)
    np.testing.assert_allclose(s, (x_t.flatten(1).sum(1) - 0.5).abs().double().numpy(), rtol=1e-6)


def test_classifier_confidence_separates_what_a_memorising_classifier_memorised(acp):
    g = torch.Generator().manual_seed(4)
    members = torch.rand((20, 1, 6, 6), generator=g) * 2 - 1
    nonmembers = torch.rand((20, 1, 6, 6), generator=g) * 2 - 1

    def memorising(x_t, t):  # confident (|z| large) only next to a member
        d = (x_t[:, None] - members[None]).pow(2).flatten(2).sum(-1).min(1).values
        return 10.0 * torch.exp(-d)

    sm = classifier_confidence_scores(memorising, members, 0, alphas_cumprod=acp)
    sn = classifier_confidence_scores(memorising, nonmembers, 0, alphas_cumprod=acp)
    assert auc_score(sm, sn) == 1.0


def test_nearest_sample_scores_find_copied_members():
    rng = np.random.default_rng(5)
    members = rng.integers(0, 256, (10, 8, 8, 1), dtype=np.uint8)
    nonmembers = rng.integers(0, 256, (10, 8, 8, 1), dtype=np.uint8)
    generated = np.concatenate([members[:5], rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)])
    sm = nearest_sample_scores(members, generated)
    sn = nearest_sample_scores(nonmembers, generated)
    assert sm.shape == (10,) and sn.shape == (10,)
    np.testing.assert_allclose(sm[:5], 1.0, atol=1e-5)  # exact copies
    assert sm[:5].min() > max(sm[5:].max(), sn.max())
    with pytest.raises(InvalidParameter):
        nearest_sample_scores(members, generated[:0])
