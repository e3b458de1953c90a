"""The forward (noising) process, once for every trainer (pixel diffusion, RDM, CPSample classifier).

x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε (Ho et al. 2020, Eq. 4), computed exactly as diffusers'
``DDPMScheduler.add_noise`` does (same operations, same dtype handling), so a trainer may take ᾱ
from any scheduler and get bit-identical x_t.
"""

from __future__ import annotations

import torch


def q_sample(x0: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t for clean samples ``x0`` (B, ...) at integer steps ``t`` (B,) with noise ``noise``."""
    a = alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[t.to(x0.device)]
    shape = (-1, *([1] * (x0.ndim - 1)))
    return (a**0.5).reshape(shape) * x0 + ((1 - a) ** 0.5).reshape(shape) * noise
