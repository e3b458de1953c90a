"""Tiny-model tests of the DDPM training loop, checkpoints and the DDIM loop it feeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from privdiff.diffusion import TrainConfig, ddim_sample, load_model, train_diffusion, unet_config
from privdiff.diffusion.training import TRAINING_STATE
from privdiff.errors import CheckpointError, DataError, InvalidParameter


@pytest.fixture(scope="module")
def tiny_images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, 8, 8, 1), dtype=np.uint8)


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=4, batch_size=4, lr=1e-3, checkpoint_every=2, seed=3, ema_decay=0.9, warmup_steps=1)
    base.update(kw)
    return TrainConfig(**base)


def test_training_writes_a_loadable_checkpoint_with_provenance(tmp_path, tiny_images):
    cfg = unet_config("tiny", image_shape=(1, 8, 8))
    model = train_diffusion(
        tiny_images,
        tmp_path / "run",
        unet_config=cfg,
        config=_cfg(),
        data_spec="random:6",
        command="privdiff train diffusion --data random:6",
        progress=False,
    )
    manifest = json.loads((tmp_path / "run" / "privdiff.json").read_text())
    assert manifest["steps_done"] == 4
    assert manifest["data_spec"] == "random:6"
    assert manifest["commands"] == ["privdiff train diffusion --data random:6"]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
    assert len(json.loads((tmp_path / "run" / "loss.json").read_text())["loss_per_step"]) == 4
    loaded = load_model(tmp_path / "run")
    assert loaded.image_shape == (1, 8, 8)
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        assert torch.equal(loaded.denoiser()(x, t), model.denoiser()(x, t))


@pytest.mark.integration
def test_resumed_training_matches_an_uninterrupted_run(tmp_path, tiny_images):
    cfg = unet_config("tiny", image_shape=(1, 8, 8))
    straight = train_diffusion(tiny_images, tmp_path / "a", unet_config=cfg, config=_cfg(steps=4), progress=False)
    train_diffusion(tiny_images, tmp_path / "b", unet_config=cfg, config=_cfg(steps=2), progress=False)
    resumed = train_diffusion(
        tiny_images,
        tmp_path / "b",
        unet_config=cfg,
        config=_cfg(steps=4),
        resume=True,
        command="resume",
        progress=False,
    )
    for (name, p), q in zip(straight.unet.named_parameters(), resumed.unet.parameters()):
        assert torch.equal(p, q), name
    state_a = torch.load(tmp_path / "a" / TRAINING_STATE, weights_only=False)
    state_b = torch.load(tmp_path / "b" / TRAINING_STATE, weights_only=False)
    assert state_a["losses"] == state_b["losses"]
    assert state_b["commands"] == ["resume"]


@pytest.mark.integration
def test_training_lowers_the_loss_on_a_fixed_tiny_set(tmp_path, tiny_images):
    cfg = unet_config("tiny", image_shape=(1, 8, 8))
    train_diffusion(
        tiny_images,
        tmp_path / "r",
        unet_config=cfg,
        progress=False,
        config=_cfg(steps=60, batch_size=6, lr=3e-3, checkpoint_every=60, ema_decay=0.0),
    )
    losses = json.loads((tmp_path / "r" / "loss.json").read_text())["loss_per_step"]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def test_resume_without_state_is_a_checkpoint_error(tmp_path, tiny_images):
    cfg = unet_config("tiny", image_shape=(1, 8, 8))
    with pytest.raises(CheckpointError, match="cannot resume"):
        train_diffusion(
            tiny_images,
            tmp_path / "none",
            unet_config=cfg,
            config=_cfg(),
            resume=True,
            progress=False,
        )


@pytest.mark.parametrize("field,value", [("steps", 0), ("lr", -1.0), ("batch_size", 0), ("ema_decay", 1.0)])
def test_bad_training_settings_raise_before_writing(tmp_path, tiny_images, field, value):
    cfg = unet_config("tiny", image_shape=(1, 8, 8))
    with pytest.raises(InvalidParameter, match=field):
        train_diffusion(
            tiny_images,
            tmp_path / "x",
            unet_config=cfg,
            config=_cfg(**{field: value}),
            progress=False,
        )
    assert not (tmp_path / "x").exists()


def test_image_shape_mismatch_and_bad_data_are_rejected(tmp_path, tiny_images):
    with pytest.raises(InvalidParameter, match="unet_config"):
        train_diffusion(
            tiny_images,
            tmp_path / "x",
            unet_config=unet_config("fmnist-1m"),
            config=_cfg(),
            progress=False,
        )
    with pytest.raises(DataError):
        train_diffusion(
            tiny_images.astype(np.float32),
            tmp_path / "x",
            unet_config=unet_config("tiny"),
            config=_cfg(),
            progress=False,
        )
    with pytest.raises(InvalidParameter, match="divisible"):
        unet_config("fmnist-1m", image_shape=(1, 30, 30))


def test_load_model_refuses_a_directory_without_manifest(tmp_path):
    with pytest.raises(CheckpointError, match="model.json"):
        load_model(tmp_path)


def test_ddim_sample_is_deterministic_with_eta_zero(tmp_path, tiny_images):
    model = train_diffusion(
        tiny_images,
        tmp_path / "m",
        unet_config=unet_config("tiny"),
        config=_cfg(steps=2),
        progress=False,
    )
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a = ddim_sample(model.denoiser(), model.ddim_scheduler(), x_T, num_inference_steps=5)
    b = ddim_sample(model.denoiser(), model.ddim_scheduler(), x_T, num_inference_steps=5)
    assert a.shape == x_T.shape and torch.equal(a, b)


def test_one_forward_noising_function_matches_diffusers_add_noise_bit_for_bit():
    """q_sample is the one forward process of all three trainers; it must equal DDPMScheduler.add_noise."""
    from diffusers import DDPMScheduler

    from privdiff.diffusion.noising import q_sample

    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn((5, 2, 4, 4), generator=g), torch.randn((5, 2, 4, 4), generator=g)
    t = torch.tensor([0, 1, 250, 998, 999])
    for sched in (DDPMScheduler(), DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195)):
        assert torch.equal(q_sample(x0, t, sched.alphas_cumprod, noise), sched.add_noise(x0, noise, t))
