import json

import pytest
import torch

from privdiff.errors import CheckpointError, EncoderMismatch, InvalidParameter
from privdiff.rdm.model import ClassifierFreeGuidance, RDMConfig, RDMModel, read_model_info

from .conftest import TINY_DIM, TINY_SPACE


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = RDMConfig(
        space_id=TINY_SPACE,
        embedding_dim=TINY_DIM,
        k=4,
        sample_size=12,
        block_out_channels=(8, 8, 8),
        attention_head_dim=2,
    )
    return RDMModel(cfg).eval()


def _inputs(b=3, tokens=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 12, 12, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    ctx = torch.randn(b, 1, TINY_DIM, generator=g).expand(-1, tokens, -1)
    return x, t, ctx


def test_model_predicts_noise_of_image_shape_and_uses_rdm_schedule():
    model = _tiny_model()
    x, t, ctx = _inputs()
    with torch.no_grad():
        eps = model(x, t, ctx)
    assert eps.shape == x.shape
    sched = model.ddim_scheduler()
    assert sched.config.beta_schedule == "scaled_linear"
    assert sched.config.beta_start == pytest.approx(0.0015) and sched.config.beta_end == pytest.approx(0.0195)
    # scaled_linear: β_t = (linspace(√β_start, √β_end, T))², notes §5
    expected = torch.linspace(0.0015**0.5, 0.0195**0.5, 1000) ** 2
    assert torch.allclose(sched.betas.float(), expected, atol=1e-7)


def test_model_rejects_context_of_wrong_dimension():
    model = _tiny_model()
    x, t, _ = _inputs()
    with pytest.raises(InvalidParameter, match="context"):
        model(x, t, torch.zeros(3, 4, TINY_DIM + 1))


def test_context_conditions_the_prediction():
    model = _tiny_model()
    x, t, ctx = _inputs()
    with torch.no_grad():
        a = model(x, t, ctx)
        b = model(x, t, torch.zeros_like(ctx))
    assert not torch.allclose(a, b)


def test_number_of_identical_context_tokens_does_not_change_prediction():
    # The privatised context is one vector replicated k times: any k must give the same output.
    model = _tiny_model()
    x, t, ctx4 = _inputs(tokens=4)
    with torch.no_grad():
        a = model(x, t, ctx4)
        b = model(x, t, ctx4[:, :1].expand(-1, 17, -1))
    assert torch.allclose(a, b, atol=1e-5)


def test_save_load_round_trip_gives_identical_predictions(tmp_path):
    model = _tiny_model()
    model.save(tmp_path / "m", extra={"command": "privdiff train rdm ..."})
    loaded = RDMModel.load(tmp_path / "m")
    x, t, ctx = _inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx), loaded(x, t, ctx))
    info = read_model_info(tmp_path / "m")
    assert info["model"]["space_id"] == TINY_SPACE and info["command"] == "privdiff train rdm ..."


def test_load_refuses_model_of_another_embedding_space(tmp_path):
    _tiny_model().save(tmp_path / "m")
    with pytest.raises(EncoderMismatch, match="effnet"):
        RDMModel.load(tmp_path / "m", space_id="effnet-lite0-64px-c/v1")


def test_check_space_refuses_foreign_encoder():
    with pytest.raises(EncoderMismatch):
        _tiny_model().check_space("other-space/v2", what="index")
    _tiny_model().check_space(TINY_SPACE)


def test_load_refuses_missing_or_foreign_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not an RDM model directory"):
        RDMModel.load(tmp_path)
    _tiny_model().save(tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    (tmp_path / "m" / "model_index.json").write_text(json.dumps(index | {"_class_name": "DDPMPipeline"}))
    with pytest.raises(CheckpointError, match="not a DPRDMPipeline"):
        RDMModel.load(tmp_path / "m")
    index["privdiff"]["format"] = "something-else"
    (tmp_path / "m" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not a privdiff-rdm"):
        RDMModel.load(tmp_path / "m")


def test_load_refuses_truncated_weights(tmp_path):
    _tiny_model().save(tmp_path / "m")
    w = tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        RDMModel.load(tmp_path / "m")


def test_saved_folder_is_a_diffusers_pipeline_folder(tmp_path):
    from diffusers import DDIMScheduler, UNet2DConditionModel

    model = _tiny_model()
    model.save_pretrained(tmp_path / "m", extra={"generation_defaults": {"k": 3}})
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["_class_name"] == "DPRDMPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["scheduler"] == [
        "diffusers",
        "DDIMScheduler",
    ]
    assert index["rdm_config"]["space_id"] == TINY_SPACE and index["privdiff"]["generation_defaults"] == {"k": 3}
    # Stock diffusers opens the parts: the conditional U-Net and the scheduler privdiff samples with.
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "m" / "unet")
    x, t, ctx = _inputs()
    with torch.no_grad():
        assert torch.equal(unet(x, t, encoder_hidden_states=ctx).sample, model(x, t, ctx))
    saved = DDIMScheduler.from_pretrained(tmp_path / "m" / "scheduler")
    torch.testing.assert_close(saved.alphas_cumprod, model.ddim_scheduler().alphas_cumprod, rtol=0, atol=0)
    assert saved.config.set_alpha_to_one is False and saved.config.clip_sample is False


def _save_v1(model: RDMModel, directory, extra=None):
    """The privdiff v1 layout, as the old ``RDMModel.save`` wrote it."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.unet.state_dict().items()}, str(directory / "model.safetensors"))
    info = {"format": "privdiff-rdm", "format_version": 1, "model": model.config.to_dict(), **(extra or {})}
    (directory / "config.json").write_text(json.dumps(info))


def test_v1_layout_still_loads_and_resaves_as_a_pipeline_folder(tmp_path):
    model = _tiny_model()
    _save_v1(model, tmp_path / "v1", extra={"command": "old"})
    old = RDMModel.from_pretrained(tmp_path / "v1")
    x, t, ctx = _inputs()
    with torch.no_grad():
        assert torch.equal(old(x, t, ctx), model(x, t, ctx))
    assert read_model_info(tmp_path / "v1")["command"] == "old"
    old.save_pretrained(tmp_path / "v1", extra={"command": "old"})
    assert not (tmp_path / "v1" / "model.safetensors").exists() and not (tmp_path / "v1" / "config.json").exists()
    with torch.no_grad():
        assert torch.equal(RDMModel.from_pretrained(tmp_path / "v1")(x, t, ctx), model(x, t, ctx))


def test_config_rejects_sizes_the_unet_cannot_downsample():
    with pytest.raises(InvalidParameter, match="sample_size"):
        RDMConfig(space_id="s", embedding_dim=8, sample_size=30)
    with pytest.raises(InvalidParameter, match="k"):
        RDMConfig(space_id="s", embedding_dim=8, k=0)


def test_cfg_with_scale_one_equals_conditional_prediction():
    model = _tiny_model()
    x, t, ctx = _inputs()
    with torch.no_grad():
        guided = ClassifierFreeGuidance(model, ctx, guidance_scale=1.0)(x, t)
        cond = model(x, t, ctx)
    assert torch.allclose(guided, cond, atol=1e-5)


def test_cfg_extrapolates_from_null_context():
    model = _tiny_model()
    x, t, ctx = _inputs()
    with torch.no_grad():
        cond = model(x, t, ctx)
        uncond = model(x, t, torch.zeros_like(ctx))
        guided = ClassifierFreeGuidance(model, ctx, guidance_scale=2.0)(x, t)
        zero = ClassifierFreeGuidance(model, ctx, guidance_scale=0.0)(x, t)
    assert torch.allclose(guided, 2 * cond - uncond, atol=1e-5)
    assert torch.allclose(zero, uncond, atol=1e-5)
