"""Encoder protocols: image and text encoders into one L2-normalised embedding space.

DP-RDM (arXiv 2403.14421 §3) retrieves private *image* embeddings with a *text* query, so both
towers must map into one space. Every encoder carries a ``space_id``: a stable string naming that
space (e.g. ``"effnet-lite0-64px/v1"``). Indexes and checkpoints store it, and loading one next to
an encoder of another space raises :class:`~privdiff.errors.EncoderMismatch`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from privdiff.errors import EncoderMismatch


@runtime_checkable
class ImageEncoder(Protocol):
    """Maps uint8 images (N, H, W, C) to float32 unit vectors (N, dim)."""

    space_id: str
    dim: int

    def encode_images(self, images: np.ndarray, *, batch_size: int = 256, progress: bool = False) -> np.ndarray: ...


@runtime_checkable
class TextEncoder(Protocol):
    """Maps strings to float32 unit vectors (N, dim) in the same space as an ImageEncoder."""

    space_id: str
    dim: int

    def encode_text(self, texts: list[str]) -> np.ndarray: ...


def check_same_space(expected: str, found: str, what: str = "artefact") -> None:
    """Refuse to combine artefacts from different embedding spaces."""
    if expected != found:
        raise EncoderMismatch(expected=expected, found=found, what=what)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation in float32 (n(v) = v/‖v‖₂ in the DP-RDM notes, §2)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)
