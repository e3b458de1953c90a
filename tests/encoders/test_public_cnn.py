"""The public-data CNN retrieval space: balanced training rows, encoding, concatenation, assets."""

import numpy as np
import pytest

from privdiff.encoders.public_cnn import (
    ConcatEncoder,
    PublicCNNEncoder,
    balanced_rows,
    load_public_cnn,
    save_public_cnn,
    train_public_cnn,
)
from privdiff.errors import CheckpointError, InvalidParameter


def _tiny_encoder(seed=0):
    import torch

    from privdiff.evaluation.yardstick import Yardstick, YardstickConfig, YardstickNet

    torch.manual_seed(seed)
    cfg = YardstickConfig(image_size=8, channels=1, class_names=("a", "b"), widths=(4, 4), feature_dim=6)
    return PublicCNNEncoder(Yardstick(YardstickNet(cfg), cfg), np.full(6, 0.01, np.float32), source="test")


def test_balanced_rows_repeat_rare_classes_up_to_the_largest():
    labels = np.array([0] * 100 + [1] * 7 + [2] * 30)
    rows = balanced_rows(labels, np.random.default_rng(0))
    assert np.bincount(labels[rows]).tolist() == [100, 100, 100]
    assert set(np.flatnonzero(labels == 1)) <= set(rows.tolist())  # every rare image is used


def test_training_refuses_a_private_spec():
    with pytest.raises(InvalidParameter, match="public"):
        train_public_cnn(np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 1, 0, 1]), ["a", "b"], data="x:dprdm-private")


def test_encoder_gives_unit_rows_and_treats_grey_rgb_and_other_sizes_alike():
    enc = _tiny_encoder()
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(5, 8, 8, 1), dtype=np.uint8)
    e = enc.encode_images(grey)
    assert e.shape == (5, 6) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(enc.encode_images(np.repeat(grey, 3, axis=3)), e, atol=1e-6)
    big = enc.encode_images(np.repeat(np.repeat(grey, 2, axis=1), 2, axis=2))  # 16 px, resized to 8
    assert big.shape == (5, 6) and np.isfinite(big).all()


def test_concatenation_cosine_is_the_mean_of_the_parts_cosines():
    a, b = _tiny_encoder(0), _tiny_encoder(1)
    cat = ConcatEncoder([a, b], "cat/v1")
    x = np.random.default_rng(2).integers(0, 256, size=(6, 8, 8, 1), dtype=np.uint8)
    ea, eb, ec = a.encode_images(x), b.encode_images(x), cat.encode_images(x)
    assert ec.shape == (6, 12) and cat.dim == 12
    np.testing.assert_allclose(ec @ ec.T, (ea @ ea.T + eb @ eb.T) / 2, atol=1e-5)
    with pytest.raises(InvalidParameter, match="parts"):
        ConcatEncoder([a], "x/v1")


def test_asset_round_trip_and_a_plain_classifier_is_refused(tmp_path):
    enc = _tiny_encoder()
    x = np.random.default_rng(3).integers(0, 256, size=(4, 8, 8, 1), dtype=np.uint8)
    save_public_cnn(enc, tmp_path / "cnn", command="cmd")
    back = load_public_cnn(tmp_path / "cnn")
    np.testing.assert_allclose(back.encode_images(x), enc.encode_images(x), atol=1e-6)
    assert back.fingerprint == enc.fingerprint
    plain = _tiny_encoder().net
    plain.save_pretrained(tmp_path / "plain")
    with pytest.raises(CheckpointError, match="not a"):
        load_public_cnn(tmp_path / "plain")
    with pytest.raises(CheckpointError, match="no public CNN"):
        load_public_cnn(tmp_path / "missing")


@pytest.mark.integration
@pytest.mark.parametrize("name", ["fmnist-public-cnn", "fmnist-public-cnn+effnet-lite0-64px-c/v1"])
def test_shipped_spaces_load_by_name_with_a_matching_text_projection(name):
    from privdiff.encoders import load_image_encoder, load_text_encoder

    image, text = load_image_encoder(name), load_text_encoder(name)
    assert image.space_id == text.space_id and image.dim == text.dim
    x = np.zeros((2, 28, 28, 1), np.uint8)
    x[1, 4:24, 10:18] = 255  # a trouser-ish bar
    e = image.encode_images(x)
    assert e.shape == (2, image.dim) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)


@pytest.mark.integration
def test_a_projection_trained_against_other_cnn_weights_is_refused(monkeypatch, tmp_path):
    import json
    import shutil

    from privdiff.encoders import registry
    from privdiff.encoders.public_cnn import SPACE_ID
    from privdiff.errors import EncoderMismatch

    stem = registry.projection_stem(SPACE_ID)
    fake_dir = tmp_path / "enc"
    fake_dir.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(stem.with_suffix(suffix), fake_dir / (stem.name + suffix))
    cfg = fake_dir / (stem.name + ".json")
    data = json.loads(cfg.read_text())
    data["image_fingerprint"] = "000000000000"
    cfg.write_text(json.dumps(data))
    monkeypatch.setattr(registry, "projection_stem", lambda space: fake_dir / stem.name)
    monkeypatch.setattr(registry, "_TEXT_CACHE", {})
    with pytest.raises(EncoderMismatch):
        registry.load_text_encoder(SPACE_ID)


def test_default_names_the_shipped_rdm_space():
    # "default" follows the shipped model: an index built with the default encoder is one the
    # shipped RDM retrieves from, and the EfficientNet space stays loadable by name.
    from privdiff.encoders import DEFAULT_SPACE_ID, EFFNET_SPACE_ID, load_image_encoder, load_text_encoder
    from privdiff.rdm.model import read_model_info
    from privdiff.rdm.pipeline import resolve_model_dir

    shipped = read_model_info(resolve_model_dir())["model"]
    assert DEFAULT_SPACE_ID == shipped["space_id"] == "fmnist-public-cnn/v1"
    image = load_image_encoder()
    assert image is load_image_encoder("default") is load_image_encoder(DEFAULT_SPACE_ID)
    assert image.dim == shipped["embedding_dim"] == 128
    assert load_text_encoder("default") is load_text_encoder(DEFAULT_SPACE_ID)
    assert load_image_encoder(EFFNET_SPACE_ID).space_id == EFFNET_SPACE_ID != DEFAULT_SPACE_ID


def test_encoder_for_model_maps_only_default_to_the_model_space():
    from privdiff.encoders import encoder_for_model

    assert encoder_for_model("default", "effnet-lite0-64px-c/v1") == "effnet-lite0-64px-c/v1"
    assert encoder_for_model(" default ", "x/v1") == "x/v1"
    assert encoder_for_model("fmnist-public-cnn/v1", "effnet-lite0-64px-c/v1") == "fmnist-public-cnn/v1"
