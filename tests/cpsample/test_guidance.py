"""CPSample guidance: gate, direction, exact no-op at s = 0, per-sample gating, validation."""

from __future__ import annotations

import math

import pytest
import torch

from privdiff.cpsample import CPSampleGuidance, confidence, protected_denoiser
from privdiff.diffusion import ddim_sample, make_ddim_scheduler
from privdiff.errors import InvalidParameter

#: The previous sampler (gate on x_t, raw log-probability gradient): these tests pin its formulas.
LEGACY = {"mode": "toward_opposite", "gate_on": "xt", "step": "gradient"}


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
    guidance = CPSampleGuidance(clf, alpha=0.01, scale=1.0, **LEGACY)
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
    guidance = CPSampleGuidance(clf, alpha=0.05, scale=scale, mode=mode, gate_on="xt", step="gradient")
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
    guidance = CPSampleGuidance(clf, alpha=0.5, scale=0.0, **LEGACY)
    plain = ddim_sample(denoiser, make_ddim_scheduler(), x_T, num_inference_steps=8)
    guided = ddim_sample(denoiser, make_ddim_scheduler(), x_T, num_inference_steps=8, guidance=guidance)
    assert torch.equal(plain, guided)
    assert len(guidance.stats.per_step) == 8  # the gate is still evaluated and recorded


def test_gate_is_per_sample_within_a_batch(memorised, tiny_train_set, alphas_cumprod):
    clf, _ = memorised
    guidance = CPSampleGuidance(clf, alpha=0.01, scale=10.0, **LEGACY)
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
    guidance = CPSampleGuidance(clf, alpha=0.001, scale=s, **LEGACY)
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
    guidance = CPSampleGuidance(clf, alpha=0.01, scale=10.0, **LEGACY)
    base = _oracle_denoiser(tiny_train_set[:1], alphas_cumprod)
    eps_hat = protected_denoiser(base, guidance, alphas_cumprod)
    t = torch.full((2,), 5, dtype=torch.long)
    x = _x_t(tiny_train_set[:2], 5, alphas_cumprod)
    with torch.no_grad():  # the MIA calls it under no_grad; the correction must still get its gradient
        out = eps_hat(x, t)
    delta, _ = CPSampleGuidance(clf, alpha=0.01, scale=10.0, **LEGACY).correction(x, t, alphas_cumprod[t])
    assert torch.allclose(out, base(x, t) + delta, atol=1e-6)
    assert torch.count_nonzero(delta) > 0


# --- issue 15: gate on x̂_0, the boundary objective, one meaning of s, the t-window -------------------------


def _linear(w: torch.Tensor, bias: float = 0.0, gain: float = 1.0):
    def clf(x, t):
        return (x * w).flatten(1).sum(1) * gain + bias

    return clf


def test_x0_gate_reads_the_predicted_clean_image_at_classifier_t(alphas_cumprod):
    seen = {}

    def clf(x, t):
        seen["x"], seen["t"] = x.detach().clone(), t.clone()
        return torch.zeros(x.shape[0])

    g = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn((2, 1, 4, 4), generator=g), torch.randn((2, 1, 4, 4), generator=g)
    t = torch.tensor([600, 600])
    a = alphas_cumprod[600]
    CPSampleGuidance(clf, gate_on="x0").gate(x_t, t, eps=eps, alpha_prod_t=a)
    assert torch.allclose(seen["x"], (x_t - (1 - a).sqrt() * eps) / a.sqrt(), atol=1e-6)
    assert seen["t"].tolist() == [0, 0]
    CPSampleGuidance(clf, gate_on="xt").gate(x_t, t)
    assert torch.equal(seen["x"], x_t) and seen["t"].tolist() == [600, 600]
    with pytest.raises(InvalidParameter, match="eps"):
        CPSampleGuidance(clf, gate_on="x0").correction(x_t, t, a)


def test_x0_gate_sees_a_copy_forming_where_the_xt_gate_cannot(memorised, tiny_train_set, alphas_cumprod):
    """The tiny classifier was trained at t < 40: on x_t at t = 700 it is unsure, while x̂_0 of a
    memorising denoiser is already the training image, which it classifies confidently."""
    clf, _ = memorised
    member = tiny_train_set[:4]
    t = torch.full((4,), 700, dtype=torch.long)
    x_t = _x_t(member, 700, alphas_cumprod)
    eps = _oracle_denoiser(member, alphas_cumprod)(x_t, t)
    a = alphas_cumprod[700]
    fired_xt, _ = CPSampleGuidance(clf, alpha=0.01, gate_on="xt").gate(x_t, t)
    fired_x0, _ = CPSampleGuidance(clf, alpha=0.01, gate_on="x0").gate(x_t, t, eps=eps, alpha_prod_t=a)
    assert fired_x0.float().mean() > fired_xt.float().mean()
    assert fired_x0.float().mean() >= 0.75


@pytest.mark.parametrize("gate_on", ["x0", "xt"])
def test_x0_gradient_is_taken_through_the_prediction(alphas_cumprod, gate_on):
    """For z = w·x̂_0 the raw gradient w.r.t. x_t is w/√ᾱ (ε held fixed); on x_t it is w."""
    w = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    x, eps, t = w.clone() * 3, torch.zeros(1, 1, 4, 4), 300
    a = float(alphas_cumprod[t])
    guidance = CPSampleGuidance(
        _linear(w, gain=20.0), alpha=0.5, scale=1.0, mode="toward_opposite", gate_on=gate_on, step="gradient"
    )
    delta, fired = guidance.correction(x, torch.tensor([t]), alphas_cumprod[t], eps)
    z = 20.0 * float((x * w).sum()) / (math.sqrt(a) if gate_on == "x0" else 1.0)
    chain = 1 / math.sqrt(a) if gate_on == "x0" else 1.0
    expected = math.sqrt(1 - a) * torch.sigmoid(torch.tensor(abs(z))) * 20.0 * chain * w
    assert bool(fired) and torch.allclose(delta, expected, rtol=1e-4, atol=1e-6)


def test_boundary_objective_vanishes_at_the_boundary_and_the_old_modes_do_not(alphas_cumprod):
    w = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    x, t = torch.zeros(1, 1, 4, 4), torch.tensor([100])
    # z = 1e-4: just on the positive side of the boundary; α = 0.5 lets the gate fire there.
    clf = _linear(w, bias=1e-4)
    sizes = {}
    for mode in ("boundary", "toward_opposite"):
        g = CPSampleGuidance(clf, alpha=0.5, scale=1.0, mode=mode, gate_on="xt")
        delta, fired = g.correction(x, t, alphas_cumprod[t])
        assert bool(fired)
        sizes[mode] = float(delta.pow(2).mean().sqrt())
    assert sizes["boundary"] < 1e-4 * sizes["toward_opposite"]
    # Far from the boundary its weight tanh(|z|/2) saturates at 1, like toward_opposite's σ(|z|).
    far = _linear(w, bias=30.0)
    d_b, _ = CPSampleGuidance(far, alpha=0.5, scale=1.0, mode="boundary", gate_on="xt").correction(
        x, t, alphas_cumprod[t]
    )
    d_o, _ = CPSampleGuidance(far, alpha=0.5, scale=1.0, mode="toward_opposite", gate_on="xt").correction(
        x, t, alphas_cumprod[t]
    )
    assert torch.allclose(d_b, d_o, rtol=1e-5)


def test_boundary_guidance_settles_at_the_boundary_instead_of_hopping_across_it(alphas_cumprod):
    """Descent on the ½-target BCE converges to z = 0; toward_opposite's push keeps its size at z = 0,
    so it hops from one side of the boundary to the other (each side's gate pushes to the other)."""
    w = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    w = w / w.norm()
    tails = {}
    for mode in ("boundary", "toward_opposite"):
        x = 4.0 * w.clone()  # z = 4: confident
        g = CPSampleGuidance(_linear(w), alpha=0.5, scale=0.5, mode=mode, gate_on="xt", step="gradient")
        zs = []
        for _ in range(200):
            delta, _ = g.correction(x, torch.tensor([10]), 0.5)
            x = x - delta  # ε̂ − ε = δ moves x̂_0 against δ
            zs.append(float((x * w).sum()))
        tails[mode] = zs[-20:]
    assert max(abs(z) for z in tails["boundary"]) < 1e-3
    assert max(abs(z) for z in tails["toward_opposite"]) > 0.05
    assert min(tails["toward_opposite"]) < 0 < max(tails["toward_opposite"])


@pytest.mark.parametrize("mode", ["boundary", "toward_opposite", "away_from_predicted"])
def test_unit_step_gives_s_one_meaning_whatever_the_mode_or_the_gradient_size(alphas_cumprod, mode):
    """step='unit': RMS(δ) = s·√(1−ᾱ)·m with m = 1 at full weight, independent of ‖∇z‖ and of α."""
    w = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    x, t = torch.zeros(1, 1, 4, 4), torch.tensor([200])
    s, a = 3.0, float(alphas_cumprod[200])
    rms = {}
    for gain in (1.0, 100.0):
        # away_from_predicted has full weight just inside the gate (1 − σ(|z|) → α); the others far from z = 0.
        bias = 1.3863 if mode == "away_from_predicted" else 40.0  # σ(−1.3863) = 0.2 ≈ α = 0.2
        g = CPSampleGuidance(_linear(w, bias=bias, gain=gain), alpha=0.2 + 1e-3, scale=s, mode=mode, gate_on="xt")
        delta, fired = g.correction(x, t, alphas_cumprod[t])
        assert bool(fired)
        rms[gain] = float(delta.pow(2).mean().sqrt())
    assert rms[1.0] == pytest.approx(rms[100.0], rel=1e-5)
    assert rms[1.0] == pytest.approx(s * math.sqrt(1 - a), rel=1e-2)


def test_t_window_skips_the_classifier_above_t_max(alphas_cumprod):
    calls = []

    def clf(x, t):
        calls.append(int(t.max()))
        return 10.0 + x.flatten(1).sum(1)

    guidance = CPSampleGuidance(clf, alpha=0.1, scale=1.0, gate_on="xt", t_max=500)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    eps = torch.zeros_like(x)
    high = guidance(x, torch.tensor([700, 700]), eps, alphas_cumprod[700])
    assert calls == [] and torch.equal(high, eps)
    low = guidance(x, torch.tensor([400, 400]), eps, alphas_cumprod[400])
    assert calls and not torch.equal(low, eps)
    summary = guidance.stats.summary()
    assert summary["calls"] == 2 and summary["classifier_calls"] == 1 and summary["fired"] == 2
    assert summary["firing_rate"] == 0.5  # the skipped step counts as (sample, step) pairs that did not fire
    with pytest.raises(InvalidParameter, match="t_max"):
        CPSampleGuidance(clf, t_max=0)


@pytest.mark.parametrize(("name", "value"), [("gate_on", "x1"), ("step", "huge")])
def test_unknown_gate_or_step_is_a_typed_error(name, value):
    with pytest.raises(InvalidParameter, match=name):
        CPSampleGuidance(lambda x, t: x, **{name: value})


@pytest.mark.parametrize("mode", ["boundary", "toward_opposite"])
def test_default_x0_unit_guidance_lowers_confidence_on_a_memorised_point(
    memorised, tiny_train_set, alphas_cumprod, mode
):
    clf, _ = memorised
    target = tiny_train_set[:1]
    denoiser = _oracle_denoiser(target, alphas_cumprod)
    x_T = torch.randn((1, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    guidance = CPSampleGuidance(clf, alpha=0.05, scale=2.0, mode=mode)
    assert guidance.settings()["gate_on"] == "x0" and guidance.settings()["step"] == "unit"
    plain = ddim_sample(denoiser, make_ddim_scheduler(), x_T, num_inference_steps=20)
    guided = ddim_sample(denoiser, make_ddim_scheduler(), x_T, num_inference_steps=20, guidance=guidance)
    t0 = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        conf_plain, conf_guided = confidence(clf(plain, t0)), confidence(clf(guided, t0))
    assert guidance.stats.fired > 0
    assert conf_guided < conf_plain
    assert (guided - target).norm() > (plain - target).norm() + 0.1
