"""CPSample as a diffusers pipeline, and the CPSampleUNet wrapper surviving a stock pipeline's save_pretrained."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from privdiff.cpsample import CPSampleGuidance, CPSampleUNet, NoiseAwareClassifier
from privdiff.cpsample.pipeline import CPSamplePipeline
from privdiff.diffusion import build_unet, sample, unet_config
from privdiff.diffusion.model import DDIM_SCHEDULE
from privdiff.errors import InvalidParameter


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    unet = build_unet(unet_config("tiny")).eval()
    torch.manual_seed(1)
    clf = NoiseAwareClassifier(in_channels=1, block_out_channels=(8, 16), norm_num_groups=4, time_embed_dim=16).eval()
    sched = DDIMScheduler(**DDIM_SCHEDULE, clip_sample=False, set_alpha_to_one=False)
    return unet, clf, sched


def _pipe(parts, **kw):
    unet, clf, sched = parts
    return CPSamplePipeline(unet, sched, clf, **kw)


def _np(pipe, seed=0, **kw):
    return pipe(2, num_inference_steps=3, generator=torch.Generator().manual_seed(seed), output_type="np", **kw)


def test_scale_zero_is_the_plain_sampler_and_guidance_moves_samples(parts):
    unet, _, sched = parts
    pipe = _pipe(parts, alpha=0.5, scale=50.0)
    x_T = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    plain = sample(lambda x, t: unet(x, t).sample, sched, x_T, num_inference_steps=3)
    off = _np(pipe, scale=0.0)
    np.testing.assert_allclose(off.images, (plain.clamp(-1, 1) / 2 + 0.5).permute(0, 2, 3, 1).numpy(), atol=1e-6)
    on = _np(pipe)
    assert on.gate["firing_rate"] == 1.0 and on.gate["calls"] == 3
    assert not np.allclose(on.images, off.images)


def test_save_pretrained_keeps_unet_scheduler_classifier_and_settings(parts, tmp_path):
    pipe = _pipe(parts, alpha=0.5, scale=50.0, mode="away_from_predicted")
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["_class_name"] == "CPSamplePipeline"
    assert index["unet"] == ["diffusers", "UNet2DModel"]
    assert index["classifier"] == ["privdiff.cpsample.classifier", "NoiseAwareClassifier"]
    assert (index["alpha"], index["scale"], index["mode"]) == (0.5, 50.0, "away_from_predicted")
    back = CPSamplePipeline.from_pretrained(tmp_path / "p")
    np.testing.assert_array_equal(_np(back).images, _np(pipe).images)


@pytest.mark.parametrize("scheduler_cls", [DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler])
def test_any_scheduler_samples_with_protection(parts, scheduler_cls):
    unet, clf, _ = parts
    pipe = CPSamplePipeline(unet, scheduler_cls(**DDIM_SCHEDULE), clf, alpha=0.5, scale=5.0)
    out = pipe(2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (2, 1, 8, 8) and torch.isfinite(out.images).all()
    assert out.gate["calls"] == 3


def test_bad_settings_and_output_type_are_refused(parts):
    with pytest.raises(InvalidParameter, match="alpha"):
        _pipe(parts, alpha=0.7)
    with pytest.raises(InvalidParameter, match="output_type"):
        _pipe(parts)(1, num_inference_steps=2, output_type="jpeg")
    pil = _pipe(parts)(1, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 1 and pil[0].size == (8, 8) and pil[0].mode == "L"


def test_cpsample_pipeline_output_slice(parts):
    """Stored numbers (diffusers-style): 3 DDIM steps, α = 1/2 (fires everywhere), s = 5.

    The corner has unsaturated pixels that differ from the unprotected sampler's
    [[1, 0, 1], [1, 0, 1], [0.666739, 0, 0.05338]]."""
    out = _np(_pipe(parts, alpha=0.5, scale=5.0, mode="toward_opposite", gate_on="xt", step="gradient"))
    expected = np.array([[1.0, 0.0, 1.0], [0.998615, 0.0, 1.0], [0.757384, 0.0, 0.358809]], dtype=np.float32)
    np.testing.assert_allclose(out.images[1, 4:7, 0:3, 0], expected, atol=1e-4, rtol=0)


def test_wrapped_unet_survives_a_stock_pipelines_save_pretrained(parts, tmp_path):
    """A CPSampleUNet put into a stock DDPMPipeline is saved and loaded back, not silently dropped."""
    unet, clf, sched = parts
    wrapped = CPSampleUNet(
        unet,
        CPSampleGuidance(clf, alpha=0.5, scale=50.0, mode="toward_opposite", gate_on="xt", step="gradient"),
        sched.alphas_cumprod,
    )
    pipe = DDPMPipeline(unet=unet, scheduler=sched)
    pipe.unet = wrapped
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["unet"] == ["privdiff.cpsample.guidance", "CPSampleUNet"]
    assert (tmp_path / "p" / "unet" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    back = DDPMPipeline.from_pretrained(tmp_path / "p")
    assert isinstance(back.unet, CPSampleUNet)
    assert back.unet.guidance.settings() == wrapped.guidance.settings()

    def run(p):
        return p(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")

    np.testing.assert_array_equal(run(back).images, run(pipe).images)
    assert back.unet.guidance.stats.fired > 0
