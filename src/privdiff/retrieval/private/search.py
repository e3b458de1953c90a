"""Exact top-k inner-product search over a per-query Poisson subsample.

This is step 2-3 of the DP-RDM mechanism (arXiv 2403.14421; ``methods/dp-rdm.md`` §3): for every
query row draw a fresh subsample S ~ Poisson(q) of the private set and return the k records of S
with the largest inner product with the query (cosine similarity, since rows are unit vectors).

Two exact execution paths compute the same function; ``subsampled_topk`` picks one from q:

* **sparse** (small q): draw the subsamples of a batch of queries as record-major (record,
  query) pairs (``subsample.poisson_pairs``, O(qN) per query) and compute only those ~qN inner
  products per query with faiss' ``pairwise_indexed_inner_product``, which then walks the index
  rows in increasing order: one sequential pass over the sampled rows per batch instead of a
  random gather per query. Cost O(qN·d) per query, against O(N) per query for the authors' full
  Bernoulli mask + ``IDSelectorBatch`` scan (which also reads the same qN rows).
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
from privdiff.retrieval.private.subsample import poisson_pairs

__all__ = [
    "DENSE_SAMPLE_RATE_THRESHOLD",
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
_SPARSE_PAIRS = 4 * 1024 * 1024  # expected sampled (record, query) pairs per batch
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


def _sparse_topk(
    vectors: np.ndarray, queries: np.ndarray, k: int, sample_rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Exact top-k per query over independent Poisson(q) subsamples, in O(qN·d) per query.

    For a chunk of queries, all sampled (record, query) pairs are drawn in record-major order
    (``subsample.poisson_pairs``); faiss' ``pairwise_indexed_inner_product`` then scores every
    pair while walking the index rows in increasing order, so a batch reads each sampled row
    once, sequentially, whichever queries sampled it. Scores are regrouped per query with a
    stable radix sort on the query number (which keeps ids ascending inside each query, as
    ``select_topk`` requires).
    """
    import faiss

    vectors = _as_f32(vectors)
    queries = _as_f32(queries)
    n, d = vectors.shape
    B = queries.shape[0]
    out = np.full((B, k), -1, dtype=np.int64)
    chunk = int(max(1, min(B, 65535, _SPARSE_PAIRS // max(1.0, n * sample_rate))))
    for s in range(0, B, chunk):
        qc = np.ascontiguousarray(queries[s : s + chunk])
        nb = qc.shape[0]
        rows, qid = poisson_pairs(n, nb, sample_rate, rng)
        if rows.size == 0:
            continue
        scores = np.empty(rows.size, dtype=np.float32)
        faiss.pairwise_indexed_inner_product(
            int(d),
            int(rows.size),
            faiss.swig_ptr(qc),
            faiss.swig_ptr(qid),
            faiss.swig_ptr(vectors),
            faiss.swig_ptr(rows),
            faiss.swig_ptr(scores),
        )
        order = np.argsort(qid.astype(np.uint16), kind="stable")  # radix sort: O(pairs)
        counts = np.bincount(qid, minlength=nb)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        q_sorted = qid[order]
        width = int(counts.max())
        flat = q_sorted * width + (np.arange(order.size) - starts[q_sorted])
        grid_scores = np.full(nb * width, -np.inf, dtype=np.float32)
        grid_ids = np.full(nb * width, -1, dtype=np.int64)
        grid_scores[flat] = scores[order]
        grid_ids[flat] = rows[order]
        out[s : s + nb], _ = select_topk(grid_scores.reshape(nb, width), grid_ids.reshape(nb, width), k)
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
    return _sparse_topk(vectors, queries, k, q, rng)
