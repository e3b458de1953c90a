"""The settings every trainer shares (:class:`TrainConfig`) and the learning-rate schedule.

Kept free of torch so that modules which import torch lazily (``privdiff.rdm.train``, imported by
the CLI for its embedding cache) can define their configs as subclasses; the loop itself is
:class:`privdiff.diffusion.trainer.TrainingLoop`.
"""

from __future__ import annotations

from dataclasses import dataclass

from privdiff.errors import check_in_range, check_int, check_positive


@dataclass
class TrainConfig:
    """The settings every trainer shares (each trainer's config extends this and sets its defaults).

    Attributes:
        steps: optimiser steps in total (a resumed run continues up to this number).
        batch_size: training examples per step.
        lr: AdamW learning rate after a linear warm-up of ``warmup_steps``, then constant.
        warmup_steps: linear warm-up length: lr·min(1, (s + 1)/warmup_steps) at step s (0: none).
        ema_decay: largest EMA decay of the saved weights (reached after the EMA warm-up); 0: no EMA.
        seed: seeds the initialisation and every random draw of training.
        checkpoint_every: steps between checkpoints (the trainer's save callback), and at the end.
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 0
    ema_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 250

    def validate_shared(self) -> None:
        """Check the shared fields (typed errors naming the value and its range)."""
        check_int("steps", self.steps, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_positive("lr", self.lr)
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        check_in_range("ema_decay", self.ema_decay, 0.0, 1.0, low_inclusive=True, high_inclusive=False)
        check_int("seed", self.seed, minimum=0)
        check_int("checkpoint_every", self.checkpoint_every, minimum=1)

    def validate(self) -> TrainConfig:
        self.validate_shared()
        return self


def warmup_lr(config: TrainConfig, step: int) -> float:
    """The learning rate of (0-based) ``step``: linear warm-up, then constant (LambdaLinear-style)."""
    return config.lr * min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps > 0 else config.lr
