"""The embedding index on disk: float32 unit vectors + a manifest, written atomically.

Layout of an index directory::

    DIR/embeddings.npy   (N, d) float32, L2-normalised rows (numpy .npy, loaded with mmap)
    DIR/manifest.json    format version, encoder space_id, dim, N, sha256 + byte size of the
                         vector file, creation time, source spec, visibility (private/public),
                         and (when built from images) the sha256 of source_rows.npy
    DIR/source_rows.npy  (only when built from images) sorted unique uint64: a 64-bit hash of
                         each source image, so a "public" set can be checked for overlap with
                         the private one (:func:`shared_source_rows`); mode 0600
    DIR/embeddings_f16.npy + DIR/scan.json
                         (optional, ``scan_copy=True`` or :func:`add_scan_copy`) the rows rounded
                         to float16, for a scan that reads half the bytes and re-ranks exactly in
                         float32 (``search.float16_scan_slack``); scan.json records its sha256 and
                         the manifest fingerprint it was derived for. It is not in the manifest,
                         so adding it never changes an index's fingerprint, and an index without
                         it loads and searches as before.
    DIR/embeddings_i8.npy + DIR/scales_i8.npy + DIR/scan_i8.json
                         (optional, ``scan_copy="int8"`` or ``add_scan_copy(dir, dtype="int8")``)
                         per-row-scaled int8 codes and their float32 scales, a quarter of the
                         bytes, scored by a compiled int8 kernel (numba) and re-ranked exactly in
                         float32 (``int8scan.int8_scan_slack``); scan_i8.json records both sha256s,
                         the index-wide maxima the error bound uses and the fingerprint. Like the
                         float16 copy it is outside the manifest (fingerprint unchanged).

The *fingerprint* of an index is the sha256 of its manifest (canonical JSON, identical to the
bytes privdiff writes). The manifest records the vectors' sha256, so the fingerprint pins the
content; it also records the creation time, so unlike the vectors' hash it cannot be recomputed
from a guess at the private data. It is what a ledger binds to and, shortened to 12 hex digits
(:attr:`EmbeddingIndex.short_fingerprint`), what privdiff shows; the vectors' own sha256 is never
printed.

The manifest holds nothing private beyond what an index inherently reveals (its size N, which
the DP-RDM accountant's default δ = 1/N already treats as public): no labels, no file names, no
per-record data. An index built from a private collection is marked ``"visibility": "private"``;
only :class:`~privdiff.retrieval.private.mechanism.DPRetriever` (through a top-k backend) may read its rows. A
``public`` index
(e.g. embeddings of a public image set) can also feed
:class:`~privdiff.retrieval.public.PublicRetriever`.

Integrity: :func:`load_index` re-hashes the vector file and checks every row is finite and unit
norm, or, with ``verify="size"``, checks only the byte size and the .npy header (fast path for
very large indexes). A truncated, corrupt or mismatched index raises
:class:`~privdiff.errors.IndexCorrupt` / :class:`~privdiff.errors.EncoderMismatch` naming the
problem. Writing goes to a temporary sibling directory that is renamed into place only once both
files are complete and fsync'ed, so a crash never leaves a half-written index under ``DIR``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privdiff.errors import EncoderMismatch, IndexCorrupt, InvalidParameter, PrivdiffError
from privdiff.retrieval.private.int8scan import INT8_MAX_DIM, Int8ScanCopy, quantise_rows, row_stats
from privdiff.utils.atomic import fsync_dir, install_directory

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "UNIT_NORM_TOLERANCE",
    "DEFAULT_ENCODE_BATCH",
    "EmbeddingIndex",
    "IndexManifest",
    "build_index",
    "add_scan_copy",
    "build_index_from_images",
    "check_public_disjoint",
    "image_row_hashes",
    "load_index",
    "manifest_fingerprint",
    "read_manifest",
    "rows_for_mechanism",
    "scan_rows_for_mechanism",
    "int8_scan_for_mechanism",
    "shared_source_rows",
    "unsafe_nonprivate_rows",
    "validated_unit_rows",
]

FORMAT_NAME = "privdiff-embedding-index"
FORMAT_VERSION = 1
VECTORS_FILE = "embeddings.npy"
MANIFEST_FILE = "manifest.json"
SOURCE_ROWS_FILE = "source_rows.npy"
SCAN_FILE = "embeddings_f16.npy"
SCAN_MANIFEST = "scan.json"
SCAN_FORMAT = "privdiff-scan-copy"
INT8_CODES_FILE = "embeddings_i8.npy"
INT8_SCALES_FILE = "scales_i8.npy"
INT8_MANIFEST = "scan_i8.json"
SCAN_DTYPES = ("float16", "int8")
#: scan_i8.json keys of the index-wide maxima (``int8scan.Int8ScanCopy``), in ``row_stats`` column order.
_INT8_STATS = ("max_resid_inf", "max_resid_l2", "max_l1", "max_l2")
#: Hex digits of the manifest's sha256 that privdiff shows (48 bits: collisions need ~10^7 indexes).
SHORT_FINGERPRINT = 12
VISIBILITIES = ("private", "public")

#: Stored rows must satisfy | ‖e‖₂ − 1 | ≤ this. float32 normalisation lands within ~1e-6; the
#: slack only tolerates rounding, never a real scale error (which would break Δ₂ = 2/k, §4.2).
UNIT_NORM_TOLERANCE = 1e-4

_HASH_CHUNK_ROWS = 65536
#: Bytes of one float64 chunk of rows during validation (a few temporaries of this size live at
#: once): 65,536 rows of d = 512 would be 268 MB each, more than a mid-sized index.
_CHUNK_BYTES = 16 << 20


def _scan_kinds(scan_copy: Any) -> tuple[str, ...]:
    """``scan_copy`` → the scan copies to keep: False/None → none, True → float16 (as before),
    ``"float16"`` / ``"int8"`` or a sequence of them."""
    if scan_copy is None or scan_copy is False:
        return ()
    if scan_copy is True:
        return ("float16",)
    kinds = (scan_copy,) if isinstance(scan_copy, str) else tuple(scan_copy)
    if not kinds or any(k not in SCAN_DTYPES for k in kinds):
        raise InvalidParameter("scan_copy", repr(scan_copy), "False, True (float16), 'float16', 'int8' or both")
    return tuple(dict.fromkeys(kinds))


def _check_int8_dim(d: int) -> None:
    if d > INT8_MAX_DIM:
        raise InvalidParameter("scan_copy", f"'int8' at dim {d}", f"dim <= {INT8_MAX_DIM} (exact int32 dot products)")


def _chunk_rows(d: int) -> int:
    return max(1, min(_HASH_CHUNK_ROWS, _CHUNK_BYTES // (8 * max(1, int(d)))))


#: Images per encoder batch when building an index, chosen by measurement (``benchmarks/scan.py
#: --memory``, docs/results/scale/memory_encode.json; 2,048 Fashion-MNIST images, default encoder,
#: one thread): batch 256 took 8.8 CPU-s (4.6 s of it in the kernel, 2.5 M page faults), 64 took
#: 6.3 CPU-s (1.4 s kernel, 0.6 M faults) and 2.5x less wall time, with identical embeddings;
#: 32 was no better than 64.
DEFAULT_ENCODE_BATCH = 64


@dataclass(frozen=True)
class IndexManifest:
    """What ``manifest.json`` records about an index (never any per-record data)."""

    format: str
    format_version: int
    space_id: str
    dim: int
    count: int
    dtype: str
    vectors_file: str
    vectors_bytes: int
    sha256: str
    created_utc: str
    source: str
    visibility: str
    #: sha256 of ``source_rows.npy`` (hashes of the source images); "" when the index was built
    #: from embeddings, or by a privdiff that did not record them.
    source_rows_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["source_rows_sha256"]:
            # Omitted when empty: older manifests (and their fingerprints) stay byte-identical.
            del d["source_rows_sha256"]
        return d

    @property
    def fingerprint(self) -> str:
        """sha256 of this manifest (see the module docstring); what a ledger binds to."""
        return manifest_fingerprint(self)

    def shown(self) -> dict[str, Any]:
        """The manifest as privdiff displays it: hashes replaced by the short fingerprint."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("sha256", "source_rows_sha256")}
        return {"fingerprint": self.fingerprint[:SHORT_FINGERPRINT], **d}

    @classmethod
    def from_dict(cls, raw: Any, where: str = "manifest") -> IndexManifest:
        if not isinstance(raw, dict):
            raise IndexCorrupt(f"{where}: expected a JSON object, found {type(raw).__name__}")
        if raw.get("format") != FORMAT_NAME:
            raise IndexCorrupt(f"{where}: not a privdiff index (format={raw.get('format')!r})")
        if raw.get("format_version") != FORMAT_VERSION:
            raise IndexCorrupt(
                f"{where}: unsupported format_version {raw.get('format_version')!r} "
                f"(this privdiff reads version {FORMAT_VERSION})"
            )
        fields = cls.__dataclass_fields__
        optional = {"source_rows_sha256"}
        missing = sorted(set(fields) - set(raw) - optional)
        if missing:
            raise IndexCorrupt(f"{where}: missing field(s) {', '.join(missing)}")
        extra = sorted(set(raw) - set(fields))
        if extra:
            raise IndexCorrupt(f"{where}: unexpected field(s) {', '.join(extra)}")
        m = cls(**{f: raw[f] for f in fields if f in raw})
        ints = {"dim": m.dim, "count": m.count, "vectors_bytes": m.vectors_bytes}
        for name, v in ints.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < (1 if name == "dim" else 0):
                raise IndexCorrupt(f"{where}: invalid {name}={v!r}")
        if m.dtype != "float32":
            raise IndexCorrupt(f"{where}: dtype {m.dtype!r}, expected 'float32'")
        if m.visibility not in VISIBILITIES:
            raise IndexCorrupt(f"{where}: visibility {m.visibility!r} not in {VISIBILITIES}")
        if m.vectors_file != VECTORS_FILE:
            raise IndexCorrupt(f"{where}: vectors_file {m.vectors_file!r}, expected {VECTORS_FILE!r}")
        if not isinstance(m.sha256, str) or len(m.sha256) != 64:
            raise IndexCorrupt(f"{where}: malformed sha256 {m.sha256!r}")
        if not isinstance(m.space_id, str) or not m.space_id:
            raise IndexCorrupt(f"{where}: empty space_id")
        if not isinstance(m.source_rows_sha256, str) or len(m.source_rows_sha256) not in (0, 64):
            raise IndexCorrupt(f"{where}: malformed source_rows_sha256")
        return m


def manifest_fingerprint(manifest: IndexManifest) -> str:
    """sha256 of the manifest's canonical JSON, byte-identical to the ``manifest.json`` privdiff writes."""
    return hashlib.sha256(_manifest_bytes(manifest)).hexdigest()


def _manifest_bytes(manifest: IndexManifest) -> bytes:
    return (json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n").encode("utf-8")


class ManifestView:
    """Public, non-private metadata read from ``self._manifest``: one definition for an index and
    for its sharded form (:class:`~privdiff.retrieval.private.sharded.ShardedIndex`), which keeps
    the parent's manifest and so has the same identity."""

    __slots__ = ()
    _manifest: IndexManifest

    @property
    def manifest(self) -> IndexManifest:
        return self._manifest

    @property
    def fingerprint(self) -> str:
        """sha256 of the manifest: the index's identity for ledgers (module docstring)."""
        return self._manifest.fingerprint

    @property
    def short_fingerprint(self) -> str:
        """The first 12 hex digits of :attr:`fingerprint`: what messages and ``index info`` show."""
        return self._manifest.fingerprint[:SHORT_FINGERPRINT]

    @property
    def space_id(self) -> str:
        return self._manifest.space_id

    @property
    def dim(self) -> int:
        return self._manifest.dim

    @property
    def count(self) -> int:
        """N, the number of records."""
        return self._manifest.count


class EmbeddingIndex(ManifestView):
    """N private (or public) unit vectors in one encoder's embedding space.

    The rows are deliberately not a public attribute: for a private index the only readers are the
    modules of :mod:`privdiff.retrieval.private` (the DP mechanism's top-k backends, the IVF
    layout and the domain statistic), through :func:`rows_for_mechanism`. Code outside that
    package has exactly one way in, :func:`unsafe_nonprivate_rows`, which names itself. That
    boundary is a code convention (Python has no access control), kept visible by the package
    layout and checked by ``tests/test_privacy_boundary.py``; it is not a sandbox against code
    running in the same process.
    """

    __slots__ = ("_manifest", "_path", "_scan", "_scan_i8", "_vectors")

    def __init__(
        self,
        vectors: np.ndarray,
        manifest: IndexManifest,
        path: Path | None = None,
        scan: np.ndarray | None = None,
        scan_i8: Int8ScanCopy | None = None,
    ):
        self._vectors = vectors
        self._manifest = manifest
        self._path = path
        self._scan = scan
        self._scan_i8 = scan_i8

    @classmethod
    def from_embeddings(
        cls,
        embeddings: np.ndarray,
        *,
        space_id: str,
        source: str = "",
        visibility: str = "private",
        scan_copy: bool | str | tuple[str, ...] = False,
    ) -> EmbeddingIndex:
        """An in-memory index (normalised float32 copy); nothing is written to disk.

        ``scan_copy``: True or ``"float16"`` also keeps the rows rounded to float16, ``"int8"``
        the int8 scan copy, or a tuple of both (module docstring).
        """
        kinds = _scan_kinds(scan_copy)
        vectors = validated_unit_rows(embeddings)
        if "int8" in kinds:
            _check_int8_dim(vectors.shape[1])
        vectors.setflags(write=False)
        manifest = _make_manifest(vectors.shape, space_id, source, visibility, sha256=_sha256_of_array(vectors))
        scan = scan_i8 = None
        if "float16" in kinds:
            scan = vectors.astype(np.float16)
            scan.setflags(write=False)
        if "int8" in kinds:
            scan_i8 = _int8_copy_of(vectors)
        return cls(vectors, manifest, None, scan, scan_i8)

    # --- public, non-private metadata: ManifestView (manifest, fingerprint, space_id, dim, count)

    def __len__(self) -> int:
        return self._manifest.count

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def visibility(self) -> str:
        return self._manifest.visibility

    @property
    def scan_dtype(self) -> str | None:
        """``"float16"`` when the index carries a float16 scan copy, else ``"int8"`` when it carries
        an int8 one, else ``None`` (all of them: :attr:`scan_dtypes`)."""
        kinds = self.scan_dtypes
        return kinds[0] if kinds else None

    @property
    def scan_dtypes(self) -> tuple[str, ...]:
        """The reduced-precision scan copies this index carries, of ``("float16", "int8")``."""
        return tuple(k for k, v in (("float16", self._scan), ("int8", self._scan_i8)) if v is not None)

    def public_vectors(self) -> np.ndarray:
        """The rows of a **public** index (read-only). A private index refuses."""
        if self._manifest.visibility != "public":
            raise PrivdiffError(
                "this index is private: its rows may only be read by DPRetriever (the DP "
                "mechanism); rebuild it with visibility='public' only if the data really is public"
            )
        return self._vectors

    def __repr__(self) -> str:  # metadata only, never rows
        where = str(self._path) if self._path else "in-memory"
        return (
            f"EmbeddingIndex(count={self.count}, dim={self.dim}, space_id={self.space_id!r}, "
            f"visibility={self.visibility!r}, path={where!r})"
        )


def rows_for_mechanism(index: EmbeddingIndex) -> np.ndarray:
    """The (N, d) float32 rows of ``index`` (a read-only memmap or array), for the boundary only.

    The one accessor the modules of :mod:`privdiff.retrieval.private` use to read private rows
    (top-k backends, the IVF layout, the domain statistic). It is deliberately not exported by
    the package: code outside it imports only ``privdiff.retrieval.private`` itself (checked by
    ``tests/test_privacy_boundary.py``) and has :func:`unsafe_nonprivate_rows` as its only way in.
    """
    if not isinstance(index, EmbeddingIndex):
        raise InvalidParameter("index", type(index).__name__, "an EmbeddingIndex")
    return index._vectors


def scan_rows_for_mechanism(index: EmbeddingIndex) -> np.ndarray | None:
    """The (N, d) float16 scan copy of ``index``, or ``None``; same boundary as :func:`rows_for_mechanism`."""
    if not isinstance(index, EmbeddingIndex):
        raise InvalidParameter("index", type(index).__name__, "an EmbeddingIndex")
    return index._scan


def int8_scan_for_mechanism(index: EmbeddingIndex) -> Int8ScanCopy | None:
    """The int8 scan copy of ``index``, or ``None``; same boundary as :func:`rows_for_mechanism`."""
    if not isinstance(index, EmbeddingIndex):
        raise InvalidParameter("index", type(index).__name__, "an EmbeddingIndex")
    return index._scan_i8


def _int8_copy_of(vectors: np.ndarray) -> Int8ScanCopy:
    """The in-memory int8 scan copy of validated unit rows, chunk by chunk."""
    n = vectors.shape[0]
    codes = np.empty(vectors.shape, dtype=np.int8)
    scales = np.empty(n, dtype=np.float32)
    stats = np.zeros(4)
    step = _chunk_rows(vectors.shape[1])
    for s in range(0, n, step):
        rows = np.asarray(vectors[s : s + step])
        codes[s : s + step], scales[s : s + step] = quantise_rows(rows)
        stats = np.maximum(stats, row_stats(rows, codes[s : s + step], scales[s : s + step]).max(axis=0))
    codes.setflags(write=False)
    scales.setflags(write=False)
    return Int8ScanCopy(codes, scales, *(float(v) for v in stats))


def advise_random_access(rows: np.ndarray) -> None:
    """Tell the kernel a memory-mapped array is read at random (``MADV_RANDOM``); no-op otherwise.

    With the float16 scan, the float32 rows are read only for a few candidates per query. Linux
    would read ahead and map the neighbouring pages of each one (readahead, fault-around) until
    most of the float32 file is resident; random-access advice maps only the pages read.
    """
    import mmap

    mm = getattr(rows, "_mmap", None)
    advice = getattr(mmap, "MADV_RANDOM", None)
    if isinstance(mm, mmap.mmap) and advice is not None:
        try:
            mm.madvise(advice)
        except (OSError, ValueError):  # advice only: never fail a search over it
            pass


def unsafe_nonprivate_rows(index: EmbeddingIndex, *, reason: str) -> np.ndarray:
    """ESCAPE HATCH: the raw rows of a (private) index, with **no** privacy protection at all.

    Why it exists: DP-RDM's evaluation draws an ε = ∞ reference line (the exact mean of the k
    nearest private neighbours, no subsampling, no noise: the paper's non-private baseline,
    :class:`privdiff.evaluation.baselines.NonPrivateRetrievalContext`), and that baseline is by
    definition a direct read of private rows. Rather than let it reach into the index's internals,
    the read goes through this one named function, so every use is visible to ``grep`` and to
    ``tests/test_privacy_boundary.py``, which refuses calls outside an explicit allow-list (the
    evaluation baselines; tests may use it to check what an index stores).

    Args:
        index: the index whose rows are returned.
        reason: why the caller may see private rows without noise (non-empty). It is not
            recorded anywhere; it exists so the call site documents itself.

    Returns the (N, d) float32 rows, read-only. Never release anything computed from them as
    private: outputs built on them carry ε = ∞.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidParameter("reason", reason, "a non-empty string saying why private rows are read without DP")
    rows = rows_for_mechanism(index)
    if rows.flags.writeable:  # from_embeddings arrays are already read-only; never hand out a writable view
        rows = rows.view()
        rows.setflags(write=False)
    return rows


# ---------------------------------------------------------------------------------------------
# Validation and hashing
# ---------------------------------------------------------------------------------------------


def validated_unit_rows(embeddings: Any) -> np.ndarray:
    """Finite, non-zero rows → float32 unit rows (a new array). DP-RDM normalises at index time (§2)."""
    arr = _checked_rows(embeddings)
    out = np.empty(arr.shape, dtype=np.float32)
    for s, block in _unit_row_chunks(arr):
        out[s : s + block.shape[0]] = block
    return out


def _checked_rows(embeddings: Any) -> np.ndarray:
    """Check shape, dtype and every row (finite, non-zero) chunk by chunk, without copying the rows."""
    arr = np.asarray(embeddings)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InvalidParameter("embeddings", f"array of shape {arr.shape}", "a non-empty 2-D array (N, d)")
    if not np.issubdtype(arr.dtype, np.floating):
        raise InvalidParameter("embeddings", f"dtype {arr.dtype}", "a floating-point array")
    # Chunked so a memory-mapped (N, d) input never needs a full float64 (or float32) copy.
    step = _chunk_rows(arr.shape[1])
    for s in range(0, arr.shape[0], step):
        block = np.asarray(arr[s : s + step], dtype=np.float64)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            bad = s + int(np.flatnonzero(~finite)[0])
            raise InvalidParameter("embeddings", f"row {bad} has NaN/inf", "finite values")
        norms = np.linalg.norm(block, axis=1)
        if (norms == 0).any():
            bad = s + int(np.flatnonzero(norms == 0)[0])
            raise InvalidParameter(
                "embeddings",
                f"row {bad} is the zero vector",
                "non-zero rows (they are L2-normalised)",
            )
    return arr


def _unit_row_chunks(arr: np.ndarray):
    """(start, float32 unit rows) for consecutive chunks of rows already checked by :func:`_checked_rows`."""
    step = _chunk_rows(arr.shape[1])
    for s in range(0, arr.shape[0], step):
        block = np.asarray(arr[s : s + step], dtype=np.float64)
        yield s, (block / np.linalg.norm(block, axis=1)[:, None]).astype(np.float32)


def _sha256_of_array(a: np.ndarray) -> str:
    """sha256 of the .npy file bytes this array is saved as (header + data), as in the manifest."""
    h = hashlib.sha256(_npy_header_bytes(a))
    step = _chunk_rows(a.shape[1])
    for s in range(0, a.shape[0], step):
        h.update(np.ascontiguousarray(a[s : s + step]).tobytes())
    return h.hexdigest()


def _sha256_of_file(path: Path, progress: bool = False) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=size, unit="B", unit_scale=True, desc="verify index")
    # One reused buffer (readinto): hashing holds 1 MiB, whatever the file size.
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            got = f.readinto(buf)
            if not got:
                break
            h.update(view[:got])
            if bar is not None:
                bar.update(got)
    if bar is not None:
        bar.close()
    return h.hexdigest()


def _make_manifest(shape: tuple[int, int], space_id: str, source: str, visibility: str, sha256: str) -> IndexManifest:
    if not isinstance(space_id, str) or not space_id:
        raise InvalidParameter("space_id", space_id, "a non-empty string naming the encoder's space")
    if visibility not in VISIBILITIES:
        raise InvalidParameter("visibility", visibility, "'private' or 'public'")
    if not isinstance(source, str):
        raise InvalidParameter("source", source, "a string (the dataset spec)")
    header = _npy_header_for(shape, np.float32)
    return IndexManifest(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        space_id=space_id,
        dim=int(shape[1]),
        count=int(shape[0]),
        dtype="float32",
        vectors_file=VECTORS_FILE,
        vectors_bytes=len(header) + int(shape[0]) * int(shape[1]) * 4,
        sha256=sha256,
        created_utc=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        source=source,
        visibility=visibility,
    )


def _npy_header_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(a))
    return buf.getvalue()


def _npy_header_for(shape: tuple[int, int], dtype: Any) -> bytes:
    """The .npy header ``np.save`` writes for a C-ordered array of this shape and dtype (no rows needed)."""
    import io

    buf = io.BytesIO()
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": tuple(int(x) for x in shape),
    }
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Build (atomic) and load (verified)
# ---------------------------------------------------------------------------------------------


def build_index(
    out_dir: str | os.PathLike,
    embeddings: np.ndarray,
    *,
    space_id: str,
    source: str = "",
    visibility: str = "private",
    overwrite: bool = False,
    source_images: np.ndarray | None = None,
    scan_copy: bool | str | tuple[str, ...] = False,
) -> EmbeddingIndex:
    """Write an index directory from embeddings (rows are L2-normalised) and return it loaded.

    Args:
        out_dir: the index directory to create. It must not exist unless ``overwrite``.
        embeddings: (N, d) floating array; rows must be finite and non-zero.
        space_id: the encoder space the rows live in (``ImageEncoder.space_id``).
        source: the dataset spec the rows came from (recorded in the manifest).
        visibility: ``"private"`` (default) or ``"public"``.
        overwrite: replace an existing index directory (the old one is removed only after the
            new one is complete).
        source_images: the images the rows were encoded from, if known: their 64-bit hashes
            go to ``source_rows.npy`` (for :func:`shared_source_rows`), nothing else of them.
        scan_copy: also write scan copies: True or ``"float16"``, ``"int8"``, or both as a tuple
            (module docstring).

    All validation happens before anything is written. The files are written into a temporary
    sibling directory, fsync'ed, and renamed to ``out_dir`` in one step. Rows are checked, then
    normalised, written and hashed in chunks of rows: besides the caller's ``embeddings`` the
    build holds O(chunk) memory, never a second copy of the index.
    """
    out = Path(out_dir)
    kinds = _scan_kinds(scan_copy)
    arr = _checked_rows(embeddings)
    if "int8" in kinds:
        _check_int8_dim(arr.shape[1])
    header = _npy_header_for(arr.shape, np.float32)
    manifest = _make_manifest(arr.shape, space_id, source, visibility, sha256="0" * 64)
    row_hashes = None if source_images is None else image_row_hashes(source_images)
    if out.exists() and not overwrite:
        raise InvalidParameter("out", str(out), "a path that does not exist yet", hint="pass overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise InvalidParameter("out", str(out), "a directory path")
    out.parent.mkdir(parents=True, exist_ok=True)

    scan = scan8 = None
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        h = hashlib.sha256()
        # Private rows are readable by their owner only (the directory from mkdtemp is 0700 too).
        mode = 0o600 if visibility == "private" else 0o644
        scan = _ScanWriter(tmp, arr.shape, mode) if "float16" in kinds else None
        scan8 = _Int8Writer(tmp, arr.shape, mode) if "int8" in kinds else None
        with os.fdopen(os.open(tmp / VECTORS_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as f:
            f.write(header)
            h.update(header)
            for _, rows in _unit_row_chunks(arr):
                block = rows.tobytes()
                f.write(block)
                h.update(block)
                if scan is not None:
                    scan.write(rows)
                if scan8 is not None:
                    scan8.write(rows)
            f.flush()
            os.fsync(f.fileno())
        rows_sha = ""
        if row_hashes is not None:
            rows_sha = _write_private_npy(tmp / SOURCE_ROWS_FILE, row_hashes)
        manifest = IndexManifest(**{**manifest.to_dict(), "sha256": h.hexdigest(), "source_rows_sha256": rows_sha})
        _write_json_synced(tmp / MANIFEST_FILE, manifest.to_dict())
        if scan is not None:
            scan.finish(manifest)
        if scan8 is not None:
            scan8.finish(manifest)
        install_directory(tmp, out)
    except BaseException:
        if scan is not None:
            scan.f.close()
        if scan8 is not None:
            scan8.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_index(out, verify="size")


def _write_json_synced(path: Path, obj: dict) -> None:
    """Write an index's JSON (manifest or scan-copy metadata) and fsync it; the caller renames the
    temporary directory or file into place, so a crash never leaves a half-written one visible."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


class _ScanWriter:
    """Writes the float16 scan copy (``SCAN_FILE``) chunk by chunk, then its ``SCAN_MANIFEST``."""

    files = (SCAN_FILE,)

    def __init__(self, directory: Path, shape: tuple[int, int], mode: int, suffix: str = ""):
        self.dir, self.suffix = directory, suffix
        self.h = hashlib.sha256()
        self.f = os.fdopen(os.open(directory / (SCAN_FILE + suffix), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb")
        header = _npy_header_for(shape, np.float16)
        self.f.write(header)
        self.h.update(header)
        self.bytes = len(header)

    def write(self, rows: np.ndarray) -> None:
        block = rows.astype(np.float16).tobytes()  # round to nearest even (IEEE), as the bound assumes
        self.f.write(block)
        self.h.update(block)
        self.bytes += len(block)

    def finish(self, manifest: IndexManifest) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        meta = {
            "format": SCAN_FORMAT,
            "format_version": 1,
            "dtype": "float16",
            "file": SCAN_FILE,
            "bytes": self.bytes,
            "sha256": self.h.hexdigest(),
            "index_fingerprint": manifest_fingerprint(manifest),
        }
        _write_json_synced(self.dir / (SCAN_MANIFEST + self.suffix), meta)

    def abort(self) -> None:
        self.f.close()
        for name in (SCAN_FILE, SCAN_MANIFEST):
            (self.dir / (name + self.suffix)).unlink(missing_ok=True)


def add_scan_copy(index_dir: str | os.PathLike, *, dtype: str = "float16", overwrite: bool = False) -> EmbeddingIndex:
    """Add a scan copy (``dtype`` "float16" or "int8") to an existing index; its manifest and
    fingerprint are unchanged.

    The float32 rows are verified in full first (a scan copy of a corrupt index would carry the
    corruption), then converted chunk by chunk into temporary files that are renamed into place,
    the copy's json last, so a crash leaves either no scan copy or a complete one.
    """
    if dtype not in SCAN_DTYPES:
        raise InvalidParameter("dtype", repr(dtype), "'float16' or 'int8'")
    meta_name = SCAN_MANIFEST if dtype == "float16" else INT8_MANIFEST
    d = Path(index_dir)
    if (d / meta_name).exists() and not overwrite:
        raise InvalidParameter(
            "index", str(d), f"an index without a {dtype} scan copy", hint="pass overwrite to rebuild it"
        )
    index = load_index(index_dir, verify="full")
    if dtype == "int8":
        _check_int8_dim(index.dim)
    mode = (d / VECTORS_FILE).stat().st_mode & 0o777
    suffix = f".tmp-{os.getpid()}"
    shape = (index.count, index.dim)
    writer = _ScanWriter(d, shape, mode, suffix) if dtype == "float16" else _Int8Writer(d, shape, mode, suffix)
    try:
        rows = index._vectors
        step = _chunk_rows(index.dim)
        for s in range(0, index.count, step):
            writer.write(np.asarray(rows[s : s + step]))
        writer.finish(index.manifest)
        for name in writer.files:
            os.replace(d / (name + suffix), d / name)
        os.replace(d / (meta_name + suffix), d / meta_name)
        fsync_dir(d)
    except BaseException:
        writer.abort()
        raise
    return load_index(d, verify="size")


class _Int8Writer:
    """Writes the int8 scan copy (codes, scales) chunk by chunk, then ``INT8_MANIFEST`` with the maxima."""

    files = (INT8_CODES_FILE, INT8_SCALES_FILE)

    def __init__(self, directory: Path, shape: tuple[int, int], mode: int, suffix: str = ""):
        self.dir, self.suffix = directory, suffix
        self.stats = np.zeros(len(_INT8_STATS))
        self.parts = []
        for name, dt, shp in ((INT8_CODES_FILE, np.int8, shape), (INT8_SCALES_FILE, np.float32, shape[:1])):
            f = os.fdopen(os.open(directory / (name + suffix), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb")
            header = _npy_header_for(shp, dt)
            f.write(header)
            self.parts.append([f, hashlib.sha256(header), len(header)])

    def write(self, rows: np.ndarray) -> None:
        codes, scales = quantise_rows(rows)
        self.stats = np.maximum(self.stats, row_stats(rows, codes, scales).max(axis=0))
        for part, arr in zip(self.parts, (codes, scales)):
            block = arr.tobytes()
            part[0].write(block)
            part[1].update(block)
            part[2] += len(block)

    def close(self) -> None:
        for f, _, _ in self.parts:
            f.close()

    def finish(self, manifest: IndexManifest) -> None:
        for f, _, _ in self.parts:
            f.flush()
            os.fsync(f.fileno())
        self.close()
        meta = {
            "format": SCAN_FORMAT,
            "format_version": 1,
            "dtype": "int8",
            "file": INT8_CODES_FILE,
            "bytes": self.parts[0][2],
            "sha256": self.parts[0][1].hexdigest(),
            "scales_file": INT8_SCALES_FILE,
            "scales_bytes": self.parts[1][2],
            "scales_sha256": self.parts[1][1].hexdigest(),
            "index_fingerprint": manifest_fingerprint(manifest),
            **{k: float(v) for k, v in zip(_INT8_STATS, self.stats)},
        }
        _write_json_synced(self.dir / (INT8_MANIFEST + self.suffix), meta)

    def abort(self) -> None:
        self.close()
        for name in (*self.files, INT8_MANIFEST):
            (self.dir / (name + self.suffix)).unlink(missing_ok=True)


def _open_int8_copy(d: Path, m: IndexManifest, verify: str) -> Int8ScanCopy | None:
    """The int8 scan copy (memmaps + maxima) or ``None`` when the index has none, checked against ``scan_i8.json``."""
    mp = d / INT8_MANIFEST
    if not mp.is_file():
        return None
    try:
        meta = json.loads(mp.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorrupt(f"{mp}: unreadable scan manifest ({exc})") from None
    expected = {
        "format": SCAN_FORMAT,
        "format_version": 1,
        "dtype": "int8",
        "file": INT8_CODES_FILE,
        "scales_file": INT8_SCALES_FILE,
    }
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in expected.items()):
        raise IndexCorrupt(f"{mp}: not a privdiff int8 scan copy")
    if meta.get("index_fingerprint") != manifest_fingerprint(m):
        raise IndexCorrupt(f"{mp}: derived from another index (this is {manifest_fingerprint(m)[:SHORT_FINGERPRINT]})")
    stats = [meta.get(k) for k in _INT8_STATS]
    if not all(isinstance(v, float | int) and not isinstance(v, bool) and np.isfinite(v) and v >= 0 for v in stats):
        raise IndexCorrupt(f"{mp}: missing or invalid error-bound maxima {_INT8_STATS}")
    arrays = []
    for name, key, dt, shp in (
        (INT8_CODES_FILE, "", np.int8, (m.count, m.dim)),
        (INT8_SCALES_FILE, "scales_", np.float32, (m.count,)),
    ):
        p = d / name
        want = len(_npy_header_for(shp, dt)) + np.dtype(dt).itemsize * int(np.prod(shp))
        if not p.is_file() or p.stat().st_size != want or meta.get(key + "bytes") != want:
            raise IndexCorrupt(f"{p}: missing or of the wrong size (expected {want} bytes)")
        if verify == "full" and _sha256_of_file(p) != meta.get(key + "sha256"):
            raise IndexCorrupt(f"{p}: its sha256 differs from the one {INT8_MANIFEST} records (altered or corrupt)")
        try:
            a = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise IndexCorrupt(f"{p}: not a readable .npy file ({exc})") from None
        if a.dtype != dt or a.shape != shp or not a.flags.c_contiguous:
            raise IndexCorrupt(f"{p}: holds {a.dtype} {a.shape}, expected {np.dtype(dt)} {shp}")
        arrays.append(a)
    return Int8ScanCopy(arrays[0], arrays[1], *(float(v) for v in stats))


def _open_scan_copy(d: Path, m: IndexManifest, verify: str) -> tuple[np.ndarray | None, Path | None, str]:
    """The scan copy's memmap (or ``None`` when the index has none), checked against ``scan.json``."""
    mp = d / SCAN_MANIFEST
    if not mp.is_file():
        return None, None, ""
    try:
        meta = json.loads(mp.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorrupt(f"{mp}: unreadable scan manifest ({exc})") from None
    expected = {"format": SCAN_FORMAT, "format_version": 1, "dtype": "float16", "file": SCAN_FILE}
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in expected.items()):
        raise IndexCorrupt(f"{mp}: not a privdiff float16 scan copy")
    if meta.get("index_fingerprint") != manifest_fingerprint(m):
        raise IndexCorrupt(f"{mp}: derived from another index (this is {manifest_fingerprint(m)[:SHORT_FINGERPRINT]})")
    sp = d / SCAN_FILE
    want = len(_npy_header_for((m.count, m.dim), np.float16)) + 2 * m.count * m.dim
    if not sp.is_file() or sp.stat().st_size != want or meta.get("bytes") != want:
        raise IndexCorrupt(f"{sp}: missing or of the wrong size (expected {want} bytes)")
    sha = meta.get("sha256")
    if verify == "full" and _sha256_of_file(sp) != sha:
        raise IndexCorrupt(f"{sp}: its sha256 differs from the one {SCAN_MANIFEST} records (altered or corrupt)")
    try:
        scan = np.load(sp, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise IndexCorrupt(f"{sp}: not a readable .npy file ({exc})") from None
    if scan.dtype != np.float16 or scan.shape != (m.count, m.dim) or not scan.flags.c_contiguous:
        raise IndexCorrupt(f"{sp}: holds {scan.dtype} {scan.shape}, expected float16 ({m.count}, {m.dim})")
    return scan, sp, sha


def build_index_from_images(
    out_dir: str | os.PathLike,
    images: np.ndarray,
    encoder: Any,
    *,
    source: str = "",
    visibility: str = "private",
    batch_size: int = DEFAULT_ENCODE_BATCH,
    progress: bool = True,
    overwrite: bool = False,
    scan_copy: bool | str | tuple[str, ...] = False,
) -> EmbeddingIndex:
    """Encode uint8 images (N, H, W, C) with an ``ImageEncoder`` and write the index.

    The index records ``encoder.space_id``; nothing about the images but their embeddings is
    stored (no labels, no file names).
    """
    imgs = np.asarray(images)
    if imgs.ndim != 4 or imgs.dtype != np.uint8 or imgs.shape[0] < 1:
        raise InvalidParameter(
            "images",
            f"array of shape {imgs.shape} dtype {imgs.dtype}",
            "non-empty uint8 (N, H, W, C)",
        )
    if Path(out_dir).exists() and not overwrite:  # fail before the (slow) encoding
        raise InvalidParameter(
            "out",
            str(out_dir),
            "a path that does not exist yet",
            hint="pass overwrite to replace it",
        )
    emb = encoder.encode_images(imgs, batch_size=batch_size, progress=progress)
    emb = np.asarray(emb)
    if emb.shape != (imgs.shape[0], int(encoder.dim)):
        raise InvalidParameter(
            "encoder output",
            f"shape {emb.shape}",
            f"({imgs.shape[0]}, {encoder.dim}) for {encoder.space_id!r}",
        )
    return build_index(
        out_dir,
        emb,
        space_id=encoder.space_id,
        source=source,
        visibility=visibility,
        overwrite=overwrite,
        source_images=imgs,
        scan_copy=scan_copy,
    )


# ---------------------------------------------------------------------------------------------
# Source-image hashes: is a "public" set really disjoint from the private one?
# ---------------------------------------------------------------------------------------------


def image_row_hashes(images: Any) -> np.ndarray:
    """Sorted unique 64-bit hashes (uint64) of each image's bytes, shape and dtype.

    blake2b with an 8-byte digest: two *different* images collide with probability ~N·M/2^64
    (about 2e-10 for 60,000 × 60,000), so "no shared hash" means "no shared image". Only exact
    copies match: a resized, re-encoded or cropped copy of a private image does not.
    """
    arr = np.asarray(images)
    if arr.ndim < 2 or arr.shape[0] < 1:
        raise InvalidParameter("images", f"array of shape {arr.shape}", "a non-empty array of images (N, ...)")
    prefix = f"{arr.dtype.str}|{arr.shape[1:]}|".encode()
    out = np.empty(arr.shape[0], dtype=np.uint64)
    for i in range(arr.shape[0]):
        h = hashlib.blake2b(prefix, digest_size=8, person=b"privdiff-rows")
        h.update(np.ascontiguousarray(arr[i]).tobytes())
        out[i] = int.from_bytes(h.digest(), "little")
    return np.unique(out)


def _write_private_npy(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as .npy with mode 0600 (whatever the umask); return its sha256."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o600)
    return _sha256_of_file(path)


def shared_source_rows(index: EmbeddingIndex, images: Any) -> int | None:
    """How many of ``images`` are exact copies of images the index was built from.

    Returns only a count (no hash, id or position leaves the retrieval package), or ``None`` when
    the index recorded no source hashes (built from precomputed embeddings, in memory, or by an
    older privdiff): then nothing can be said. A corrupt or altered ``source_rows.npy`` raises
    :class:`~privdiff.errors.IndexCorrupt`.
    """
    from privdiff.retrieval.private.sharded import ShardedIndex  # a sharded copy keeps source_rows.npy

    if not isinstance(index, (EmbeddingIndex, ShardedIndex)):
        raise InvalidParameter("index", type(index).__name__, "an EmbeddingIndex or a ShardedIndex")
    m = index.manifest
    if not m.source_rows_sha256 or index.path is None:
        return None
    path = index.path / SOURCE_ROWS_FILE
    if not path.is_file():
        raise IndexCorrupt(f"{str(index.path)!r}: {SOURCE_ROWS_FILE} is missing (index {index.short_fingerprint})")
    if _sha256_of_file(path) != m.source_rows_sha256:
        raise IndexCorrupt(f"{path}: altered or corrupt (index {index.short_fingerprint})")
    try:
        private = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise IndexCorrupt(f"{path}: not a readable .npy file ({exc})") from None
    if private.dtype != np.uint64 or private.ndim != 1:
        raise IndexCorrupt(f"{path}: holds {private.dtype} {private.shape}, expected uint64 (N,)")
    return int(np.isin(image_row_hashes(images), private, assume_unique=True).sum())


def check_public_disjoint(private_index: EmbeddingIndex, public_images: Any, *, name: str) -> int | None:
    """Refuse a "public" image set that shares any image with the private index.

    Args:
        private_index: the private :class:`EmbeddingIndex` the run retrieves from.
        public_images: the images of the set declared public (as loaded, before encoding).
        name: how the user named the public set (its spec), for the message.

    Returns 0 when the sets are disjoint, or ``None`` (with a warning) when the index recorded
    no source-image hashes (built from precomputed embeddings or by an older privdiff), so the
    check could not run. Only the count of shared images is ever computed; no hash leaves the
    retrieval package.

    Raises:
        InvalidParameter: ``public_data`` named by ``name`` overlaps the private index.
    """
    shared = shared_source_rows(private_index, public_images)
    if shared is None:
        warnings.warn(
            f"cannot check that public data {name!r} is disjoint from private index "
            f"{private_index.short_fingerprint}: the index records no source-image hashes (built from "
            "embeddings, or by an older privdiff; rebuild it from the images to enable the check)",
            stacklevel=2,
        )
        return None
    if shared:
        raise InvalidParameter(
            "public_data",
            name,
            "a data set with no image in common with the private index",
            hint=f"{shared} of its {len(public_images)} images are private images of index "
            f"{private_index.short_fingerprint}; their neighbours would be released without noise as ε = 0",
        )
    return 0


def read_manifest(index_dir: str | os.PathLike) -> IndexManifest:
    """Parse and validate ``manifest.json`` (cheap: does not touch the vectors).

    For a sharded index directory (``sharded``) this is the parent index's manifest, which the
    sharded copy keeps: a ledger binds to either directory alike."""
    d = Path(index_dir)
    if not d.is_dir():
        raise IndexCorrupt(f"index directory {str(d)!r} does not exist")
    mp = d / MANIFEST_FILE
    if not mp.is_file():
        from privdiff.retrieval.private.sharded import ShardedIndex, is_sharded_index

        if is_sharded_index(d):
            return ShardedIndex.open(d).manifest
    if not mp.is_file():
        raise IndexCorrupt(f"{str(d)!r} has no {MANIFEST_FILE} (not an index, or a failed write)")
    try:
        raw = json.loads(mp.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorrupt(f"{mp}: unreadable manifest ({exc})") from None
    return IndexManifest.from_dict(raw, where=str(mp))


def load_index(
    index_dir: str | os.PathLike,
    *,
    expected_space: str | None = None,
    verify: str = "full",
    progress: bool = False,
) -> EmbeddingIndex:
    """Open an index (vectors memory-mapped read-only) after checking it against its manifest.

    Args:
        index_dir: directory written by :func:`build_index`.
        expected_space: if given, the encoder space the caller works in; a different index space
            raises :class:`~privdiff.errors.EncoderMismatch`.
        verify: ``"full"`` (default): file size, .npy header, sha256 of the whole file, and every
            row finite with unit norm. ``"size"``: size and header only (for very large indexes;
            it catches truncation but not bit flips).
        progress: show a progress bar while hashing.

    Raises:
        IndexCorrupt: missing/garbled manifest, truncated or altered vector file, wrong shape or
            dtype, a non-finite or non-unit row.
        EncoderMismatch: ``expected_space`` differs from the index's space.
    """
    if verify not in ("full", "size"):
        raise InvalidParameter("verify", verify, "'full' or 'size'")
    d = Path(index_dir)
    m = read_manifest(d)
    if expected_space is not None and expected_space != m.space_id:
        raise EncoderMismatch(expected=expected_space, found=m.space_id, what=f"index {str(d)!r}")
    vp = d / m.vectors_file
    if not vp.is_file():
        raise IndexCorrupt(f"{str(d)!r}: vector file {m.vectors_file} is missing")
    size = vp.stat().st_size
    if size != m.vectors_bytes:
        kind = "truncated" if size < m.vectors_bytes else "larger than recorded"
        raise IndexCorrupt(f"{vp}: {kind}: {size} bytes on disk, manifest records {m.vectors_bytes}")
    if verify == "full":
        digest = _sha256_of_file(vp, progress=progress)
        if digest != m.sha256:
            # The hashes themselves are not shown (module docstring): the fingerprint names the index.
            raise IndexCorrupt(
                f"{vp}: its sha256 differs from the one its manifest records (file altered or corrupt; "
                f"index {manifest_fingerprint(m)[:SHORT_FINGERPRINT]})"
            )
    try:
        vectors = np.load(vp, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise IndexCorrupt(f"{vp}: not a readable .npy file ({exc})") from None
    if vectors.dtype != np.float32 or vectors.shape != (m.count, m.dim) or not vectors.flags.c_contiguous:
        raise IndexCorrupt(f"{vp}: holds {vectors.dtype} {vectors.shape}, manifest says float32 ({m.count}, {m.dim})")
    scan, sp, _ = _open_scan_copy(d, m, verify)
    scan8 = _open_int8_copy(d, m, verify)
    stats8 = np.zeros(len(_INT8_STATS))
    if verify == "full":
        # One chunk of rows at a time (float64 for the norms): peak memory O(chunk), not O(N).
        step = _chunk_rows(m.dim)
        for s in range(0, m.count, step):
            rows = np.asarray(vectors[s : s + step])
            block = rows.astype(np.float64)
            if not np.isfinite(block).all():
                raise IndexCorrupt(f"{vp}: non-finite values near row {s}")
            dev = np.abs(np.linalg.norm(block, axis=1) - 1.0)
            if (dev > UNIT_NORM_TOLERANCE).any():
                bad = s + int(np.argmax(dev))
                raise IndexCorrupt(f"{vp}: row {bad} is not unit norm (|norm-1|={dev.max():.3g})")
            # The exactness of the float16 scan rests on ê = fl16(e) row for row.
            if scan is not None and not np.array_equal(scan[s : s + step], rows.astype(np.float16)):
                raise IndexCorrupt(f"{sp}: rows near {s} are not the float16 rounding of {m.vectors_file}")
            # The int8 scan's exactness rests on its codes and scales being this quantisation of
            # these rows, and on the recorded maxima bounding every row's (int8scan.row_stats).
            if scan8 is not None:
                codes, scales = quantise_rows(rows)
                if not (
                    np.array_equal(scan8.codes[s : s + step], codes)
                    and np.array_equal(scan8.scales[s : s + step], scales)
                ):
                    raise IndexCorrupt(
                        f"{d / INT8_CODES_FILE}: rows near {s} are not the int8 quantisation of {m.vectors_file}"
                    )
                stats8 = np.maximum(stats8, row_stats(rows, codes, scales).max(axis=0))
        recorded = None if scan8 is None else np.array([getattr(scan8, k) for k in _INT8_STATS])
        if recorded is not None and m.count and (stats8 > recorded).any():
            raise IndexCorrupt(
                f"{d / INT8_MANIFEST}: its error-bound maxima understate the rows' (would break exactness)"
            )
    return EmbeddingIndex(vectors, m, d, scan, scan8)
