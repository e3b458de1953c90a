"""encoders.evaluation.cached_features: the shared cache (key scheme, atomic entries)."""

from __future__ import annotations

import numpy as np
import pytest

from privdiff.encoders.evaluation import cached_features


class _Encoder:
    input_size = 8

    def __init__(self, fail: bool = False):
        self.calls = 0
        self.fail = fail

    def features(self, images, batch_size=128, progress=True):
        self.calls += 1
        if self.fail:
            raise RuntimeError("interrupted")
        return images.reshape(len(images), -1).astype(np.float32).sum(axis=1, keepdims=True)


def test_features_are_cached_and_the_key_covers_shape_not_only_bytes(tmp_path):
    enc = _Encoder()
    imgs = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    first = cached_features(enc, imgs, tmp_path, "t", progress=False)
    again = cached_features(enc, imgs.copy(), tmp_path, "t", progress=False)
    assert enc.calls == 1 and np.array_equal(first, again)
    # The same bytes as 4 images are another input: the old bytes-only key returned 2 rows here.
    four = cached_features(enc, imgs.reshape(4, 2, 4, 3), tmp_path, "t", progress=False)
    assert enc.calls == 2 and four.shape == (4, 1)
    assert cached_features(enc, imgs, tmp_path, "other-tag", progress=False) is not None and enc.calls == 3


def test_an_interrupted_computation_leaves_no_entry(tmp_path):
    imgs = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    with pytest.raises(RuntimeError):
        cached_features(_Encoder(fail=True), imgs, tmp_path, "t", progress=False)
    assert list(tmp_path.iterdir()) == []
