"""Stored output slices of the tiny DDIM sampler (as diffusers' pipeline tests do).

A tiny U-Net built from its preset under a fixed seed, 2 DDIM steps from a seeded x_T: a 3×3
corner of x_0 is compared with numbers stored when the sampler was known to be right. Any silent
change in the numbers (the scheduler's timesteps, the update rule, η handling, the guidance hook,
a dependency's defaults) fails here even when every shape and range check still passes. If a
change is intended, regenerate the numbers and say why in the commit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privdiff.cpsample import CPSampleGuidance, NoiseAwareClassifier
from privdiff.diffusion import DiffusionModel, build_unet, ddim_sample, unet_config

ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = DiffusionModel(unet=build_unet(unet_config("tiny")).eval())
    torch.manual_seed(1)
    classifier = NoiseAwareClassifier(in_channels=1, block_out_channels=(8, 16)).eval()
    x_T = torch.randn((2, *model.image_shape), generator=torch.Generator().manual_seed(0))
    return model, classifier, x_T


def test_plain_ddim_slice(tiny):
    model, _, x_T = tiny
    x0 = ddim_sample(model.denoiser(), model.ddim_scheduler(), x_T.clone(), num_inference_steps=2)
    expected = np.array(
        [
            [6.104253, -6.125810, -7.393128],
            [-1.745947, 0.337957, -1.690664],
            [-4.261132, 7.570629, -2.646555],
        ],
        dtype=np.float32,
    )
    np.testing.assert_allclose(x0[0, 0, -3:, -3:].numpy(), expected, atol=ATOL, rtol=0)


def test_cpsample_guided_ddim_slice(tiny):
    model, classifier, x_T = tiny
    # α = 1/2: the gate fires wherever the random classifier leans either way, i.e. at every step.
    guidance = CPSampleGuidance(
        classifier, alpha=0.5, scale=100.0, mode="toward_opposite", gate_on="xt", step="gradient"
    )
    x0 = ddim_sample(
        model.denoiser(),
        model.ddim_scheduler(),
        x_T.clone(),
        num_inference_steps=2,
        guidance=guidance,
    )
    expected = np.array(
        [
            [3.984486, -7.922492, -4.814687],
            [-2.659318, 3.562080, -1.955128],
            [-1.331714, 7.333805, -3.311799],
        ],
        dtype=np.float32,
    )
    np.testing.assert_allclose(x0[0, 0, -3:, -3:].numpy(), expected, atol=ATOL, rtol=0)
    assert guidance.stats.summary()["firing_rate"] == 1.0
