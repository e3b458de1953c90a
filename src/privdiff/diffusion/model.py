"""Pixel-space diffusion models: built from a config dict, saved as a diffusers pipeline folder.

The network is diffusers' :class:`~diffusers.UNet2DModel` (ε-prediction); the noise schedule is
diffusers' DDPM/DDIM with the ermongroup/ddim defaults (linear β 1e-4 → 0.02, T = 1000), which the
CPSample paper's code forks (methods/cpsample.md §1). A checkpoint directory is a
``DDPMPipeline`` folder (``DDPMPipeline.from_pretrained(DIR)`` opens it):

* ``model_index.json``, ``unet/`` (``config.json`` + ``diffusion_pytorch_model.safetensors``, the
  weights used for sampling: the EMA weights when EMA was on) and ``scheduler/`` (the DDIM
  scheduler privdiff samples with);
* ``privdiff.json``: the schedule, the image shape, and the provenance (data spec, seed, steps,
  the exact commands that produced it), so a figure can be traced to its command (EDM habit).

:func:`load_model` also opens the folders of other tools and of older privdiff versions
(:func:`detect_format`): a stock ``DDPMPipeline`` folder, a ``UNet2DModel`` folder with a
scheduler (``unet/`` + ``scheduler/``, or ``config.json`` + ``scheduler_config.json``), and the
privdiff v1 layout (``model.json`` + ``unet/``).

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

MODEL_JSON = "model.json"  # the privdiff v1 manifest (read only)
PRIVDIFF_JSON = "privdiff.json"
MODEL_INDEX = "model_index.json"
UNET_DIR = "unet"
SCHEDULER_DIR = "scheduler"
KIND = "privdiff.diffusion.pixel"
#: Schedule keys shared by every scheduler config (the ones :func:`make_ddim_scheduler` takes).
SCHEDULE_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end")

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
        meta: provenance (data spec, seed, steps, commands, ...) as stored in ``privdiff.json``.
        scheduler_config: the full config of a scheduler that came with the weights (a stock
            folder's); None for privdiff's own models, whose schedulers are rebuilt from
            ``schedule`` exactly as they were trained.
    """

    unet: Any
    schedule: dict[str, Any] = field(default_factory=lambda: dict(DDIM_SCHEDULE))
    meta: dict[str, Any] = field(default_factory=dict)
    scheduler_config: dict[str, Any] | None = None

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
        """The DDIM scheduler to sample with: the stored one's settings for a stock folder (its
        clipping, spacing, prediction type), else privdiff's (:func:`make_ddim_scheduler`)."""
        if self.scheduler_config is not None:
            from diffusers import DDIMScheduler

            return DDIMScheduler.from_config(self.scheduler_config)
        from privdiff.diffusion.sampling import make_ddim_scheduler

        return make_ddim_scheduler(**self.schedule)

    def ddpm_scheduler(self):
        from diffusers import DDPMScheduler

        if self.scheduler_config is not None:
            return DDPMScheduler.from_config(self.scheduler_config)
        return DDPMScheduler(**self.schedule, clip_sample=False, prediction_type="epsilon")

    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t for t = 0..T−1 (Ho et al. 2020, Eq. 4 notation), from diffusers' schedule maths."""
        return self.ddpm_scheduler().alphas_cumprod.clone()

    def save(self, directory: str | Path) -> Path:
        return save_model(directory, self.unet, schedule=self.schedule, meta=self.meta)

    save_pretrained = save

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> DiffusionModel:
        return load_model(directory, device=device)

    def pipeline(self):
        """A diffusers ``DDPMPipeline`` over these weights and the DDIM scheduler."""
        from diffusers import DDPMPipeline

        return DDPMPipeline(unet=self.unet, scheduler=self.ddim_scheduler())


def save_model(directory: str | Path, unet, *, schedule: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write a ``DDPMPipeline`` folder (``model_index.json``, ``unet/``, ``scheduler/``) and
    ``privdiff.json``; the JSON is written last so a reader never sees a manifest without weights.

    The scheduler saved is the DDIM scheduler privdiff samples with, so ``DDPMPipeline.from_pretrained``
    and :func:`load_model` sample alike."""
    from diffusers import DDPMPipeline

    from privdiff.diffusion.sampling import make_ddim_scheduler

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    scheduler = make_ddim_scheduler(**{k: schedule[k] for k in SCHEDULE_KEYS})
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(directory, safe_serialization=True)
    manifest = {
        "kind": KIND,
        "schedule": schedule,
        "unet_config": {k: v for k, v in dict(unet.config).items() if not k.startswith("_")},
        "parameters": count_parameters(unet),
        **meta,
    }
    atomic_write_json(directory / PRIVDIFF_JSON, manifest)
    # A v1 manifest left from an earlier save would describe other weights: the new one replaces it.
    (directory / MODEL_JSON).unlink(missing_ok=True)
    return directory


def detect_format(directory: str | Path) -> str:
    """Which layout ``directory`` holds: ``"privdiff"`` (this module's, ``privdiff.json``),
    ``"privdiff-v1"`` (``model.json`` + ``unet/``), ``"pipeline"`` (a diffusers ``model_index.json``
    with a ``unet``), ``"unet+scheduler"`` (``unet/`` and ``scheduler/`` subfolders) or ``"unet"``
    (a bare ``UNet2DModel`` folder, optionally with ``scheduler_config.json``).

    Raises:
        CheckpointError: none of them (the message lists what was looked for).
    """
    d = Path(directory)
    if (d / PRIVDIFF_JSON).is_file() and (d / MODEL_INDEX).is_file():
        return "privdiff"
    if (d / MODEL_JSON).is_file():
        return "privdiff-v1"
    if (d / MODEL_INDEX).is_file():
        return "pipeline"
    if (d / UNET_DIR / "config.json").is_file():
        return "unet+scheduler"
    if (d / "config.json").is_file():
        return "unet"
    raise CheckpointError(
        f"{d} is not a diffusion model: expected a privdiff model ({PRIVDIFF_JSON}), a diffusers pipeline "
        f"folder ({MODEL_INDEX} with unet/ and scheduler/), a UNet2DModel folder (config.json, optionally "
        f"with scheduler_config.json or a scheduler/ subfolder), or a privdiff v1 model ({MODEL_JSON})"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def _load_unet(path: Path, device):
    from diffusers import UNet2DModel

    cfg = _read_json(path / "config.json")
    if cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise CheckpointError(
            f"{path} holds a {cfg.get('_class_name')}; a pixel diffusion model needs an unconditional UNet2DModel"
        )
    try:
        return UNet2DModel.from_pretrained(path, low_cpu_mem_usage=False).to(device).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot load the U-Net weights in {path}: {exc}") from None


def _stock_scheduler_config(path: Path | None) -> dict[str, Any]:
    """A scheduler config that came with stock weights; DDPM defaults (T = 1000, linear β) when absent."""
    if path is None or not path.is_file():
        return {"_class_name": "DDPMScheduler", **DDIM_SCHEDULE, "prediction_type": "epsilon"}
    cfg = _read_json(path)
    prediction = cfg.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        # CPSample's guidance and the training losses here are ε-parameterised (methods/cpsample.md §3).
        raise CheckpointError(f"{path} has prediction_type={prediction!r}; privdiff needs an ε-prediction model")
    return cfg


def load_model(directory: str | Path, *, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a pixel diffusion model in any layout :func:`detect_format` knows."""
    directory = Path(directory)
    fmt = detect_format(directory)
    if fmt == "privdiff-v1":
        manifest = _read_json(directory / MODEL_JSON)
        if manifest.get("kind") != KIND:
            raise CheckpointError(f"{directory} holds kind {manifest.get('kind')!r}, expected {KIND!r}")
        unet = _load_unet(directory / UNET_DIR, device)
        meta = {k: v for k, v in manifest.items() if k not in ("kind", "schedule", "unet_config", "parameters")}
        return DiffusionModel(unet=unet, schedule=dict(manifest["schedule"]), meta=meta)
    if fmt == "privdiff":
        manifest = _read_json(directory / PRIVDIFF_JSON)
        if manifest.get("kind") != KIND:
            raise CheckpointError(f"{directory / PRIVDIFF_JSON} holds kind {manifest.get('kind')!r}, expected {KIND!r}")
        unet = _load_unet(directory / UNET_DIR, device)
        meta = {k: v for k, v in manifest.items() if k not in ("kind", "schedule", "unet_config", "parameters")}
        return DiffusionModel(unet=unet, schedule=dict(manifest["schedule"]), meta=meta)
    if fmt == "pipeline":
        index = _read_json(directory / MODEL_INDEX)
        if "unet" not in index:
            raise CheckpointError(f"{directory / MODEL_INDEX} names no unet component")
        unet_dir, sched = directory / UNET_DIR, directory / SCHEDULER_DIR / "scheduler_config.json"
    elif fmt == "unet+scheduler":
        unet_dir, sched = directory / UNET_DIR, directory / SCHEDULER_DIR / "scheduler_config.json"
    else:
        unet_dir, sched = directory, directory / "scheduler_config.json"
    unet = _load_unet(unet_dir, device)
    sched_cfg = _stock_scheduler_config(sched)
    schedule = {k: sched_cfg.get(k, DDIM_SCHEDULE[k]) for k in SCHEDULE_KEYS}
    return DiffusionModel(unet=unet, schedule=schedule, meta={"source_format": fmt}, scheduler_config=sched_cfg)
