"""Training a pixel-space DDPM (ε-prediction) on a small image set, resumably.

The objective is the simple loss of Ho et al. 2020 (Eq. 14): t ~ U{0..T−1}, ε ~ N(0, I),
x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε (``DDPMScheduler.add_noise``), minimise ‖ε − ε_θ(x_t, t)‖² (mean over
pixels). Trained long on a few hundred images the network memorises them, which is the setting of
CPSample's replication experiments ("fine-tuned on a small subset", methods/cpsample.md §5.2).

A run directory holds the sampling checkpoint (:mod:`privdiff.diffusion.model`), ``training_state.pt``
(raw weights, EMA, optimizer, step, every RNG state) so ``resume=True`` continues exactly where a
run stopped, and ``loss.json`` / ``loss.png`` with the loss curve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privdiff.diffusion.model import (
    DDIM_SCHEDULE,
    DiffusionModel,
    build_unet,
    count_parameters,
    save_model,
)
from privdiff.diffusion.noising import q_sample
from privdiff.diffusion.trainer import TrainingLoop
from privdiff.errors import (
    CheckpointError,
    DataError,
    InvalidParameter,
    check_nonnegative,
    check_positive,
)
from privdiff.utils.atomic import atomic_open, atomic_write_json
from privdiff.utils.train_config import TrainConfig as BaseTrainConfig

TRAINING_STATE = "training_state.pt"


@dataclass
class TrainConfig(BaseTrainConfig):
    """Optimisation settings (AdamW; EMA of the weights as in DDPM/ddim, optional).

    The shared fields (steps, batch_size, lr, warmup_steps, ema_decay, seed, checkpoint_every)
    are those of :class:`privdiff.diffusion.trainer.TrainConfig`; here batches are drawn in
    replacement-free epochs, ``ema_decay`` 0 disables the EMA, and the seed also seeds the batch
    order and the diffusion noise.

    Attributes:
        weight_decay: AdamW weight decay (small: memorising is the goal here).
        grad_clip: global gradient-norm clip (ddim's default 1.0).
    """

    steps: int = 4000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    warmup_steps: int = 100
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    seed: int = 0

    def validate(self) -> TrainConfig:
        self.validate_shared()
        check_nonnegative("weight_decay", self.weight_decay)
        check_positive("grad_clip", self.grad_clip)
        return self


def ddpm_loss(unet, x0: torch.Tensor, noise_scheduler, generator: torch.Generator) -> torch.Tensor:
    """Ho et al. 2020 Eq. 14 ("L_simple"): E_{t,ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖²."""
    b = x0.shape[0]
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    x_t = q_sample(x0, t, noise_scheduler.alphas_cumprod, noise)
    return torch.nn.functional.mse_loss(unet(x_t, t).sample, noise)


def train_diffusion(
    images: np.ndarray,
    out_dir: str | Path,
    *,
    unet_config: dict[str, Any],
    config: TrainConfig | None = None,
    data_spec: str = "",
    command: str = "",
    resume: bool = False,
    init_from: str | Path | None = None,
    progress: bool = True,
    on_checkpoint: Callable[[int, DiffusionModel], None] | None = None,
) -> DiffusionModel:
    """Train (or resume training) a DDPM on uint8 images (N, H, W, C) and save it to ``out_dir``.

    Args:
        images: training images, uint8 (N, H, W, C).
        out_dir: run directory; receives the checkpoint, ``training_state.pt`` and the loss curve.
        unet_config: a :func:`privdiff.diffusion.model.unet_config` dict matching the image shape.
        config: optimisation settings (validated before anything is written).
        data_spec: the dataset spec, recorded for provenance.
        command: the command line that started this (segment of the) run, recorded in privdiff.json.
        resume: continue from ``out_dir/training_state.pt`` (error if absent).
        init_from: start from another run's weights (fine-tuning, as CPSample's replication
            experiments fine-tune a trained model on a small subset); its raw weights are used when
            its ``training_state.pt`` is present, else its sampling weights. Ignored when resuming.
        on_checkpoint: called as ``on_checkpoint(step, model)`` after each checkpoint.

    Returns:
        The trained model (EMA weights when EMA is on), as saved.
    """
    from diffusers import DDPMScheduler

    from privdiff.report.images import to_model_space

    config = (config or TrainConfig()).validate()
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise DataError(
            f"training images must be a non-empty uint8 array (N, H, W, C); got {images.dtype} {images.shape}"
        )
    c, size = images.shape[3], images.shape[1]
    if (unet_config["in_channels"], unet_config["sample_size"]) != (c, size) or images.shape[2] != size:
        raise InvalidParameter(
            "unet_config",
            {k: unet_config[k] for k in ("in_channels", "sample_size")},
            f"matching the data: in_channels={c}, sample_size={size} (square images)",
        )
    out_dir = Path(out_dir)
    state_path = out_dir / TRAINING_STATE
    if resume and not state_path.is_file():
        raise CheckpointError(f"cannot resume: {state_path} does not exist")

    torch.manual_seed(config.seed)
    unet = build_unet(unet_config).train()
    loop = TrainingLoop(unet, config, weight_decay=config.weight_decay, grad_clip=config.grad_clip, model_key="unet")
    noise_scheduler = DDPMScheduler(**DDIM_SCHEDULE, clip_sample=False, prediction_type="epsilon")
    commands: list[str] = []
    order: list[int] = []

    if resume:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["unet_config"] != unet_config:
            raise CheckpointError(f"cannot resume {out_dir}: the stored U-Net config differs from the requested one")
        loop.load_state_dict(state)
        commands, order = state["commands"], state["order"]
    elif init_from is not None:
        unet.load_state_dict(_init_weights(Path(init_from), unet_config))
        loop.restart_ema()  # the EMA starts from the fine-tuning initialisation, not from noise
    if command:
        commands = [*commands, command]

    x_all = to_model_space(images)
    meta_base = {
        "data_spec": data_spec,
        "num_train_images": int(len(images)),
        "train_config": asdict(config),
        "objective": "epsilon-prediction, L_simple (Ho et al. 2020 Eq. 14)",
        "commands": commands,
        **({"init_from": str(init_from)} if init_from is not None and not resume else {}),
    }

    def loss_fn(step: int, generator: torch.Generator) -> torch.Tensor:
        nonlocal order
        if len(order) < config.batch_size:
            # Epochs without replacement: every image is seen equally often, which matters when
            # the point is to memorise each one.
            order = order + torch.randperm(len(images), generator=generator).tolist()
        idx, order = order[: config.batch_size], order[config.batch_size :]
        return ddpm_loss(unet, x_all[idx], noise_scheduler, generator)

    def checkpoint(step: int) -> DiffusionModel:
        out_dir.mkdir(parents=True, exist_ok=True)
        # Built before the state is saved: building draws from the global RNG, whose saved state
        # must be the one training continues from.
        sample_unet = loop.averaged_into(build_unet(unet_config))
        meta = {
            **meta_base,
            "steps_done": step,
            "train_wall_seconds": round(loop.wall_seconds, 1),
            "weights": "ema" if loop.ema is not None else "raw",
            "final_loss_ema": _smoothed(loop.losses),
        }
        save_model(out_dir, sample_unet, schedule=dict(DDIM_SCHEDULE), meta=meta)
        with atomic_open(state_path) as fh:
            torch.save({**loop.state_dict(), "commands": commands, "order": order, "unet_config": unet_config}, fh)
        write_loss_curve(
            loop.losses,
            out_dir,
            title=f"{data_spec or 'training'} — {count_parameters(unet) / 1e6:.2f} M params",
        )
        model = DiffusionModel(unet=sample_unet.eval(), schedule=dict(DDIM_SCHEDULE), meta=meta)
        if on_checkpoint is not None:
            on_checkpoint(step, model)
        return model

    saved: list[DiffusionModel] = []
    loop.run(
        loss_fn,
        on_checkpoint=lambda step: saved.append(checkpoint(step)),
        progress=progress,
        desc="train diffusion",
    )
    if not saved:  # resumed at or past the target: rewrite the checkpoint with this command
        saved.append(checkpoint(loop.step))
    return saved[-1]


def _init_weights(directory: Path, unet_config: dict[str, Any]) -> dict[str, torch.Tensor]:
    state_path = directory / TRAINING_STATE
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["unet_config"] != unet_config:
            raise CheckpointError(f"cannot fine-tune from {directory}: its U-Net config differs from the requested one")
        return state["unet"]
    from privdiff.diffusion.model import load_model

    model = load_model(directory)
    if {k: v for k, v in dict(model.unet.config).items() if k in unet_config} != unet_config:
        raise CheckpointError(f"cannot fine-tune from {directory}: its U-Net config differs from the requested one")
    return model.unet.state_dict()


def _smoothed(losses: list[float], window: int = 100) -> float:
    if not losses:
        return float("nan")
    return float(np.mean(losses[-window:]))


def write_loss_curve(
    losses: list[float],
    out_dir: str | Path,
    *,
    title: str = "training loss",
    json_key: str = "loss_per_step",
    decimals: int | None = None,
) -> Path:
    """``loss.json`` (per-step losses under ``json_key``, rounded to ``decimals`` if given) and
    ``loss.png`` (raw + moving average, log scale): the one loss-curve writer of every trainer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    values = [round(float(v), decimals) for v in losses] if decimals is not None else list(losses)
    atomic_write_json(out_dir / "loss.json", {json_key: values}, indent=None)
    path = out_dir / "loss.png"
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if losses:
        window = max(1, min(100, len(losses) // 10))
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.5, alpha=0.35, label="per step")
        ax.plot(np.arange(window, len(losses) + 1), smooth, lw=1.5, label=f"mean of {window}")
        ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("ε-MSE")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
