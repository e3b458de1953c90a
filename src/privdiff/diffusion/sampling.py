"""One sampling loop for every diffusers scheduler, with narrow extension points.

Schedule maths is diffusers' (``scheduler.step``); the loop is ours so that methods attach as
small objects rather than forks of the loop (STYLE.md, diffusers/k-diffusion habits):

* a **denoiser** is any callable ``(x_in, t) -> ε`` (t a tensor of shape (B,); long for DDIM/DDPM/
  DPM-Solver, float for σ-space schedulers such as Euler). Classifier-free guidance (DP-RDM) is a
  denoiser that wraps a conditional network;
* a **guidance** object may correct ε before the scheduler step (CPSample, arXiv 2409.07025 §3:
  ε̂ = ε_θ − s·√(1−ᾱ_t)·∇ log p_φ(1−ŷ | x_t, t)); it sees the *model input* x_in (the
  variance-preserving x_t the networks were trained on) and ᾱ_t of the current step;
* a **callback** sees ``(x, t, ε̂, x̂_0)`` after every step: the new sample, the step's timestep,
  the (guided) noise prediction and the predicted clean sample.

The loop is the one diffusers' pipelines run (``DDPMPipeline``, ``StableDiffusionPipeline``):
``set_timesteps``; x_T scaled by ``init_noise_sigma``; every step ``scale_model_input`` → model →
``step``. Scheduler-specific keywords (``eta``, ``generator``) are passed only where the
scheduler's ``step`` accepts them (``DDPMScheduler``, ``DPMSolverMultistepScheduler`` and
``EulerDiscreteScheduler`` take no ``eta``).

x̂_0 comes from the scheduler output's ``pred_original_sample`` when it has one (DDIM, DDPM,
Euler); otherwise (DPM-Solver) from the variance-preserving identity
x̂_0 = (x_in − √(1−ᾱ_t)·ε)/√ᾱ_t (Ho et al. 2020, Eq. 15), with ᾱ_t from :func:`alpha_prod_at`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol

import torch
from diffusers import DDIMScheduler

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``callback(x, t, eps_hat, x0_hat)`` after every step.
StepCallback = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]
#: The old DDIM-loop callback ``(step, t, x_prev, eps_hat)``, kept for :func:`ddim_sample`.
LegacyStepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


class Guidance(Protocol):
    """Corrects a noise prediction before the scheduler step."""

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alpha_prod_t: torch.Tensor
    ) -> torch.Tensor: ...


def step_accepts(scheduler: Any, name: str) -> bool:
    """Whether ``scheduler.step`` takes the keyword ``name`` (``eta``, ``generator``...)."""
    params = inspect.signature(scheduler.step).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def alpha_prod_at(scheduler: Any, step_index: int, t: torch.Tensor) -> torch.Tensor:
    """ᾱ of the model input at step ``step_index`` (timestep ``t``) of a scheduler after ``set_timesteps``.

    σ-parameterised schedulers (Euler, DPM-Solver: ``sigmas`` aligned with ``timesteps``) define
    σ² = (1−ᾱ)/ᾱ (Karras et al. 2022, Table 1, VP column), so ᾱ = 1/(1+σ²) — this also covers a
    fractional timestep or a Karras σ grid. Otherwise ᾱ is ``alphas_cumprod[t]``.
    """
    sigmas = getattr(scheduler, "sigmas", None)
    if isinstance(sigmas, torch.Tensor) and sigmas.ndim == 1 and len(sigmas) >= len(scheduler.timesteps):
        sigma = sigmas[step_index].to(torch.float32)
        return 1.0 / (1.0 + sigma**2)
    return scheduler.alphas_cumprod[int(t)]


def predicted_x0(
    output: Any, model_input: torch.Tensor, eps: torch.Tensor, alpha_prod_t: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """x̂_0 of one step: the scheduler's own when it reports one, else from ᾱ_t (module docstring)."""
    x0 = getattr(output, "pred_original_sample", None)
    if x0 is not None:
        return x0
    a = torch.as_tensor(alpha_prod_t, dtype=model_input.dtype, device=model_input.device)
    if prediction_type == "sample":
        return eps
    if prediction_type == "v_prediction":
        return a.sqrt() * model_input - (1 - a).sqrt() * eps  # Salimans & Ho 2022, §4
    return (model_input - (1 - a).sqrt() * eps) / a.sqrt()


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    scheduler: Any,
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
    """Run any diffusers scheduler from unit-variance noise ``x_T``; return x_0 (model space).

    Args:
        denoiser: ``(x_in, t) -> ε`` prediction (the model output of the scheduler's
            ``prediction_type``); called under ``torch.no_grad``.
        scheduler: any diffusers scheduler with ``set_timesteps``/``scale_model_input``/``step``
            (its config travels with the model).
        x_T: N(0, I) noise, shape (B, C, H, W); scaled here by ``init_noise_sigma`` (1 for DDIM/DDPM,
            σ_max-sized for Euler). Seed it for reproducible public randomness.
        num_inference_steps: scheduler steps.
        eta: DDIM η (0 = deterministic); passed only to schedulers whose ``step`` takes it.
        guidance: optional ε correction (it may enable grad internally).
        generator: RNG for stochastic steps (η > 0, DDPM, Euler churn), where ``step`` takes one.
        callback: ``callback(x, t, eps_hat, x0_hat)`` after every step.
        progress: show a progress bar.
    """
    scheduler.set_timesteps(num_inference_steps, device=x_T.device)
    step_kwargs: dict[str, Any] = {}
    if step_accepts(scheduler, "eta"):
        step_kwargs["eta"] = eta
    if generator is not None and step_accepts(scheduler, "generator"):
        step_kwargs["generator"] = generator
    prediction_type = getattr(scheduler.config, "prediction_type", "epsilon")
    x = x_T * scheduler.init_noise_sigma
    steps = scheduler.timesteps
    iterator = steps
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(steps, desc=desc, leave=False)
    for i, t in enumerate(iterator):
        # Integer schedules get a Python int (DDIM indexes with it); σ-space schedulers (Euler)
        # refuse integers and take the tensor from their own ``timesteps``.
        t_step = t if t.is_floating_point() else int(t)
        t_batch = t.to(x.device).expand(x.shape[0])
        model_input = scheduler.scale_model_input(x, t_step)
        eps = denoiser(model_input, t_batch)
        a_t = None
        if guidance is not None or callback is not None:
            a_t = alpha_prod_at(scheduler, i, t).to(x.device)
        if guidance is not None:
            eps = guidance(model_input, t_batch, eps, a_t)
        out = scheduler.step(eps, t_step, x, **step_kwargs)
        x = out.prev_sample
        if callback is not None:
            callback(x, t, eps, predicted_x0(out, model_input, eps, a_t, prediction_type))
    return x


def ddim_sample(
    denoiser: Denoiser,
    scheduler: Any,
    x_T: torch.Tensor,
    *,
    num_inference_steps: int = 50,
    eta: float = 0.0,
    guidance: Guidance | None = None,
    generator: torch.Generator | None = None,
    callback: LegacyStepCallback | None = None,
    progress: bool = False,
    desc: str = "sampling",
) -> torch.Tensor:
    """:func:`sample` with the old DDIM-loop callback ``callback(step, t, x_prev, eps_hat)``.

    Kept for callers written against the DDIM-only loop; it now runs any scheduler.
    """
    legacy = None
    if callback is not None:
        counter = iter(range(num_inference_steps))

        def legacy(x, t, eps, x0):
            callback(next(counter), int(t), x, eps)

    return sample(
        denoiser,
        scheduler,
        x_T,
        num_inference_steps=num_inference_steps,
        eta=eta,
        guidance=guidance,
        generator=generator,
        callback=legacy,
        progress=progress,
        desc=desc,
    )


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
