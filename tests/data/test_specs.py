import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privdiff.data import ImageDataset, load_dataset, parse_spec
from privdiff.errors import DataError, InvalidParameter


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "cifar10",
        "fashion-mnist",
        "fashion-mnist:validation",
        "fashion-mnist:train[5]",
        "digits:foo",
        "fashion-mnist:train[::0]",
        "folder:",
        "npz:",
        "fashion-mnist:train@",
    ],
)
def test_bad_specs_raise_data_error_naming_spec_and_valid_forms(spec):
    with pytest.raises(DataError) as info:
        load_dataset(spec)
    msg = str(info.value)
    assert repr(spec.strip()) in msg or spec == ""
    assert "fashion-mnist:train" in msg and "folder:/path" in msg


def test_parse_spec_splits_kind_arg_dir_and_slice():
    s = parse_spec("fashion-mnist:test@/tmp/fm[10:20]")
    assert (s.kind, s.arg, s.directory, s.index) == (
        "fashion-mnist",
        "test",
        "/tmp/fm",
        slice(10, 20, None),
    )
    s = parse_spec("folder:/a:b/c[:3]")
    assert (s.kind, s.arg, s.index) == ("folder", "/a:b/c", slice(None, 3, None))


def test_digits_are_rescaled_to_full_uint8_range():
    ds = load_dataset("digits")
    assert ds.images.shape == (1797, 8, 8, 1) and ds.images.max() == 255 and ds.images.min() == 0
    from sklearn.datasets import load_digits

    raw = load_digits().images
    np.testing.assert_array_equal(ds.images[..., 0], np.rint(raw * 255 / 16).astype(np.uint8))


@pytest.mark.integration
def test_mnist5k_has_500_per_digit():
    ds = load_dataset("mnist5k")
    assert ds.images.shape == (5000, 28, 28, 1)
    assert np.bincount(ds.labels).tolist() == [500] * 10
    assert ds.class_names == [str(i) for i in range(10)]


@pytest.mark.integration
def test_lfw_halves_faces_first_and_full_value_range():
    full = load_dataset("lfw")
    faces = load_dataset("lfw-faces")
    non = load_dataset("lfw-nonfaces")
    assert full.images.shape == (200, 25, 25, 1) and full.images.max() > 200
    assert len(faces) == len(non) == 100
    np.testing.assert_array_equal(faces.images, full.images[:100])
    np.testing.assert_array_equal(non.images, full.images[100:])
    assert full.class_names[0] == "face" and set(faces.labels) == {0} and set(non.labels) == {1}


@pytest.mark.integration
def test_size_resizes_every_image():
    ds = load_dataset("lfw[:5]", size=32)
    assert ds.images.shape == (5, 32, 32, 1) and ds.images.dtype == np.uint8


@pytest.mark.parametrize("size", [0, -3, 2.5, "x"])
def test_bad_size_is_invalid_parameter(size):
    with pytest.raises(InvalidParameter, match="size"):
        load_dataset("digits", size=size)


def test_npz_roundtrip_with_and_without_labels(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(6, 5, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=imgs, labels=np.array([0, 1, 0, 1, 2, 2]))
    ds = load_dataset(f"npz:{tmp_path / 'a.npz'}[1:]")
    np.testing.assert_array_equal(ds.images, imgs[1:])
    assert ds.labels.tolist() == [1, 0, 1, 2, 2]
    np.savez(tmp_path / "b.npz", images=imgs[..., 0])
    ds = load_dataset(f"npz:{tmp_path / 'b.npz'}")
    assert ds.images.shape == (6, 5, 5, 1) and ds.labels is None


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 4, 4), dtype=np.float32))
    with pytest.raises(DataError, match="uint8"):
        load_dataset(f"npz:{tmp_path / 'f.npz'}")
    np.savez(tmp_path / "n.npz", pixels=np.zeros((2, 4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match="no 'images'"):
        load_dataset(f"npz:{tmp_path / 'n.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")


def test_image_dataset_validates_and_subsets():
    imgs = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2, 1)
    ds = ImageDataset(imgs, np.array([0, 1, 1, 0]), ["a", "b"], "toy")
    sub = ds.subset([3, 1])
    np.testing.assert_array_equal(sub.images, imgs[[3, 1]])
    assert sub.labels.tolist() == [0, 1] and sub.class_names == ["a", "b"]
    assert len(ds.subset(np.array([True, False, True, False]))) == 2
    assert len(ds.subset(slice(1, None))) == 3
    assert ds.class_counts() == {"a": 2, "b": 2}
    with pytest.raises(DataError):
        ds.subset([7])
    with pytest.raises(DataError):
        ImageDataset(imgs.astype(np.float32))
    with pytest.raises(DataError):
        ImageDataset(imgs, np.array([0, 1]))
    with pytest.raises(DataError):
        ImageDataset(imgs, np.array([0, 1, 2, 0]), ["a", "b"])
    with pytest.raises(DataError):
        ImageDataset(np.zeros((2, 3, 3, 2), dtype=np.uint8))


_DIGITS = load_dataset("digits")
_bound = st.one_of(st.none(), st.integers(-2000, 2000))


@settings(max_examples=40, deadline=None)
@given(
    start=_bound,
    stop=_bound,
    step=st.one_of(st.none(), st.integers(-5, 5).filter(lambda s: s != 0)),
)
def test_slice_suffix_equals_python_slicing_for_any_bounds(start, stop, step):
    text = f"{'' if start is None else start}:{'' if stop is None else stop}"
    if step is not None:
        text += f":{step}"
    sl = slice(start, stop, step)
    if _DIGITS.images[sl].shape[0] == 0:  # an empty selection is an error, never an empty dataset
        with pytest.raises(DataError, match="selects no images"):
            load_dataset(f"digits[{text}]")
        return
    ds = load_dataset(f"digits[{text}]")
    np.testing.assert_array_equal(ds.images, _DIGITS.images[sl])
    np.testing.assert_array_equal(ds.labels, _DIGITS.labels[sl])


@pytest.mark.parametrize(
    "spec",
    [
        "fashion-mnist:train[5:2]",
        "fashion-mnist:train[0:0]",
        "digits[-1:-5]",
        "digits[3:3:2]",
        "digits[0:5:-1]",
        "npz:/nowhere.npz[4:1]",
    ],
)
def test_statically_empty_slice_is_refused_when_parsed(spec):
    # Refused by the parser, before any file is looked for or decoded.
    with pytest.raises(DataError, match="selects no images"):
        parse_spec(spec)


@pytest.mark.parametrize("spec", ["digits[5000:]", "digits[:0]", "digits[-5000:-4000]", "digits[:-5000]"])
def test_slice_empty_for_this_dataset_is_refused_when_loaded(spec):
    with pytest.raises(DataError, match="selects no images.*of 1797 images"):
        load_dataset(spec)


def test_empty_slice_of_a_folder_is_refused(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((4, 4), i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    with pytest.raises(DataError, match="selects no images"):
        load_dataset(f"folder:{tmp_path}[2:1]")
    assert len(load_dataset(f"folder:{tmp_path}[1:]")) == 2


# --- class filter: a private collection that is a domain ------------------------------------------


def _labelled_npz(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2, 1, 0, 2, 2, 1])
    images = rng.integers(0, 255, size=(8, 4, 4), dtype=np.uint8)
    path = tmp_path / "lab.npz"
    np.savez(path, images=images, labels=labels, class_names=np.array(["cat", "Ankle boot", "dog"]))
    return path, images, labels


def test_class_filter_by_id_and_name_keeps_labels_then_slices(tmp_path):
    import numpy as np

    from privdiff.data import load_dataset

    path, images, labels = _labelled_npz(tmp_path)
    ds = load_dataset(f"npz:{path}{{classes=2,ankle BOOT}}")
    keep = np.flatnonzero(np.isin(labels, [1, 2]))
    assert ds.labels.tolist() == labels[keep].tolist()  # original ids, not re-numbered
    assert np.array_equal(ds.images[..., 0], images[keep])
    assert ds.class_names == ["cat", "Ankle boot", "dog"]
    # The slice applies to the filtered rows.
    assert load_dataset(f"npz:{path}{{classes=dog}}[1:]").labels.tolist() == [2, 2]


@pytest.mark.parametrize(
    "suffix, match",
    [
        ("{classes=7}", "class id 7 is not in"),
        ("{classes=horse}", "unknown class 'horse'"),
        ("{colour=1}", "unknown filter"),
        ("{classes=}", "comma-separated"),
        ("{classes=1", "class filter must look like"),
    ],
)
def test_class_filter_errors_are_typed(tmp_path, suffix, match):
    from privdiff.data import load_dataset
    from privdiff.errors import DataError

    path, _, _ = _labelled_npz(tmp_path)
    with pytest.raises(DataError, match=match):
        load_dataset(f"npz:{path}{suffix}")


def test_class_filter_needs_labels(tmp_path):
    import numpy as np

    from privdiff.data import load_dataset
    from privdiff.errors import DataError

    np.savez(tmp_path / "u.npz", images=np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(DataError, match="needs labelled data"):
        load_dataset(f"npz:{tmp_path / 'u.npz'}{{classes=0}}")


def test_class_filter_on_a_folder_of_class_subdirectories(tmp_path):
    import numpy as np
    from PIL import Image

    from privdiff.data import load_dataset

    for cls, n in (("boots", 3), ("coats", 2)):
        (tmp_path / "f" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((6, 6), 40 * i, np.uint8)).save(tmp_path / "f" / cls / f"{i}.png")
    ds = load_dataset(f"folder:{tmp_path / 'f'}{{classes=coats}}", size=4)
    assert len(ds) == 2 and ds.images.shape[1:3] == (4, 4)
    assert {ds.class_names[i] for i in ds.labels} == {"coats"}
