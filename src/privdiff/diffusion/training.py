"""Training a pixel-space DDPM (ε-prediction) on a small image set, resumably.

The objective is the simple loss of Ho et al. 2020 (Eq. 14): t ~ U{0..T−1}, ε ~ N(0, I),
x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε (``DDPMScheduler.add_noise``), minimise ‖ε − ε_θ(x_t, t)‖² (mean over
pixels). Trained long on a few hundred images the network memorises them, which is the setting of
CPSample's replication experiments ("fine-tuned on a small subset", methods/cpsample.md §5.2).

A run directory holds the sampling checkpoint (:mod:`privdiff.diffusion.model`), ``training_state.pt``
(raw weights, EMA, optimizer, step, every RNG state) so ``resume=True`` continues exactly where a
run stopped, and ``loss.json`` / ``loss.png`` with the loss curve.

The copy-rate stop rule (:class:`CopyRule`) is CPSample's fine-tuning regime (Kazdan et al. 2025,
§5.2: a model trained on a broad set is fine-tuned on a small subset "until it replicates" a few per
cent of its samples): every ``check_every`` steps, ``samples`` images are drawn with DDIM from the
EMA weights (fixed x_T, so successive checks differ only by the weights), the caller's ``measure``
counts the replicas among them, and training stops at the first check whose rate is ≥ ``target``.
The checks are part of the run (``training_state.pt``) and are drawn in ``copies.json`` /
``copies.png``. They use their own generators and a copy of the network, so a run with checks
trains exactly the weights of a run without them.
"""

from __future__ import annotations

import copy
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
    check_in_range,
    check_int,
    check_nonnegative,
    check_positive,
)
from privdiff.utils.atomic import atomic_open, atomic_write_json
from privdiff.utils.train_config import TrainConfig as BaseTrainConfig

TRAINING_STATE = "training_state.pt"
COPIES_JSON = "copies.json"

#: ``measure(samples uint8 (M, H, W, C)) -> dict`` with at least ``rate`` (the replicated fraction),
#: ``n_replicated`` and ``n``; whatever else it returns (interval, threshold) is recorded with the check.
CopyMeasure = Callable[[np.ndarray], dict[str, Any]]


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


@dataclass
class CopyRule:
    """Stop fine-tuning once the model copies ``target`` of its samples (module docstring).

    Attributes:
        target: stop at the first check whose replication rate (point estimate) is ≥ this, in (0, 1].
        check_every: steps between two checks (a check also runs before the first step of a fresh
            run, giving the starting model's rate, and at the last step).
        samples: images drawn per check.
        ddim_steps: DDIM steps per image (η = 0).
        seed: seed of the checks' x_T (the same at every check, so the rates are comparable).
    """

    target: float
    check_every: int = 250
    samples: int = 200
    ddim_steps: int = 25
    seed: int = 0

    def validate(self, num_train_timesteps: int = 1000) -> CopyRule:
        check_in_range("target", self.target, 0.0, 1.0, low_inclusive=False, high_inclusive=True)
        check_int("check_every", self.check_every, minimum=1)
        check_int("samples", self.samples, minimum=1, maximum=100_000)
        check_int("ddim_steps", self.ddim_steps, minimum=1, maximum=num_train_timesteps)
        check_int("seed", self.seed, minimum=0, maximum=2**63 - 2)
        return self


def ddpm_loss(unet, x0: torch.Tensor, noise_scheduler, generator: torch.Generator) -> torch.Tensor:
    """Ho et al. 2020 Eq. 14 ("L_simple"): E_{t,ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖².

    t and ε are drawn from ``generator`` on the CPU and moved to ``x0``'s device, so every device
    trains on the same random numbers (and a run resumes on another device).
    """
    b, dev = x0.shape[0], x0.device
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    t, noise = t.to(dev), noise.to(dev)
    x_t = q_sample(x0, t, noise_scheduler.alphas_cumprod.to(dev), noise)
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
    device: str = "cpu",
    copy_rule: CopyRule | None = None,
    copy_measure: CopyMeasure | None = None,
    copy_measure_info: dict[str, Any] | None = None,
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
        device: where the U-Net trains (``cpu``, ``cuda``, ``cuda:N``, ``mps``); every random
            number is still drawn on the CPU, so a run resumes on another device.
        copy_rule: stop once the replication rate of the EMA weights' samples reaches
            ``copy_rule.target`` (:class:`CopyRule`); needs ``copy_measure``.
        copy_measure: counts the replicas among a check's samples (the caller's metric, e.g.
            :func:`privdiff.evaluation.replication.replication_counter` against ``images``).
        copy_measure_info: how ``copy_measure`` decides (feature space, threshold), for the record.

    Returns:
        The trained model (EMA weights when EMA is on), as saved.
    """
    from diffusers import DDPMScheduler

    from privdiff.report.images import to_model_space
    from privdiff.utils.device import check_device

    config = (config or TrainConfig()).validate()
    dev = check_device(device)
    if copy_rule is not None:
        copy_rule.validate(DDIM_SCHEDULE["num_train_timesteps"])
        if copy_measure is None:
            raise InvalidParameter("copy_measure", None, "a function counting replicas when copy_rule is set")
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
    unet = build_unet(unet_config).to(dev).train()
    loop = TrainingLoop(unet, config, weight_decay=config.weight_decay, grad_clip=config.grad_clip, model_key="unet")
    noise_scheduler = DDPMScheduler(**DDIM_SCHEDULE, clip_sample=False, prediction_type="epsilon")
    commands: list[str] = []
    order: list[int] = []
    copy_checks: list[dict[str, Any]] = []

    if resume:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["unet_config"] != unet_config:
            raise CheckpointError(f"cannot resume {out_dir}: the stored U-Net config differs from the requested one")
        loop.load_state_dict(state)
        commands, order = state["commands"], state["order"]
        copy_checks = list(state.get("copy_checks", []))
    elif init_from is not None:
        unet.load_state_dict(_init_weights(Path(init_from), unet_config))
        loop.restart_ema()  # the EMA starts from the fine-tuning initialisation, not from noise
    if command:
        commands = [*commands, command]

    x_all = to_model_space(images)  # stays on the CPU; each batch moves to the device
    meta_base = {
        "data_spec": data_spec,
        "num_train_images": int(len(images)),
        "train_config": asdict(config),
        "objective": "epsilon-prediction, L_simple (Ho et al. 2020 Eq. 14)",
        "commands": commands,
        **({"init_from": str(init_from)} if init_from is not None and not resume else {}),
        **({"device": str(dev)} if str(dev) != "cpu" else {}),
    }
    if copy_rule is not None:
        meta_base["copy_rule"] = {**asdict(copy_rule), "measure": dict(copy_measure_info or {})}

    def loss_fn(step: int, generator: torch.Generator) -> torch.Tensor:
        nonlocal order
        if len(order) < config.batch_size:
            # Epochs without replacement: every image is seen equally often, which matters when
            # the point is to memorise each one.
            order = order + torch.randperm(len(images), generator=generator).tolist()
        idx, order = order[: config.batch_size], order[config.batch_size :]
        return ddpm_loss(unet, x_all[idx].to(dev), noise_scheduler, generator)

    def check_copies(step: int) -> dict[str, Any]:
        """Sample the EMA weights and record the replication rate (no draw from training's RNGs)."""
        import time

        from privdiff.diffusion.generate import generate

        t0 = time.perf_counter()
        # A copy of the training network (deepcopy draws no random numbers, unlike build_unet)
        # carrying the weights a checkpoint would save.
        averaged = loop.averaged_into(copy.deepcopy(unet)).eval()
        samples, _ = generate(
            DiffusionModel(unet=averaged, schedule=dict(DDIM_SCHEDULE)),
            copy_rule.samples,
            num_inference_steps=copy_rule.ddim_steps,
            seed=copy_rule.seed,
            progress=False,
        )
        del averaged
        result = dict(copy_measure(samples))
        record = {
            "step": int(step),
            **{k: result[k] for k in ("rate", "n_replicated", "n")},
            **{k: v for k, v in result.items() if k not in ("rate", "n_replicated", "n")},
            "seconds": round(time.perf_counter() - t0, 2),
        }
        copy_checks.append(record)
        return record

    def reached(record: dict[str, Any] | None) -> bool:
        return record is not None and record["rate"] >= copy_rule.target

    def should_stop(step: int, _losses: list[float]) -> bool:
        if copy_rule is None or (step % copy_rule.check_every and step != config.steps):
            return False
        return reached(check_copies(step))

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
        if copy_rule is not None:
            last = copy_checks[-1] if copy_checks else None
            meta["stop_reason"] = "copy_rate" if reached(last) else ("max_steps" if step >= config.steps else "running")
            meta["copy_rate"] = last  # the final measured rate (None before the first check)
            write_copy_curve(copy_checks, out_dir, target=copy_rule.target, title=data_spec)
        save_model(out_dir, sample_unet, schedule=dict(DDIM_SCHEDULE), meta=meta)
        with atomic_open(state_path) as fh:
            torch.save(
                {
                    **loop.state_dict(),
                    "commands": commands,
                    "order": order,
                    "unet_config": unet_config,
                    "copy_checks": copy_checks,
                },
                fh,
            )
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
    done = False
    if copy_rule is not None:
        if loop.step == 0:
            done = reached(check_copies(0))  # the starting model's rate: the curve's first point
        else:
            # A resumed run whose last check already reached the target is finished.
            done = bool(copy_checks) and copy_checks[-1]["step"] == loop.step and reached(copy_checks[-1])
    if not done:
        loop.run(
            loss_fn,
            on_checkpoint=lambda step: saved.append(checkpoint(step)),
            should_stop=should_stop if copy_rule is not None else None,
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


def write_copy_curve(
    checks: list[dict[str, Any]], out_dir: str | Path, *, target: float | None = None, title: str = ""
) -> Path:
    """``copies.json`` (every check) and ``copies.png`` (rate with its interval vs step, the target dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / COPIES_JSON, {"target": target, "checks": list(checks)})
    path = out_dir / "copies.png"
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if checks:
        steps = np.array([c["step"] for c in checks])
        rate = np.array([c["rate"] for c in checks])
        low = np.array([c.get("ci_low", r) for c, r in zip(checks, rate)])
        high = np.array([c.get("ci_high", r) for c, r in zip(checks, rate)])
        ax.errorbar(steps, rate, yerr=[rate - low, high - rate], marker="o", ms=3, capsize=2, label="replication rate")
    if target is not None:
        ax.axhline(target, ls="--", color="grey", lw=1, label=f"target {target:g}")
    ax.set_xlabel("step")
    ax.set_ylabel("replicated fraction (95 % Wilson)")
    ax.set_title(title or "copies during fine-tuning", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
