"""On-disk index: round trip, manifest contents, refusal of corrupt/mismatched data, atomic write."""

import json
import os

import numpy as np
import pytest

from privdiff.errors import EncoderMismatch, IndexCorrupt, InvalidParameter, PrivdiffError
from privdiff.retrieval import (
    EmbeddingIndex,
    build_index,
    build_index_from_images,
    load_index,
    read_manifest,
)
from privdiff.retrieval.private import unsafe_nonprivate_rows
from privdiff.retrieval.private.index import MANIFEST_FILE, VECTORS_FILE

SPACE = "test-space/v1"


def _emb(n=50, d=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def test_build_then_load_round_trips_normalised_float32_rows(tmp_path):
    raw = _emb()
    build_index(tmp_path / "idx", raw, space_id=SPACE, source="fashion-mnist:train[:50]")
    idx = load_index(tmp_path / "idx", expected_space=SPACE)
    rows = unsafe_nonprivate_rows(idx, reason="test: what load_index maps")
    assert isinstance(rows, np.memmap) and not rows.flags.writeable
    assert rows.dtype == np.float32 and rows.shape == (50, 8)
    np.testing.assert_allclose(rows, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-6)
    assert (idx.count, idx.dim, idx.space_id, idx.visibility) == (50, 8, SPACE, "private")


def test_manifest_records_only_public_metadata(tmp_path):
    build_index(tmp_path / "idx", _emb(), space_id=SPACE, source="folder:/data/x")
    raw = json.loads((tmp_path / "idx" / MANIFEST_FILE).read_text())
    assert set(raw) == {
        "format",
        "format_version",
        "space_id",
        "dim",
        "count",
        "dtype",
        "vectors_file",
        "vectors_bytes",
        "sha256",
        "created_utc",
        "source",
        "visibility",
    }
    assert sorted(os.listdir(tmp_path / "idx")) == [VECTORS_FILE, MANIFEST_FILE]
    assert raw["vectors_bytes"] == (tmp_path / "idx" / VECTORS_FILE).stat().st_size


def test_in_memory_index_has_same_checksum_as_written_one(tmp_path):
    raw = _emb()
    mem = EmbeddingIndex.from_embeddings(raw, space_id=SPACE)
    disk = build_index(tmp_path / "idx", raw, space_id=SPACE)
    assert mem.manifest.sha256 == disk.manifest.sha256


def test_truncated_vector_file_is_refused(tmp_path):
    build_index(tmp_path / "idx", _emb(), space_id=SPACE)
    p = tmp_path / "idx" / VECTORS_FILE
    p.write_bytes(p.read_bytes()[:-100])
    for verify in ("full", "size"):
        with pytest.raises(IndexCorrupt, match="truncated"):
            load_index(tmp_path / "idx", verify=verify)


def test_flipped_bit_is_caught_by_checksum(tmp_path):
    build_index(tmp_path / "idx", _emb(), space_id=SPACE)
    p = tmp_path / "idx" / VECTORS_FILE
    data = bytearray(p.read_bytes())
    data[-5] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(IndexCorrupt, match="sha256"):
        load_index(tmp_path / "idx")
    load_index(tmp_path / "idx", verify="size")  # the documented trade-off of the fast path


def test_non_unit_row_with_consistent_checksum_is_refused(tmp_path):
    build_index(tmp_path / "idx", _emb(), space_id=SPACE)
    d = tmp_path / "idx"
    arr = np.load(d / VECTORS_FILE)
    arr[3] *= 3.0  # would break the sensitivity bound if used
    np.save(d / VECTORS_FILE, arr)
    import hashlib

    m = json.loads((d / MANIFEST_FILE).read_text())
    m["sha256"] = hashlib.sha256((d / VECTORS_FILE).read_bytes()).hexdigest()
    (d / MANIFEST_FILE).write_text(json.dumps(m))
    with pytest.raises(IndexCorrupt, match="row 3 is not unit norm"):
        load_index(d)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.update(format_version=99), "format_version"),
        (lambda m: m.update(format="something-else"), "not a privdiff index"),
        (lambda m: m.pop("sha256"), "missing field"),
        (lambda m: m.update(labels=[1, 2]), "unexpected field"),
        (lambda m: m.update(count=49), "manifest says"),
        (lambda m: m.update(dim=-1), "invalid dim"),
        (lambda m: m.update(visibility="secret"), "visibility"),
    ],
)
def test_inconsistent_manifest_is_refused(tmp_path, mutate, message):
    build_index(tmp_path / "idx", _emb(), space_id=SPACE)
    mp = tmp_path / "idx" / MANIFEST_FILE
    m = json.loads(mp.read_text())
    mutate(m)
    mp.write_text(json.dumps(m))
    with pytest.raises(IndexCorrupt, match=message):
        load_index(tmp_path / "idx", verify="size")


def test_garbled_or_missing_manifest_is_refused(tmp_path):
    build_index(tmp_path / "idx", _emb(), space_id=SPACE)
    mp = tmp_path / "idx" / MANIFEST_FILE
    mp.write_text("{not json")
    with pytest.raises(IndexCorrupt, match="unreadable manifest"):
        load_index(tmp_path / "idx")
    mp.unlink()
    with pytest.raises(IndexCorrupt, match="no manifest.json"):
        load_index(tmp_path / "idx")
    with pytest.raises(IndexCorrupt, match="does not exist"):
        load_index(tmp_path / "nowhere")


def test_other_encoder_space_is_refused(tmp_path):
    build_index(tmp_path / "idx", _emb(), space_id=SPACE)
    with pytest.raises(EncoderMismatch, match="other-space"):
        load_index(tmp_path / "idx", expected_space="other-space")


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((0, 4)),
        np.ones(4),
        np.array([[1.0, np.nan]]),
        np.array([[1.0, 0.0], [0.0, 0.0]]),
        np.array([["a", "b"]]),
    ],
)
def test_bad_embeddings_are_refused_before_anything_is_written(tmp_path, bad):
    with pytest.raises(InvalidParameter, match="embeddings"):
        build_index(tmp_path / "idx", bad, space_id=SPACE)
    assert os.listdir(tmp_path) == []


def test_existing_directory_is_not_overwritten_unless_asked(tmp_path):
    build_index(tmp_path / "idx", _emb(seed=0), space_id=SPACE)
    with pytest.raises(InvalidParameter, match="does not exist yet"):
        build_index(tmp_path / "idx", _emb(seed=1), space_id=SPACE)
    new = build_index(tmp_path / "idx", _emb(n=7, seed=1), space_id=SPACE, overwrite=True)
    assert new.count == 7 and load_index(tmp_path / "idx").count == 7
    assert os.listdir(tmp_path) == ["idx"]  # no temp or old directories left behind


def test_crash_mid_write_leaves_no_index_and_no_temp_files(tmp_path, monkeypatch):
    import privdiff.retrieval.private.index as index_mod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(index_mod.json, "dump", boom)  # fails after the vectors are written
    with pytest.raises(OSError, match="disk full"):
        build_index(tmp_path / "idx", _emb(), space_id=SPACE)
    assert os.listdir(tmp_path) == []


def test_crash_during_overwrite_keeps_the_old_index_intact(tmp_path, monkeypatch):
    import privdiff.retrieval.private.index as index_mod

    build_index(tmp_path / "idx", _emb(n=5), space_id=SPACE)
    monkeypatch.setattr(index_mod.json, "dump", lambda *a, **k: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        build_index(tmp_path / "idx", _emb(n=9), space_id=SPACE, overwrite=True)
    assert load_index(tmp_path / "idx").count == 5
    assert os.listdir(tmp_path) == ["idx"]


class _TinyEncoder:
    space_id = "tiny-mean-rgb/v1"
    dim = 3

    def encode_images(self, images, *, batch_size=256, progress=False):
        x = images.reshape(len(images), -1, images.shape[-1]).mean(axis=1).astype(np.float32) + 1.0
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_build_from_images_records_encoder_space_and_no_labels(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, size=(12, 5, 5, 3), dtype=np.uint8)
    idx = build_index_from_images(tmp_path / "idx", imgs, _TinyEncoder(), source="npz:x", progress=False)
    m = read_manifest(tmp_path / "idx")
    assert (m.space_id, m.count, m.dim, m.source) == ("tiny-mean-rgb/v1", 12, 3, "npz:x")
    assert idx.count == 12


def test_private_index_refuses_to_hand_out_rows_and_repr_has_no_data(tmp_path):
    idx = build_index(tmp_path / "idx", _emb(), space_id=SPACE)
    with pytest.raises(PrivdiffError, match="private"):
        idx.public_vectors()
    text = repr(idx)
    assert all(
        f"{v:.4f}" not in text
        for v in np.asarray(unsafe_nonprivate_rows(idx, reason="test: rows must not be in the repr")[:3]).ravel()
    )
    pub = build_index(tmp_path / "pub", _emb(), space_id=SPACE, visibility="public")
    assert pub.public_vectors().shape == (50, 8)


def test_bad_row_in_a_later_chunk_is_reported_with_its_global_index(tmp_path, monkeypatch):
    import privdiff.retrieval.private.index as index_mod

    monkeypatch.setattr(index_mod, "_HASH_CHUNK_ROWS", 4)
    emb = _emb(n=10)
    emb[9] = 0.0
    with pytest.raises(InvalidParameter, match="row 9 is the zero vector"):
        build_index(tmp_path / "idx", emb, space_id=SPACE)
    ok = build_index(tmp_path / "idx", _emb(n=10), space_id=SPACE)  # chunked path gives unit rows
    np.testing.assert_allclose(
        np.linalg.norm(unsafe_nonprivate_rows(ok, reason="test: stored rows are unit"), axis=1),
        1.0,
        rtol=1e-6,
    )
    load_index(tmp_path / "idx")  # full verification, also chunked


# --- float16 scan copy and chunked build (issue 14, items 2 and 4) ---------------------------


def test_scan_copy_is_written_verified_and_used_by_exact_topk(tmp_path):
    from privdiff.retrieval.private import ExactTopK
    from privdiff.retrieval.private.index import SCAN_FILE, SCAN_MANIFEST

    raw = _emb(n=400, d=16, seed=4)
    idx = build_index(tmp_path / "idx", raw, space_id=SPACE, scan_copy=True)
    assert (tmp_path / "idx" / SCAN_FILE).is_file() and (tmp_path / "idx" / SCAN_MANIFEST).is_file()
    idx = load_index(tmp_path / "idx")  # verify="full" also checks ê = fl16(e) row for row
    assert idx.scan_dtype == "float16"
    assert oct(os.stat(tmp_path / "idx" / SCAN_FILE).st_mode & 0o777) == "0o600"  # private rows
    q = np.random.default_rng(5).standard_normal((9, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    a = ExactTopK(idx).topk_sums(q, 7, 0.3, np.random.default_rng(1))
    b = ExactTopK(idx, scan="float16").topk_sums(q, 7, 0.3, np.random.default_rng(1))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert "float16" in repr(ExactTopK(idx, scan="float16"))


def test_old_index_without_scan_copy_loads_and_refuses_a_float16_scan(tmp_path):
    from privdiff.retrieval.private import ExactTopK

    idx = build_index(tmp_path / "idx", _emb(), space_id=SPACE)
    idx = load_index(tmp_path / "idx")
    assert idx.scan_dtype is None
    ExactTopK(idx)  # the float32 scan, as before
    with pytest.raises(InvalidParameter, match="scan copy"):
        ExactTopK(idx, scan="float16")


def test_add_scan_copy_keeps_the_fingerprint(tmp_path):
    from privdiff.retrieval.private import add_scan_copy

    idx = build_index(tmp_path / "idx", _emb(n=300, d=8), space_id=SPACE)
    before = (tmp_path / "idx" / MANIFEST_FILE).read_bytes()
    added = add_scan_copy(tmp_path / "idx")
    assert added.fingerprint == idx.fingerprint
    assert (tmp_path / "idx" / MANIFEST_FILE).read_bytes() == before
    assert load_index(tmp_path / "idx").scan_dtype == "float16"
    with pytest.raises(InvalidParameter):
        add_scan_copy(tmp_path / "idx")  # already there
    add_scan_copy(tmp_path / "idx", overwrite=True)
    assert [p.name for p in (tmp_path / "idx").iterdir() if ".tmp-" in p.name] == []


def test_corrupt_or_foreign_scan_copy_is_refused(tmp_path):
    from privdiff.retrieval.private.index import SCAN_FILE, SCAN_MANIFEST

    build_index(tmp_path / "a", _emb(n=100, d=8, seed=1), space_id=SPACE, scan_copy=True)
    build_index(tmp_path / "b", _emb(n=100, d=8, seed=2), space_id=SPACE, scan_copy=True)
    # A flipped bit: caught by the full verification (hash), not by verify="size".
    p = tmp_path / "a" / SCAN_FILE
    data = bytearray(p.read_bytes())
    data[-3] ^= 0x10
    os.chmod(p, 0o600)
    p.write_bytes(bytes(data))
    with pytest.raises(IndexCorrupt, match="sha256"):
        load_index(tmp_path / "a")
    load_index(tmp_path / "a", verify="size")
    # scan.json of another index.
    (tmp_path / "a" / SCAN_MANIFEST).write_text((tmp_path / "b" / SCAN_MANIFEST).read_text())
    with pytest.raises(IndexCorrupt, match="another index"):
        load_index(tmp_path / "a", verify="size")
    # Truncated scan file.
    q = tmp_path / "b" / SCAN_FILE
    os.chmod(q, 0o600)
    q.write_bytes(q.read_bytes()[:-2])
    with pytest.raises(IndexCorrupt, match="wrong size"):
        load_index(tmp_path / "b", verify="size")


def test_scan_copy_that_is_not_the_float16_rounding_is_refused(tmp_path):
    """A scan copy with a consistent hash but other rows breaks the re-rank bound: full verify refuses it."""
    import hashlib

    from privdiff.retrieval.private.index import SCAN_FILE, SCAN_MANIFEST

    build_index(tmp_path / "a", _emb(n=100, d=8, seed=1), space_id=SPACE, scan_copy=True)
    p, m = tmp_path / "a" / SCAN_FILE, tmp_path / "a" / SCAN_MANIFEST
    arr = np.load(p)
    arr[10] = -arr[10]
    os.chmod(p, 0o600)
    np.save(p, arr)
    meta = json.loads(m.read_text())
    meta["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
    m.write_text(json.dumps(meta))
    with pytest.raises(IndexCorrupt, match="float16 rounding"):
        load_index(tmp_path / "a")


def test_build_holds_chunks_not_a_second_copy_of_the_index(tmp_path, monkeypatch):
    """Peak heap memory of a build (beyond its input) and of a full load stays a fraction of the index.

    The original build normalised all rows into a second float32 copy (peak ≥ 1× the index) before
    writing; now rows are checked, normalised, written and hashed chunk by chunk.
    """
    import tracemalloc

    import privdiff.retrieval.private.index as index_mod

    monkeypatch.setattr(index_mod, "_HASH_CHUNK_ROWS", 512)
    raw = np.random.default_rng(0).standard_normal((40000, 64)).astype(np.float32)  # 10 MB
    size = raw.nbytes
    tracemalloc.start()
    try:
        build_index(tmp_path / "idx", raw, space_id=SPACE, scan_copy=True)
        _, peak_build = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        load_index(tmp_path / "idx", verify="full")
        _, peak_load = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_build < 0.2 * size, peak_build / size
    assert peak_load < 0.2 * size, peak_load / size
