import gzip
import json

import numpy as np
import pytest

from privdiff.data import (
    DPRDM_PUBLIC_PER_CLASS,
    FASHION_MNIST_CLASSES,
    FOOTWEAR_CLASSES,
    dprdm_split_indices,
    load_dataset,
)
from privdiff.data.fashion_mnist import read_idx
from privdiff.errors import DataError


@pytest.mark.integration
def test_fashion_train_and_test_shapes_dtypes_and_labels(fashion_dir):
    train = load_dataset("fashion-mnist:train")
    test = load_dataset("fashion-mnist:test")
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert train.class_names == FASHION_MNIST_CLASSES and len(FASHION_MNIST_CLASSES) == 10
    assert set(np.unique(test.labels)) == set(range(10))
    assert train.channels == 1 and train.size == (28, 28)


@pytest.mark.integration
def test_slice_suffix_matches_python_slicing_of_full_split(fashion_dir):
    full = load_dataset("fashion-mnist:test")
    for spec, sl in [
        ("[:256]", slice(None, 256)),
        ("[1000:2000]", slice(1000, 2000)),
        ("[-7::3]", slice(-7, None, 3)),
    ]:
        part = load_dataset("fashion-mnist:test" + spec)
        np.testing.assert_array_equal(part.images, full.images[sl])
        np.testing.assert_array_equal(part.labels, full.labels[sl])
        assert part.name == "fashion-mnist:test" + spec


@pytest.mark.integration
def test_returned_arrays_are_private_copies_not_the_cache(fashion_dir):
    a = load_dataset("fashion-mnist:test[:4]")
    a.images[:] = 0
    b = load_dataset("fashion-mnist:test[:4]")
    assert b.images.max() > 0


@pytest.mark.integration
def test_dprdm_split_counts_disjoint_and_covering(fashion_dir):
    train = load_dataset("fashion-mnist:train")
    public, private = dprdm_split_indices()
    assert np.intersect1d(public, private).size == 0
    assert public.size + private.size == 60000
    np.testing.assert_array_equal(np.union1d(public, private), np.arange(60000))
    counts = np.bincount(train.labels[public], minlength=10)
    for c in range(10):
        assert counts[c] == DPRDM_PUBLIC_PER_CLASS[c]
        assert counts[c] == (60 if c in FOOTWEAR_CLASSES else 1500)
    assert FOOTWEAR_CLASSES == (5, 7, 9)
    assert set(np.unique(train.labels[private])) == set(range(10))


@pytest.mark.integration
def test_dprdm_split_is_deterministic_and_seed_dependent(fashion_dir):
    p1, q1 = dprdm_split_indices()
    p2, q2 = dprdm_split_indices()
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(q1, q2)
    p3, _ = dprdm_split_indices(seed=1)
    assert not np.array_equal(p1, p3)


@pytest.mark.integration
def test_dprdm_named_specs_match_index_arrays(fashion_dir):
    train = load_dataset("fashion-mnist:train")
    public, private = dprdm_split_indices()
    pub = load_dataset("fashion-mnist:dprdm-public")
    priv = load_dataset("fashion-mnist:dprdm-private[:100]")
    np.testing.assert_array_equal(pub.images, train.images[public])
    np.testing.assert_array_equal(priv.images, train.images[private[:100]])
    np.testing.assert_array_equal(priv.metadata["train_indices"], private[:100])
    json.dumps(pub.summary())  # the summary must serialise


def _write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_explicit_directory_and_env_var_are_used(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    labs = np.arange(12) % 10
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labs)
    ds = load_dataset(f"fashion-mnist:test@{tmp_path}")
    np.testing.assert_array_equal(ds.images[..., 0], imgs)
    np.testing.assert_array_equal(ds.labels, labs)
    monkeypatch.setenv("PRIVDIFF_FASHION_MNIST_DIR", str(tmp_path))
    ds2 = load_dataset("fashion-mnist:test[2:5]")
    np.testing.assert_array_equal(ds2.images[..., 0], imgs[2:5])


def test_missing_files_raise_data_error_with_install_hint(tmp_path):
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset(f"fashion-mnist:train@{tmp_path}")
    with pytest.raises(DataError, match="apt-get install"):
        load_dataset(f"fashion-mnist:test@{tmp_path / 'absent'}")


def test_truncated_idx_file_is_reported_as_corrupt(tmp_path):
    arr = np.zeros((3, 4, 4), dtype=np.uint8)
    p = tmp_path / "x.gz"
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(p, "wb") as fh:
        fh.write(header + arr.tobytes()[:-5])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(p)
