"""CPSample guidance: gate, direction, exact no-op at s = 0, per-sample gating, validation."""

from __future__ import annotations

import math

import pytest
import torch

from privdiff.cpsample import CPSampleGuidance, confidence, protected_denoiser
from privdiff.diffusion import ddim_sample, make_ddim_scheduler
from privdiff.errors import InvalidParameter


def _x_t(x0: torch.Tensor, t: int, acp: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = acp[t]
    return a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g)


def _oracle_denoiser(target: torch.Tensor, acp: torch.Tensor):
    """A perfectly memorising ε-model of one image: ε such that x̂_0 = target, whatever x_t."""

    def eps(x_t, t):
        a = acp[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * target) / (1 - a).sqrt()

    return eps


def test_gate_fires_on_memorised_training_images_and_not_on_heldout_noise(memorised, tiny_train_set, alphas_cumprod):
    clf, labels = memorised
    guidance = CPSampleGuidance(clf, alpha=0.01, scale=1.0)
    t = torch.full((6,), 5, dtype=torch.long)
    fired_train, conf_train = guidance.gate(_x_t(tiny_train_set, 5, alphas_cumprod), t)
    held_out = torch.randn((6, 1, 8, 8), generator=torch.Generator().manual_seed(99))
    fired_noise, conf_noise = guidance.gate(held_out, torch.full((6,), 999, dtype=torch.long))
    assert fired_train.float().mean() >= 5 / 6
    assert not fired_noise.any()
    assert conf_train.mean() > conf_noise.mean()
    with torch.no_grad():
        predicted = (clf(_x_t(tiny_train_set, 5, alphas_cumprod), t) >= 0).float()
    assert torch.equal(predicted, labels)  # it really memorised the random labels


@pytest.mark.parametrize("mode", ["toward_opposite", "away_from_predicted"])
def test_guidance_lowers_confidence_on_a_memorised_point(memorised, tiny_train_set, alphas_cumprod, mode):
    clf, _ = memorised
    target = tiny_train_set[:1]
    denoiser = _oracle_denoiser(target, alphas_cumprod)
    x_T = torch.randn((1, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    scale = 30.0 if mode == "toward_opposite" else 3000.0
    guidance = CPSampleGuidance(clf, alpha=0.05, scale=scale, mode=mode)
    plain = ddim_sample(denoiser, make_ddim_scheduler(), x_T, num_inference_steps=20)
    guided = ddim_sample(denoiser, make_ddim_scheduler(), x_T, num_inference_steps=20, guidance=guidance)
    t0 = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        conf_plain, conf_guided = confidence(clf(plain, t0)), confidence(clf(guided, t0))
    # Without CPSample the oracle replicates (up to the √(1−ᾱ_0)·ε left by the last DDIM step).
    assert torch.allclose(plain, target, atol=0.05)
    assert guidance.stats.fired > 0
    assert conf_guided < conf_plain
    assert (guided - target).norm() > (plain - target).norm() + 0.1


def test_scale_zero_is_exactly_plain_ddim(memorised, alphas_cumprod):
    clf, _ = memorised
    x_T = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(5))
    denoiser = _oracle_denoiser(torch.zeros(1, 1, 8, 8), alphas_cumprod)
    guidance = CPSampleGuidance(clf, alpha=0.5, scale=0.0)
    plain = ddim_sample(denoiser, make_ddim_scheduler(), x_T, num_inference_steps=8)
    guided = ddim_sample(denoiser, make_ddim_scheduler(), x_T, num_inference_steps=8, guidance=guidance)
    assert torch.equal(plain, guided)
    assert len(guidance.stats.per_step) == 8  # the gate is still evaluated and recorded


def test_gate_is_per_sample_within_a_batch(memorised, tiny_train_set, alphas_cumprod):
    clf, _ = memorised
    guidance = CPSampleGuidance(clf, alpha=0.01, scale=10.0)
    t = torch.full((2,), 5, dtype=torch.long)
    x_member = _x_t(tiny_train_set[:1], 5, alphas_cumprod)
    x_noise = torch.randn((1, 1, 8, 8), generator=torch.Generator().manual_seed(7)) * 0.01
    fired_noise, _ = guidance.gate(x_noise, t[:1])
    fired_member, _ = guidance.gate(x_member, t[:1])
    assert bool(fired_member) and not bool(fired_noise)
    batch = torch.cat([x_member, x_noise])
    delta, fired = guidance.correction(batch, t, alphas_cumprod[t])
    assert fired.tolist() == [True, False]
    assert torch.count_nonzero(delta[1]) == 0 and torch.count_nonzero(delta[0]) > 0
    alone, _ = guidance.correction(x_member, t[:1], alphas_cumprod[t[:1]])
    assert torch.allclose(delta[:1], alone, atol=1e-6)
    assert guidance.stats.per_step[-2]["fired"] == 1 and guidance.stats.per_step[-2]["batch"] == 2


def test_correction_matches_the_closed_form_for_a_linear_classifier(alphas_cumprod):
    """For z = w·x, ∇ log σ(−z) = −σ(z)·w, so ε̂ − ε = s·√(1−ᾱ)·σ(z)·w when ŷ = 1."""
    w = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))

    def clf(x, t):
        return (x * w).flatten(1).sum(1) * 50.0

    x = w.clone()  # z = 50‖w‖² ≫ 0, so ŷ = 1 and the gate fires
    s, t = 2.0, 100
    guidance = CPSampleGuidance(clf, alpha=0.001, scale=s)
    eps = torch.zeros_like(x)
    eps_hat = guidance(x, torch.tensor([t]), eps, alphas_cumprod[t])
    z = clf(x, None)
    expected = s * math.sqrt(1 - float(alphas_cumprod[t])) * torch.sigmoid(z).view(-1, 1, 1, 1) * 50.0 * w
    assert torch.allclose(eps_hat, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("alpha", [0.0, -0.1, 0.51, 1.0, float("nan"), "x"])
def test_alpha_outside_zero_half_is_a_typed_error(alpha):
    with pytest.raises(InvalidParameter, match="alpha"):
        CPSampleGuidance(lambda x, t: x, alpha=alpha, scale=1.0)


@pytest.mark.parametrize("scale", [-1.0, float("inf")])
def test_negative_or_infinite_scale_is_a_typed_error(scale):
    with pytest.raises(InvalidParameter, match="scale"):
        CPSampleGuidance(lambda x, t: x, alpha=0.1, scale=scale)


def test_unknown_mode_is_a_typed_error():
    with pytest.raises(InvalidParameter, match="mode"):
        CPSampleGuidance(lambda x, t: x, alpha=0.1, scale=1.0, mode="sideways")  # type: ignore[arg-type]


def test_protected_denoiser_applies_the_correction_to_epsilon(memorised, tiny_train_set, alphas_cumprod):
    clf, _ = memorised
    guidance = CPSampleGuidance(clf, alpha=0.01, scale=10.0)
    base = _oracle_denoiser(tiny_train_set[:1], alphas_cumprod)
    eps_hat = protected_denoiser(base, guidance, alphas_cumprod)
    t = torch.full((2,), 5, dtype=torch.long)
    x = _x_t(tiny_train_set[:2], 5, alphas_cumprod)
    with torch.no_grad():  # the MIA calls it under no_grad; the correction must still get its gradient
        out = eps_hat(x, t)
    delta, _ = CPSampleGuidance(clf, alpha=0.01, scale=10.0).correction(x, t, alphas_cumprod[t])
    assert torch.allclose(out, base(x, t) + delta, atol=1e-6)
    assert torch.count_nonzero(delta) > 0
