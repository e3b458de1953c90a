"""The DDIM sampling loop with narrow extension points.

Schedule maths is diffusers' (``DDIMScheduler.step``); the loop is ours so that methods attach as
small objects rather than forks of the loop (STYLE.md, diffusers/k-diffusion habits):

* a **denoiser** is any callable ``(x_t, t) -> ε`` (t a LongTensor of shape (B,)). Classifier-free
  guidance (DP-RDM) is a denoiser that wraps a conditional network;
* a **guidance** object may correct ε before the scheduler step (CPSample, arXiv 2409.07025 §3:
  ε̂ = ε_θ − s·√(1−ᾱ_t)·∇ log p_φ(1−ŷ | x_t, t));
* a **callback** sees ``(step, t, x_t, ε̂)`` after every step, for monitoring.

The DDIM update itself (Song et al. 2021, Eq. 12) with η = 0 is deterministic given x_T.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from diffusers import DDIMScheduler

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


class Guidance(Protocol):
    """Corrects a noise prediction before the DDIM step."""

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alpha_prod_t: torch.Tensor
    ) -> torch.Tensor: ...


@torch.no_grad()
def ddim_sample(
    denoiser: Denoiser,
    scheduler: DDIMScheduler,
    x_T: torch.Tensor,
    *,
    num_inference_steps: int = 50,
    eta: float = 0.0,
    guidance: Guidance | None = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
    desc: str = "sampling",
) -> torch.Tensor:
    """Run DDIM from ``x_T`` and return x_0 (same shape, model space, roughly in [-1, 1]).

    Args:
        denoiser: ``(x_t, t) -> ε`` prediction; called under ``torch.no_grad``.
        scheduler: a configured :class:`diffusers.DDIMScheduler` (its config travels with the model).
        x_T: the starting noise, shape (B, C, H, W). Seed it for reproducible public randomness.
        num_inference_steps: DDIM steps (uniform "leading" spacing as in ermongroup/ddim).
        eta: DDIM η (0 = deterministic).
        guidance: optional ε correction; it may enable grad internally.
        generator: RNG for η > 0 noise.
        callback: called as ``callback(step, t, x_prev, eps_hat)`` after every step.
        progress: show a progress bar.
    """
    scheduler.set_timesteps(num_inference_steps, device=x_T.device)
    x = x_T
    steps = scheduler.timesteps
    iterator = steps
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(steps, desc=desc, leave=False)
    alphas = scheduler.alphas_cumprod.to(x.device)
    for i, t in enumerate(iterator):
        t_int = int(t)
        t_batch = torch.full((x.shape[0],), t_int, device=x.device, dtype=torch.long)
        eps = denoiser(x, t_batch)
        if guidance is not None:
            eps = guidance(x, t_batch, eps, alphas[t_int])
        x = scheduler.step(eps, t_int, x, eta=eta, generator=generator).prev_sample
        if callback is not None:
            callback(i, t_int, x, eps)
    return x


def make_ddim_scheduler(
    *,
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> DDIMScheduler:
    """A DDIM scheduler. Defaults follow ermongroup/ddim (linear β 1e-4→0.02, T = 1000).

    For the LDM/RDM schedule of DP-RDM (β_t = (linspace(√0.0015, √0.0195, T))², notes §5) pass
    ``beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195``.
    """
    return DDIMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        beta_start=beta_start,
        beta_end=beta_end,
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type="epsilon",
    )
