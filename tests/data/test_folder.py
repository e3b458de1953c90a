import os

import numpy as np
import pytest
from PIL import Image

from privdiff.data import load_dataset
from privdiff.errors import DataError, InvalidParameter


def _save(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def test_nested_class_folders_give_sorted_labels_and_names(tmp_path):
    rng = np.random.default_rng(0)
    for cls, n in [("zebra", 2), ("apple", 3)]:
        for i in range(n):
            _save(
                tmp_path / cls / "deeper" / f"{i}.png",
                rng.integers(0, 256, (10, 10), dtype=np.uint8),
            )
    (tmp_path / ".hidden").mkdir()
    _save(tmp_path / ".hidden" / "x.png", np.zeros((10, 10), dtype=np.uint8))
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.class_names == ["apple", "zebra"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1]
    assert ds.images.shape == (5, 10, 10, 1)


def test_grey_stays_grey_and_any_rgb_makes_all_rgb(tmp_path):
    grey = np.full((6, 6), 100, dtype=np.uint8)
    _save(tmp_path / "g" / "a.png", grey)
    assert load_dataset(f"folder:{tmp_path / 'g'}").channels == 1
    _save(tmp_path / "m" / "a.png", grey)
    _save(tmp_path / "m" / "b.jpg", np.zeros((6, 6, 3), dtype=np.uint8))
    ds = load_dataset(f"folder:{tmp_path / 'm'}")
    assert ds.images.shape == (2, 6, 6, 3)
    np.testing.assert_array_equal(ds.images[0], np.full((6, 6, 3), 100, dtype=np.uint8))
    assert load_dataset(f"folder:{tmp_path / 'm'}", channels=1).channels == 1


def test_transparent_pixels_composite_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    _save(tmp_path / "t" / "a.png", rgba, mode="RGBA")
    ds = load_dataset(f"folder:{tmp_path / 't'}")
    assert ds.channels == 3 and ds.images.min() == 255


def test_mixed_sizes_need_size_and_size_centre_crops(tmp_path):
    wide = np.zeros((10, 20), dtype=np.uint8)
    wide[:, 5:15] = 255  # the centre square is white, the sides black
    _save(tmp_path / "a.png", wide)
    _save(tmp_path / "b.png", np.full((8, 8), 255, dtype=np.uint8))
    with pytest.raises(DataError, match="different sizes"):
        load_dataset(f"folder:{tmp_path}")
    ds = load_dataset(f"folder:{tmp_path}", size=5)
    assert ds.images.shape == (2, 5, 5, 1)
    assert ds.images[0].min() > 200  # only the white centre survived the crop


def test_corrupt_files_raise_listing_them_or_are_skipped_and_counted(tmp_path):
    _save(tmp_path / "cls" / "ok.png", np.zeros((5, 5), dtype=np.uint8))
    (tmp_path / "cls" / "bad1.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "cls" / "bad2.jpg").write_bytes(b"")
    with pytest.raises(DataError) as info:
        load_dataset(f"folder:{tmp_path}")
    assert "bad1.png" in str(info.value) and "bad2.jpg" in str(info.value) and "2 unreadable" in str(info.value)
    ds = load_dataset(f"folder:{tmp_path}", skip_corrupt=True)
    assert len(ds) == 1 and ds.labels.tolist() == [0]
    assert ds.metadata["n_skipped"] == 2
    assert sorted(p.rsplit("/", 1)[-1] for p in ds.metadata["skipped_files"]) == [
        "bad1.png",
        "bad2.jpg",
    ]


def test_folder_layout_errors(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    _save(tmp_path / "mix" / "top.png", np.zeros((3, 3), dtype=np.uint8))
    _save(tmp_path / "mix" / "c" / "x.png", np.zeros((3, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="mixes"):
        load_dataset(f"folder:{tmp_path / 'mix'}")
    with pytest.raises(InvalidParameter, match="channels"):
        load_dataset(f"folder:{tmp_path / 'mix'}", channels=2)
    with pytest.raises(DataError, match="folder: datasets only"):
        load_dataset("digits", skip_corrupt=True)


def test_folder_slice_decodes_only_the_slice(tmp_path):
    for i in range(5):
        _save(tmp_path / f"{i}.png", np.full((3, 3), i * 10, dtype=np.uint8))
    (tmp_path / "9_bad.png").write_bytes(b"junk")  # sorts last, outside the slice
    ds = load_dataset(f"folder:{tmp_path}[1:3]")
    assert ds.images[:, 0, 0, 0].tolist() == [10, 20] and ds.labels is None


def test_decompression_bombs_are_listed_as_unreadable_files(tmp_path, monkeypatch):
    import PIL.Image

    for i in range(25):
        _save(tmp_path / f"big{i:02d}.png", np.zeros((40, 40), dtype=np.uint8))
    _save(tmp_path / "small.png", np.zeros((40, 40), dtype=np.uint8)[:10, :10])
    # PIL refuses images over 2 × MAX_IMAGE_PIXELS with DecompressionBombError (not an OSError).
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(DataError) as info:
        load_dataset(f"folder:{tmp_path}")
    msg = str(info.value)
    assert "25 unreadable" in msg and "DecompressionBombError" in msg and "big00.png" in msg
    assert "... and 5 more" in msg  # the first few, then a count
    ds = load_dataset(f"folder:{tmp_path}", skip_corrupt=True)
    assert len(ds) == 1 and ds.metadata["n_skipped"] == 25


def test_unreadable_directories_are_a_data_error_listing_them(tmp_path, monkeypatch):
    import os

    for cls in ("a", "b", "c"):
        _save(tmp_path / cls / "x.png", np.zeros((5, 5), dtype=np.uint8))
    _save(tmp_path / "b" / "deeper" / "y.png", np.zeros((5, 5), dtype=np.uint8))
    real_scandir = os.scandir
    locked = {str(tmp_path / "b" / "deeper"), str(tmp_path / "c")}

    def scandir(path="."):
        if str(path) in locked:  # as chmod 000 would for a non-root user
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    for skip in (False, True):  # skipping cannot count what cannot be listed
        with pytest.raises(DataError) as info:
            load_dataset(f"folder:{tmp_path}", skip_corrupt=skip)
        msg = str(info.value)
        assert "2 directories" in msg and "deeper" in msg and str(tmp_path / "c") in msg
    locked.clear()
    assert len(load_dataset(f"folder:{tmp_path}")) == 4


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads 0o000 directories")
def test_a_real_unreadable_directory_is_a_data_error(tmp_path):
    _save(tmp_path / "a" / "x.png", np.zeros((5, 5), dtype=np.uint8))
    _save(tmp_path / "b" / "y.png", np.zeros((5, 5), dtype=np.uint8))
    (tmp_path / "b").chmod(0)
    try:
        with pytest.raises(DataError, match="cannot be read"):
            load_dataset(f"folder:{tmp_path}")
    finally:
        (tmp_path / "b").chmod(0o755)
