"""Sharded private retrieval: the index split into S shard files, searched in-process or on Ray actors.

DP-RDM's largest setting (Shutterstock, N = 2.39·10⁸, ≈ 490 GB as float32 at d = 512) does not
fit one machine. Here the N records are split into S contiguous ranges written as S shard files
(``shard_index``); a backend asks every shard for its padded local top-k over its *own* Poisson(q)
draw and merges the S·k candidates into the global top-k.

Why the output distribution is exactly the single-node one (``backends.ExactTopK``):

1. **Subsampling.** Poisson(q) inclusion is an i.i.d. Bernoulli(q) indicator per record
   (``subsample``). Shard s draws i.i.d. Bernoulli(q) indicators for its own records from its own
   generator; the generators are independent (children of one OS-seeded ``SeedSequence`` in
   :class:`ShardedTopK`, separately OS-seeded ``default_rng()`` per call on each Ray actor), so the
   union over shards is N independent Bernoulli(q) indicators: a Poisson(q) subsample of the whole
   set. The privacy analysis (Poisson-subsampled Gaussian, Δ₂ = 2/k, ``methods/dp-rdm.md`` §4) is
   therefore unchanged.
2. **Selection.** Each shard scores its sampled records with the same kernel as the single-node
   sparse path (faiss ``pairwise_indexed_inner_product``: one score per (query, record) pair,
   independent of which other records were sampled) and keeps its top-k under the order
   (score desc, global id asc). The global top-k of a set under a total order is contained in the
   union of the top-k of any partition of it, so merging the S local top-k lists under the same
   order (``select_topk``: shards are contiguous ascending id ranges, so concatenating them in
   shard order keeps ids ascending, which is how ties are resolved) yields exactly the global
   top-k over the whole subsample, deterministic tie-break included.
3. **Aggregation.** The driver sums the selected rows with :func:`backends.padded_topk_sums`
   (unit-ball projection, zero padding) in ascending id order, exactly as ``ExactTopK`` does, and
   returns ``(sums, counts)``; :class:`~privdiff.retrieval.private.mechanism.DPRetriever` divides
   by k and adds the noise once.

Ids, scores and rows move only between the shards and the driver, both inside this package; the
backends return only ``(sums, counts)`` like every other backend. The ledger is charged once by
the mechanism before ``topk_sums`` asks any shard; if a shard fails afterwards the query raises
:class:`~privdiff.errors.ShardFailure` (already charged, nothing released).

Layout of a sharded index directory (``shard_index``)::

    DIR/sharded.json        format, the parent index's manifest (unchanged, so the fingerprint a
                            ledger binds to is the parent's), row dtype, and per shard: file, first
                            global id, row count, byte size and sha256
    DIR/shard-0000.npy ...  (n_s, d) float32 or float16 rows, .npy (memory-mappable), mode 0600
    DIR/source_rows.npy     copied from the parent when it has one (public-disjointness check)

float16 shards halve memory and bandwidth; their rows differ from the parent's by float16
rounding (relative 2⁻¹¹), so selection is the exact top-k *of the stored float16 rows* (scored in
float32), not of the float32 parent. The unit-ball projection keeps ‖r_j‖ ≤ 1, so Δ₂ = 2/k holds
either way.

Ray (optional: ``pip install privdiff[ray]``) is imported only when a :class:`RayShardedTopK` is
built. Each actor memory-maps one shard, is restarted by Ray when it dies (``max_restarts``) and
re-verifies its shard on start; the driver's search never maps a shard (it reads ``sharded.json``,
and ``make_pipeline``'s out-of-domain warning reads ≤ 1,000 evenly spaced rows through
:func:`sampled_shard_rows`). Every node, the driver's included, must see the sharded directory
at the same path (a shared file system, or copies). The shards' candidate rows travel to the
driver through Ray's object store (shared memory; Ray spills objects to its temp directory only
when the store is full): on a multi-user machine give Ray a private ``--temp-dir``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privdiff.errors import IndexCorrupt, InvalidParameter, ShardFailure, check_in_range, check_int
from privdiff.retrieval.private.backends import padded_topk_sums
from privdiff.retrieval.private.index import (
    SOURCE_ROWS_FILE,
    UNIT_NORM_TOLERANCE,
    EmbeddingIndex,
    IndexManifest,
    ManifestView,
    rows_for_mechanism,
)
from privdiff.retrieval.private.search import select_topk
from privdiff.retrieval.private.subsample import poisson_pairs
from privdiff.utils.atomic import flush_and_fsync, install_directory

__all__ = [
    "SHARDED_FORMAT",
    "SHARDED_MANIFEST_FILE",
    "RayShardedTopK",
    "ShardedIndex",
    "ShardedTopK",
    "is_sharded_index",
    "merge_candidates",
    "shard_candidates",
    "shard_index",
]

SHARDED_FORMAT = "privdiff-sharded-index"
SHARDED_FORMAT_VERSION = 1
SHARDED_MANIFEST_FILE = "sharded.json"
SHARD_DTYPES = ("float32", "float16")
#: float16 stores a unit row with relative error ≤ 2⁻¹¹ per coordinate, so its norm is within
#: ~d·2⁻¹¹·|x_i|² ≤ 2⁻¹¹ ≈ 4.9e-4 of 1; 1e-3 leaves margin while still catching a scale error.
FLOAT16_NORM_TOLERANCE = 1e-3
_CHUNK_ROWS = 65536
# Expected sampled (record, query) pairs scored per faiss call (as search._SPARSE_PAIRS: ~100 MiB).
_PAIRS_PER_CALL = 4 * 1024 * 1024


@dataclass(frozen=True)
class ShardInfo:
    """One shard file: global ids ``start .. start + count - 1`` of the parent index."""

    file: str
    start: int
    count: int
    bytes: int
    sha256: str


class ShardedIndex(ManifestView):
    """The metadata of a sharded index directory (never its rows).

    ``manifest`` is the *parent* index's manifest, so ``fingerprint`` is the parent's and a ledger
    bound to the parent index (``budget init --index``) serves the sharded copy unchanged.
    """

    __slots__ = ("_manifest", "_path", "_shards", "_dtype")

    def __init__(self, manifest: IndexManifest, path: Path, shards: tuple[ShardInfo, ...], dtype: str):
        self._manifest = manifest
        self._path = path
        self._shards = shards
        self._dtype = dtype

    @classmethod
    def open(cls, path: str | os.PathLike) -> ShardedIndex:
        """Read and validate ``sharded.json`` (cheap: no shard file is opened)."""
        d = Path(path)
        mp = d / SHARDED_MANIFEST_FILE
        if not mp.is_file():
            raise IndexCorrupt(f"{str(d)!r} has no {SHARDED_MANIFEST_FILE} (not a sharded index; see `index shard`)")
        try:
            raw = json.loads(mp.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IndexCorrupt(f"{mp}: unreadable sharded manifest ({exc})") from None
        if not isinstance(raw, dict) or raw.get("format") != SHARDED_FORMAT:
            raise IndexCorrupt(f"{mp}: not a privdiff sharded index")
        if raw.get("format_version") != SHARDED_FORMAT_VERSION:
            raise IndexCorrupt(f"{mp}: unsupported format_version {raw.get('format_version')!r}")
        parent = IndexManifest.from_dict(raw.get("parent"), where=f"{mp} (parent)")
        dtype = raw.get("dtype")
        if dtype not in SHARD_DTYPES:
            raise IndexCorrupt(f"{mp}: dtype {dtype!r} not in {SHARD_DTYPES}")
        try:
            shards = tuple(ShardInfo(**s) for s in raw.get("shards", []))
        except TypeError as exc:
            raise IndexCorrupt(f"{mp}: malformed shard entry ({exc})") from None
        start = 0
        for i, s in enumerate(shards):
            names_ok = isinstance(s.file, str) and s.file == _shard_name(i)
            if not names_ok or s.start != start or not isinstance(s.count, int) or s.count < 1:
                raise IndexCorrupt(f"{mp}: shard {i} is not the contiguous range after shard {i - 1}")
            if not isinstance(s.sha256, str) or len(s.sha256) != 64:
                raise IndexCorrupt(f"{mp}: shard {i} has a malformed sha256")
            start += s.count
        if not shards or start != parent.count:
            raise IndexCorrupt(f"{mp}: shards cover {start} rows, the parent index has {parent.count}")
        return cls(parent, d, shards, dtype)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    @property
    def dtype(self) -> str:
        return self._dtype

    def shown(self) -> dict[str, Any]:
        """What ``index info`` prints: the parent's identity (fingerprint, space, N, source) and the
        shard layout; no hashes."""
        parent = self._manifest.shown()
        for key in ("format", "format_version", "dtype", "vectors_file", "vectors_bytes"):
            parent.pop(key, None)
        return parent | {
            "format": SHARDED_FORMAT,
            "shards": self.num_shards,
            "shard_dtype": self._dtype,
            "shard_rows": [s.count for s in self._shards],
        }

    def __repr__(self) -> str:
        return (
            f"ShardedIndex(count={self.count}, dim={self.dim}, shards={self.num_shards}, dtype={self._dtype!r}, "
            f"path={str(self._path)!r})"
        )


def _shard_name(i: int) -> str:
    return f"shard-{i:04d}.npy"


def is_sharded_index(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a sharded index directory (has ``sharded.json``)."""
    return (Path(path) / SHARDED_MANIFEST_FILE).is_file()


def shard_index(
    index: EmbeddingIndex,
    out_dir: str | os.PathLike,
    shards: int,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
) -> ShardedIndex:
    """Split ``index`` into ``shards`` contiguous shard files under ``out_dir`` (atomically).

    Shard s holds global ids ``[start_s, start_s + n_s)`` with sizes as even as possible
    (``numpy.array_split``). Rows are streamed in chunks from the (memory-mapped) parent, so the
    peak memory is one chunk, not the index. Files are 0600 and written into a temporary sibling
    directory renamed into place only when every file is complete and fsync'ed.
    """
    if not isinstance(index, EmbeddingIndex):
        raise InvalidParameter("index", type(index).__name__, "an EmbeddingIndex (see privdiff.retrieval.load_index)")
    shards = check_int("shards", shards, minimum=1, maximum=index.count)
    if dtype not in SHARD_DTYPES:
        raise InvalidParameter("dtype", dtype, "'float32' or 'float16'")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise InvalidParameter("out", str(out), "a path that does not exist yet", hint="pass overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise InvalidParameter("out", str(out), "a directory path")
    if index.path is not None and out.resolve() == index.path.resolve():
        raise InvalidParameter("out", str(out), "a directory other than the parent index's")
    rows = rows_for_mechanism(index)
    bounds = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(index.count), shards)])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))  # 0700
    try:
        infos = []
        for i in range(shards):
            start, stop = int(bounds[i]), int(bounds[i + 1])
            name = _shard_name(i)
            nbytes, digest = _write_shard(tmp / name, rows, start, stop, np.dtype(dtype))
            infos.append(ShardInfo(file=name, start=start, count=stop - start, bytes=nbytes, sha256=digest))
        if index.manifest.source_rows_sha256 and index.path is not None:
            src = index.path / SOURCE_ROWS_FILE
            dst = tmp / SOURCE_ROWS_FILE
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
                shutil.copyfileobj(fin, fout)
                flush_and_fsync(fout)
        record = {
            "format": SHARDED_FORMAT,
            "format_version": SHARDED_FORMAT_VERSION,
            "dtype": dtype,
            "parent": index.manifest.to_dict(),
            "shards": [vars(s) for s in infos],
        }
        with open(tmp / SHARDED_MANIFEST_FILE, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, sort_keys=True)
            f.write("\n")
            flush_and_fsync(f)
        install_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ShardedIndex.open(out)


def _write_shard(path: Path, rows: np.ndarray, start: int, stop: int, dtype: np.dtype) -> tuple[int, str]:
    d = rows.shape[1]
    header_buf = _npy_header(stop - start, d, dtype)
    h = hashlib.sha256(header_buf)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(header_buf)
        for s in range(start, stop, _CHUNK_ROWS):
            block = np.ascontiguousarray(rows[s : min(stop, s + _CHUNK_ROWS)], dtype=dtype).tobytes()
            f.write(block)
            h.update(block)
        flush_and_fsync(f)
    return path.stat().st_size, h.hexdigest()


def _npy_header(n: int, d: int, dtype: np.dtype) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n, d)}
    )
    return buf.getvalue()


def open_shard(path: str | os.PathLike, shard: int, *, verify: str = "full") -> tuple[np.ndarray, int]:
    """Memory-map shard ``shard`` of a sharded index after checking it; returns (rows, first global id).

    ``verify="full"`` re-hashes the file and checks every row finite and unit norm (in chunks);
    ``"size"`` checks the byte size and the .npy header only. Internal to the boundary: the
    backends (and the Ray actors) are its callers.
    """
    if verify not in ("full", "size"):
        raise InvalidParameter("verify", verify, "'full' or 'size'")
    sharded = ShardedIndex.open(path)
    shard = check_int("shard", shard, minimum=0, maximum=sharded.num_shards - 1)
    info = sharded._shards[shard]
    fp = sharded.path / info.file
    where = f"{fp} (shard {shard} of index {sharded.short_fingerprint})"
    if not fp.is_file():
        raise IndexCorrupt(f"{where}: missing")
    size = fp.stat().st_size
    if size != info.bytes:
        raise IndexCorrupt(f"{where}: {size} bytes on disk, sharded.json records {info.bytes}")
    if verify == "full":
        h = hashlib.sha256()
        with open(fp, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        if h.hexdigest() != info.sha256:
            raise IndexCorrupt(f"{where}: its sha256 differs from the one sharded.json records (altered or corrupt)")
    try:
        rows = np.load(fp, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise IndexCorrupt(f"{where}: not a readable .npy file ({exc})") from None
    if rows.dtype != np.dtype(sharded.dtype) or rows.shape != (info.count, sharded.dim) or not rows.flags.c_contiguous:
        raise IndexCorrupt(f"{where}: holds {rows.dtype} {rows.shape}, expected {sharded.dtype} ({info.count}, d)")
    if verify == "full":
        tol = UNIT_NORM_TOLERANCE if sharded.dtype == "float32" else FLOAT16_NORM_TOLERANCE
        for s in range(0, info.count, _CHUNK_ROWS):
            block = np.asarray(rows[s : s + _CHUNK_ROWS], dtype=np.float64)
            if not np.isfinite(block).all():
                raise IndexCorrupt(f"{where}: non-finite values near local row {s}")
            if (np.abs(np.linalg.norm(block, axis=1) - 1.0) > tol).any():
                raise IndexCorrupt(f"{where}: a row near local row {s} is not unit norm")
    return rows, info.start


def sampled_shard_rows(sharded: ShardedIndex, global_ids: np.ndarray) -> np.ndarray:
    """float32 copies of the rows ``global_ids`` (sorted) of a sharded index, for the domain
    statistic only (``domain.domain_similarity``); each shard is opened with the size check."""
    ids = np.asarray(global_ids, dtype=np.int64)
    out = np.empty((ids.size, sharded.dim), dtype=np.float32)
    for i, info in enumerate(sharded._shards):
        mask = (ids >= info.start) & (ids < info.start + info.count)
        if mask.any():
            rows, start = open_shard(sharded.path, i, verify="size")
            out[mask] = np.asarray(rows[ids[mask] - start], dtype=np.float32)
    return out


# ---------------------------------------------------------------------------------------------
# The per-shard step and the driver's merge (shared by the in-process and the Ray backends)
# ---------------------------------------------------------------------------------------------


def shard_candidates(
    rows: np.ndarray, start: int, queries: np.ndarray, k: int, sample_rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One shard's padded local top-k over its own Poisson(q) draw.

    Args:
        rows: (n, d) the shard's rows (float32 or float16, usually a memmap).
        start: the global id of the shard's first row.
        queries: (B, d) float32 unit rows.
        k, sample_rate: as ``TopKBackend.topk_sums``.
        rng: the shard's own generator (independent of every other shard's).

    Returns ``(scores, ids, vectors)``: (B, k) float32 scores (``-inf`` where padded), (B, k)
    int64 *global* ids ascending (-1 padded) and (B, k, d) float32 rows (zero where padded).
    Selection is top-k under (score desc, id asc) with the sparse path's faiss pair kernel.
    """
    import faiss

    n, d = rows.shape
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    B = queries.shape[0]
    scores_out = np.full((B, k), -np.inf, dtype=np.float32)
    ids_out = np.full((B, k), -1, dtype=np.int64)
    vec_out = np.zeros((B, k, d), dtype=np.float32)
    chunk = int(max(1, min(B, 65535, _PAIRS_PER_CALL // max(1.0, n * sample_rate))))
    f32 = rows.dtype == np.float32 and rows.flags.c_contiguous
    for s in range(0, B, chunk):
        qc = np.ascontiguousarray(queries[s : s + chunk])
        nb = qc.shape[0]
        local, qid = poisson_pairs(n, nb, sample_rate, rng)
        if local.size == 0:
            continue
        scores = np.empty(local.size, dtype=np.float32)
        if f32:
            faiss.pairwise_indexed_inner_product(
                int(d),
                int(local.size),
                faiss.swig_ptr(qc),
                faiss.swig_ptr(qid),
                faiss.swig_ptr(rows),
                faiss.swig_ptr(local),
                faiss.swig_ptr(scores),
            )
        else:
            # Reduced-precision shard: widen the sampled rows (record-major, so the gather walks
            # the file forward) and score them with the same float32 pair kernel.
            for p in range(0, local.size, _CHUNK_ROWS):
                sel = local[p : p + _CHUNK_ROWS]
                # ``sel`` is sorted (record-major pairs): its distinct rows without a sort.
                first = np.empty(sel.size, dtype=bool)
                first[0] = True
                np.not_equal(sel[1:], sel[:-1], out=first[1:])
                widened = np.ascontiguousarray(rows[sel[first]], dtype=np.float32)
                pos = np.cumsum(first, dtype=np.int64) - 1
                qsel = np.ascontiguousarray(qid[p : p + _CHUNK_ROWS])
                faiss.pairwise_indexed_inner_product(
                    int(d),
                    int(sel.size),
                    faiss.swig_ptr(qc),
                    faiss.swig_ptr(qsel),
                    faiss.swig_ptr(widened),
                    faiss.swig_ptr(pos),
                    faiss.swig_ptr(scores[p : p + sel.size]),
                )
        order = np.argsort(qid, kind="stable")  # per query, local ids stay ascending
        counts = np.bincount(qid, minlength=nb)
        begins = np.concatenate(([0], np.cumsum(counts)[:-1]))
        q_sorted = qid[order]
        width = int(counts.max())
        flat = q_sorted * width + (np.arange(order.size) - begins[q_sorted])
        grid_scores = np.full(nb * width, -np.inf, dtype=np.float32)
        grid_ids = np.full(nb * width, -1, dtype=np.int64)
        grid_scores[flat] = scores[order]
        grid_ids[flat] = local[order]
        sel_ids, sel_scores = select_topk(grid_scores.reshape(nb, width), grid_ids.reshape(nb, width), k)
        found = sel_ids >= 0
        scores_out[s : s + nb] = sel_scores
        ids_out[s : s + nb] = np.where(found, sel_ids + start, -1)
        if found.any():
            vec_out[s : s + nb][found] = np.asarray(rows[sel_ids[found]], dtype=np.float32)
    return scores_out, ids_out, vec_out


def merge_candidates(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The driver's merge: S shards' (scores, global ids, rows), in shard order → (sums, counts).

    The global top-k under (score desc, id asc) of the union of the local top-k lists, summed with
    :func:`backends.padded_topk_sums` (projection onto the unit ball, zero padding). Shards are
    contiguous ascending id ranges, so the concatenated candidates are in ascending id order, which
    ``select_topk`` needs to break ties by the smaller id. Only the scores are concatenated; the k
    chosen rows are then gathered from their shards' parts (S·k·d floats are never copied).
    """
    scores = np.concatenate([p[0] for p in parts], axis=1)
    present = np.concatenate([p[1] >= 0 for p in parts], axis=1)
    B, width = scores.shape
    d = parts[0][2].shape[2]
    # Select by position in the candidate list (the same order as the global ids), so the chosen
    # rows can be found without a lookup table.
    position = np.where(present, np.arange(width, dtype=np.int64)[None, :], -1)
    chosen, _ = select_topk(scores, position, k)  # (B, k) positions, ascending, -1 padded
    rows = np.zeros((B, k, d), dtype=np.float32)
    offset = 0
    for _, ids, vec in parts:
        w = ids.shape[1]
        mask = (chosen >= offset) & (chosen < offset + w)
        if mask.any():
            b_idx = np.nonzero(mask)[0]
            rows[mask] = vec[b_idx, chosen[mask] - offset]
        offset += w
    slots = np.where(chosen >= 0, np.arange(B * k, dtype=np.int64).reshape(B, k), -1)
    return padded_topk_sums(rows.reshape(B * k, d), slots)


def _check_query_args(queries: np.ndarray, k: int, sample_rate: float, dim: int) -> tuple[np.ndarray, int, float]:
    k = check_int("k", k, minimum=1)
    q = check_in_range("sample_rate", sample_rate, 0.0, 1.0)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise InvalidParameter("queries", f"array of shape {queries.shape}", f"(B, {dim})")
    return queries, k, q


def _as_sharded(sharded: ShardedIndex | str | os.PathLike) -> ShardedIndex:
    if isinstance(sharded, ShardedIndex):
        return sharded
    if isinstance(sharded, (str, os.PathLike)):
        return ShardedIndex.open(sharded)
    raise InvalidParameter("sharded", type(sharded).__name__, "a ShardedIndex or a sharded index directory")


class _OverShards:
    """The TopKBackend metadata of a backend over a :class:`ShardedIndex` (``self._sharded``)."""

    __slots__ = ()
    _sharded: ShardedIndex

    @property
    def manifest(self) -> IndexManifest:
        return self._sharded.manifest

    @property
    def path(self) -> Path | None:
        return self._sharded.path

    @property
    def sharded_index(self) -> ShardedIndex:
        return self._sharded


class ShardedTopK(_OverShards):
    """Sharded exact top-k in one process: every shard memory-mapped here, searched in turn.

    Same output distribution as :class:`~privdiff.retrieval.private.backends.ExactTopK` over the
    parent index (module docstring). Each shard draws from its own child of the mechanism's
    OS-seeded generator (``rng.spawn``), so the shards' draws are independent.
    """

    __slots__ = ("_sharded", "_shards")

    def __init__(self, sharded: ShardedIndex | str | os.PathLike, *, verify: str = "full"):
        self._sharded = _as_sharded(sharded)
        self._shards = [open_shard(self._sharded.path, i, verify=verify) for i in range(self._sharded.num_shards)]

    def topk_sums(
        self, queries: np.ndarray, k: int, sample_rate: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        queries, k, q = _check_query_args(queries, k, sample_rate, self._sharded.dim)
        children = rng.spawn(len(self._shards))
        parts = [shard_candidates(rows, start, queries, k, q, g) for (rows, start), g in zip(self._shards, children)]
        return merge_candidates(parts, k)

    def __repr__(self) -> str:
        return f"ShardedTopK(count={self._sharded.count}, shards={self._sharded.num_shards})"


# ---------------------------------------------------------------------------------------------
# Ray
# ---------------------------------------------------------------------------------------------

#: How ``--ray-address`` values map to ``ray.init``: "local" starts a Ray instance in this
#: process's machine, "auto" joins the running cluster (``ray start --head`` beforehand).
RAY_ADDRESSES = ("local", "auto")


class _ShardWorker:
    """The body of one Ray actor: one memory-mapped shard (wrapped by ``ray.remote`` lazily)."""

    def __init__(self, path: str, shard: int, verify: str):
        # Opened (and verified) in the actor, on the actor's node: the driver never maps shard rows.
        # A bad shard is kept as the actor's answer rather than raised here: Ray reports an error
        # of a constructor only as text, an error of a method call keeps its type (IndexCorrupt).
        self._error: Exception | None = None
        try:
            self._rows, self._start = open_shard(path, shard, verify=verify)
        except (IndexCorrupt, InvalidParameter) as exc:
            self._error = exc

    def candidates(self, queries: np.ndarray, k: int, sample_rate: float):
        if self._error is not None:
            raise self._error
        # A fresh OS-seeded generator per call (numpy seeds it from `secrets`): no seed from the
        # driver or the user can reproduce it, and a restarted actor never replays a stream.
        return shard_candidates(self._rows, self._start, queries, k, sample_rate, np.random.default_rng())

    def ping(self, hold_s: float = 0.0) -> bool:
        """Readiness check (raises the shard's error, if any); ``hold_s`` keeps the actor busy that
        long (tests queue a query behind it)."""
        if self._error is not None:
            raise self._error
        if hold_s > 0:
            import time

            time.sleep(float(hold_s))
        return True


def _ray():
    try:
        import ray
    except ImportError:
        from privdiff.errors import MissingDependency

        raise MissingDependency(
            "ray", "the Ray-sharded backend (--backend ray)", install="pip install 'privdiff[ray]'"
        ) from None
    return ray


class RayShardedTopK(_OverShards):
    """Sharded exact top-k on Ray: one actor per shard, each memory-mapping its own shard file.

    Args:
        sharded: a :class:`ShardedIndex` or its directory (visible at the same path on every node).
        address: ``"local"`` (start or reuse a Ray instance on this machine) or ``"auto"`` (join
            the running cluster). A Ray already initialised in this process is reused either way.
        verify: how each actor checks its shard when it starts (``"full"``: sha256 + unit rows).
        max_restarts: how often Ray restarts a dead actor (it re-opens and re-verifies its shard).
        num_cpus: CPUs reserved per actor; ``None`` keeps Ray's actor default (one CPU to place
            it, none held while it lives), so S actors start whatever S is.
        start_timeout_s: how long to wait for every actor to open its shard.

    A shard that fails while a query is in flight makes :meth:`topk_sums` raise
    :class:`~privdiff.errors.ShardFailure`; the mechanism has already charged the ledger and
    releases nothing. Tasks are not retried (``max_task_retries=0``): a retry would be safe for
    privacy (a fresh draw, nothing released), but the failure is reported instead of hidden.
    """

    __slots__ = ("_sharded", "_actors", "_address", "_recovering", "_ready_timeout")

    def __init__(
        self,
        sharded: ShardedIndex | str | os.PathLike,
        *,
        address: str = "local",
        verify: str = "full",
        max_restarts: int = 4,
        num_cpus: float | None = None,
        start_timeout_s: float = 600.0,
    ):
        self._sharded = _as_sharded(sharded)
        if address not in RAY_ADDRESSES:
            raise InvalidParameter("ray_address", address, "'local' or 'auto'")
        if verify not in ("full", "size"):
            raise InvalidParameter("verify", verify, "'full' or 'size'")
        max_restarts = check_int("max_restarts", max_restarts, minimum=0)
        if num_cpus is not None and (not isinstance(num_cpus, (int, float)) or not num_cpus >= 0):
            raise InvalidParameter("num_cpus", num_cpus, "None or a number >= 0")
        ray = _ray()
        if not ray.is_initialized():
            if address == "auto":
                ray.init(address="auto", include_dashboard=False, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, log_to_driver=False)
        self._address = address
        self._recovering = False
        self._ready_timeout = float(start_timeout_s)
        options: dict[str, Any] = {"max_restarts": max_restarts, "max_task_retries": 0}
        if num_cpus is not None:
            options["num_cpus"] = num_cpus
        actor_cls = ray.remote(**options)(_ShardWorker)
        path = str(self._sharded.path.resolve())
        self._actors = [actor_cls.remote(path, i, verify) for i in range(self._sharded.num_shards)]
        try:  # fail here (nothing charged yet) if a shard is missing or corrupt
            ray.get([a.ping.remote() for a in self._actors], timeout=start_timeout_s)
        except Exception as exc:  # noqa: BLE001 - Ray wraps the actor's error
            self.close()
            cause = getattr(exc, "cause", None) or exc  # a RayTaskError carries the actor's exception
            if isinstance(cause, IndexCorrupt):
                raise IndexCorrupt(str(cause)) from None
            raise ShardFailure(
                f"could not start the shard actors of index {self._sharded.short_fingerprint}: {cause}"
            ) from None

    def topk_sums(
        self, queries: np.ndarray, k: int, sample_rate: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """As ``TopKBackend``; each actor draws its subsample from its own OS-seeded generator, so
        ``rng`` (the mechanism's) is not used for subsampling here."""
        queries, k, q = _check_query_args(queries, k, sample_rate, self._sharded.dim)
        ray = _ray()
        if self._recovering:  # after a failure: wait until Ray has restarted the dead actor
            self._wait_ready(ray)
        qref = ray.put(queries)
        futures = [a.candidates.remote(qref, k, q) for a in self._actors]
        parts = []
        for i, fut in enumerate(futures):
            try:
                parts.append(ray.get(fut))
            except Exception as exc:  # noqa: BLE001 - RayActorError / RayTaskError / object lost
                self._recovering = True
                raise ShardFailure(
                    f"shard {i} of {len(futures)} (index {self._sharded.short_fingerprint}) failed mid-query "
                    f"({type(exc).__name__}); this query was already charged to the ledger and nothing was "
                    "released. Ray restarts the shard's actor; retry the request."
                ) from None
        return merge_candidates(parts, k)

    def _wait_ready(self, ray: Any) -> None:
        """Ping every actor until all answer: a restarting actor is "unavailable" for a while."""
        import time

        deadline = time.monotonic() + self._ready_timeout
        while True:
            try:
                ray.get([a.ping.remote() for a in self._actors], timeout=max(0.1, deadline - time.monotonic()))
                self._recovering = False
                return
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            except Exception:  # noqa: BLE001 - died for good (restarts used up) or timed out
                break
        raise ShardFailure(
            f"a shard actor of index {self._sharded.short_fingerprint} did not come back "
            f"(max_restarts used up, or not ready within {self._ready_timeout:g} s); this query was already "
            "charged to the ledger and nothing was released"
        )

    def close(self) -> None:
        """Stop the shard actors (Ray itself keeps running)."""
        ray = _ray()
        for a in self._actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001, S110 - already gone
                pass
        self._actors = []

    def __repr__(self) -> str:
        return (
            f"RayShardedTopK(count={self._sharded.count}, shards={self._sharded.num_shards}, address={self._address!r})"
        )
