"""Draw images from a pixel-space :class:`~privdiff.diffusion.model.DiffusionModel` with DDIM.

A thin convenience over :func:`privdiff.diffusion.sampling.sample`: seeded x_T, batching,
conversion to uint8 and wall-clock timing, so the CLI, the experiments and the benchmark all draw
samples the same way (the same seed gives the same x_T with or without guidance).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from privdiff.diffusion.model import DiffusionModel
from privdiff.diffusion.sampling import Guidance, sample
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
    """Sample ``n`` images; returns ``(uint8 (n, H, W, C), info)`` with ``info["wall_seconds"]``.

    ``progress`` shows one bar over every DDIM step of every batch (on stderr, and only when it is
    a terminal).
    """
    from tqdm.auto import tqdm

    from privdiff.report.images import to_uint8

    n, num_inference_steps, eta, batch_size, seed = check_sampling(
        model, n, num_inference_steps=num_inference_steps, eta=eta, seed=seed, batch_size=batch_size
    )
    # x_T is drawn on the CPU (the same images on every device) and moved to the network's device.
    params = getattr(model.unet, "parameters", None)
    x_T = initial_noise(n, model.image_shape, seed)
    if params is not None:
        x_T = x_T.to(next(params()).device)
    g = torch.Generator().manual_seed(int(seed) + 1)
    denoiser, scheduler = model.denoiser(), model.ddim_scheduler()
    out = []
    t0 = time.perf_counter()
    n_batches = -(-n // batch_size)
    bar = tqdm(
        total=n_batches * num_inference_steps,
        desc="sampling",
        unit="step",
        disable=None if progress else True,
    )  # None: off when stderr is not a terminal
    try:
        for s in range(0, n, batch_size):
            x0 = sample(
                denoiser,
                scheduler,
                x_T[s : s + batch_size],
                num_inference_steps=num_inference_steps,
                eta=eta,
                guidance=guidance,
                generator=g,
                callback=lambda *a: bar.update(1),
            )
            out.append(to_uint8(x0.clamp(-1, 1)))
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    info = {
        "n": n,
        "num_inference_steps": num_inference_steps,
        "eta": eta,
        "seed": seed,
        "batch_size": batch_size,
        "wall_seconds": wall,
    }
    return np.concatenate(out), info


#: Largest seed: x_T uses ``seed`` and the η-noise generator ``seed + 1``; both must fit
#: torch.Generator (unsigned 64-bit) and the signed 64-bit range of JSON/SQLite consumers.
MAX_SEED = 2**63 - 2

#: Memory one ``generate`` call may plan for: x_T (float32) and the uint8 output twice per image.
MAX_SAMPLE_BYTES = 8 * 2**30


def check_sampling(
    model: DiffusionModel,
    n: int,
    *,
    num_inference_steps: int = 50,
    eta: float = 0.0,
    seed: int = 0,
    batch_size: int = 100,
) -> tuple[int, int, float, int, int]:
    """Validate a sampling request before any work: (n, steps, η, batch size, seed).

    ``n`` is bounded by a memory estimate (:data:`MAX_SAMPLE_BYTES`), so a huge request fails
    here with the allowed maximum rather than as an allocation error later.
    """
    c, h, w = model.image_shape
    per_image = 6 * c * h * w
    n = check_int("n", n, minimum=1, maximum=max(1, MAX_SAMPLE_BYTES // per_image))
    num_inference_steps = check_int(
        "steps", num_inference_steps, minimum=1, maximum=model.schedule["num_train_timesteps"]
    )
    eta = check_nonnegative("eta", eta)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    seed = check_int("seed", seed, 0, MAX_SEED)
    return n, num_inference_steps, eta, batch_size, seed
