"""The transformers CLIP adapter: local folders only, one space id per checkpoint, clear refusals."""

from __future__ import annotations

import numpy as np
import pytest

from privdiff.errors import CheckpointError


@pytest.fixture(scope="module")
def towers():
    import torch

    from privdiff.decoders import synthetic

    torch.manual_seed(0)
    return synthetic.clip_towers("tiny")


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory, towers):
    from privdiff.decoders import synthetic

    return synthetic.save_clip_folder(tmp_path_factory.mktemp("clip") / "prior", towers=towers)


IMAGES = np.random.default_rng(0).integers(0, 256, size=(5, 20, 24, 3), dtype=np.uint8)


def test_prior_layout_gives_unit_rows_in_one_space(prior_dir):
    from privdiff.encoders.hfclip import CLIPEncoder

    enc = CLIPEncoder(prior_dir)
    assert enc.dim == 32 and enc.space_id.startswith("hfclip/32d/")
    img = enc.encode_images(IMAGES)
    txt = enc.encode_text(["a bag", "a shoe"])
    assert img.shape == (5, 32) and txt.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, rtol=1e-5)
    raw = enc.raw_image_embeds(IMAGES)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), img, rtol=1e-5, atol=1e-6)
    grey = enc.encode_images(IMAGES[..., :1])  # grey images are repeated to RGB
    assert grey.shape == (5, 32)
    assert CLIPEncoder(prior_dir).space_id == enc.space_id  # stable across loads


def test_other_weights_are_another_space(tmp_path, prior_dir):
    import torch

    from privdiff.decoders import synthetic
    from privdiff.encoders.hfclip import CLIPEncoder

    torch.manual_seed(1)
    other = synthetic.save_clip_folder(tmp_path / "other")
    assert CLIPEncoder(other).space_id != CLIPEncoder(prior_dir).space_id


def test_full_clip_checkpoint_layout(tmp_path, towers):
    from transformers import CLIPConfig, CLIPModel

    from privdiff.encoders.hfclip import CLIPEncoder

    cfg = CLIPConfig(
        text_config=towers["text_encoder"].config.to_dict(),
        vision_config=towers["image_encoder"].config.to_dict(),
        projection_dim=32,
    )
    CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    towers["tokenizer"].save_pretrained(tmp_path / "clip")
    enc = CLIPEncoder(tmp_path / "clip")
    assert enc.has_text and enc.encode_text(["a coat"]).shape == (1, 32)


def test_image_tower_alone_builds_an_index_but_cannot_embed_prompts(tmp_path, towers):
    from privdiff.encoders.hfclip import CLIPEncoder

    towers["image_encoder"].save_pretrained(tmp_path / "image_encoder_only")
    enc = CLIPEncoder(tmp_path / "image_encoder_only")
    assert enc.encode_images(IMAGES).shape == (5, 32)
    with pytest.raises(CheckpointError, match="text tower"):
        enc.encode_text(["a bag"])


def test_text_tower_without_projection_is_refused(tmp_path, towers):
    from transformers import CLIPTextModel

    from privdiff.encoders.hfclip import CLIPEncoder

    towers["image_encoder"].save_pretrained(tmp_path / "d" / "image_encoder")
    towers["tokenizer"].save_pretrained(tmp_path / "d" / "tokenizer")
    CLIPTextModel(towers["text_encoder"].config).save_pretrained(tmp_path / "d" / "text_encoder")
    with pytest.raises(CheckpointError, match="missing"):
        CLIPEncoder(tmp_path / "d")


def test_missing_folder_names_what_to_download(tmp_path):
    from privdiff.encoders.hfclip import CLIPEncoder

    with pytest.raises(CheckpointError, match="download"):
        CLIPEncoder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="kandinsky-2-2-prior"):
        CLIPEncoder(tmp_path / "empty")


def test_registry_name_serves_both_towers(prior_dir):
    from privdiff.encoders import load_image_encoder, load_text_encoder

    name = f"clip:{prior_dir}"
    img, txt = load_image_encoder(name), load_text_encoder(name)
    assert img is txt and img.space_id.startswith("hfclip/")
