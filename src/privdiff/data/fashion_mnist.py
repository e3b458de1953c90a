"""Fashion-MNIST from IDX files, and the DP-RDM public/private split built on it.

Where the files are looked up (first match wins):

1. an explicit directory in the spec, ``fashion-mnist:train@/some/dir``;
2. the environment variable ``PRIVDIFF_FASHION_MNIST_DIR``;
3. ``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu package ``dataset-fashion-mnist``).

Each directory must hold ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, gzipped (``.gz``) or not.
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from privdiff.errors import DataError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "PRIVDIFF_FASHION_MNIST_DIR"
INSTALL_HINT = (
    "install the Debian package: `apt-get update && apt-get install -y dataset-fashion-mnist`, "
    f"or point {ENV_VAR} (or `fashion-mnist:train@/dir`) at a directory holding the IDX files"
)

#: The standard Fashion-MNIST class names, indexed by label (Xiao et al., 2017).
FASHION_MNIST_CLASSES: list[str] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# ---------------------------------------------------------------------------------------------
# The DP-RDM embedded split
# ---------------------------------------------------------------------------------------------

#: Footwear classes (5 Sandal, 7 Sneaker, 9 Ankle boot): nearly absent from the public split.
FOOTWEAR_CLASSES: tuple[int, ...] = (5, 7, 9)
#: Public images per class in the DP-RDM split.
DPRDM_PUBLIC_PER_CLASS: dict[int, int] = {c: (60 if c in FOOTWEAR_CLASSES else 1500) for c in range(10)}
DPRDM_SPLIT_SEED = 0


def resolve_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The directory Fashion-MNIST is read from (see the module docstring for the order)."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return DEFAULT_DIR


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"Fashion-MNIST file {stem}[.gz] not found in {directory}; {INSTALL_HINT}")


def read_idx(path: Path) -> np.ndarray:
    """Decode one IDX file (the format of LeCun's MNIST page: magic 0x0000_08_<ndim>, big-endian
    int32 dims, then uint8 data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims)) if dims else 0
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is truncated or corrupt: header says {dims} ({expected} bytes), "
            f"found {len(raw) - header} bytes of data"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@lru_cache(maxsize=4)
def _load_split_cached(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"Fashion-MNIST directory {d} does not exist; {INSTALL_HINT}")
    img_stem, lab_stem = _FILES[split]
    images = read_idx(_find(d, img_stem))
    labels = read_idx(_find(d, lab_stem))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"Fashion-MNIST {split} files in {d} disagree: images {images.shape}, labels {labels.shape}")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"Fashion-MNIST {split} labels in {d} exceed 9 (max {labels.max()})")
    # Read-only so the cached arrays can never be changed by a consumer.
    images = images[..., None]
    images.flags.writeable = False
    labels = labels.astype(np.int64)
    labels.flags.writeable = False
    return images, labels


def load_fashion_mnist_arrays(split: str, directory: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read-only (images uint8 (N, 28, 28, 1), labels int64 (N,)) for ``split`` in {train, test}.

    Cached per process; copy before modifying.
    """
    if split not in _FILES:
        raise DataError(f"unknown Fashion-MNIST split {split!r}; valid: {sorted(_FILES)}")
    return _load_split_cached(str(resolve_dir(directory).resolve()), split)


def dprdm_split_indices(
    train_labels: np.ndarray | None = None,
    *,
    directory: str | os.PathLike | None = None,
    seed: int = DPRDM_SPLIT_SEED,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the 60k Fashion-MNIST *train* set of the DP-RDM public and private parts.

    Definition (deterministic): with ``rng = numpy.random.default_rng(seed)`` (seed 0) and for
    each class c = 0..9 in order, shuffle that class's train indices with ``rng.permutation`` and
    take the first ``DPRDM_PUBLIC_PER_CLASS[c]`` as **public**: 1,500 per class for 0 T-shirt/top,
    1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 6 Shirt, 8 Bag, and only 60 per class for the footwear
    classes 5 Sandal, 7 Sneaker, 9 Ankle boot (10,680 images). **Private** is every other train
    image (49,320, all classes). The FID reference is ``fashion-mnist:test``.

    The imbalance mirrors the DP-RDM setting (Lebensold et al., arXiv 2403.14421, §5): a small
    public set that lacks most of a domain the private set covers, so retrieval from the private
    set is what lets the model draw footwear well.

    Returns:
        (public, private): sorted, disjoint int64 index arrays whose union is ``range(N)``.
    """
    if train_labels is None:
        _, train_labels = load_fashion_mnist_arrays("train", directory)
    labels = np.asarray(train_labels)
    rng = np.random.default_rng(seed)
    public_parts = []
    for c in range(len(FASHION_MNIST_CLASSES)):
        idx_c = np.flatnonzero(labels == c)
        want = DPRDM_PUBLIC_PER_CLASS[c]
        if idx_c.size < want:
            raise DataError(
                f"DP-RDM split needs {want} train images of class {c} "
                f"({FASHION_MNIST_CLASSES[c]}) but only {idx_c.size} exist"
            )
        public_parts.append(rng.permutation(idx_c)[:want])
    public = np.sort(np.concatenate(public_parts)).astype(np.int64)
    mask = np.ones(labels.shape[0], dtype=bool)
    mask[public] = False
    private = np.flatnonzero(mask).astype(np.int64)
    return public, private
