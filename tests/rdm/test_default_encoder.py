"""``--encoder default`` wherever a model is known means the model's own space: the shipped RDM's
space (``fmnist-public-cnn/v1``) for it, a user's RDM trained in the EfficientNet space still works
without naming its encoder, and an explicit encoder of another space is refused before anything runs."""

from __future__ import annotations

import pytest
import torch

from privdiff.encoders import DEFAULT_SPACE_ID, EFFNET_SPACE_ID
from privdiff.errors import EncoderMismatch
from privdiff.rdm.model import RDMConfig, RDMModel
from privdiff.rdm.pipeline import make_pipeline

DIMS = {EFFNET_SPACE_ID: 1280, DEFAULT_SPACE_ID: 128}


def _tiny_model(tmp_path, space: str):
    torch.manual_seed(0)
    cfg = RDMConfig(
        space_id=space,
        embedding_dim=DIMS[space],
        k=4,
        sample_size=12,
        block_out_channels=(8, 8, 8),
        attention_head_dim=2,
    )
    directory = tmp_path / space.replace("/", "_")
    RDMModel(cfg).save(directory)
    return directory


@pytest.mark.integration
@pytest.mark.parametrize("space", [EFFNET_SPACE_ID, DEFAULT_SPACE_ID])
def test_default_encoder_is_the_models_own_space(tmp_path, space):
    pipe, _ = make_pipeline(_tiny_model(tmp_path, space), mode="no-retrieval", encoder="default")
    assert pipe.text_encoder.space_id == space and pipe.text_encoder.dim == DIMS[space]
    out = pipe(["a photo of a sneaker"], images_per_prompt=1, num_inference_steps=1, seed=0)
    assert out.images.shape == (1, 1, 12, 12, 1)


@pytest.mark.integration
def test_an_explicit_encoder_of_another_space_is_refused(tmp_path):
    with pytest.raises(EncoderMismatch, match=EFFNET_SPACE_ID):
        make_pipeline(_tiny_model(tmp_path, EFFNET_SPACE_ID), mode="no-retrieval", encoder=DEFAULT_SPACE_ID)
