import json

import numpy as np
import pytest
import torch

from privdiff.data import FASHION_MNIST_CLASSES
from privdiff.encoders import EFFNET_SPACE_ID, check_same_space, load_image_encoder, load_text_encoder
from privdiff.encoders.registry import projection_stem
from privdiff.encoders.text import (
    MiniLMProjectionTextEncoder,
    load_projection,
    save_projection,
    train_text_projection,
)
from privdiff.errors import CheckpointError, DataError, InvalidParameter


@pytest.fixture(scope="module")
def text_encoder():
    return load_text_encoder()


def test_default_text_encoder_shares_the_image_space(text_encoder):
    image = load_image_encoder()
    assert text_encoder is load_text_encoder("default")
    assert text_encoder.space_id == image.space_id and text_encoder.dim == image.dim
    check_same_space(image.space_id, text_encoder.space_id, what="text encoder")
    z = text_encoder.encode_text(["a photo of a sneaker", "jeans", "a handbag"])
    assert z.shape == (3, image.dim) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(z, text_encoder.encode_text(["a photo of a sneaker", "jeans", "a handbag"]))


@pytest.mark.parametrize(
    ("space", "script"),
    [(EFFNET_SPACE_ID, "experiments/text_projection.py"), ("default", "experiments/public_encoder.py")],
)
def test_shipped_projection_config_records_how_to_retrain_it(space, script):
    config = json.loads(projection_stem(load_image_encoder(space).space_id).with_suffix(".json").read_text())
    assert config["command"].startswith(f"python {script}")
    assert "dprdm-public" in config["trained_on"]


@pytest.mark.integration
def test_unseen_phrasings_land_nearest_their_class_images(text_encoder):
    from privdiff.data import load_dataset

    try:
        test = load_dataset("fashion-mnist:test[:120]")
    except DataError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"Fashion-MNIST unavailable: {exc}")
    emb = load_image_encoder().encode_images(test.images)
    centroids = np.stack([emb[test.labels == c].mean(0) for c in range(10)])
    queries = {
        "a pair of trainers": "Sneaker",
        "a handbag": "Bag",
        "jeans": "Trouser",
        "boots": "Ankle boot",
    }
    q = text_encoder.encode_text(list(queries))
    nearest = [FASHION_MNIST_CLASSES[i] for i in np.argmax(q @ centroids.T, axis=1)]
    assert nearest == list(queries.values())


def test_text_input_validation(text_encoder):
    with pytest.raises(InvalidParameter, match="texts"):
        text_encoder.encode_text("jeans")
    with pytest.raises(InvalidParameter, match="texts"):
        text_encoder.encode_text(["ok", "  "])


def _synthetic(seed=0, n_classes=3, dim_text=384, dim_img=16):
    rng = np.random.default_rng(seed)
    text_centres = rng.normal(size=(n_classes, dim_text))
    img_centres = rng.normal(size=(n_classes, dim_img)) * 3
    cap_labels = np.repeat(np.arange(n_classes), 8)
    caps = text_centres[cap_labels] + 0.3 * rng.normal(size=(len(cap_labels), dim_text))
    caps /= np.linalg.norm(caps, axis=1, keepdims=True)
    img_labels = np.repeat(np.arange(n_classes), 40)
    imgs = img_centres[img_labels] + rng.normal(size=(len(img_labels), dim_img))
    return caps.astype(np.float32), cap_labels, imgs.astype(np.float32), img_labels


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_projection_training_maps_captions_to_their_class_images(kind):
    caps, cap_labels, imgs, img_labels = _synthetic()
    net, history = train_text_projection(
        caps, cap_labels, imgs, img_labels, kind=kind, steps=150, batch_size=64, seed=0
    )
    assert history[-1]["loss"] < history[0]["loss"]
    with torch.no_grad():
        t = torch.nn.functional.normalize(net(torch.from_numpy(caps)), dim=1).numpy()
    i = imgs / np.linalg.norm(imgs, axis=1, keepdims=True)
    nearest = img_labels[np.argmax(t @ i.T, axis=1)]
    assert (nearest == cap_labels).mean() == 1.0


def test_projection_save_load_roundtrip_and_corruption(tmp_path):
    caps, cap_labels, imgs, img_labels = _synthetic(1)
    net, _ = train_text_projection(caps, cap_labels, imgs, img_labels, steps=5, batch_size=16)
    stem = tmp_path / "proj"
    save_projection(net, {"kind": "linear", "in_dim": 384, "out_dim": 16, "space_id": "toy/v1"}, stem)
    loaded, cfg = load_projection(stem)
    x = torch.from_numpy(caps[:4])
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
    enc = MiniLMProjectionTextEncoder(loaded, cfg["space_id"], cfg)
    assert enc.dim == 16 and enc.space_id == "toy/v1"
    (stem.with_suffix(".json")).write_text(
        json.dumps({"kind": "mlp", "in_dim": 384, "out_dim": 16, "space_id": "toy/v1"})
    )
    with pytest.raises(CheckpointError, match="corrupt or of the wrong kind"):
        load_projection(stem)
    with pytest.raises(CheckpointError, match="missing"):
        load_projection(tmp_path / "absent")
    with pytest.raises(InvalidParameter, match="config"):
        save_projection(net, {"kind": "linear"}, tmp_path / "x")


def test_training_refuses_classes_without_captions():
    caps, cap_labels, imgs, img_labels = _synthetic(2)
    keep = cap_labels != 2
    with pytest.raises(InvalidParameter, match="caption"):
        train_text_projection(caps[keep], cap_labels[keep], imgs, img_labels, steps=2)


def test_projection_trained_against_another_centre_is_refused(tmp_path, monkeypatch):
    from privdiff.encoders import registry
    from privdiff.errors import EncoderMismatch

    space = EFFNET_SPACE_ID  # the centring-vector fingerprint is the EfficientNet spaces' check
    stem = tmp_path / "proj"
    config = {"kind": "linear", "in_dim": 384, "out_dim": 1280, "space_id": space}
    save_projection(torch.nn.Linear(384, 1280), config | {"image_centre_sha256_12": "0" * 12}, stem)
    monkeypatch.setattr(registry, "_TEXT_CACHE", {})
    monkeypatch.setattr(registry, "projection_stem", lambda space_id: stem)
    with pytest.raises(EncoderMismatch, match="centring-vector fingerprint"):
        load_text_encoder(space)
    # The same projection recording the shipped centre's fingerprint loads.
    good = load_image_encoder(space).centre_sha256_12
    save_projection(torch.nn.Linear(384, 1280), config | {"image_centre_sha256_12": good}, stem)
    assert load_text_encoder(space).space_id == space


def test_shipped_projection_records_the_shipped_centre():
    config = json.loads(projection_stem(EFFNET_SPACE_ID).with_suffix(".json").read_text())
    assert config["image_centre_sha256_12"] == load_image_encoder(EFFNET_SPACE_ID).centre_sha256_12


def test_saving_identical_weights_keeps_the_file_byte_for_byte(tmp_path):
    net = torch.nn.Linear(384, 4)
    stem = tmp_path / "p"
    config = {"kind": "linear", "in_dim": 384, "out_dim": 4, "space_id": "toy/v1"}
    weights, _ = save_projection(net, config, stem)
    before = weights.read_bytes()
    save_projection(net, config, stem)
    assert weights.read_bytes() == before
    with torch.no_grad():
        net.bias.add_(1.0)
    save_projection(net, config, stem)
    loaded, _ = load_projection(stem)
    assert torch.equal(loaded.bias, net.bias)
