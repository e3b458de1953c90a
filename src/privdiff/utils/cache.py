"""Disk caches, written once: where they live, how entries are keyed, how they are written.

* Location: :func:`cache_root` — ``$PRIVDIFF_CACHE_DIR/<name>`` if the variable is set (and not
  empty), else ``~/.cache/privdiff/<name>``.
* Keys: :func:`cache_key` — sha256 over the parts, each tagged with its type (arrays by
  :func:`array_digest`: dtype, shape and bytes), so ``("a", "bc")`` and ``("ab", "c")`` differ
  and an equal-bytes array of another shape misses. Every part that changes the cached value
  must be a part of the key (callers say which).
* Entries: :class:`ArrayCache` — one ``<key>.npy`` or ``<key>.npz`` per entry, written through
  :func:`privdiff.utils.atomic.atomic_open` (a killed run never leaves a truncated entry that a
  later run trusts), read with ``allow_pickle=False``; an unreadable or mismatched entry is a
  miss, never an error. ``private=True`` makes the directory owner-only (0700) and every file
  0600 from its first byte: raw private embeddings are as sensitive as the images.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from privdiff.errors import DataError
from privdiff.utils.atomic import atomic_open

CACHE_ENV_VAR = "PRIVDIFF_CACHE_DIR"
#: Length of a cache key (hex digits of sha256): 96 bits, no accidental collisions.
KEY_LENGTH = 24
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError)


def cache_root(name: str = "") -> Path:
    """``$PRIVDIFF_CACHE_DIR/name`` (if set and non-empty), else ``~/.cache/privdiff/name``."""
    root = os.environ.get(CACHE_ENV_VAR)
    base = Path(root) if root else Path.home() / ".cache" / "privdiff"
    return base / name if name else base


def array_digest(array: np.ndarray) -> str:
    """SHA-256 over dtype, shape and bytes: equal arrays share it, any element change breaks it."""
    array = np.asarray(array)
    h = hashlib.sha256()
    h.update(f"{array.dtype.str}|{array.shape}".encode())
    h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


def cache_key(*parts: Any, length: int = KEY_LENGTH) -> str:
    """The key of an entry whose value is determined by ``parts``
    (str, int, float, bytes or arrays)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            tag, data = "array", array_digest(part).encode()
        elif isinstance(part, bytes):
            tag, data = "bytes", part
        elif isinstance(part, (str, int, float)) and not isinstance(part, bool):
            tag, data = type(part).__name__, str(part).encode()
        else:
            raise TypeError(f"cache key parts are str, int, float, bytes or arrays, not {type(part).__name__}")
        # Length-prefixed, so no two different part lists hash the same bytes.
        h.update(f"{tag}:{len(data)}:".encode())
        h.update(data)
    return h.hexdigest()[:length]


def owner_only_dir(directory: Path) -> Path:
    """``directory``, created 0700 (or tightened to it); :class:`DataError` if that fails or it
    is not a plain directory (a symlink could point the private files anywhere)."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if directory.is_symlink() or not directory.is_dir():
            raise DataError(f"private cache {directory} is not a plain directory")
        if directory.stat().st_mode & 0o077:
            os.chmod(directory, 0o700)
    except OSError as exc:
        raise DataError(f"cannot make the private cache {directory} owner-only (0700): {exc}") from None
    return directory


class ArrayCache:
    """Arrays on disk under ``directory``, one file per key, written atomically."""

    def __init__(self, directory: str | os.PathLike, *, private: bool = False):
        self.directory = Path(directory)
        self.private = bool(private)
        if self.private:
            owner_only_dir(self.directory)

    def path(self, key: str, suffix: str = ".npy") -> Path:
        return self.directory / f"{key}{suffix}"

    def _open(self, path: Path):
        self.directory.mkdir(parents=True, exist_ok=True)
        return atomic_open(path, mode=0o600 if self.private else 0o644)

    def load(self, key: str, *, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        """The array stored under ``key``, or None (absent, unreadable, or not of ``shape``)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except _READ_ERRORS:
            return None
        if shape is not None and array.shape != tuple(shape):
            return None
        return array

    def save(self, key: str, array: np.ndarray) -> Path:
        path = self.path(key)
        with self._open(path) as fh:
            np.save(fh, np.asarray(array), allow_pickle=False)
        return path

    def load_npz(self, key: str) -> dict[str, np.ndarray] | None:
        """All arrays of the ``.npz`` entry under ``key``, or None (absent or unreadable)."""
        path = self.path(key, ".npz")
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return {name: z[name] for name in z.files}
        except _READ_ERRORS:
            return None

    def save_npz(self, key: str, **arrays: Any) -> Path:
        path = self.path(key, ".npz")
        with self._open(path) as fh:
            np.savez(fh, **arrays)
        return path
