"""Datasets as uint8 (N, H, W, C) arrays, loaded from one spec string.

>>> from privdiff.data import load_dataset
>>> ds = load_dataset("fashion-mnist:train[:256]")          # doctest: +SKIP
>>> public = load_dataset("fashion-mnist:dprdm-public")      # doctest: +SKIP

See :mod:`privdiff.data.loaders` for the spec grammar, :mod:`privdiff.data.fashion_mnist` for
where the IDX files are found and the DP-RDM public/private split, :mod:`privdiff.data.folder`
for user image folders.
"""

from privdiff.data.dataset import ImageDataset
from privdiff.data.fashion_mnist import (
    DPRDM_PUBLIC_PER_CLASS,
    FASHION_MNIST_CLASSES,
    FOOTWEAR_CLASSES,
    dprdm_split_indices,
    load_fashion_mnist_arrays,
)
from privdiff.data.loaders import (
    VALID_SPECS,
    DatasetSpec,
    check_size,
    class_id,
    load_dataset,
    parse_spec,
    resize_images,
)

__all__ = [
    "DPRDM_PUBLIC_PER_CLASS",
    "FASHION_MNIST_CLASSES",
    "FOOTWEAR_CLASSES",
    "VALID_SPECS",
    "DatasetSpec",
    "ImageDataset",
    "check_size",
    "class_id",
    "dprdm_split_indices",
    "load_dataset",
    "load_fashion_mnist_arrays",
    "parse_spec",
    "resize_images",
]
