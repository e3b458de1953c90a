"""CPSample for latent diffusion models: the classifier works on VAE latents.

For a latent model (Stable-Diffusion style: an ``AutoencoderKL`` and a U-Net over its latents) the
diffusion process, and so x_t, lives in latent space; the random-label classifier must see what the
U-Net sees, z_0 = E(x)·scaling_factor (the latent mean, Rombach et al. 2022 §3 and diffusers'
training scripts), noised with the model's own schedule. At sampling time the correction is added
inside :class:`~privdiff.cpsample.guidance.CPSampleUNet`, so CFG pipelines get CPSample on the
guided ε (methods/cpsample.md §3, "Stable Diffusion").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from privdiff.errors import CheckpointError, InvalidParameter


def load_vae(directory: str | os.PathLike):
    """An ``AutoencoderKL`` from its folder, or from the ``vae/`` of a pipeline folder."""
    from diffusers import AutoencoderKL

    d = Path(directory)
    if not (d / "config.json").is_file() and (d / "vae" / "config.json").is_file():
        d = d / "vae"
    if not (d / "config.json").is_file():
        raise CheckpointError(f"{directory} holds no AutoencoderKL (config.json, or vae/config.json in a pipeline)")
    try:
        return AutoencoderKL.from_pretrained(d, low_cpu_mem_usage=False).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot load the VAE in {d}: {exc}") from None


def scheduler_alphas_cumprod(directory: str | os.PathLike) -> torch.Tensor:
    """ᾱ_t of the scheduler stored with a (latent) model: ``scheduler/`` or ``scheduler_config.json``."""
    from diffusers import DDPMScheduler

    d = Path(directory)
    for path in (d / "scheduler" / "scheduler_config.json", d / "scheduler_config.json"):
        if path.is_file():
            cfg = json.loads(path.read_text())
            if cfg.get("prediction_type", "epsilon") != "epsilon":
                # The guidance correction is ε-parameterised (methods/cpsample.md §3).
                raise CheckpointError(f"{path} has prediction_type={cfg['prediction_type']!r}; CPSample needs ε")
            return DDPMScheduler.from_config(cfg).alphas_cumprod.clone()
    raise CheckpointError(f"{directory} has no scheduler (scheduler/scheduler_config.json or scheduler_config.json)")


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, *, batch_size: int = 16) -> torch.Tensor:
    """z_0 = mean of E(x) × ``scaling_factor`` for model-space images (N, C, H, W) in [-1, 1].

    Grey images are repeated to the VAE's channels (Fashion-MNIST into an RGB autoencoder).
    """
    c_in = int(vae.config.in_channels)
    if images.shape[1] != c_in:
        if images.shape[1] != 1:
            raise InvalidParameter("images", f"{images.shape[1]} channels", f"1 or the VAE's {c_in}")
        images = images.repeat(1, c_in, 1, 1)
    scale = float(getattr(vae.config, "scaling_factor", 1.0))
    out = [vae.encode(images[s : s + batch_size]).latent_dist.mean * scale for s in range(0, len(images), batch_size)]
    return torch.cat(out)
