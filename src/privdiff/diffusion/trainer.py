"""The one training loop of privdiff's three trainers (pixel DDPM, RDM, CPSample classifier).

Each trainer builds its network (after ``torch.manual_seed(config.seed)``), hands it to a
:class:`TrainingLoop` and supplies ``loss_fn(step, generator) -> loss``; the loop owns what they
share: AdamW with a linear warm-up to a constant learning rate, gradient clipping, an EMA of the
weights, the progress bar, the per-step loss history, checkpoint timing and the resumable state
(step, weights, optimiser, EMA, both RNG states, losses). The shared settings are
:class:`privdiff.utils.train_config.TrainConfig` (torch-free, so the configs of trainers whose
modules import torch lazily can extend it). The trainer writes its own files in its
``on_checkpoint`` callback and passes the loss history to the one loss-curve writer
(:func:`privdiff.diffusion.training.write_loss_curve`).

Resuming is exact: everything random is drawn from the loop's generator (or the global torch RNG,
whose state is saved too), in the same order, so a run stopped at step S and resumed to N gives
the same weights as one run straight to N, and a run to S gives what ``--steps S`` gives.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from privdiff.errors import CheckpointError, InvalidParameter
from privdiff.utils.train_config import TrainConfig, warmup_lr

__all__ = ["EMA_POWER", "TrainConfig", "TrainingLoop", "warmup_lr"]

#: EMA warm-up exponent: decay_t = min(ema_decay, 1 − (1 + t)^(−power)) (diffusers' ``EMAModel``
#: with ``use_ema_warmup``, inv_gamma 1), so a short run's average is not dominated by the random
#: initialisation.
EMA_POWER = 2 / 3


class TrainingLoop:
    """Optimiser, EMA, RNG and loss history of one training run, and the loop that advances them.

    Args:
        model: the network being trained (built by the caller after ``torch.manual_seed``).
        config: the shared settings.
        weight_decay: AdamW weight decay.
        grad_clip: global gradient-norm clip; ``None`` for none.
        model_key: the key of the raw weights in :meth:`state_dict` (kept per trainer so the
            state files written before this loop existed still resume).

    The model's device is the training device (the caller moves it there before building the
    loop). The generator stays on the CPU on every device: batches, noise and timesteps are drawn
    there and moved, so a GPU run sees the same random numbers as a CPU run and resumes from a
    state written on either.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainConfig,
        *,
        weight_decay: float = 0.0,
        grad_clip: float | None = None,
        model_key: str = "model",
    ) -> None:
        if grad_clip is not None and not grad_clip > 0:
            raise InvalidParameter("grad_clip", grad_clip, "> 0, or None for no clipping")
        self.model = model
        self.config = config
        self.grad_clip = grad_clip
        self.model_key = model_key
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=weight_decay)
        self.ema = self._new_ema() if config.ema_decay > 0 else None
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.losses: list[float] = []
        self.wall_seconds = 0.0

    def _new_ema(self):
        from diffusers.training_utils import EMAModel

        return EMAModel(self.model.parameters(), decay=self.config.ema_decay, use_ema_warmup=True, power=EMA_POWER)

    def restart_ema(self) -> None:
        """Start the EMA from the model's current weights (after loading fine-tuning weights)."""
        if self.ema is not None:
            self.ema = self._new_ema()

    def averaged_into(self, module: torch.nn.Module) -> torch.nn.Module:
        """Load the weights to save into ``module`` (same architecture): the EMA's, else the raw ones."""
        module.load_state_dict(self.model.state_dict())
        if self.ema is not None:
            self.ema.copy_to(module.parameters())
        return module

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`load_state_dict` needs to continue exactly (the caller adds its own keys)."""
        return {
            "step": self.step,
            self.model_key: self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "losses": list(self.losses),
            "wall_seconds": self.wall_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state[self.model_key])
        self.optimizer.load_state_dict(state["optimizer"])  # casts its state to the parameters' device
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
            # A state is loaded with map_location="cpu"; the shadow weights must live with the model's.
            self.ema.to(device=next(self.model.parameters()).device)
        self.generator.set_state(state["generator"])
        if state.get("torch_rng") is not None:  # absent in RDM states written before this loop
            torch.set_rng_state(state["torch_rng"])
        self.losses = list(state["losses"])
        self.step = int(state["step"])
        self.wall_seconds = float(state.get("wall_seconds", 0.0))

    def tail_mean(self, window: int = 100) -> float:
        """Mean of the last ``window`` losses (NaN before the first step)."""
        tail = self.losses[-window:]
        return float(sum(tail) / len(tail)) if tail else float("nan")

    def run(
        self,
        loss_fn: Callable[[int, torch.Generator], torch.Tensor],
        *,
        on_checkpoint: Callable[[int], None] | None = None,
        should_stop: Callable[[int, list[float]], bool] | None = None,
        progress: bool = True,
        desc: str = "train",
        postfix: str = "loss",
        postfix_window: int = 100,
    ) -> None:
        """Step until ``config.steps`` (or ``should_stop(step, losses)`` says so after a step).

        ``loss_fn(step, generator)`` returns the scalar loss of 0-based ``step``; the loop sets
        the learning rate, back-propagates, clips, steps AdamW and the EMA, records the loss and
        calls ``on_checkpoint(step)`` every ``checkpoint_every`` steps, at the last step and when
        ``should_stop`` ends the run early. A non-finite loss stops the run with a
        :class:`CheckpointError` before any checkpoint of the diverged weights is written.
        """
        from tqdm.auto import tqdm

        cfg = self.config
        bar = tqdm(total=cfg.steps, initial=self.step, desc=desc, disable=not progress, dynamic_ncols=True)
        try:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                for group in self.optimizer.param_groups:
                    group["lr"] = warmup_lr(cfg, self.step)
                loss = loss_fn(self.step, self.generator)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.step(self.model.parameters())
                self.step += 1
                self.losses.append(loss.item())
                if not math.isfinite(self.losses[-1]):
                    raise CheckpointError(f"training diverged at step {self.step} (loss {self.losses[-1]})")
                self.wall_seconds += time.perf_counter() - t0
                bar.update(1)
                bar.set_postfix({postfix: f"{self.tail_mean(postfix_window):.4f}"})
                stop = should_stop is not None and should_stop(self.step, self.losses)
                if on_checkpoint is not None and (
                    stop or self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps
                ):
                    on_checkpoint(self.step)
                if stop:
                    break
        finally:
            bar.close()
