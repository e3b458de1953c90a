"""Membership-inference statistics and attacks on synthetic cases with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from privdiff.errors import InvalidParameter
from privdiff.evaluation.mia import loss_attack_errors, pia_errors, roc_summary, run_attacks, z_test


def test_identical_distributions_give_z_near_zero_and_auc_near_half():
    rng = np.random.default_rng(0)
    m, n = rng.normal(100, 10, 4000), rng.normal(100, 10, 4000)
    z, p = z_test(m, n)
    roc = roc_summary(m, n)
    assert abs(z) < 3.5 and 0.0005 < p < 0.9995
    assert abs(roc["auc"] - 0.5) < 0.03
    assert roc["tpr_at_fpr"] < 0.05


def test_separated_distributions_give_auc_one_and_tiny_p():
    rng = np.random.default_rng(1)
    members, nonmembers = rng.normal(50, 1, 300), rng.normal(100, 1, 300)
    z, p = z_test(members, nonmembers)
    roc = roc_summary(members, nonmembers)
    assert roc["auc"] == 1.0 and roc["tpr_at_fpr"] == 1.0
    assert z > 100 and p < 1e-100


def test_z_statistic_is_welchs_statistic_and_p_is_the_upper_normal_tail():
    rng = np.random.default_rng(2)
    members, nonmembers = rng.normal(90, 8, 40), rng.normal(93, 12, 55)
    z, p = z_test(members, nonmembers)
    welch = stats.ttest_ind(nonmembers, members, equal_var=False).statistic
    assert z == pytest.approx(welch, rel=1e-12)
    assert p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=1e-9)  # 1 − Φ(z), independently
    # CPSample Table 3's pairs (z, p): (0.59, 0.28), (0.23, 0.41), (-0.86, 0.81) follow p = 1 − Φ(z).
    for z_paper, p_paper in [(0.59, 0.28), (0.23, 0.41), (-0.86, 0.81)]:
        assert stats.norm.sf(z_paper) == pytest.approx(p_paper, abs=0.005)


def test_members_with_higher_error_give_auc_below_half():
    members, nonmembers = np.arange(10.0, 20.0), np.arange(0.0, 10.0)
    assert roc_summary(members, nonmembers)["auc"] == 0.0
    assert z_test(members, nonmembers)[0] < 0


def test_too_few_samples_is_a_typed_error():
    with pytest.raises(InvalidParameter):
        z_test(np.array([1.0]), np.array([1.0, 2.0]))


def _memoriser(members: torch.Tensor, acp: torch.Tensor):
    """ε-model that knows the member images: x̂_0 = the nearest member (an ideal memoriser)."""

    def eps(x_t, t):
        a = acp[t].view(-1, 1, 1, 1)
        # Score every member as the clean image behind x_t; pick the most likely one per row.
        resid = x_t[:, None] - a.sqrt()[:, None] * members[None]
        nearest = members[resid.pow(2).flatten(2).sum(-1).argmin(1)]
        return (x_t - a.sqrt() * nearest) / (1 - a).sqrt()

    return eps


@pytest.fixture(scope="module")
def acp():
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02
    ).alphas_cumprod


def test_loss_attack_detects_an_ideal_memoriser_and_not_a_blind_model(acp):
    g = torch.Generator().manual_seed(0)
    members, nonmembers = (
        torch.rand((32, 1, 6, 6), generator=g) * 2 - 1,
        torch.rand((32, 1, 6, 6), generator=g) * 2 - 1,
    )
    leaky = run_attacks(
        _memoriser(members, acp),
        members,
        nonmembers,
        alphas_cumprod=acp,
        timesteps=(50,),
        attacks=("loss", "pia"),
    )
    assert all(r.auc > 0.95 and r.z > 3 for r in leaky)
    blind = run_attacks(
        lambda x, t: torch.zeros_like(x),
        members,
        nonmembers,
        alphas_cumprod=acp,
        timesteps=(100,),
        attacks=("loss",),
        seed=3,
    )
    assert 0.3 < blind[0].auc < 0.7  # ε̂ = 0: the error is ‖ε‖², independent of membership


def test_loss_attack_errors_are_summed_over_pixels_and_reproducible(acp):
    x = torch.zeros((3, 1, 4, 4))
    zero = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    e1 = loss_attack_errors(zero, x, 10, alphas_cumprod=acp, seed=7)
    e2 = loss_attack_errors(zero, x, 10, alphas_cumprod=acp, seed=7)
    g = torch.Generator().manual_seed(7)
    expected = torch.randn((3, 1, 4, 4), generator=g).pow(2).flatten(1).sum(1).numpy()
    np.testing.assert_allclose(e1, expected, rtol=1e-6)
    np.testing.assert_array_equal(e1, e2)


def test_pia_is_deterministic_and_uses_the_t0_prediction_as_noise(acp):
    x = torch.rand((4, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    calls = []

    def denoiser(x_t, t):
        calls.append(int(t[0]))
        return torch.full_like(x_t, 0.5) if int(t[0]) == 0 else torch.zeros_like(x_t)

    e = pia_errors(denoiser, x, 200, alphas_cumprod=acp, p=4.0)
    assert calls == [0, 200]
    np.testing.assert_allclose(e, np.full(4, 16 * 0.5**4))
    with pytest.raises(InvalidParameter, match="t"):
        pia_errors(denoiser, x, 1000, alphas_cumprod=acp)
