"""Stored output slices of the tiny RDM: classifier-free guided DDIM and the whole pipeline.

A tiny RDM built from its config under a fixed seed, fixed contexts / query embeddings and 2 DDIM
steps from a seeded x_T; a 3×3 corner is compared with numbers stored when the code was known to
be right (atol 1e-4 for floats; the pipeline's uint8 pixels exactly). A silent change anywhere on
the path (context handling, the guidance combination, the scheduler, x_T drawing, the uint8
conversion) fails here. If a change is intended, regenerate the numbers and say why in the commit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privdiff.diffusion import ddim_sample
from privdiff.rdm.conditioning import QueryOnlyContext
from privdiff.rdm.model import ClassifierFreeGuidance, RDMConfig, RDMModel
from privdiff.rdm.pipeline import DPRDMPipeline

from .conftest import TINY_DIM, TINY_SPACE


@pytest.fixture(scope="module")
def rdm():
    torch.manual_seed(0)
    cfg = RDMConfig(
        space_id=TINY_SPACE,
        embedding_dim=TINY_DIM,
        k=4,
        sample_size=12,
        block_out_channels=(8, 8, 8),
        attention_head_dim=2,
    )
    return RDMModel(cfg).eval()


def test_classifier_free_guided_ddim_slice(rdm):
    contexts = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 4, TINY_DIM)).astype(np.float32))
    x_T = torch.randn((2, 1, 12, 12), generator=torch.Generator().manual_seed(0))
    x0 = ddim_sample(ClassifierFreeGuidance(rdm, contexts, 2.0), rdm.ddim_scheduler(), x_T, num_inference_steps=2)
    expected = np.array(
        [
            [-2.864591, 1.047726, -0.325265],
            [2.048079, 2.080315, 0.791507],
            [-0.668933, 2.640122, -3.008227],
        ],
        dtype=np.float32,
    )
    np.testing.assert_allclose(x0[1, 0, -3:, -3:].numpy(), expected, atol=1e-4, rtol=0)


def test_pipeline_image_slice(rdm):
    pipe = DPRDMPipeline(rdm, QueryOnlyContext(4, TINY_DIM, TINY_SPACE))
    queries = np.random.default_rng(1).normal(size=(2, TINY_DIM)).astype(np.float32)
    out = pipe(
        query_embeddings=queries,
        images_per_prompt=2,
        num_inference_steps=2,
        guidance_scale=2.0,
        seed=0,
    )
    assert out.images.shape == (2, 2, 12, 12, 1) and out.images.dtype == np.uint8
    expected = np.array([[0, 93, 30], [77, 255, 232], [255, 255, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(out.images[1, 1, -3:, -3:, 0], expected)
