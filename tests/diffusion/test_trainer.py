"""The one training loop (diffusion/trainer.py) and the shared TrainConfig base, on a tiny linear model."""

from __future__ import annotations

import copy

import pytest
import torch

from privdiff.cpsample.training import ClassifierTrainConfig
from privdiff.diffusion.trainer import TrainConfig, TrainingLoop, warmup_lr
from privdiff.diffusion.training import TrainConfig as PixelTrainConfig
from privdiff.errors import CheckpointError, InvalidParameter
from privdiff.rdm.train import TrainConfig as RDMTrainConfig

SHARED = ("steps", "batch_size", "lr", "warmup_steps", "ema_decay", "seed", "checkpoint_every")


def _loop(steps: int = 6, **kw) -> TrainingLoop:
    cfg = TrainConfig(**{"steps": steps, "lr": 0.05, "warmup_steps": 3, "ema_decay": 0.9, "seed": 1, **kw})
    torch.manual_seed(cfg.seed)
    return TrainingLoop(torch.nn.Linear(3, 1), cfg.validate(), grad_clip=1.0)


def _loss(loop: TrainingLoop, seen_lr: list[float] | None = None):
    def loss_fn(step: int, g: torch.Generator) -> torch.Tensor:
        if seen_lr is not None:
            seen_lr.append(loop.optimizer.param_groups[0]["lr"])
        x = torch.randn((4, 3), generator=g)
        return torch.nn.functional.mse_loss(loop.model(x).squeeze(1), x.sum(dim=1))

    return loss_fn


def _snapshot(loop: TrainingLoop) -> dict:
    return copy.deepcopy(loop.state_dict())


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_the_three_trainer_configs_extend_the_shared_base_and_validate_its_fields():
    for cls in (PixelTrainConfig, RDMTrainConfig, ClassifierTrainConfig):
        assert issubclass(cls, TrainConfig)
        assert set(SHARED) <= set(cls.__dataclass_fields__)
        with pytest.raises(InvalidParameter, match="ema_decay"):
            cls(ema_decay=1.0).validate()
        with pytest.raises(InvalidParameter, match="warmup_steps"):
            cls(warmup_steps=-1).validate()
    # The classifier keeps its original optimisation by default: no warm-up, no EMA.
    assert (ClassifierTrainConfig().warmup_steps, ClassifierTrainConfig().ema_decay) == (0, 0.0)


def test_learning_rate_warms_up_linearly_then_stays_constant_and_is_what_the_optimizer_uses():
    cfg = TrainConfig(lr=0.4, warmup_steps=4)
    assert [warmup_lr(cfg, s) for s in range(6)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    assert warmup_lr(TrainConfig(lr=0.4, warmup_steps=0), 0) == 0.4
    loop = _loop()
    seen: list[float] = []
    loop.run(_loss(loop, seen), progress=False)
    assert seen == [warmup_lr(loop.config, s) for s in range(6)]


def test_checkpoints_fire_every_n_steps_and_at_the_end():
    loop = _loop(steps=5, checkpoint_every=2)
    fired: list[int] = []
    loop.run(_loss(loop), on_checkpoint=fired.append, progress=False)
    assert fired == [2, 4, 5]
    assert loop.step == 5 and len(loop.losses) == 5


def test_resuming_from_a_checkpoint_matches_an_uninterrupted_run_and_stopping_early_equals_fewer_steps():
    full = _loop(steps=6, checkpoint_every=2)
    states: dict[int, dict] = {}
    full.run(_loss(full), on_checkpoint=lambda s: states.__setitem__(s, _snapshot(full)), progress=False)

    resumed = _loop(steps=6)
    resumed.load_state_dict(states[2])
    resumed.run(_loss(resumed), progress=False)
    assert resumed.losses == full.losses
    assert _same_weights(resumed.model, full.model)
    assert _same_weights(resumed.averaged_into(torch.nn.Linear(3, 1)), full.averaged_into(torch.nn.Linear(3, 1)))

    short = _loop(steps=4)
    short.run(_loss(short), progress=False)
    assert short.state_dict()["losses"] == states[4]["losses"]
    assert all(torch.equal(short.model.state_dict()[k], v) for k, v in states[4]["model"].items())


def test_ema_weights_are_saved_when_on_and_raw_weights_when_off():
    on = _loop()
    on.run(_loss(on), progress=False)
    assert not _same_weights(on.averaged_into(torch.nn.Linear(3, 1)), on.model)
    off = _loop(ema_decay=0.0)
    off.run(_loss(off), progress=False)
    assert off.ema is None and off.state_dict()["ema"] is None
    assert _same_weights(off.averaged_into(torch.nn.Linear(3, 1)), off.model)


def test_a_stop_rule_ends_the_run_early_with_a_checkpoint_at_the_stop():
    loop = _loop(steps=10, checkpoint_every=4)
    fired: list[int] = []
    loop.run(_loss(loop), on_checkpoint=fired.append, should_stop=lambda step, losses: step == 3, progress=False)
    assert loop.step == 3 and fired == [3]


def test_a_non_finite_loss_stops_training_before_a_checkpoint_of_the_diverged_weights():
    loop = _loop(steps=4, checkpoint_every=1)
    fired: list[int] = []

    def loss_fn(step: int, g: torch.Generator) -> torch.Tensor:
        loss = _loss(loop)(step, g)
        return loss * float("nan") if step == 2 else loss

    with pytest.raises(CheckpointError, match="diverged at step 3"):
        loop.run(loss_fn, on_checkpoint=fired.append, progress=False)
    assert fired == [1, 2]


def test_a_non_positive_gradient_clip_is_refused():
    with pytest.raises(InvalidParameter, match="grad_clip"):
        TrainingLoop(torch.nn.Linear(3, 1), TrainConfig(), grad_clip=0.0)
