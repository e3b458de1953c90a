"""Top-k backends: the padded top-k sum of each query over a fresh Poisson subsample.

The DP mechanism (:class:`~privdiff.retrieval.private.mechanism.DPRetriever`) needs, per query
row q̂, only the pre-noise sum Σ_{j=1..k} r_j over the k records of a fresh Poisson(q) subsample
with the largest inner product with q̂, each record projected onto the unit ball, with the
empty slots padded by the zero vector (``methods/dp-rdm.md`` §3 steps 2-5). A *backend* computes
exactly that and returns it with the number of records found per query; the mechanism divides by
k, adds the noise and never sees an id, a distance or a row. The protocol is::

    backend.topk_sums(queries (B, d) float32 unit rows, k, sample_rate, rng)
        -> (sums (B, d) float64, counts (B,) int64 in [0, k])

* :class:`ExactTopK`: exact search over all N records (``search.subsampled_topk``).
* :class:`IVFTopK`: exact top-k over the records of the ``nprobe`` inverted lists nearest to the
  query, with public coarse centroids (``ivf``); same privacy analysis, approximate recall.
* A sharded backend (records split across workers, each returning its local top-k over its own
  Poisson draw, merged by the same (score desc, id asc) order) fits the same protocol: Poisson
  inclusion is independent per record, so per-shard draws are one draw of the whole set.

What a backend must guarantee for Δ₂ = 2/k (§4.2) to hold: selection is top-k under a fixed total
order on records over an i.i.d. Bernoulli(q) subsample drawn from ``rng`` (the mechanism passes
an OS-seeded generator), and every summed row has norm ≤ 1. The mechanism re-checks what it can
see (shape, 0 ≤ count ≤ k, ‖sum‖ ≤ count) before releasing anything.

Backends hold private rows and are internal to the privacy boundary: they are exported so that
callers can *choose* one (and hand it to ``DPRetriever``), but expose no method returning ids,
rows or scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from privdiff.errors import EncoderMismatch, InvalidParameter, check_int
from privdiff.retrieval.private.index import (
    EmbeddingIndex,
    IndexManifest,
    advise_random_access,
    int8_scan_for_mechanism,
    rows_for_mechanism,
    scan_rows_for_mechanism,
)
from privdiff.retrieval.private.ivf import IVFLayout, ivf_subsampled_topk
from privdiff.retrieval.private.search import subsampled_topk

__all__ = ["ExactTopK", "IVFTopK", "TopKBackend", "padded_topk_sums"]

# The (rows, k, d) float64 temporary of the aggregate is chunked to this many cells (32 MiB).
_AGGREGATE_CELLS = 4 * 1024 * 1024


@runtime_checkable
class TopKBackend(Protocol):
    """What :class:`~privdiff.retrieval.private.mechanism.DPRetriever` asks of a search backend.

    ``manifest`` and ``path`` identify the private index served (the mechanism checks the ledger
    is this index's); ``topk_sums`` is the module docstring's contract.
    """

    @property
    def manifest(self) -> IndexManifest: ...

    @property
    def path(self) -> Path | None: ...

    def topk_sums(
        self, queries: np.ndarray, k: int, sample_rate: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]: ...


def padded_topk_sums(vectors: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Σ_j r_j over the selected ids of each row, -1 ids contributing the zero vector (§3 step 5).

    Args:
        vectors: (N, d) index rows.
        ids: (B, width) selected ids, -1 where fewer than ``width`` records were sampled.

    Returns ``(sums, counts)``: (B, d) float64 and (B,) int64 (ids found per row). Fetched rows
    are projected onto the unit ball and non-finite rows are zeroed, so ‖r_j‖ ≤ 1 holds, and with
    it Δ₂ ≤ 2/k, whatever the file on disk contains (``load_index`` reports corruption; this only
    guarantees the bound).
    """
    B, width = ids.shape
    d = vectors.shape[1]
    sums = np.empty((B, d), dtype=np.float64)
    step = max(1, _AGGREGATE_CELLS // max(1, width * d))
    for s in range(0, B, step):
        chunk = ids[s : s + step]
        found = chunk >= 0
        rows = np.zeros((chunk.shape[0], width, d), dtype=np.float64)
        if found.any():
            rows[found] = np.asarray(vectors[chunk[found]], dtype=np.float64)
        rows[~np.isfinite(rows).all(axis=2)] = 0.0
        norms = np.linalg.norm(rows, axis=2, keepdims=True)
        rows /= np.maximum(norms, 1.0)
        sums[s : s + step] = rows.sum(axis=1)
    return sums, (ids >= 0).sum(axis=1).astype(np.int64)


def _check_index(index: EmbeddingIndex) -> EmbeddingIndex:
    if not isinstance(index, EmbeddingIndex):
        raise InvalidParameter("index", type(index).__name__, "an EmbeddingIndex (see privdiff.retrieval.load_index)")
    return index


class ExactTopK:
    """Exact top-k over a fresh Poisson(q) subsample of all N records of ``index``.

    Args:
        index: the private :class:`~privdiff.retrieval.private.index.EmbeddingIndex`.
        method: ``"auto"``, ``"sparse"`` or ``"dense"`` (``search.subsampled_topk``); all three
            sample the same distribution and select the same records, only speed differs.
        scan: ``"auto"`` (default): ``"int8"`` when the index carries an int8 scan copy and numba
            is installed (the fastest exact scan measured, docs/results/scale/scan_README.md),
            else ``"float32"`` (with a one-line warning when only numba is missing); an index
            without an int8 copy searches exactly as before. ``"float32"`` scans the float32
            rows; ``"float16"`` scans the index's
            float16 scan copy (``index.add_scan_copy``) and re-ranks exactly in float32: the same
            records are selected on the same subsample, the scan reads half the bytes (the
            float32 rows are then touched only for the candidates and the k released rows).
            Not the default: on the machine measured it saves memory, not time
            (docs/results/scale/scan_README.md). ``"int8"`` scans the index's int8 scan copy
            (``add_scan_copy(dir, dtype="int8")``) with a compiled int8 kernel and re-ranks
            exactly in float32 (``int8scan.int8_scan_slack``): again the same records on the
            same subsample, a quarter of the bytes. It needs numba (``pip install
            'privdiff[fast]'``); asked for explicitly without it, construction raises
            :class:`~privdiff.errors.MissingDependency`. The kernel is compiled (or loaded from
            numba's cache) at construction, so nothing can fail for it after a charge.
    """

    __slots__ = ("_index", "_method", "_scan")

    def __init__(self, index: EmbeddingIndex, *, method: str = "auto", scan: str = "auto"):
        self._index = _check_index(index)
        if method not in ("auto", "sparse", "dense"):
            raise InvalidParameter("method", method, "one of 'auto', 'sparse', 'dense'")
        if scan not in ("auto", "float32", "float16", "int8"):
            raise InvalidParameter("scan", scan, "'auto', 'float32', 'float16' or 'int8'")
        if scan == "auto":
            scan = "float32"
            if int8_scan_for_mechanism(index) is not None:  # numba is looked at only then
                from privdiff.retrieval.private.int8scan import numba_available

                if numba_available():
                    scan = "int8"
                else:
                    import warnings

                    from privdiff.errors import PrivdiffWarning

                    warnings.warn(
                        "the index has an int8 scan copy but numba is not installed: scanning float32 "
                        "(same results, slower; pip install 'privdiff[fast]')",
                        PrivdiffWarning,
                        stacklevel=2,
                    )
        has = scan_rows_for_mechanism(index) if scan == "float16" else int8_scan_for_mechanism(index)
        if scan != "float32" and has is None:
            arg = "" if scan == "float16" else ", dtype='int8'"
            raise InvalidParameter(
                "scan",
                scan,
                f"'float32' for an index without a {scan} scan copy",
                hint=f"add one with privdiff.retrieval.private.add_scan_copy(index_dir{arg}) (fingerprint unchanged)",
            )
        if scan == "int8":
            from privdiff.retrieval.private.int8scan import compile_kernel

            compile_kernel()  # at construction: before any query is charged (MissingDependency without numba)
        self._method = method
        self._scan = scan
        if scan != "float32":
            advise_random_access(rows_for_mechanism(index))  # only candidates are read from the float32 rows

    @property
    def manifest(self) -> IndexManifest:
        return self._index.manifest

    @property
    def path(self) -> Path | None:
        return self._index.path

    def topk_sums(
        self, queries: np.ndarray, k: int, sample_rate: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        vectors = rows_for_mechanism(self._index)
        scan = None
        if self._scan == "float16":
            scan = scan_rows_for_mechanism(self._index)
        elif self._scan == "int8":
            scan = int8_scan_for_mechanism(self._index)
        ids = subsampled_topk(vectors, queries, k, sample_rate, rng, method=self._method, scan=scan)
        return padded_topk_sums(vectors, ids)

    def __repr__(self) -> str:
        method = "" if self._method == "auto" else f", method={self._method!r}"
        scan = "" if self._scan == "float32" else f", scan={self._scan!r}"
        return f"ExactTopK(count={self._index.count}{method}{scan})"


class IVFTopK:
    """Top-k over the Poisson(q)-sampled records of the ``nprobe`` nearest public IVF lists.

    Args:
        index: the private index.
        layout: an :class:`~privdiff.retrieval.private.ivf.IVFLayout` of ``index`` (coarse
            centroids trained on public data only); see ``ivf`` for why the analysis is unchanged.
        nprobe: lists probed per query (1 ≤ nprobe ≤ nlist).
    """

    __slots__ = ("_index", "_layout", "_nprobe")

    def __init__(self, index: EmbeddingIndex, layout: IVFLayout, *, nprobe: int = 8):
        self._index = _check_index(index)
        if not isinstance(layout, IVFLayout):
            raise InvalidParameter("ivf", type(layout).__name__, "an IVFLayout (public centroids)")
        if layout.count != index.count:
            raise InvalidParameter("ivf", repr(layout), f"a layout built from this index ({index.count} records)")
        space = layout.quantizer.space_id
        if space and space != index.space_id:
            raise EncoderMismatch(expected=index.space_id, found=space, what="IVF layout")
        self._nprobe = check_int("nprobe", nprobe, minimum=1, maximum=layout.quantizer.nlist)
        self._layout = layout

    @property
    def manifest(self) -> IndexManifest:
        return self._index.manifest

    @property
    def path(self) -> Path | None:
        return self._index.path

    def topk_sums(
        self, queries: np.ndarray, k: int, sample_rate: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        vectors = rows_for_mechanism(self._index)
        ids = ivf_subsampled_topk(vectors, self._layout, queries, k, sample_rate, self._nprobe, rng)
        return padded_topk_sums(vectors, ids)

    def __repr__(self) -> str:
        return f"IVFTopK(count={self._index.count}, ivf_nlist={self._layout.quantizer.nlist}, nprobe={self._nprobe})"
