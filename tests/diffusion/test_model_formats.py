"""Pixel models are diffusers folders: privdiff's own saves open in ``DDPMPipeline.from_pretrained``,
stock ``DDPMPipeline`` / ``UNet2DModel`` + scheduler folders and the privdiff v1 layout load, and the
CLI samples and trains a CPSample classifier on a stock folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from privdiff.cli import main
from privdiff.diffusion import DiffusionModel, build_unet, load_model, unet_config
from privdiff.diffusion.model import MODEL_JSON, detect_format
from privdiff.errors import CheckpointError


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return DiffusionModel(unet=build_unet(unet_config("tiny")).eval(), meta={"data_spec": "tiny", "seed": 3})


def _draw(model: DiffusionModel, seed: int = 0) -> torch.Tensor:
    from privdiff.diffusion import sample

    x_T = torch.randn((2, *model.image_shape), generator=torch.Generator().manual_seed(seed))
    return sample(model.denoiser(), model.ddim_scheduler(), x_T, num_inference_steps=3)


def test_save_writes_a_ddpm_pipeline_folder_that_round_trips(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline" and index["unet"] == ["diffusers", "UNet2DModel"]
    assert (tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert detect_format(tmp_path / "m") == "privdiff"
    back = DiffusionModel.from_pretrained(tmp_path / "m")
    assert back.meta["data_spec"] == "tiny" and back.meta["seed"] == 3 and back.schedule == tiny_model.schedule
    assert torch.equal(_draw(back), _draw(tiny_model))
    # Stock diffusers opens it too, with the same DDIM scheduler privdiff samples with.
    pipe = DDPMPipeline.from_pretrained(tmp_path / "m")
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.set_alpha_to_one is False and pipe.scheduler.config.clip_sample is False


def test_privdiff_v1_layout_still_loads_and_samples_identically(tmp_path, tiny_model):
    v1 = tmp_path / "v1"
    tiny_model.unet.save_pretrained(v1 / "unet")
    manifest = {"kind": "privdiff.diffusion.pixel", "schedule": tiny_model.schedule, "parameters": 1, "seed": 3}
    (v1 / MODEL_JSON).write_text(json.dumps(manifest))
    assert detect_format(v1) == "privdiff-v1"
    old = load_model(v1)
    assert old.meta == {"seed": 3} and old.scheduler_config is None
    assert torch.equal(_draw(old), _draw(tiny_model))


def _stock_unet() -> UNet2DModel:
    torch.manual_seed(1)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
    ).eval()


@pytest.fixture(scope="module")
def stock_pipeline_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("stock")
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    DDPMPipeline(unet=_stock_unet(), scheduler=sched).save_pretrained(out)
    return out


def test_stock_ddpm_pipeline_folder_loads_with_its_own_schedule(stock_pipeline_dir):
    assert detect_format(stock_pipeline_dir) == "pipeline"
    model = load_model(stock_pipeline_dir)
    assert model.schedule["beta_schedule"] == "squaredcos_cap_v2"
    ddim = model.ddim_scheduler()
    assert ddim.config.beta_schedule == "squaredcos_cap_v2" and ddim.config.clip_sample is True
    assert torch.allclose(
        model.alphas_cumprod(), DDPMScheduler.from_pretrained(stock_pipeline_dir / "scheduler").alphas_cumprod
    )


def test_unet_plus_scheduler_folders_load(tmp_path):
    both = tmp_path / "both"
    _stock_unet().save_pretrained(both / "unet")
    DDPMScheduler(beta_schedule="scaled_linear").save_pretrained(both / "scheduler")
    assert detect_format(both) == "unet+scheduler"
    assert load_model(both).schedule["beta_schedule"] == "scaled_linear"
    bare = tmp_path / "bare"
    _stock_unet().save_pretrained(bare)
    assert detect_format(bare) == "unet"
    assert load_model(bare).schedule["num_train_timesteps"] == 1000  # DDPM defaults without a scheduler


def test_non_epsilon_or_conditional_folders_are_refused(tmp_path):
    d = tmp_path / "v"
    _stock_unet().save_pretrained(d / "unet")
    DDPMScheduler(prediction_type="v_prediction").save_pretrained(d / "scheduler")
    with pytest.raises(CheckpointError, match="prediction_type"):
        load_model(d)
    with pytest.raises(CheckpointError, match="not a diffusion model"):
        load_model(tmp_path / "empty")


def test_cli_sample_runs_on_a_stock_ddpm_pipeline_folder(tmp_path, stock_pipeline_dir):
    out = tmp_path / "s"
    code = main(["sample", "--model", str(stock_pipeline_dir), "-n", "2", "--steps", "2", "--out", str(out), "--quiet"])
    assert code == 0
    with np.load(out / "images.npz") as z:
        images = z["images"]
    assert images.shape == (2, 8, 8, 1) and images.dtype == np.uint8


@pytest.mark.integration
def test_cli_protect_train_runs_on_a_stock_ddpm_pipeline_folder(tmp_path, stock_pipeline_dir):
    from privdiff.data import load_dataset

    try:
        load_dataset("fashion-mnist:train[:2]", size=8)
    except Exception:  # noqa: BLE001
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    out = tmp_path / "clf"
    args = ["protect", "train", "--data", "fashion-mnist:train[:4]", "--size", "8", "--model"]
    code = main([*args, str(stock_pipeline_dir), "--out", str(out), "--steps", "2", "--batch-size", "4", "--json"])
    assert code == 0
    assert (out / "report.json").is_file()
