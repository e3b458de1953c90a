import sys

import numpy as np
import pytest
import torch
from torch import nn

from privdiff.encoders import ImageEncoder, TextEncoder, load_image_encoder
from privdiff.encoders.openclip import OPENAI_CLIP_MEAN, OpenCLIPEncoder
from privdiff.errors import CheckpointError, InvalidParameter, MissingDependency


class _Visual(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.image_size = size
        self.preprocess_cfg = {"size": size, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
        self.proj = nn.Linear(3 * 4 * 4, 8)

    def forward(self, x):
        return self.proj(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


class StandInCLIP(nn.Module):
    """Smallest object with open_clip's model interface (encode_image / encode_text / visual)."""

    def __init__(self, size=16, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.visual = _Visual(size)
        self.token_embedding = nn.EmbeddingBag(128, 8)
        self.seen = []

    def encode_image(self, x):
        self.seen.append(x.clone())
        return self.visual(x) * 3.0  # un-normalised on purpose

    def encode_text(self, tokens):
        return self.token_embedding(tokens) * 2.0


def tokenizer(texts):
    width = max(len(t) for t in texts)
    return torch.tensor([[ord(ch) % 128 for ch in t.ljust(width)] for t in texts])


@pytest.fixture
def clip():
    return OpenCLIPEncoder("ViT-Tiny-standin", model=StandInCLIP(), tokenizer=tokenizer)


def test_adapter_satisfies_both_protocols_with_unit_rows(clip):
    assert isinstance(clip, ImageEncoder) and isinstance(clip, TextEncoder)
    assert clip.dim == 8 and clip.image_size == 16
    imgs = np.random.default_rng(0).integers(0, 256, (5, 20, 30, 3), dtype=np.uint8)
    z = clip.encode_images(imgs, batch_size=2)
    t = clip.encode_text(["a cat", "a dog on a sofa"])
    assert z.shape == (5, 8) and t.shape == (2, 8) and z.dtype == t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(z, clip.encode_images(imgs, batch_size=5), atol=1e-6)


def test_preprocess_resizes_shorter_side_centre_crops_and_normalises(clip):
    img = np.zeros((1, 16, 32, 3), dtype=np.uint8)
    img[:, :, 8:24] = 255  # only the central 16 columns are white
    x = clip.preprocess(img)
    assert x.shape == (1, 3, 16, 16)
    # mean 0.5 / std 0.25 from the model's preprocess_cfg: white -> 2, black -> -2.
    assert torch.allclose(x, torch.full_like(x, 2.0), atol=1e-4)
    grey = np.full((1, 16, 16, 1), 128, dtype=np.uint8)
    np.testing.assert_allclose(clip.preprocess(grey), clip.preprocess(np.repeat(grey, 3, -1)), atol=1e-6)


def test_mean_std_fall_back_to_openai_clip_values():
    model = StandInCLIP()
    del model.visual.preprocess_cfg
    enc = OpenCLIPEncoder("m", model=model, tokenizer=tokenizer)
    assert enc.mean == OPENAI_CLIP_MEAN and enc.image_size == 16


def test_space_id_tracks_weights_and_checkpoint_file(tmp_path):
    a = OpenCLIPEncoder("m", model=StandInCLIP(seed=0), tokenizer=tokenizer)
    b = OpenCLIPEncoder("m", model=StandInCLIP(seed=0), tokenizer=tokenizer)
    c = OpenCLIPEncoder("m", model=StandInCLIP(seed=1), tokenizer=tokenizer)
    assert a.space_id == b.space_id != c.space_id and a.space_id.startswith("openclip/m/")
    ckpt = tmp_path / "w.bin"
    ckpt.write_bytes(b"weights-1")
    d = OpenCLIPEncoder("m", ckpt, model=StandInCLIP(seed=0), tokenizer=tokenizer)
    ckpt.write_bytes(b"weights-2")
    e = OpenCLIPEncoder("m", ckpt, model=StandInCLIP(seed=0), tokenizer=tokenizer)
    assert d.space_id != e.space_id != a.space_id


def test_missing_open_clip_raises_missing_dependency(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # makes `import open_clip` fail
    ckpt = tmp_path / "w.bin"
    ckpt.write_bytes(b"x")
    with pytest.raises(MissingDependency, match="open_clip"):
        OpenCLIPEncoder("ViT-B-32", ckpt)
    with pytest.raises(MissingDependency):
        load_image_encoder(f"openclip:ViT-B-32@{ckpt}")


def test_bad_arguments_are_typed_errors(clip, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        OpenCLIPEncoder("m", tmp_path / "absent.pt", model=StandInCLIP(), tokenizer=tokenizer)
    with pytest.raises(InvalidParameter):
        clip.encode_images(np.zeros((1, 4, 4, 3), dtype=np.float64))
    with pytest.raises(InvalidParameter, match="texts"):
        clip.encode_text("a single string")
    with pytest.raises(InvalidParameter, match="texts"):
        clip.encode_text([])
