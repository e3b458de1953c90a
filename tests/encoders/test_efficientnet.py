import numpy as np
import pytest

from privdiff.data import load_dataset
from privdiff.encoders import EFFNET_SPACE_ID, check_same_space, load_image_encoder
from privdiff.encoders.efficientnet import EfficientNetLite0Encoder, centre_asset_path, load_centre
from privdiff.errors import DataError, EncoderMismatch, InvalidParameter


@pytest.fixture(scope="module")
def faces():
    return load_dataset("lfw[90:110]").images  # 10 faces, 10 non-faces, 25x25 grey


@pytest.fixture(scope="module")
def raw_encoder():
    return EfficientNetLite0Encoder(64)


@pytest.mark.integration
def test_raw_encoder_outputs_float32_unit_rows(raw_encoder, faces):
    z = raw_encoder.encode_images(faces)
    assert z.shape == (20, 1280) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    assert raw_encoder.space_id == "effnet-lite0-64px/v1" and raw_encoder.dim == 1280


@pytest.mark.integration
def test_encoding_is_deterministic_and_batch_size_invariant(raw_encoder, faces):
    a = raw_encoder.encode_images(faces, batch_size=20)
    b = raw_encoder.encode_images(faces, batch_size=20)
    c = raw_encoder.encode_images(faces, batch_size=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, atol=1e-5)


@pytest.mark.integration
def test_grey_images_equal_their_rgb_replicas(raw_encoder, faces):
    grey = faces[:4]
    rgb = np.repeat(grey, 3, axis=-1)
    np.testing.assert_allclose(raw_encoder.encode_images(grey), raw_encoder.encode_images(rgb), atol=1e-6)


@pytest.mark.integration
def test_faces_are_closer_to_faces_than_to_background_patches(raw_encoder, faces):
    z = raw_encoder.encode_images(faces)
    sims = z @ z.T
    face, non = slice(0, 10), slice(10, 20)
    within = (sims[face, face].sum() - 10) / 90
    across = sims[face, non].mean()
    assert within > across


def test_bad_image_input_is_rejected(raw_encoder):
    with pytest.raises(InvalidParameter, match="images"):
        raw_encoder.encode_images(np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(InvalidParameter, match="images"):
        raw_encoder.encode_images(np.zeros((2, 8, 8, 2), dtype=np.uint8))
    with pytest.raises(InvalidParameter, match="batch_size"):
        raw_encoder.encode_images(np.zeros((2, 8, 8, 3), dtype=np.uint8), batch_size=0)
    with pytest.raises(InvalidParameter, match="centre"):
        EfficientNetLite0Encoder(64, centre=np.zeros(3))


@pytest.mark.integration
def test_centred_encoder_is_cached_and_in_its_own_space(raw_encoder, faces):
    # No longer the default (the shipped RDM moved to fmnist-public-cnn/v1): loaded by name.
    enc = load_image_encoder(EFFNET_SPACE_ID)
    assert enc is load_image_encoder(EFFNET_SPACE_ID) and enc is not load_image_encoder("default")
    assert enc.space_id == EFFNET_SPACE_ID == "effnet-lite0-64px-c/v1"
    centre, meta = load_centre(centre_asset_path(64))
    assert meta["source"] == "fashion-mnist:dprdm-public" and centre.shape == (1280,)
    z = enc.encode_images(faces[:6])
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    expected = raw_encoder.features(faces[:6]) - centre
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(z, expected, atol=1e-5)


@pytest.mark.integration
def test_centring_lowers_similarity_of_unrelated_fashion_images(raw_encoder):
    try:
        imgs = load_dataset("fashion-mnist:test[:20]").images
    except DataError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"Fashion-MNIST unavailable: {exc}")
    # The public-data centre removes the shared post-ReLU component of in-domain images.
    raw = raw_encoder.encode_images(imgs)
    cen = load_image_encoder(EFFNET_SPACE_ID).encode_images(imgs)
    off = ~np.eye(20, dtype=bool)
    assert (cen @ cen.T)[off].mean() < 0.5 * (raw @ raw.T)[off].mean()


def test_spaces_differ_and_mismatch_is_refused(raw_encoder):
    enc = load_image_encoder(EFFNET_SPACE_ID)
    assert raw_encoder.space_id != enc.space_id
    with pytest.raises(EncoderMismatch, match="effnet-lite0-64px/v1"):
        check_same_space(enc.space_id, raw_encoder.space_id, what="index")
    check_same_space(enc.space_id, load_image_encoder("effnet-lite0-64px-c").space_id)


@pytest.mark.parametrize("name", ["", "resnet50", "effnet-lite0-64", "openclip:ViT-B-32"])
def test_unknown_encoder_names_are_invalid(name):
    with pytest.raises(InvalidParameter, match="encoder"):
        load_image_encoder(name)
