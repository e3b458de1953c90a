"""The one in-memory dataset type every privdiff package consumes.

Convention (project-wide): images are ``np.uint8`` arrays of shape (N, H, W, C) with C = 1 (grey)
or C = 3 (RGB); labels, when present, are ``int64`` of shape (N,) indexing ``class_names``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from privdiff.errors import DataError


# eq=False: element-wise array comparison has no single truth value; datasets compare by identity.
@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images (uint8 NHWC) with optional integer labels, and the spec string that produced them.

    Frozen so a dataset handed to several consumers cannot be re-pointed; the arrays themselves are
    ordinary numpy arrays owned by this object (loaders never hand out views of a cache).

    Attributes:
        images: uint8 (N, H, W, C), C in {1, 3}.
        labels: int64 (N,) or ``None`` for unlabelled data.
        class_names: names indexed by label, or ``None``.
        name: the spec that produced the dataset (e.g. ``"fashion-mnist:train[:500]"``).
        metadata: provenance details (source path, skipped files, split definition...).
    """

    images: np.ndarray
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    name: str = "array"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        imgs = self.images
        if not isinstance(imgs, np.ndarray) or imgs.dtype != np.uint8 or imgs.ndim != 4:
            raise DataError(
                f"dataset {self.name!r}: images must be a uint8 array (N, H, W, C); got "
                f"{type(imgs).__name__} {getattr(imgs, 'dtype', '?')} shape {getattr(imgs, 'shape', '?')}"
            )
        if imgs.shape[-1] not in (1, 3):
            raise DataError(f"dataset {self.name!r}: channel count must be 1 or 3, got {imgs.shape[-1]}")
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.shape != (imgs.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
                raise DataError(
                    f"dataset {self.name!r}: labels must be integers of shape ({imgs.shape[0]},), "
                    f"got {labels.dtype} {labels.shape}"
                )
            object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))
            if (
                self.class_names is not None
                and labels.size
                and (labels.min() < 0 or labels.max() >= len(self.class_names))
            ):
                raise DataError(
                    f"dataset {self.name!r}: labels span [{labels.min()}, {labels.max()}] but there "
                    f"are {len(self.class_names)} class names"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def num_classes(self) -> int | None:
        if self.class_names is not None:
            return len(self.class_names)
        if self.labels is not None and self.labels.size:
            return int(self.labels.max()) + 1
        return None

    def subset(self, indices: Any, name: str | None = None) -> ImageDataset:
        """A new dataset holding ``images[indices]`` (a copy), with labels and names carried over.

        ``indices`` may be an integer array, a boolean mask or a ``slice``.
        """
        if isinstance(indices, slice):
            idx = np.arange(len(self))[indices]
        else:
            idx = np.asarray(indices)
            if idx.dtype == bool:
                if idx.shape != (len(self),):
                    raise DataError(f"boolean mask of shape {idx.shape} does not match {len(self)} images")
                idx = np.flatnonzero(idx)
            elif idx.size and not np.issubdtype(idx.dtype, np.integer):
                raise DataError(f"subset indices must be integers, got dtype {idx.dtype}")
            idx = idx.astype(np.int64, copy=False).reshape(-1)
            if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
                raise DataError(f"subset indices span [{idx.min()}, {idx.max()}] outside a dataset of {len(self)}")
        return ImageDataset(
            images=np.ascontiguousarray(self.images[idx]),
            labels=None if self.labels is None else self.labels[idx].copy(),
            class_names=None if self.class_names is None else list(self.class_names),
            name=name if name is not None else f"{self.name}<subset of {idx.size}>",
            metadata=dict(self.metadata),
        )

    def class_counts(self) -> dict[str, int]:
        """Images per class, keyed by class name (or label as a string); empty if unlabelled."""
        if self.labels is None:
            return {}
        counts = Counter(self.labels.tolist())
        out: dict[str, int] = {}
        for lab in sorted(counts):
            key = self.class_names[lab] if self.class_names is not None else str(lab)
            out[key] = counts[lab]
        return out

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly description (used by ``privdiff data show``)."""
        meta: dict[str, Any] = {}
        for key, value in self.metadata.items():
            if key == "skipped_files":
                continue
            if isinstance(value, np.ndarray):
                meta[key] = f"<array of {value.size}>"
            else:
                meta[key] = value
        return {
            "name": self.name,
            "n": len(self),
            "shape": list(self.images.shape),
            "channels": self.channels,
            "classes": self.class_counts(),
            "metadata": meta,
        }
