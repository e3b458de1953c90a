"""Pixel-space diffusion models: built from a config dict, saved as a self-describing directory.

The network is diffusers' :class:`~diffusers.UNet2DModel` (ε-prediction); the noise schedule is
diffusers' DDPM/DDIM with the ermongroup/ddim defaults (linear β 1e-4 → 0.02, T = 1000), which the
CPSample paper's code forks (methods/cpsample.md §1). A checkpoint directory holds

* ``unet/``: ``save_pretrained`` output (``config.json`` + ``diffusion_pytorch_model.safetensors``),
  the weights used for sampling (the EMA weights when EMA was on);
* ``model.json``: the schedule, the image shape, and the provenance (data spec, seed, steps,
  the exact commands that produced it), so a figure can be traced to its command (EDM habit).

Training state for resuming (optimizer, raw weights, RNG) lives beside it in ``training_state.pt``
and is not needed for sampling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from privdiff.errors import CheckpointError, InvalidParameter
from privdiff.utils.atomic import atomic_write_json

MODEL_JSON = "model.json"
UNET_DIR = "unet"
KIND = "privdiff.diffusion.pixel"

#: ermongroup/ddim's schedule (methods/cpsample.md §1): linear β from 1e-4 to 0.02 over T = 1000.
DDIM_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
}

#: Named U-Net presets. ``fmnist-1m``: ~1.1 M parameters at 28×28 grey, three levels (28→14→7)
#: with self-attention only at 7×7 where it is cheap; about 0.4 s per batch-32 step on one core.
UNET_PRESETS: dict[str, dict[str, Any]] = {
    "fmnist-1m": {
        "sample_size": 28,
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": [32, 64, 64],
        "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "attention_head_dim": 32,
    },
    # A few thousand parameters: for tests and smoke runs only.
    "tiny": {
        "sample_size": 8,
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": [8, 16],
        "down_block_types": ["DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D"],
        "layers_per_block": 1,
        "norm_num_groups": 4,
    },
}


def unet_config(
    preset_or_config: str | dict[str, Any], *, image_shape: tuple[int, int, int] | None = None
) -> dict[str, Any]:
    """Resolve a preset name (or pass a dict through), adapting it to ``image_shape`` = (C, H, W)."""
    if isinstance(preset_or_config, str):
        if preset_or_config not in UNET_PRESETS:
            raise InvalidParameter("unet", preset_or_config, f"one of {sorted(UNET_PRESETS)}")
        cfg = dict(UNET_PRESETS[preset_or_config])
    else:
        cfg = dict(preset_or_config)
    if image_shape is not None:
        c, h, w = image_shape
        if h != w:
            raise InvalidParameter("image_shape", image_shape, "square images (H == W)")
        levels = len(cfg["block_out_channels"])
        # Each level but the last halves the side with a stride-2 conv and the up path doubles it
        # back, so the side must survive (levels − 1) exact halvings.
        if h % (2 ** (levels - 1)):
            raise InvalidParameter(
                "image_shape",
                image_shape,
                f"a side divisible by {2 ** (levels - 1)} for a {levels}-level U-Net",
            )
        cfg.update(sample_size=h, in_channels=c, out_channels=c)
    return cfg


def build_unet(config: dict[str, Any]):
    """A diffusers :class:`~diffusers.UNet2DModel` from a config dict (config as code)."""
    from diffusers import UNet2DModel

    return UNet2DModel(**config)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class DiffusionModel:
    """A trained ε-prediction U-Net plus its schedule and provenance.

    Attributes:
        unet: the diffusers network, ``unet(x_t, t).sample`` = ε_θ(x_t, t).
        schedule: the training schedule (``num_train_timesteps``, ``beta_*``), shared by DDIM.
        meta: provenance (data spec, seed, steps, commands, ...) as stored in ``model.json``.
    """

    unet: Any
    schedule: dict[str, Any] = field(default_factory=lambda: dict(DDIM_SCHEDULE))
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        cfg = self.unet.config
        return (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))

    def denoiser(self):
        """The ``(x_t, t) -> ε_θ`` callable that :func:`privdiff.diffusion.ddim_sample` expects."""
        unet = self.unet.eval()

        def eps_theta(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return unet(x_t, t).sample

        return eps_theta

    def ddim_scheduler(self):
        from privdiff.diffusion.sampling import make_ddim_scheduler

        return make_ddim_scheduler(**self.schedule)

    def ddpm_scheduler(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler(**self.schedule, clip_sample=False, prediction_type="epsilon")

    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t for t = 0..T−1 (Ho et al. 2020, Eq. 4 notation), from diffusers' schedule maths."""
        return self.ddpm_scheduler().alphas_cumprod.clone()

    def save(self, directory: str | Path) -> Path:
        return save_model(directory, self.unet, schedule=self.schedule, meta=self.meta)


def save_model(directory: str | Path, unet, *, schedule: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``unet/`` (safetensors) and ``model.json``; the JSON is written last so a reader never
    sees a manifest without weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(directory / UNET_DIR, safe_serialization=True)
    manifest = {
        "kind": KIND,
        "schedule": schedule,
        "unet_config": {k: v for k, v in dict(unet.config).items() if not k.startswith("_")},
        "parameters": count_parameters(unet),
        **meta,
    }
    atomic_write_json(directory / MODEL_JSON, manifest)
    return directory


def load_model(directory: str | Path, *, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a directory written by :func:`save_model` (or by ``privdiff train diffusion``)."""
    from diffusers import UNet2DModel

    directory = Path(directory)
    manifest_path = directory / MODEL_JSON
    if not manifest_path.is_file():
        raise CheckpointError(f"{directory} is not a privdiff diffusion model: {MODEL_JSON} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{manifest_path} is not valid JSON: {exc}") from None
    if manifest.get("kind") != KIND:
        raise CheckpointError(f"{directory} holds kind {manifest.get('kind')!r}, expected {KIND!r}")
    try:
        unet = UNet2DModel.from_pretrained(directory / UNET_DIR, low_cpu_mem_usage=False).to(device).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot load the U-Net weights in {directory / UNET_DIR}: {exc}") from None
    meta = {k: v for k, v in manifest.items() if k not in ("kind", "schedule", "unet_config", "parameters")}
    return DiffusionModel(unet=unet, schedule=dict(manifest["schedule"]), meta=meta)
