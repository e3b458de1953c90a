"""Small shared utilities, each written once: atomic writes, JSON sanitising, disk caches.

* :mod:`privdiff.utils.atomic` — :func:`atomic_path` / :func:`atomic_open` (temp file in the same
  directory, fsync, rename, directory fsync), :func:`atomic_write_text`, :func:`atomic_write_bytes`,
  :func:`atomic_write_json`, :func:`fsync_dir`.
* :mod:`privdiff.utils.jsonsafe` — :func:`jsonable` (inf/nan/numpy/Path/tuples → JSON values),
  :func:`dumps`.
* :mod:`privdiff.utils.cache` — :func:`cache_root` (``$PRIVDIFF_CACHE_DIR``), :func:`cache_key`,
  :func:`array_digest`, :class:`ArrayCache` (``.npy`` entries keyed and written one way).

Nothing here imports the rest of privdiff except :mod:`privdiff.errors`, so every package may use
it.
"""

from privdiff.utils.atomic import (
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
)
from privdiff.utils.cache import ArrayCache, array_digest, cache_key, cache_root
from privdiff.utils.jsonsafe import dumps, jsonable

__all__ = [
    "ArrayCache",
    "array_digest",
    "atomic_open",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "cache_key",
    "cache_root",
    "dumps",
    "fsync_dir",
    "jsonable",
]
