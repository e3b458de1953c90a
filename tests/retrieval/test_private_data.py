"""Private data stays inside its boundary: the embedding cache, index file modes, and a "public"
set that is really (part of) the private one."""

from __future__ import annotations

import stat
import warnings
from pathlib import Path

import numpy as np
import pytest

from privdiff.errors import IndexCorrupt, InvalidParameter


class _TinyEncoder:
    space_id = "tiny-mean/v1"
    dim = 4

    def __init__(self):
        self.calls = 0

    def __repr__(self) -> str:
        return "_TinyEncoder()"

    def encode_images(self, images, *, batch_size=256, progress=False):
        self.calls += 1
        x = images.reshape(len(images), -1).astype(np.float32)
        feats = np.stack([x.mean(1), x.std(1), x[:, ::2].mean(1), x[:, 1::2].mean(1)], axis=1) + 1.0
        return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _files(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if p.is_file()] if d.exists() else []


# ------------------------------------------------------------------ the embedding cache


def test_private_embeddings_never_reach_the_shared_cache(tmp_path, monkeypatch):
    from privdiff.data import ImageDataset
    from privdiff.rdm.train import PRIVATE_CACHE_SUBDIR, cached_embeddings, default_cache_dir

    monkeypatch.setenv("PRIVDIFF_CACHE_DIR", str(tmp_path / "cache"))
    shared = default_cache_dir()
    enc = _TinyEncoder()
    private = ImageDataset(images=_images(10, 0), name="folder:/secret")
    first = cached_embeddings(private, enc, private=True, progress=False)
    again = cached_embeddings(private, enc, private=True, progress=False)
    assert enc.calls == 1 and np.array_equal(first, again)  # still cached, privately
    priv_dir = shared / PRIVATE_CACHE_SUBDIR
    assert _mode(priv_dir) == 0o700
    stored = _files(shared)
    assert stored and all(p.parent == priv_dir and _mode(p) == 0o600 for p in stored)
    # public data keeps the shared cache
    cached_embeddings(ImageDataset(images=_images(10, 1), name="public"), enc, private=False, progress=False)
    assert len([p for p in _files(shared) if p.parent == shared]) == 1


def test_a_private_cache_directory_left_group_readable_is_tightened(tmp_path):
    from privdiff.data import ImageDataset
    from privdiff.rdm.train import PRIVATE_CACHE_SUBDIR, cached_embeddings

    (tmp_path / PRIVATE_CACHE_SUBDIR).mkdir(mode=0o755)
    (tmp_path / PRIVATE_CACHE_SUBDIR).chmod(0o755)
    cached_embeddings(
        ImageDataset(images=_images(4, 0), name="p"),
        _TinyEncoder(),
        private=True,
        cache_dir=tmp_path,
        progress=False,
    )
    assert _mode(tmp_path / PRIVATE_CACHE_SUBDIR) == 0o700


def test_callers_must_say_whether_the_data_is_private(tmp_path):
    from privdiff.data import ImageDataset
    from privdiff.rdm.train import cached_embeddings

    ds = ImageDataset(images=_images(4, 0), name="x")
    with pytest.raises(TypeError):
        cached_embeddings(ds, _TinyEncoder(), cache_dir=tmp_path)  # no silent default
    with pytest.raises(InvalidParameter, match="private"):
        cached_embeddings(ds, _TinyEncoder(), private="yes", cache_dir=tmp_path)


def test_building_an_index_leaves_nothing_in_the_cache_and_private_files_are_owner_only(tmp_path, monkeypatch):
    from privdiff.retrieval import build_index_from_images

    monkeypatch.setenv("PRIVDIFF_CACHE_DIR", str(tmp_path / "cache"))
    idx = build_index_from_images(
        tmp_path / "idx", _images(12, 0), _TinyEncoder(), source="folder:/secret", progress=False
    )
    assert _files(tmp_path / "cache") == []
    assert _mode(idx.path) == 0o700
    assert _mode(idx.path / "embeddings.npy") == 0o600 and _mode(idx.path / "source_rows.npy") == 0o600


# ------------------------------------------------------------------ public set == private set


def test_a_public_set_sharing_images_with_the_private_index_is_refused(tmp_path):
    from privdiff.retrieval import build_index_from_images, check_public_disjoint, load_index

    private = _images(12, 0)
    build_index_from_images(tmp_path / "idx", private, _TinyEncoder(), source="s", progress=False)
    idx = load_index(tmp_path / "idx")
    with pytest.raises(InvalidParameter, match="fashion-mnist:dprdm-private") as info:
        check_public_disjoint(idx, private, name="fashion-mnist:dprdm-private")
    assert "12 of its 12" in str(info.value)
    overlap = np.concatenate([_images(30, 1), private[5:6]])
    with pytest.raises(InvalidParameter, match="1 of its 31"):
        check_public_disjoint(idx, overlap, name="mixed")
    assert check_public_disjoint(idx, _images(30, 1), name="really-public") == 0


def test_the_overlap_check_needs_the_recorded_hashes_intact(tmp_path):
    from privdiff.retrieval import (
        build_index,
        build_index_from_images,
        check_public_disjoint,
        load_index,
    )

    emb_only = build_index(tmp_path / "emb", np.random.default_rng(0).normal(size=(5, 4)), space_id="s/v1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check_public_disjoint(emb_only, _images(3, 0), name="p") is None
    assert any("cannot check" in str(w.message) for w in caught)
    build_index_from_images(tmp_path / "idx", _images(6, 0), _TinyEncoder(), source="s", progress=False)
    rows = tmp_path / "idx" / "source_rows.npy"
    rows.write_bytes(rows.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(IndexCorrupt):
        check_public_disjoint(load_index(tmp_path / "idx"), _images(6, 0), name="p")


def test_public_embeddings_for_refuses_the_private_split_before_encoding(tmp_path):
    from privdiff.rdm.pipeline import public_embeddings_for
    from privdiff.retrieval import build_index_from_images

    private = _images(12, 0)
    np.savez(tmp_path / "private.npz", images=private)
    np.savez(tmp_path / "public.npz", images=_images(12, 1))
    idx = build_index_from_images(tmp_path / "idx", private, _TinyEncoder(), source="s", progress=False)
    enc = _TinyEncoder()
    with pytest.raises(InvalidParameter, match="public_data"):
        public_embeddings_for(f"npz:{tmp_path / 'private.npz'}", enc, idx)
    assert enc.calls == 0
    pub = public_embeddings_for(f"npz:{tmp_path / 'public.npz'}", enc, idx)
    assert pub.vectors.shape == (12, 4)


def test_manifest_of_an_index_without_source_hashes_is_unchanged(tmp_path):
    """Indexes built from embeddings (and by older privdiff) keep a manifest without the new field,
    so their fingerprint - what ledgers bind to - is the sha256 of the file as written."""
    import hashlib
    import json

    from privdiff.retrieval import build_index, load_index

    idx = build_index(tmp_path / "idx", np.random.default_rng(0).normal(size=(5, 4)), space_id="s/v1")
    raw = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert "source_rows_sha256" not in raw
    assert (
        load_index(tmp_path / "idx").fingerprint
        == hashlib.sha256((tmp_path / "idx" / "manifest.json").read_bytes()).hexdigest()
        == idx.fingerprint
    )
