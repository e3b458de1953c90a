"""DPRDMPipeline is a diffusers DiffusionPipeline: output_type, save_pretrained/from_pretrained,
any scheduler — with the privacy contract unchanged (checked before the charge, one charge per prompt)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from PIL import Image

from privdiff.errors import InvalidParameter
from privdiff.rdm.conditioning import DPRetrievalContext, QueryOnlyContext
from privdiff.rdm.model import RDMConfig, RDMModel
from privdiff.rdm.pipeline import DPRDMPipeline, DPRDMPipelineOutput, GenerationOutput

from .conftest import TINY_DIM, TINY_SPACE

FAST = dict(num_inference_steps=2, guidance_scale=2.0, seed=0, images_per_prompt=2)


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


@pytest.fixture(scope="module")
def queries():
    return np.random.default_rng(1).normal(size=(2, TINY_DIM)).astype(np.float32)


def _pipe(rdm, **kw):
    return DPRDMPipeline(rdm, QueryOnlyContext(4, TINY_DIM, TINY_SPACE), **kw)


def test_is_a_diffusion_pipeline_with_registered_unet_and_scheduler(rdm):
    pipe = _pipe(rdm)
    assert isinstance(pipe, DiffusionPipeline)
    assert pipe.config["unet"] == ("diffusers", "UNet2DConditionModel")
    assert pipe.config["scheduler"] == ("diffusers", "DDIMScheduler")
    assert pipe.unet is rdm.unet and pipe.device.type == "cpu"


def test_output_types_agree_with_the_uint8_images(rdm, queries):
    legacy = _pipe(rdm)(query_embeddings=queries, **FAST)
    assert isinstance(legacy, GenerationOutput) and legacy.images.shape == (2, 2, 12, 12, 1)
    flat = legacy.flat_images()
    np_out = _pipe(rdm)(query_embeddings=queries, output_type="np", **FAST)
    assert isinstance(np_out, DPRDMPipelineOutput)
    assert np_out.images.shape == (4, 12, 12, 1) and np_out.images.dtype == np.float32
    assert np_out.images.min() >= 0 and np_out.images.max() <= 1
    # uint8 = round(255·x) of the same samples (to_uint8 rounds half up, PIL rounds too).
    assert np.abs(np_out.images * 255 - flat).max() <= 0.5 + 1e-3
    np.testing.assert_array_equal(np_out.generation.images, legacy.images)
    pt = _pipe(rdm)(query_embeddings=queries, output_type="pt", **FAST).images
    assert pt.shape == (4, 1, 12, 12)
    torch.testing.assert_close(pt.permute(0, 2, 3, 1), torch.from_numpy(np_out.images))
    pil = _pipe(rdm)(query_embeddings=queries, output_type="pil", **FAST).images
    assert len(pil) == 4 and all(isinstance(im, Image.Image) and im.size == (12, 12) for im in pil)
    images, privacy = _pipe(rdm)(query_embeddings=queries, output_type="np", return_dict=False, **FAST)
    np.testing.assert_array_equal(images, np_out.images)
    assert privacy == np_out.privacy


def test_bad_output_type_is_refused_before_the_charge(rdm, queries, tmp_path):
    from privdiff.accounting.ledger import Ledger
    from privdiff.retrieval import DPRetriever, EmbeddingIndex

    emb = np.random.default_rng(2).normal(size=(20, TINY_DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = EmbeddingIndex.from_embeddings(emb, space_id=TINY_SPACE, visibility="private")
    book = Ledger.create(tmp_path / "b.db", epsilon=50.0, delta=1e-5)
    pipe = DPRDMPipeline(rdm, DPRetrievalContext(DPRetriever(index, 4, 1.0, 0.5, book)))
    with pytest.raises(InvalidParameter, match="output_type"):
        pipe(query_embeddings=queries, output_type="jpeg", **FAST)
    assert book.status().queries == 0
    out = pipe(query_embeddings=queries, output_type="np", **FAST)
    assert book.status().queries == 2 and out.privacy["queries_charged"] == 2
    assert set(out.privacy) >= {"epsilon_spent", "sigma", "k"}


def test_save_pretrained_from_pretrained_round_trip(rdm, queries, tmp_path):
    pipe = _pipe(rdm)
    pipe.model_info = {"generation_defaults": {"k": 4, "sigma": 0.5}}
    pipe.save_pretrained(tmp_path / "p")
    back = DPRDMPipeline.from_pretrained(tmp_path / "p")
    assert back.model_info["generation_defaults"] == {"k": 4, "sigma": 0.5}
    assert back.source.mode == "no-retrieval"  # no private index unless one is given
    a = pipe(query_embeddings=queries, **FAST).images
    b = back(query_embeddings=queries, **FAST).images
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("scheduler_cls", [DPMSolverMultistepScheduler, EulerDiscreteScheduler])
def test_any_scheduler_runs_and_saves_with_the_pipeline(rdm, queries, tmp_path, scheduler_cls):
    sched = scheduler_cls.from_config(rdm.ddim_scheduler().config)
    pipe = _pipe(rdm, scheduler=sched)
    out = pipe(query_embeddings=queries, **FAST)
    assert out.settings["scheduler"] == scheduler_cls.__name__.removesuffix("Scheduler")
    pipe.save_pretrained(tmp_path / "p")
    back = DPRDMPipeline.from_pretrained(tmp_path / "p")
    assert type(back.scheduler) is scheduler_cls
    np.testing.assert_array_equal(back(query_embeddings=queries, **FAST).images, out.images)


def test_np_output_slice(rdm, queries):
    """A stored slice of the float output (diffusers-style), over the same path as the uint8 slice."""
    out = _pipe(rdm)(query_embeddings=queries, output_type="np", **FAST)
    expected = np.array(EXPECTED_NP_SLICE, dtype=np.float32)
    np.testing.assert_allclose(out.images[3, -3:, -3:, 0], expected, atol=1e-4, rtol=0)


#: The same corner as tests/rdm/test_output_slices.py's uint8 slice [[0, 93, 30], [77, 255, 232], [255, 255, 0]].
EXPECTED_NP_SLICE = [[0.0, 0.363608, 0.118945], [0.302728, 1.0, 0.911510], [1.0, 1.0, 0.0]]
