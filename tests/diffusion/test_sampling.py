"""privdiff.diffusion.sampling: the DDIM loop calls the guidance hook and the step callback."""

import torch

from privdiff.diffusion import ddim_sample, make_ddim_scheduler


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
