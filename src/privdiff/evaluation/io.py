"""Image sources for the evaluation commands: dataset specs, plain folders and ``.npz`` files.

Every metric takes uint8 (N, H, W, C) arrays; this module turns what a user types on the command
line into one, delegating all decoding to :func:`privdiff.data.load_dataset` so folders and npz
files are read exactly as everywhere else in privdiff.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privdiff.errors import DataError


@dataclass(frozen=True)
class ImageSource:
    """Loaded images and the canonical spec they came from (recorded in result JSON)."""

    images: np.ndarray
    spec: str


def source_to_spec(source: str | Path) -> str:
    """Map a user-typed source to a :func:`privdiff.data.load_dataset` spec.

    * an output folder of ``privdiff generate`` / ``privdiff sample`` (it holds ``images.npz`` or
      ``images/``, :mod:`privdiff.report.outputs`) → its ``images.npz`` (else ``images/``); the
      grid and the JSON beside them are never read as samples
    * any other existing directory → ``folder:<dir>``
    * an existing file ending in ``.npz`` (optionally followed by a ``[a:b]`` slice) → ``npz:<file>``
    * anything else is taken to be a dataset spec (``fashion-mnist:test[:500]``, ``folder:...``).
    """
    text = str(source).strip()
    if not text:
        raise DataError("empty image source: give a dataset spec, an image folder or an .npz file")
    path = Path(text).expanduser()
    if path.is_dir():
        from privdiff.report.outputs import IMAGES_DIR, IMAGES_NPZ

        if (path / IMAGES_NPZ).is_file():
            return f"npz:{(path / IMAGES_NPZ).resolve()}"
        if (path / IMAGES_DIR).is_dir():
            return f"folder:{(path / IMAGES_DIR).resolve()}"
        return f"folder:{path.resolve()}"
    base, sep, rest = text.partition("[")
    base_path = Path(base).expanduser()
    if base.endswith(".npz"):
        if not base_path.is_file():
            raise DataError(f"npz file {base!r} does not exist")
        return f"npz:{base_path.resolve()}" + (sep + rest if sep else "")
    return text


def load_source(source: str | Path, *, progress: bool = False) -> ImageSource:
    """Load images from a dataset spec, a folder or an ``.npz`` file (see :func:`source_to_spec`)."""
    from privdiff.data import load_dataset

    spec = source_to_spec(source)
    dataset = load_dataset(spec, progress=progress)
    if len(dataset) == 0:
        raise DataError(f"image source {str(source)!r} holds no images")
    return ImageSource(images=dataset.images, spec=spec)


def load_images(source: str | Path, *, progress: bool = False) -> np.ndarray:
    """uint8 (N, H, W, C) images from a dataset spec, an image folder or an ``.npz`` file."""
    return load_source(source, progress=progress).images
