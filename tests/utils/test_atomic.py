"""privdiff.utils.atomic: the one temp + fsync + rename routine."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from privdiff.utils.atomic import (
    atomic_open,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
)


def _entries(d):
    return sorted(p.name for p in d.iterdir())


def test_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")
    atomic_write_json(target, {"eps": float("inf"), "n": np.int64(3)})
    assert json.loads(target.read_text()) == {"eps": "inf", "n": 3}
    assert target.read_text().endswith("\n")
    assert _entries(tmp_path) == ["r.json"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.pt"
    target.write_bytes(b"complete old state")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_open(target) as fh:
            fh.write(b"half of the new st")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"complete old state"
    assert _entries(tmp_path) == ["state.pt"]


def test_atomic_path_keeps_the_suffix_for_writers_that_add_one(tmp_path):
    # np.savez appends ".npz" to a name without it: the temporary name must already end so.
    target = tmp_path / "entry.npz"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npz" and tmp.name.startswith(".")
        np.savez(tmp, a=np.arange(3))
    with np.load(target) as z:
        assert z["a"].tolist() == [0, 1, 2]
    assert _entries(tmp_path) == ["entry.npz"]


def test_private_mode_applies_from_the_first_byte(tmp_path):
    seen = []
    with atomic_open(tmp_path / "secret.npy", mode=0o600) as fh:
        seen.append(stat.S_IMODE(os.fstat(fh.fileno()).st_mode))
        np.save(fh, np.ones(2))
    assert seen == [0o600]
    assert stat.S_IMODE((tmp_path / "secret.npy").stat().st_mode) == 0o600


def test_text_round_trips_and_fsync_dir_tolerates_a_missing_directory(tmp_path):
    atomic_write_text(tmp_path / "a.html", "ε ≤ 10")
    assert (tmp_path / "a.html").read_text(encoding="utf-8") == "ε ≤ 10"
    fsync_dir(tmp_path)
    fsync_dir(tmp_path / "missing")  # best effort: no error
