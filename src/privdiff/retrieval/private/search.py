"""Exact top-k inner-product search over a per-query Poisson subsample.

This is step 2-3 of the DP-RDM mechanism (arXiv 2403.14421; ``methods/dp-rdm.md`` §3): for every
query row draw a fresh subsample S ~ Poisson(q) of the private set and return the k records of S
with the largest inner product with the query (cosine similarity, since rows are unit vectors).

Two exact execution paths compute the same function; ``subsampled_topk`` picks one from q:

* **sparse** (small q): stream the sampled (record, query) pairs of a batch of queries in
  record-major order (``subsample.poisson_pair_blocks``, O(qN) per query, bounded blocks) and
  score each block with faiss' ``pairwise_indexed_inner_product``, which walks the index rows in
  increasing order: one sequential pass over the sampled rows per batch, at any q, instead of a
  random gather per query. Per query only the pairs that can still be selected survive (the k-th
  best score seen so far bounds the final k-th best from below), so selection costs O(k) per
  query, not a (query × |S|) grid. Cost O(qN·d) per query, against O(N) per query for the
  authors' full Bernoulli mask + ``IDSelectorBatch`` scan (which also reads the same qN rows).
  With a float16 scan copy the pass reads half the bytes and the survivors within the proven
  error bound are re-scored in float32 (:func:`float16_scan_slack`): same ids. With the int8 scan
  copy (``int8scan``) a compiled int8 gather-dot scores the pairs from a quarter of the bytes,
  and again the survivors within its proven bound (``int8scan.int8_scan_slack``) are re-scored
  in float32: same ids.
* **dense** (large q, and q = 1): one BLAS product of a block of rows with a chunk of queries,
  then an i.i.d. Bernoulli(q) mask drawn directly. At large q the BLAS reuse of every row across
  many queries beats gathering; ``benchmarks/retrieval.py`` measures the crossover.

**Tie-breaking is part of the privacy argument.** The sensitivity bound Δ₂ = 2/k (§4.2) needs the
selected set to change by at most one swap when one record is added or removed. That holds when
selection is "top-k under a fixed total order on records"; we use the order (score descending,
index ascending) in both paths, so equal scores are always resolved in favour of the smaller
index, independently of which other records were sampled. (Floating-point caveat: the dense path
scores with BLAS, whose rounding of one row's score may depend on its position inside a block;
scores closer than ~1 ulp could then be ordered differently than in the sparse path. Appending a
record never moves existing rows, so neighbouring datasets in the add/remove sense share every
row's position.)

The returned *indices* are private. These functions are internal to the private boundary: the
top-k backends (``privdiff.retrieval.private.backends``, directly or through ``ivf``) are their
only library callers.
"""

from __future__ import annotations

import numpy as np

from privdiff.errors import InvalidParameter, check_in_range, check_int
from privdiff.retrieval.private.index import UNIT_NORM_TOLERANCE
from privdiff.retrieval.private.int8scan import INT8_MAX_DIM, Int8ScanCopy, int8_scan_slack, score_pairs_int8_kept
from privdiff.retrieval.private.subsample import poisson_pair_blocks

__all__ = [
    "DENSE_SAMPLE_RATE_THRESHOLD",
    "float16_scan_slack",
    "select_topk",
    "sparse_topk_from_subsets",
    "subsampled_topk",
]

#: Above this sample rate the dense path (BLAS over all rows + Bernoulli mask) is used. Measured
#: with ``benchmarks/retrieval.py --crossover`` (N = 200k, d = 512, k = 20, 128 queries, one
#: thread; queries per CPU-second): sparse 206 vs dense 111 at q = 0.2, 141 vs 147 at q = 0.3,
#: 90 vs 147 at q = 0.5 (docs/results/retrieval/crossover_n2e5.json). Both paths are exact, so
#: this only affects speed.
DENSE_SAMPLE_RATE_THRESHOLD = 0.3

# Work sizes: keep each temporary below ~100 MiB so several engineers' jobs fit in memory.
_SPARSE_CELLS = 8 * 1024 * 1024  # query-chunk × max|S| score cells per faiss call
_PAIR_BLOCK = 1 << 18  # (record, query) pairs drawn and scored per step (~5 MiB of temporaries)
_QUERY_CHUNK = 65535  # queries per pass over the index (query numbers fit uint16: radix sort)
_SCAN_ROW_BLOCK = 1024  # float16 rows widened to float32 at a time (2 MiB at d = 512: stays in cache)
_DENSE_ROW_BLOCK = 16384
_DENSE_QUERY_CHUNK = 256


def select_topk(scores: np.ndarray, cand_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k candidates largest under (score desc, id asc); absent ones are skipped.

    Args:
        scores: (B, m) float; ``-inf`` marks an absent candidate.
        cand_ids: (B, m) int64, ascending among present candidates of a row; ``-1`` = absent.
        k: number to keep.

    Returns:
        ``(ids, vals)`` of shape (B, k): the selected ids in ascending id order (the set is what
        matters; the mean is order-free), followed by ``-1`` / ``-inf`` when a row has fewer than
        k present candidates.
    """
    B, m = scores.shape
    present = cand_ids >= 0
    # NaN would sort as the largest value; a corrupt row must never win selection because of it.
    scores = np.where(present & ~np.isnan(scores), scores, -np.inf)
    ids_out = np.full((B, k), -1, dtype=np.int64)
    vals_out = np.full((B, k), -np.inf, dtype=scores.dtype)
    if m == 0 or B == 0:
        return ids_out, vals_out
    if m <= k:
        take = present
    else:
        kth = np.partition(scores, m - k, axis=1)[:, m - k][:, None]
        greater = scores > kth
        n_greater = greater.sum(axis=1, keepdims=True)
        ties = (scores == kth) & present
        # Among candidates tied with the k-th value, keep the ones with the smallest ids: the
        # columns are in ascending id order, so "first (k - n_greater) ties" is exactly that.
        take = greater | (ties & (np.cumsum(ties, axis=1) <= (k - n_greater)))
    rows, cols = np.nonzero(take)
    pos = np.cumsum(take, axis=1)[rows, cols] - 1
    ids_out[rows, pos] = cand_ids[rows, cols]
    vals_out[rows, pos] = scores[rows, cols]
    return ids_out, vals_out


def _as_f32(a: np.ndarray) -> np.ndarray:
    # faiss needs C-contiguous float32; a read-only np.memmap passes through without a copy.
    if a.dtype == np.float32 and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=np.float32)


def sparse_topk_from_subsets(vectors: np.ndarray, queries: np.ndarray, subsets: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k of each query over its own candidate set (rows of ``subsets``, -1 padded).

    ``subsets`` must be sorted ascending within each row (as ``padded_poisson_subsamples`` makes
    them). Returns ids (B, k), -1 padded.
    """
    import faiss

    vectors = _as_f32(vectors)
    queries = _as_f32(queries)
    subsets = np.ascontiguousarray(subsets, dtype=np.int64)
    B, width = subsets.shape
    n, d = vectors.shape
    out = np.full((B, k), -1, dtype=np.int64)
    if width == 0 or B == 0:
        return out
    chunk = max(1, min(B, _SPARSE_CELLS // max(width, 1)))
    for s in range(0, B, chunk):
        sub = np.ascontiguousarray(subsets[s : s + chunk])
        qs = np.ascontiguousarray(queries[s : s + chunk])
        nb = sub.shape[0]
        # Pre-fill: faiss versions differ on whether they write -inf at padded (-1) slots.
        ip = np.full((nb, width), -np.inf, dtype=np.float32)
        faiss.fvec_inner_products_by_idx(
            faiss.swig_ptr(ip),
            faiss.swig_ptr(qs),
            faiss.swig_ptr(vectors),
            faiss.swig_ptr(sub),
            int(d),
            int(nb),
            int(width),
        )
        out[s : s + nb], _ = select_topk(ip, sub, k)
    return out


def float16_scan_slack(query_norms: np.ndarray, d: int) -> np.ndarray:
    """2β per query: how far a float16-scan score may sit below the k-th best and still win.

    Setting. An index row e ∈ ℝ^d is float32 with ‖e‖₂ ≤ 1 + τ (τ = ``UNIT_NORM_TOLERANCE``,
    checked by ``load_index(verify="full")`` and by every build); its scan copy is
    ê = fl₁₆(e), IEEE binary16 with round-to-nearest. A query x is float32 with ‖x‖₂ = ρ. Both
    scores are computed by the same faiss kernel (``fvec_inner_product``) in float32: the exact
    path's s̃ = fl₃₂(x·e), the scan's ŝ = fl₃₂(x·ê) (ê converts to float32 exactly).

    1. Conversion. No overflow (|e_j| ≤ 1 + τ < 65504). In the normal range (|e_j| ≥ 2⁻¹⁴)
       |ê_j − e_j| ≤ u₁₆|e_j| with u₁₆ = 2⁻¹¹; below it the spacing is 2⁻²⁴, so the error is
       ≤ 2⁻²⁵. Hence ‖ê − e‖₂ ≤ u₁₆‖e‖₂ + 2⁻²⁵√d =: η, and by Cauchy-Schwarz
       |x·e − x·ê| ≤ ρη.
    2. Accumulation. A float32 dot product of length d, in any summation order, with or without
       FMA, satisfies |fl₃₂(x·y) − x·y| ≤ γ_d Σ_j |x_j y_j| ≤ γ_d ρ‖y‖₂ with
       γ_d = d u₃₂ / (1 − d u₃₂), u₃₂ = 2⁻²⁴ (Higham, *Accuracy and Stability of Numerical
       Algorithms*, 2nd ed., §3.1, (3.5) and Lemma 3.1). Apply it to y = e and y = ê
       (‖ê‖₂ ≤ 1 + τ + η).

    So |s̃ − ŝ| ≤ β := ρ (η + γ_d (2(1 + τ) + η)). If the scan keeps, per query, every pair with
    ŝ ≥ ŝ₍ₖ₎ − 2β (ŝ₍ₖ₎ the k-th largest scan score), it keeps the exact top-k: at least k pairs
    have s̃ ≥ ŝ − β ≥ ŝ₍ₖ₎ − β, so the exact k-th score s̃₍ₖ₎ ≥ ŝ₍ₖ₎ − β, and any pair of the exact
    top-k (s̃ ≥ s̃₍ₖ₎, ties included) has ŝ ≥ s̃ − β ≥ ŝ₍ₖ₎ − 2β. Re-scoring those candidates with
    the float32 kernel and selecting under the usual (score desc, id asc) order then returns the
    float32 path's top-k exactly. The result is inflated by 1e-6 (relative) to absorb the
    rounding of this float64 computation, and thresholds are rounded down to float32.
    """
    tau = float(UNIT_NORM_TOLERANCE)
    u16, u32 = 2.0**-11, 2.0**-24
    eta = u16 * (1.0 + tau) + 2.0**-25 * np.sqrt(d)
    gamma = d * u32 / (1.0 - d * u32)
    beta = np.asarray(query_norms, dtype=np.float64) * (eta + gamma * (2.0 * (1.0 + tau) + eta))
    return 2.0 * beta * (1.0 + 1e-6)


def _lower_f32(x: np.ndarray) -> np.ndarray:
    """float64 → the largest float32 ≤ x (a threshold must never round up past a candidate)."""
    y = x.astype(np.float32)
    return np.where(y.astype(np.float64) > x, np.nextafter(y, np.float32(-np.inf)), y)


def _kth_largest(grid: np.ndarray, k: int) -> np.ndarray:
    """Per row of a (B, w) score grid (-inf = absent, NaN = treated as -inf), the k-th largest."""
    B, w = grid.shape
    if w < k:
        return np.full(B, -np.inf, dtype=grid.dtype)
    g = np.where(np.isnan(grid), -np.inf, grid)
    return np.partition(g, w - k, axis=1)[:, w - k]


class _Survivors:
    """Per query, every scanned (record, score) that can still reach the final selection.

    Pairs arrive in record-major order (``subsample.poisson_pair_blocks``). The k-th largest
    score a query has seen so far is a lower bound on its final k-th largest (a subset's k-th
    largest never exceeds the whole set's), so a pair scoring below ``kth_so_far − slack`` can
    never be selected (``slack`` = 0 for exact float32 scores, 2β for float16 scan scores, see
    :func:`float16_scan_slack`) and is dropped at once. This replaces a full (query × |S|) grid
    with O(k) survivors per query; NaN scores are always kept (``select_topk`` decides).
    """

    def __init__(self, nb: int, k: int, slack: np.ndarray | None):
        self.nb, self.k, self.slack = nb, k, slack
        self.thr = np.full(nb, -np.inf, dtype=np.float32)
        self.qid: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.size = 0
        self._floor = max(8 * k * nb, 1 << 16)
        self._next = self._floor

    def add(self, qid: np.ndarray, rows: np.ndarray, scores: np.ndarray) -> None:
        keep = ~(scores < self.thr[qid])
        if not keep.all():
            qid, rows, scores = qid[keep], rows[keep], scores[keep]
        if qid.size:
            self.qid.append(qid)
            self.rows.append(rows)
            self.scores.append(scores)
            self.size += qid.size
        if self.size > self._next:
            self._compact()
            self._next = max(self._floor, 2 * self.size)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """The survivors as (nb, width) score and id grids, ids ascending per row, -inf/-1 padded."""
        nb = self.nb
        if not self.size:
            return np.full((nb, 0), -np.inf, dtype=np.float32), np.full((nb, 0), -1, dtype=np.int64)
        qid = np.concatenate(self.qid) if len(self.qid) > 1 else self.qid[0]
        rows = np.concatenate(self.rows) if len(self.rows) > 1 else self.rows[0]
        scores = np.concatenate(self.scores) if len(self.scores) > 1 else self.scores[0]
        # Within a query, later pairs have larger record ids (record-major stream, and a compacted
        # block is query-major with ids ascending), so a stable sort on the query keeps ids ascending,
        # as select_topk requires. uint16 keys: numpy's stable sort is then an O(n) radix sort.
        order = np.argsort(qid.astype(np.uint16), kind="stable")
        counts = np.bincount(qid, minlength=nb)
        width = int(counts.max())
        starts = np.zeros(nb, dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        q_sorted = qid[order]
        flat = q_sorted * width + (np.arange(order.size) - starts[q_sorted])
        grid_scores = np.full(nb * width, -np.inf, dtype=np.float32)
        grid_ids = np.full(nb * width, -1, dtype=np.int64)
        grid_scores[flat] = scores[order]
        grid_ids[flat] = rows[order]
        return grid_scores.reshape(nb, width), grid_ids.reshape(nb, width)

    def threshold(self, grid_scores: np.ndarray) -> np.ndarray:
        kth = _kth_largest(grid_scores, self.k)
        if self.slack is None:
            return kth.astype(np.float32)
        return _lower_f32(kth.astype(np.float64) - self.slack)

    def _compact(self) -> None:
        gs, gi = self.grid()
        self.thr = np.maximum(self.thr, self.threshold(gs))
        keep = (gi >= 0) & ~(gs < self.thr[:, None])
        qid, _ = np.nonzero(keep)
        self.qid, self.rows, self.scores = [qid], [gi[keep]], [gs[keep]]
        self.size = int(qid.size)


def _score_pairs(
    vectors: np.ndarray,
    scan: np.ndarray | None,
    queries: np.ndarray,
    rows: np.ndarray,
    qid: np.ndarray,
    buf: np.ndarray | None,
) -> np.ndarray:
    """Inner product of every (rows[j], qid[j]) pair: float32 rows, or the float16 scan copy.

    float16: faiss has no float16 gather-dot, so blocks of consecutive rows are widened to float32
    into ``buf`` (a few MiB, cache resident) by torch's vectorised cast (numpy's half cast is ~8x
    slower here) and the block's pairs are scored there; the DRAM traffic is the float16 bytes.
    When the pairs are sparse in their row range (few queries), only the sampled rows are widened.
    """
    import faiss

    out = np.empty(rows.size, dtype=np.float32)
    d = queries.shape[1]
    qp = faiss.swig_ptr(queries)
    if scan is None:
        faiss.pairwise_indexed_inner_product(
            int(d),
            int(rows.size),
            qp,
            faiss.swig_ptr(qid),
            faiss.swig_ptr(vectors),
            faiss.swig_ptr(rows),
            faiss.swig_ptr(out),
        )
        return out
    import warnings

    import torch

    assert buf is not None
    buf_t = torch.from_numpy(buf)
    R = buf.shape[0]
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    with warnings.catch_warnings():
        # torch warns that a read-only memmap slice is not writable; it is only ever read. The
        # tensor is made per block: torch.from_numpy over a whole read-only memmap is slow.
        warnings.simplefilter("ignore", UserWarning)
        if rows.size * 2 >= hi - lo:  # dense enough: widen whole row blocks
            edges = np.searchsorted(rows, np.arange(lo + R, hi, R))
            a = 0
            for r0, b in zip(range(lo, hi, R), [*edges.tolist(), rows.size]):
                if b == a:
                    continue
                r1 = min(r0 + R, hi)
                buf_t[: r1 - r0].copy_(torch.from_numpy(np.asarray(scan[r0:r1])))
                local = rows[a:b] - r0
                faiss.pairwise_indexed_inner_product(
                    int(d),
                    int(b - a),
                    qp,
                    faiss.swig_ptr(qid[a:b]),
                    faiss.swig_ptr(buf),
                    faiss.swig_ptr(local),
                    faiss.swig_ptr(out[a:b]),
                )
                a = b
            return out
        for a in range(0, rows.size, R):  # sparse: widen only the sampled rows
            b = min(rows.size, a + R)
            buf_t[: b - a].copy_(torch.from_numpy(scan[rows[a:b]]))
            local = np.arange(b - a, dtype=np.int64)
            faiss.pairwise_indexed_inner_product(
                int(d),
                int(b - a),
                qp,
                faiss.swig_ptr(qid[a:b]),
                faiss.swig_ptr(buf),
                faiss.swig_ptr(local),
                faiss.swig_ptr(out[a:b]),
            )
    return out


def _rerank_exact(
    vectors: np.ndarray, queries: np.ndarray, grid_ids: np.ndarray, cand: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Re-score the ``cand`` cells of a survivors' grid exactly in float32, with the float32
    path's own faiss kernel: ``(scores, ids)`` grids, -inf / -1 outside the candidates."""
    import faiss

    cq, cc = (np.ascontiguousarray(a) for a in np.nonzero(cand))
    exact = np.empty(cq.size, dtype=np.float32)
    rows_c = np.ascontiguousarray(grid_ids[cq, cc])
    faiss.pairwise_indexed_inner_product(
        int(queries.shape[1]),
        int(cq.size),
        faiss.swig_ptr(queries),
        faiss.swig_ptr(cq),
        faiss.swig_ptr(vectors),
        faiss.swig_ptr(rows_c),
        faiss.swig_ptr(exact),
    )
    scores = np.full(grid_ids.shape, -np.inf, dtype=np.float32)
    scores[cq, cc] = exact
    return scores, np.where(cand, grid_ids, -1)


def _sparse_topk(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    sample_rate: float,
    rng: np.random.Generator,
    scan: np.ndarray | Int8ScanCopy | None = None,
) -> np.ndarray:
    """Exact top-k per query over independent Poisson(q) subsamples, in O(qN·d) per query.

    For a chunk of queries, the sampled (record, query) pairs are streamed in record-major order
    (``subsample.poisson_pair_blocks``, bounded blocks, so one pass over the index serves the
    whole chunk at any q); faiss scores each block while walking the rows in increasing order,
    so a batch reads each sampled row once whichever queries sampled it. :class:`_Survivors`
    keeps only pairs that can still be selected. With a float16 ``scan`` copy the pass reads
    half the bytes and the survivors (every pair within 2β of the k-th best,
    :func:`float16_scan_slack`) are re-scored from the float32 rows before selection, so the ids
    are exactly those of the float32 path on the same subsample. An
    :class:`~privdiff.retrieval.private.int8scan.Int8ScanCopy` is scanned by the int8 kernel with
    its own 2β (``int8scan.int8_scan_slack``) and re-ranked the same way. The pairs are drawn
    from ``rng`` identically in every variant.
    """
    vectors = _as_f32(vectors)
    queries = _as_f32(queries)
    n, d = vectors.shape
    B = queries.shape[0]
    out = np.full((B, k), -1, dtype=np.int64)
    slack = None
    buf = None
    int8 = None
    if isinstance(scan, Int8ScanCopy):
        if scan.shape != vectors.shape or scan.codes.dtype != np.int8 or scan.scales.shape != (n,):
            raise InvalidParameter("scan", f"int8 {scan.shape}", f"an int8 scan copy of shape {vectors.shape}")
        if d > INT8_MAX_DIM:
            raise InvalidParameter("scan", f"int8 at d = {d}", f"d <= {INT8_MAX_DIM} (int32 accumulation)")
        if not np.isfinite(queries).all():  # the mechanism refuses these before charging; the bound needs it
            raise InvalidParameter("queries", "non-finite values", "finite rows for the int8 scan")
        qcodes, qscales, slack = int8_scan_slack(queries, scan)
        int8 = (scan, qcodes, qscales)
    elif scan is not None:
        if scan.shape != vectors.shape or scan.dtype != np.float16:
            raise InvalidParameter("scan", f"{scan.dtype} {scan.shape}", f"float16 {vectors.shape}")
        buf = np.empty((_SCAN_ROW_BLOCK, d), dtype=np.float32)
        slack = float16_scan_slack(np.linalg.norm(queries.astype(np.float64), axis=1), d)
    for s in range(0, B, _QUERY_CHUNK):
        qc = np.ascontiguousarray(queries[s : s + _QUERY_CHUNK])
        nb = qc.shape[0]
        acc = _Survivors(nb, k, None if slack is None else slack[s : s + nb])
        if int8 is not None:
            copy, qcodes_c, qscales_c = int8[0], int8[1][s : s + nb], int8[2][s : s + nb]
            work: dict = {}
            for rows, qid in poisson_pair_blocks(n, nb, sample_rate, rng, max_pairs=_PAIR_BLOCK):
                acc.add(*score_pairs_int8_kept(copy, qcodes_c, qscales_c, rows, qid, acc.thr, work))
        else:
            for rows, qid in poisson_pair_blocks(n, nb, sample_rate, rng, max_pairs=_PAIR_BLOCK):
                acc.add(qid, rows, _score_pairs(vectors, scan, qc, rows, qid, buf))
        gs, gi = acc.grid()
        if scan is not None and gi.size:
            # Candidates within 2β of the k-th reduced-precision score, re-scored exactly in float32.
            cand = (gi >= 0) & ~(gs < acc.threshold(gs)[:, None])
            gs, gi = _rerank_exact(vectors, qc, gi, cand)
        out[s : s + nb], _ = select_topk(gs, gi, k)
    return out


def _dense_topk(
    vectors: np.ndarray, queries: np.ndarray, k: int, sample_rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Exact top-k over an i.i.d. Bernoulli(q) mask (no mask when q = 1), via blocked BLAS."""
    n, _ = vectors.shape
    B = queries.shape[0]
    out = np.full((B, k), -1, dtype=np.int64)
    q32 = _as_f32(queries)
    for qs in range(0, B, _DENSE_QUERY_CHUNK):
        qc = q32[qs : qs + _DENSE_QUERY_CHUNK]
        nb = qc.shape[0]
        best_ids = np.full((nb, k), -1, dtype=np.int64)
        best_vals = np.full((nb, k), -np.inf, dtype=np.float32)
        for r0 in range(0, n, _DENSE_ROW_BLOCK):
            r1 = min(n, r0 + _DENSE_ROW_BLOCK)
            block = np.asarray(vectors[r0:r1], dtype=np.float32)
            scores = (qc @ block.T).astype(np.float32, copy=False)  # (nb, rows)
            ids = np.broadcast_to(np.arange(r0, r1, dtype=np.int64), scores.shape)
            if sample_rate < 1.0:
                # Fresh, independent inclusion indicator for every (query, record) pair.
                keep = rng.random(scores.shape) < sample_rate
                ids = np.where(keep, ids, -1)
            # Running best ids are all < r0 and ascending, so the concatenation stays ascending.
            cat_ids = np.concatenate([best_ids, ids], axis=1)
            cat_vals = np.concatenate([best_vals, scores], axis=1)
            best_ids, best_vals = select_topk(cat_vals, cat_ids, k)
        out[qs : qs + nb] = best_ids
    return out


def subsampled_topk(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    sample_rate: float,
    rng: np.random.Generator,
    *,
    method: str = "auto",
    scan: np.ndarray | Int8ScanCopy | None = None,
) -> np.ndarray:
    """For each query row: fresh Poisson(q) subsample, then exact top-k ids by inner product.

    Args:
        vectors: (N, d) float32 unit rows (may be a read-only memmap).
        queries: (B, d) float32 unit rows.
        k: neighbours per query (κ in the paper's code, ``knn``).
        sample_rate: q ∈ (0, 1]; q = 1 searches the whole set.
        rng: the randomness of the subsample (the mechanism passes an OS-seeded generator).
        method: ``"auto"`` (sparse below ``DENSE_SAMPLE_RATE_THRESHOLD``, else dense),
            ``"sparse"`` or ``"dense"``; all three sample the same distribution.
        scan: optional float16 copy of ``vectors`` (rows of unit norm), or their
            :class:`~privdiff.retrieval.private.int8scan.Int8ScanCopy`: the sparse path scans it
            and re-ranks exactly in float32, returning the same ids as without it on the same
            subsample (:func:`float16_scan_slack`, ``int8scan.int8_scan_slack``). The dense path
            ignores it.

    Returns:
        (B, k) int64 ids in ascending order, ``-1`` where fewer than k records were sampled.
    """
    k = check_int("k", k, minimum=1)
    q = check_in_range("sample_rate", sample_rate, 0.0, 1.0)
    if method not in ("auto", "sparse", "dense"):
        raise InvalidParameter("method", method, "one of 'auto', 'sparse', 'dense'")
    if method == "auto":
        method = "dense" if q > DENSE_SAMPLE_RATE_THRESHOLD else "sparse"
    if method == "dense":
        return _dense_topk(vectors, queries, k, q, rng)
    return _sparse_topk(vectors, queries, k, q, rng, scan)
