"""The output folder written by ``privdiff generate`` and ``privdiff sample``, prepared before any work.

Layout (the same for both commands, so a folder can be passed straight to ``privdiff eval``)::

    OUT/images/<name>.png   one PNG per image (generate: p<prompt>_<image>.png; sample: <i>.png)
    OUT/images.npz          all images in one array: key ``images``, uint8 (N, H, W, C), in the
                            order of the file names (generate: prompt-major)
    OUT/grid.png            a labelled overview grid (never read as samples)
    OUT/<record>.json       what was done (generation.json / sample.json), written last

:func:`privdiff.evaluation.io.source_to_spec` reads ``images.npz`` of such a folder (or ``images/``)
and never the grid or the JSON.

Why "prepared before": in DP-RDM the privacy ledger is charged before images exist, so an output
path that turns out to be a file, unwritable or full would spend ε for nothing.
:meth:`OutputDir.prepare` creates the folder, write-tests it with a staging directory inside it
and checks the free space against an estimate, all before the caller charges anything; on
failure :meth:`OutputDir.abort` removes what it created, so a refused request leaves no files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from privdiff.errors import InvalidParameter
from privdiff.utils.atomic import atomic_write_text, fsync_dir

IMAGES_DIR = "images"
IMAGES_NPZ = "images.npz"
NPZ_KEY = "images"
GRID_FILE = "grid.png"


class OutputDir:
    """A checked, write-tested output folder with a private staging directory inside it.

    Use :meth:`prepare` before the expensive / charged step, then :meth:`commit` (moves the staged
    files into place, the record last) or :meth:`abort` (removes staging and any folder this
    object created).
    """

    def __init__(self, out: Path, record: str, created: list[Path], staging: Path):
        self.out = out
        self.record = record
        self._created = created
        self.staging = staging

    @classmethod
    def prepare(cls, out: str | os.PathLike, *, record: str, estimate_bytes: int = 0) -> OutputDir:
        """Create ``out`` (and parents), refuse a file or a folder holding earlier outputs,
        write-test it and check ``estimate_bytes`` of free space.

        Raises:
            InvalidParameter: ``out`` is a file, holds an earlier output, is not writable, or
                its file system has less free space than the estimate. Nothing is left behind.
        """
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise InvalidParameter("out", str(out), "a directory (this path is an existing file)")
        if out.is_dir():
            clash = [n for n in (record, IMAGES_NPZ, IMAGES_DIR, GRID_FILE) if (out / n).exists()]
            if clash:
                raise InvalidParameter(
                    "out",
                    str(out),
                    f"a directory without earlier outputs (it already holds {', '.join(clash)})",
                )
        # Which folders do not exist yet: abort() removes exactly those (deepest first).
        missing: list[Path] = []
        p = out
        while not p.exists():
            missing.append(p)
            if p.parent == p:
                break
            p = p.parent
        if p.exists() and not p.is_dir():
            raise InvalidParameter("out", str(out), f"a directory path ({p} is a file)")
        try:
            out.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".privdiff-staging-", dir=out))
            probe = staging / ".write-test"
            with open(probe, "wb") as fh:
                fh.write(b"\0" * 4096)
                fh.flush()
                os.fsync(fh.fileno())
            probe.unlink()
        except OSError as exc:
            _remove_created(missing)
            raise InvalidParameter("out", str(out), f"a writable directory ({exc.strerror or exc})") from None
        self = cls(out, record, missing, staging)
        free = shutil.disk_usage(out).free
        if estimate_bytes > free:
            self.abort()
            raise InvalidParameter(
                "out",
                str(out),
                f"a file system with at least {estimate_bytes / 2**20:.1f} MiB free (it has {free / 2**20:.1f} MiB)",
            )
        return self

    def write_images(self, images: np.ndarray, names: list[str]) -> None:
        """Stage ``images/<name>.png`` for each image and ``images.npz`` with all of them."""
        from privdiff.report.images import save_png

        images = np.ascontiguousarray(images)
        if len(names) != images.shape[0]:
            raise ValueError(f"{len(names)} names for {images.shape[0]} images")
        (self.staging / IMAGES_DIR).mkdir()
        for img, name in zip(images, names):
            save_png(img, self.staging / IMAGES_DIR / f"{name}.png")
        np.savez_compressed(self.staging / IMAGES_NPZ, **{NPZ_KEY: images})

    def write_grid(self, draw: Callable[[Path], object]) -> None:
        draw(self.staging / GRID_FILE)

    def commit(self, record_text: str) -> None:
        """Move the staged files into ``out``; the record is written last (it marks completion)."""
        for name in sorted(p.name for p in self.staging.iterdir()):
            os.replace(self.staging / name, self.out / name)
        fsync_dir(self.out)  # the moved files are durable before the record that says so
        atomic_write_text(self.out / self.record, record_text)
        shutil.rmtree(self.staging, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        _remove_created(self._created)


def files_record(image_pattern: str, record: str) -> dict[str, str]:
    """The ``files`` entry of a record: where each part of the layout lives."""
    return {
        "images": f"{IMAGES_DIR}/{image_pattern}",
        "npz": f"{IMAGES_NPZ} (key {NPZ_KEY!r}: uint8 (N, H, W, C))",
        "grid": GRID_FILE,
        "record": record,
    }


def _remove_created(created: list[Path]) -> None:
    for d in created:  # deepest first; only folders still empty
        try:
            d.rmdir()
        except OSError:
            break
