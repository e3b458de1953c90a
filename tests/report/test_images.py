"""privdiff.report.images: grids and the uint8 ↔ model-space conversions."""

import numpy as np

from privdiff.report import make_grid, save_grid, to_model_space, to_uint8


def test_grid_and_conversions_roundtrip(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, size=(5, 8, 8, 1), dtype=np.uint8)
    assert np.array_equal(to_uint8(to_model_space(imgs)), imgs)
    g = make_grid(imgs, ncols=3, pad=1)
    assert g.shape == (2 * 9 + 1, 3 * 9 + 1, 1)
    assert save_grid(imgs, tmp_path / "g.png", scale=2).exists()
