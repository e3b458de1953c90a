"""User image folders: ``folder:/path``.

Layout rules (deterministic, explicit):

* Images are files ending in ``.png``, ``.jpg`` or ``.jpeg`` (any case); hidden files are ignored.
* If the folder holds image files only at its top level, the dataset is unlabelled.
* If it holds sub-folders with images, each top-level sub-folder is one class (images searched
  recursively inside it); class names are the sub-folder names sorted, labels index them. Image
  files beside class folders are ambiguous and refused.
* Channels: ``channels=None`` keeps grey images grey (C=1) when *every* image is single-channel,
  otherwise converts all to RGB (C=3); ``channels=1`` or ``3`` forces it. Transparent pixels are
  composited on white, because dropping alpha would reveal arbitrary RGB under it.
* ``size``: every image is centre-cropped to a square (shorter side) and resized to size×size with
  Lanczos filtering. Without ``size`` all images must already share one shape.
* An unreadable or corrupt file (including one PIL refuses as a decompression bomb: more than
  twice ``PIL.Image.MAX_IMAGE_PIXELS``) raises :class:`DataError` listing them (the first 20 and a
  count), unless ``skip_corrupt=True``; skipped files are then listed in
  ``metadata["skipped_files"]`` and counted in ``metadata["n_skipped"]`` - the dataset is never
  silently short.
* A directory that cannot be listed (permissions, I/O error) raises :class:`DataError` listing
  them, with or without ``skip_corrupt``: its images are unknown, so neither could they be counted.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from privdiff.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


#: How many offending paths an error message lists before it only counts the rest.
_SHOWN = 20


def _listing(paths: list[tuple[str, str]]) -> str:
    shown = "\n  ".join(f"{p} ({why})" for p, why in paths[:_SHOWN])
    more = f"\n  ... and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else ""
    return f"\n  {shown}{more}"


def _is_image_file(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES


def _scan(root: Path, recursive: bool, unreadable: list[tuple[str, str]]) -> list[Path]:
    """Image files under ``root`` (hidden files and folders skipped). Directories that cannot be
    listed are appended to ``unreadable`` instead of being skipped silently (``Path.rglob`` would)."""

    def note(exc: OSError) -> None:
        unreadable.append((str(exc.filename or root), f"{type(exc).__name__}: {exc.strerror or exc}"))

    found: list[Path] = []
    if not recursive:
        try:
            entries = [Path(e.path) for e in os.scandir(root)]
        except OSError as exc:
            note(exc)
            return []
        return sorted(p for p in entries if _is_image_file(p))
    for dirpath, dirnames, filenames in os.walk(root, onerror=note):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(p for p in (Path(dirpath) / f for f in filenames) if _is_image_file(p))
    return sorted(found)


def list_folder(root: Path) -> tuple[list[Path], np.ndarray | None, list[str] | None]:
    """(files, labels or None, class names or None) following the layout rules above."""
    if not root.is_dir():
        raise DataError(f"folder dataset path {str(root)!r} is not a directory")
    unreadable: list[tuple[str, str]] = []
    top_files = _scan(root, recursive=False, unreadable=unreadable)
    try:
        class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError:
        class_dirs = []  # already recorded by _scan
    per_class = [(d.name, _scan(d, recursive=True, unreadable=unreadable)) for d in class_dirs]
    if unreadable:
        raise DataError(
            f"{len(unreadable)} director{'y' if len(unreadable) == 1 else 'ies'} in {str(root)!r} cannot be "
            f"read, so the dataset would be silently incomplete (fix their permissions):{_listing(unreadable)}"
        )
    per_class = [(name, files) for name, files in per_class if files]
    if per_class and top_files:
        raise DataError(
            f"folder {str(root)!r} mixes {len(top_files)} top-level images with class sub-folders "
            f"{[n for n, _ in per_class]}; put every image in a class folder, or none"
        )
    if per_class:
        files, labels = [], []
        for label, (_, class_files) in enumerate(per_class):
            files.extend(class_files)
            labels.extend([label] * len(class_files))
        return files, np.asarray(labels, dtype=np.int64), [n for n, _ in per_class]
    if not top_files:
        raise DataError(f"folder {str(root)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return top_files, None, None


def _to_mode(img, channels: int):
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float greys: rescale to 0..255 instead of clipping.
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        img = Image.fromarray(np.clip(arr * (255.0 / (hi if hi > 255 else 255.0)), 0, 255).astype(np.uint8))
    return img.convert("L" if channels == 1 else "RGB")


def _square_resize(img, size: int):
    from PIL import Image

    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return img


def load_folder(
    root: str | Path,
    *,
    size: int | None = None,
    channels: int | None = None,
    skip_corrupt: bool = False,
    index: slice | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None, dict[str, Any]]:
    """Decode a folder into (images uint8 NHWC, labels, class_names, metadata).

    ``index`` restricts decoding to a slice of the sorted file list (the spec's ``[a:b]``).
    """
    from PIL import Image, UnidentifiedImageError

    if channels not in (None, 1, 3):
        from privdiff.errors import InvalidParameter

        raise InvalidParameter("channels", channels, "None (auto), 1 or 3")
    root = Path(root).expanduser()
    files, labels, class_names = list_folder(root)
    if index is not None:
        positions = np.arange(len(files))[index]
        files = [files[i] for i in positions]
        labels = None if labels is None else labels[positions]

    decoded: list[Any] = []
    kept: list[int] = []
    bad: list[tuple[str, str]] = []
    iterator = files
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(files, desc=f"reading {root.name}", unit="img")
    for i, f in enumerate(iterator):
        try:
            with Image.open(f) as im:
                im.load()
                decoded.append(im.copy())
            kept.append(i)
        except (
            UnidentifiedImageError,
            Image.DecompressionBombError,
            OSError,
            ValueError,
            SyntaxError,
            EOFError,
            IndexError,
            TypeError,
            struct.error,
            MemoryError,
        ) as exc:
            # Decoders of untrusted files fail in many ways; each is "this file is unreadable".
            bad.append((str(f), f"{type(exc).__name__}: {exc}"))
    if bad and not skip_corrupt:
        raise DataError(
            f"{len(bad)} unreadable image file(s) in {str(root)!r} (pass skip_corrupt=True / "
            f"--skip-corrupt to skip and count them):{_listing(bad)}"
        )
    if not decoded:
        raise DataError(f"folder {str(root)!r}: no readable images (skipped {len(bad)})")

    if channels is None:
        channels = 1 if all(im.mode in _GREY_MODES for im in decoded) else 3
    converted = [_to_mode(im, channels) for im in decoded]
    if size is not None:
        converted = [_square_resize(im, size) for im in converted]
    else:
        shapes = sorted({im.size for im in converted})
        if len(shapes) > 1:
            raise DataError(
                f"folder {str(root)!r} holds images of {len(shapes)} different sizes "
                f"(e.g. {shapes[:4]} as W×H); pass size=N (--size N) to resize them to N×N"
            )
    images = np.stack([np.asarray(im, dtype=np.uint8).reshape(im.size[1], im.size[0], channels) for im in converted])
    if labels is not None:
        labels = labels[np.asarray(kept, dtype=np.int64)]
    metadata: dict[str, Any] = {"source": str(root.resolve()), "channels": channels}
    if skip_corrupt:
        metadata["skipped_files"] = [p for p, _ in bad]
        metadata["n_skipped"] = len(bad)
    return images, labels, class_names, metadata
