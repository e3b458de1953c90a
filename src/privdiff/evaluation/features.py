"""Feature spaces in which replication (nearest-neighbour cosine similarity) is measured.

CPSample (Kazdan et al., ICLR 2025, §2.2 and Fig. 3; ``methods/cpsample.md`` §5.2) finds each
sample's nearest training image "by cosine similarity in a feature space" and thresholds it. The
paper's extractor is unspecified, so every space here must be calibrated on its own
(:func:`privdiff.evaluation.replication.calibrate_threshold`). Each space maps uint8 (N, H, W, C)
images to float32 (N, D) rows of unit L2 norm, so an inner product is the cosine similarity.

Spaces:

``pixel``
    The image flattened and **centred per image** (its own mean over all pixels and channels
    subtracted) before L2 normalisation. Cosine of centred vectors is the Pearson correlation of
    the two images' intensities. We centre because raw non-negative pixels make every pair look
    alike (two unrelated Fashion-MNIST items have raw cosine ≈ 0.6–0.9: both are dark backgrounds),
    and because a copy with a global brightness or contrast change stays a copy. A constant image
    has no direction: its row is all zeros and its similarity to everything is 0. Requires equal
    image shapes on both sides.
``effnet``
    EfficientNet-Lite0 ImageNet features at 64 px centred on public data
    (``privdiff.encoders.load_image_encoder("effnet-lite0-64px-c/v1")``), the space the shipped
    DP-RDM retrieved in until it moved to ``fmnist-public-cnn/v1``. Pinned by name, not
    ``"default"``: the replication thresholds calibrated in this space (and the name ``effnet``)
    would otherwise silently apply to another space.
``inception``
    FID Inception-v3 pool features (2048-d), L2-normalised; shares the FID feature cache.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from privdiff.errors import InvalidParameter, check_int
from privdiff.evaluation.fid import FEATURE_EXTRACTOR_ID, cached_inception_features, check_images

FEATURE_SPACES: tuple[str, ...] = ("pixel", "effnet", "inception")
#: The privdiff encoder name behind the ``effnet`` space: pinned, so the metric keeps its meaning
#: (and its calibrated thresholds) whatever ``"default"`` names.
EFFNET_ENCODER = "effnet-lite0-64px-c/v1"


def check_feature_space(feature_space: Any) -> str:
    if feature_space not in FEATURE_SPACES:
        raise InvalidParameter("feature_space", feature_space, "one of " + ", ".join(FEATURE_SPACES))
    return str(feature_space)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero (they have no direction)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def pixel_features(images: np.ndarray) -> np.ndarray:
    """Per-image centred, flattened, unit-norm pixels (see module docstring for why centred)."""
    images = check_images(images)
    flat = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0
    flat -= flat.mean(axis=1, keepdims=True)
    # Round-off leaves a constant image with a tiny non-zero residual; treat it as exactly flat so
    # it does not get an arbitrary direction after normalisation.
    flat[np.ptp(images.reshape(images.shape[0], -1), axis=1) == 0] = 0.0
    return _unit_rows(flat)


def effnet_features(images: np.ndarray, *, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """The EfficientNet-Lite0 encoder of :data:`EFFNET_ENCODER`, imported only when asked for."""
    images = check_images(images)
    try:
        from privdiff.encoders import load_image_encoder
    except ImportError:
        load_image_encoder = None
    try:
        if load_image_encoder is None:
            from privdiff.encoders.registry import load_image_encoder
    except ImportError as exc:
        raise InvalidParameter(
            "feature_space",
            "effnet",
            "an available space (pixel, inception)",
            hint=f"privdiff.encoders.load_image_encoder is not available: {exc}",
        ) from exc
    encoder = load_image_encoder(EFFNET_ENCODER)
    return _unit_rows(encoder.encode_images(images, batch_size=batch_size, progress=progress))


def inception_features_unit(images: np.ndarray, *, batch_size: int = 50, progress: bool = False) -> np.ndarray:
    """FID Inception pool features, unit-normalised (cached with the FID statistics)."""
    return _unit_rows(cached_inception_features(images, batch_size=batch_size, progress=progress))


def extract_features(
    images: np.ndarray,
    feature_space: str = "pixel",
    *,
    batch_size: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Unit-norm float32 (N, D) features of uint8 NHWC ``images`` in ``feature_space``."""
    feature_space = check_feature_space(feature_space)
    images = check_images(images)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, minimum=1)
    if feature_space == "pixel":
        return pixel_features(images)
    if feature_space == "effnet":
        return effnet_features(images, batch_size=batch_size or 256, progress=progress)
    return inception_features_unit(images, batch_size=batch_size or 50, progress=progress)


def describe_feature_space(feature_space: str) -> dict[str, Any]:
    """A JSON-friendly description of a space, recorded next to every replication number."""
    feature_space = check_feature_space(feature_space)
    if feature_space == "pixel":
        return {
            "name": "pixel",
            "definition": "flattened pixels/255, centred per image, L2-normalised (cosine = Pearson correlation)",
        }
    if feature_space == "effnet":
        return {
            "name": "effnet",
            "definition": f"privdiff.encoders.load_image_encoder({EFFNET_ENCODER!r}) embeddings, L2-normalised",
        }
    return {
        "name": "inception",
        "definition": f"{FEATURE_EXTRACTOR_ID} pool features, L2-normalised",
    }
