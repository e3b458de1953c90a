"""privdiff.diffusion.sampling: one loop for every diffusers scheduler, its guidance hook and callback."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from privdiff.diffusion import ddim_sample, make_ddim_scheduler, sample
from privdiff.diffusion.sampling import step_accepts


def test_ddim_loop_guidance_and_callback_are_called():
    sched = make_ddim_scheduler()
    seen = []

    def denoiser(x, t):
        return torch.zeros_like(x)

    def guidance(x, t, eps, a):
        seen.append(float(a))
        return eps

    x = ddim_sample(
        denoiser,
        sched,
        torch.ones(2, 1, 4, 4),
        num_inference_steps=5,
        guidance=guidance,
        callback=lambda i, t, x, e: seen.append(-1),
    )
    assert x.shape == (2, 1, 4, 4)
    assert len(seen) == 10
    # with ε ≡ 0 the DDIM update rescales x by √(ᾱ_prev/ᾱ_t) each step: the final x grows
    assert float(x.mean()) > 1.0


# --- one loop for every diffusers scheduler ------------------------------------------------------


SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
SCHEDULERS = {
    "ddim": lambda: DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False),
    "ddpm": lambda: DDPMScheduler(**SCHEDULE, clip_sample=False),
    "dpm++": lambda: DPMSolverMultistepScheduler(**SCHEDULE, algorithm_type="dpmsolver++"),
    "euler": lambda: EulerDiscreteScheduler(**SCHEDULE),
}


def _oracle(x0_star: torch.Tensor, scheduler):
    """The exact ε of a data distribution that is a point mass at x0*: ε = (x_t − √ᾱ x0*)/√(1−ᾱ).

    ᾱ(t) for a fractional t follows diffusers' Euler convention: σ = √((1−ᾱ)/ᾱ) linearly
    interpolated over the integer timesteps, ᾱ = 1/(1+σ²).
    """
    ac = scheduler.alphas_cumprod.double().numpy()
    sig = np.sqrt((1 - ac) / ac)
    seen = []

    def eps(x_in, t):
        s = float(np.interp(float(t[0]), np.arange(len(sig)), sig))
        a = 1.0 / (1.0 + s * s)
        seen.append((x_in.clone(), float(t[0])))
        return (x_in - a**0.5 * x0_star) / (1 - a) ** 0.5

    return eps, seen


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_recovers_a_point_mass_and_reports_x0(name):
    """With the exact ε of a point mass every scheduler must land on it, and x̂0 must be it at every step.

    On the DDIM-only loop DDPM, DPM-Solver and Euler raised TypeError (eta=), and Euler without
    scale_model_input / init_noise_sigma would diverge from x0*.
    """
    sched = SCHEDULERS[name]()
    x0_star = torch.linspace(-0.8, 0.8, 16).reshape(1, 1, 4, 4).repeat(2, 1, 1, 1)
    denoiser, _ = _oracle(x0_star, sched)
    x0_hats = []
    x_T = torch.randn((2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    out = sample(
        denoiser,
        sched,
        x_T,
        num_inference_steps=8,
        eta=0.0,
        generator=torch.Generator().manual_seed(1),
        callback=lambda x, t, e, x0: x0_hats.append(x0),
    )
    assert len(x0_hats) == 8
    for x0 in x0_hats:
        torch.testing.assert_close(x0, x0_star, atol=1e-3, rtol=0)
    # DDIM with set_alpha_to_one=False stops at ᾱ_0 = 1 − 1e-4, i.e. √(1−ᾱ_0) = 1 % noise left.
    torch.testing.assert_close(out, x0_star, atol=0.05, rtol=0)


def test_eta_reaches_only_schedulers_whose_step_takes_it():
    assert step_accepts(SCHEDULERS["ddim"](), "eta")
    assert not any(step_accepts(SCHEDULERS[n](), "eta") for n in ("ddpm", "dpm++", "euler"))
    # η > 0 on DDIM is stochastic: it must reach the step (same seed → different from η = 0).
    x_T = torch.randn((1, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    zero = sample(lambda x, t: 0.1 * x, SCHEDULERS["ddim"](), x_T, num_inference_steps=4, eta=0.0)
    noisy = sample(
        lambda x, t: 0.1 * x,
        SCHEDULERS["ddim"](),
        x_T,
        num_inference_steps=4,
        eta=1.0,
        generator=torch.Generator().manual_seed(1),
    )
    assert not torch.allclose(zero, noisy)


def test_euler_scales_the_noise_and_the_model_input_and_guidance_sees_the_vp_input():
    sched = SCHEDULERS["euler"]()
    x0_star = torch.zeros((1, 1, 4, 4))
    denoiser, seen = _oracle(x0_star, sched)
    got = []

    def guidance(x_in, t, eps, a):
        got.append((x_in.clone(), float(a)))
        return eps

    x_T = torch.randn((1, 1, 4, 4), generator=torch.Generator().manual_seed(3))
    sample(denoiser, sched, x_T, num_inference_steps=5, guidance=guidance)
    sigma0 = float(sched.sigmas[0])
    assert sigma0 > 10  # Euler starts at σ_max, not at unit variance
    # x_T·init_noise_sigma, then scale_model_input divides by √(σ²+1): unit-variance input again.
    torch.testing.assert_close(seen[0][0], x_T * sched.init_noise_sigma / (sigma0**2 + 1) ** 0.5)
    torch.testing.assert_close(got[0][0], seen[0][0])
    assert got[0][1] == pytest.approx(1.0 / (1.0 + sigma0**2), rel=1e-5)
    assert len(got) == 5


def test_ddim_sample_keeps_the_legacy_callback_signature():
    calls = []
    ddim_sample(
        lambda x, t: torch.zeros_like(x),
        make_ddim_scheduler(),
        torch.ones(1, 1, 2, 2),
        num_inference_steps=3,
        callback=lambda i, t, x, e: calls.append((i, t)),
    )
    assert [c[0] for c in calls] == [0, 1, 2] and all(isinstance(c[1], int) for c in calls)
