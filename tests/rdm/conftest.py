"""Tiny RDM components shared by the rdm tests (fixed seeds, a few thousand parameters)."""

from __future__ import annotations

import numpy as np
import pytest

from privdiff.encoders.base import l2_normalize

TINY_DIM = 16
TINY_SPACE = "test-pixels-rp16/v1"


class PixelProjectionEncoder:
    """Stand-in image+text encoder: a fixed random projection of pixels (images) and of a
    hashed bag of characters (text), both into one 16-d unit space."""

    def __init__(self, dim: int = TINY_DIM, space_id: str = TINY_SPACE, side: int = 12):
        rng = np.random.default_rng(1234)
        self.dim = dim
        self.space_id = space_id
        self._proj = rng.normal(size=(side * side, dim)).astype(np.float32)
        self._text = rng.normal(size=(256, dim)).astype(np.float32)

    def __repr__(self):
        return f"PixelProjectionEncoder(space_id={self.space_id!r})"

    def encode_images(self, images, *, batch_size=256, progress=False):
        x = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0
        return l2_normalize(x @ self._proj)

    def encode_text(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for ch in t.encode():
                out[i] += self._text[ch]
        return l2_normalize(out)


@pytest.fixture(scope="session")
def tiny_data():
    """32 random 12×12 grey images with their stand-in embeddings."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(32, 12, 12, 1), dtype=np.uint8)
    enc = PixelProjectionEncoder()
    return images, enc.encode_images(images), enc


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny randomly initialised RDM saved as a model directory (training is tested apart)."""
    import torch

    from privdiff.rdm.model import RDMConfig, RDMModel

    torch.manual_seed(0)
    cfg = RDMConfig(
        space_id=TINY_SPACE,
        embedding_dim=TINY_DIM,
        k=4,
        sample_size=12,
        block_out_channels=(8, 8, 8),
        attention_head_dim=2,
    )
    out = tmp_path_factory.mktemp("rdm") / "model"
    RDMModel(cfg).save(out, extra={"generation_defaults": {"k": 4, "sigma": 1.0, "sample_rate": 0.5}})
    return out
