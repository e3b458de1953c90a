"""privdiff.utils.cache: one location, one key scheme, atomic entries."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from privdiff.errors import DataError
from privdiff.utils.cache import ArrayCache, array_digest, cache_key, cache_root


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PRIVDIFF_CACHE_DIR", str(tmp_path))
    assert cache_root("fid") == tmp_path / "fid"
    monkeypatch.setenv("PRIVDIFF_CACHE_DIR", "")  # empty means unset, not the working directory
    assert cache_root("fid").parts[-3:] == (".cache", "privdiff", "fid")


def test_keys_separate_parts_types_and_shapes():
    a = np.arange(6, dtype=np.uint8)
    assert cache_key("ab", "c") != cache_key("a", "bc")
    assert cache_key("1") != cache_key(1)
    assert cache_key(a) != cache_key(a.reshape(2, 3))  # equal bytes, other shape
    assert cache_key(a) != cache_key(a.astype(np.int8))  # equal bytes, other dtype
    assert cache_key("x", a) == cache_key("x", a.copy())
    assert len(cache_key("x")) == 24 and array_digest(a) == array_digest(a.copy())
    with pytest.raises(TypeError):
        cache_key(None)


def test_array_entries_round_trip_and_a_bad_entry_is_a_miss(tmp_path):
    cache = ArrayCache(tmp_path / "c")
    assert cache.load("k") is None
    cache.save("k", np.eye(2, dtype=np.float32))
    assert cache.load("k").tolist() == [[1, 0], [0, 1]]
    assert cache.load("k", shape=(3, 3)) is None
    cache.path("k").write_bytes(b"truncated")
    assert cache.load("k") is None
    cache.save_npz("z", a=np.ones(2), tag=np.array("x"))
    z = cache.load_npz("z")
    assert z["a"].tolist() == [1, 1] and str(z["tag"]) == "x"
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["k.npy", "z.npz"]


def test_private_cache_is_owner_only(tmp_path):
    d = tmp_path / "private"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    cache = ArrayCache(d, private=True)
    cache.save("k", np.zeros(3))
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE(cache.path("k").stat().st_mode) == 0o600
    link = tmp_path / "link"
    os.symlink(tmp_path / "elsewhere", link)
    with pytest.raises(DataError, match="plain directory|owner-only"):
        ArrayCache(link, private=True)
