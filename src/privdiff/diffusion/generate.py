"""Draw images from a pixel-space :class:`~privdiff.diffusion.model.DiffusionModel` with DDIM.

A thin convenience over :func:`privdiff.diffusion.sampling.ddim_sample`: seeded x_T, batching,
conversion to uint8 and wall-clock timing, so the CLI, the experiments and the benchmark all draw
samples the same way (the same seed gives the same x_T with or without guidance).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from privdiff.diffusion.model import DiffusionModel
from privdiff.diffusion.sampling import Guidance, ddim_sample
from privdiff.errors import check_int, check_nonnegative


def initial_noise(n: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """x_T ~ N(0, I) for ``n`` images from one seeded generator (independent of the batch size)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn((n, *shape), generator=g)


def generate(
    model: DiffusionModel,
    n: int,
    *,
    num_inference_steps: int = 50,
    eta: float = 0.0,
    seed: int = 0,
    guidance: Guidance | None = None,
    batch_size: int = 100,
    progress: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Sample ``n`` images; returns ``(uint8 (n, H, W, C), info)`` with ``info["wall_seconds"]``."""
    from tqdm.auto import tqdm

    from privdiff.report.images import to_uint8

    n = check_int("n", n, minimum=1)
    num_inference_steps = check_int("steps", num_inference_steps, minimum=1, maximum=model.schedule["num_train_timesteps"])
    eta = check_nonnegative("eta", eta)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    x_T = initial_noise(n, model.image_shape, seed)
    g = torch.Generator().manual_seed(int(seed) + 1)
    denoiser, scheduler = model.denoiser(), model.ddim_scheduler()
    out = []
    t0 = time.perf_counter()
    for s in tqdm(range(0, n, batch_size), desc="sampling", disable=not progress or n <= batch_size):
        x0 = ddim_sample(denoiser, scheduler, x_T[s : s + batch_size], num_inference_steps=num_inference_steps,
                         eta=eta, guidance=guidance, generator=g, progress=progress and n <= batch_size)
        out.append(to_uint8(x0.clamp(-1, 1)))
    wall = time.perf_counter() - t0
    info = {"n": n, "num_inference_steps": num_inference_steps, "eta": eta, "seed": seed, "batch_size": batch_size,
            "wall_seconds": wall}
    return np.concatenate(out), info
