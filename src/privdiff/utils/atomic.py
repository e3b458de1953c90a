"""Atomic file writes: a reader (or a crash) sees the old file or the whole new one, never half.

The one recipe (POSIX): write a temporary file *in the same directory* (``os.replace`` is atomic
only within one file system), flush and ``fsync`` it (else the rename can reach the disk before
the data and a crash leaves an empty file under the final name), ``os.replace`` it over the
target, then ``fsync`` the directory so the rename itself is durable. On any error the temporary
file is removed and the target is untouched.

Several files that must appear together (weights, then the config that names them) are written
one after another, the marker last: a reader that finds the marker finds complete files.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from privdiff.utils.jsonsafe import dumps

#: Mode of a new file when the caller does not choose one (then the umask applies, as for open()).
DEFAULT_MODE = 0o666


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename or create in ``directory`` durable (best effort: some file systems and
    platforms cannot open a directory, and a failed directory fsync loses no data)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def flush_and_fsync(f: IO[Any]) -> None:
    """Flush a file object's buffers and fsync it: its bytes are on disk before a later rename
    makes them visible (files written inside a staging directory, see :func:`install_directory`)."""
    f.flush()
    os.fsync(f.fileno())


def install_directory(staged: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move a fully written, fsynced staging directory to ``out`` in one rename.

    ``staged`` must be a sibling of ``out`` (same file system). An existing ``out`` is moved aside
    first (rename() cannot replace a non-empty directory) and removed only after the new one is in
    place, so a crash leaves either the old or the new directory at ``out``, never a half-written
    one. Used by the private index and its shards, which must never be read half-built.
    """
    import shutil
    import tempfile

    staged, out = Path(staged), Path(out)
    fsync_dir(staged)
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, trash / "old")
        os.rename(staged, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(staged, out)
    fsync_dir(out.parent)


def temp_path_for(path: str | os.PathLike) -> Path:
    """A unique hidden sibling of ``path`` that keeps its suffix (``np.save``/``np.savez`` and
    ``torch.save`` add or check suffixes): ``dir/.name.<hex>.tmp<suffix>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp{path.suffix}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through; on a clean exit it replaces ``path``.

    For writers that want a file name (``safetensors.save_file``, ``np.savez``, ``torch.save``).
    ``mode`` (e.g. ``0o600``) is applied to the file before it gets its final name. The parent
    directory must exist.
    """
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        yield tmp
        _fsync_file(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, *, mode: int = DEFAULT_MODE) -> Iterator[IO[bytes]]:
    """Yield a binary file that becomes ``path`` on a clean exit.

    The temporary file is created with ``mode`` from its first byte (``O_EXCL``, so nothing
    else's file is reused; the umask can only narrow it), which is what private data needs:
    ``mode=0o600`` means no other user can ever open it.
    """
    path = Path(path)
    with atomic_path(path, mode=None if mode == DEFAULT_MODE else mode) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int = DEFAULT_MODE) -> Path:
    with atomic_open(path, mode=mode) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8", mode: int = DEFAULT_MODE) -> Path:
    return atomic_write_bytes(path, text.encode(encoding), mode=mode)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, mode: int = DEFAULT_MODE) -> Path:
    """``obj`` as strict JSON (:func:`privdiff.utils.jsonsafe.dumps`) plus a newline, atomically."""
    return atomic_write_text(path, dumps(obj, indent=indent) + "\n", mode=mode)
