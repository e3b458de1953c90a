"""Poisson subsampling of the private retrieval set, drawn in O(qN) per query.

DP-RDM (arXiv 2403.14421, §3 step 2 of ``methods/dp-rdm.md``) draws a fresh Poisson subsample
S = {i : U_i < q} of the N private records for every query. The authors' code materialises the
N-long mask (``torch.rand(N) < q``), which costs O(N) per query before any search is done.

We draw the same random set in O(qN) expected time, using the exact two-stage decomposition of
i.i.d. Bernoulli(q) inclusion:

1. the subsample size is |S| ~ Binomial(N, q) (the sum of N independent Bernoulli(q) indicators);
2. conditioned on |S| = m, S is uniform over the C(N, m) subsets of size m, because every
   subset T with |T| = m has the same probability q^m (1 - q)^(N - m) under i.i.d. inclusion.

Stage 1 uses numpy's ``Generator.binomial``; stage 2 uses ``Generator.choice(..., replace=False,
shuffle=False)``, which runs Robert Floyd's sampling algorithm (O(m), hash set) when N <= 10,000
or m <= N/20 and a partial (tail) Fisher-Yates shuffle otherwise; both produce every m-subset
with equal probability given unbiased bounded integers. The indices are then sorted: sorted gathers are cache
friendly, and the search's
tie-breaking (smallest index wins, see ``search.select_topk``) relies on ascending order.

For a *batch* of B queries, :func:`poisson_pairs` draws all B subsamples at once as the set of
sampled (record, query) cells of the N × B grid, each cell included independently with
probability q, listed in row-major order (record-major). It uses the other classical exact
description of a Bernoulli(q) process: the gaps between successive successes are i.i.d.
Geometric(q) (number of trials up to and including the next success; independent because the
trials are), so the cumulative sums of i.i.d. geometric variates are exactly the included cells,
already sorted.
Restricted to one query's column this is again an i.i.d. Bernoulli(q) subsample of the records,
and different columns are independent: the same distribution as B separate draws. The record-major
order lets the search stream the index once per batch instead of gathering rows per query;
:func:`poisson_pair_blocks` yields the same process in bounded blocks, so that stream needs
O(block) memory whatever q and B are.

Exactness note: numpy draws binomial and geometric variates with floating-point algorithms
(BTPE/inversion), exact up to double-precision rounding; the integer parts (Floyd, cumulative
sums) are exact. The tests check the resulting distribution statistically.

Everything here is a pure function of the ``rng`` it is given: the DP mechanism passes an
OS-seeded generator (``mechanism.DPRetriever``, through a top-k backend), tests pass a seeded one to check the
distribution. The functions return *indices into the private set* and are therefore internal to
the private boundary: only ``privdiff.retrieval.private.search`` (and tests/benchmarks) call them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from privdiff.errors import check_in_range, check_int

__all__ = [
    "poisson_pair_blocks",
    "poisson_pairs",
    "poisson_subsample",
    "poisson_subsample_sizes",
    "padded_poisson_subsamples",
]


def _check(n: int, sample_rate: float) -> tuple[int, float]:
    n = check_int("n", n, minimum=0)
    q = check_in_range("sample_rate", sample_rate, 0.0, 1.0)
    return n, q


def poisson_subsample_sizes(n: int, sample_rate: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``count`` independent subsample sizes |S| ~ Binomial(n, q) (stage 1 above)."""
    n, q = _check(n, sample_rate)
    count = check_int("count", count, minimum=0)
    if q == 1.0:
        return np.full(count, n, dtype=np.int64)
    return rng.binomial(n, q, size=count).astype(np.int64)


def _uniform_subset(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random m-subset of range(n), sorted ascending (stage 2 above)."""
    if m == n:
        return np.arange(n, dtype=np.int64)
    out = rng.choice(n, size=m, replace=False, shuffle=False).astype(np.int64, copy=False)
    out.sort()
    return out


def poisson_subsample(n: int, sample_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of one Poisson(q) subsample of range(n): sorted, distinct, int64.

    Distributed exactly as {i : U_i < q} with U_i i.i.d. uniform (module docstring).
    """
    (m,) = poisson_subsample_sizes(n, sample_rate, 1, rng)
    return _uniform_subset(n, int(m), rng)


def padded_poisson_subsamples(
    n: int, sample_rate: float, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` independent Poisson(q) subsamples of range(n) as one padded matrix.

    Returns ``(ids, sizes)``: ``ids`` has shape (count, max(sizes)); row b holds the ``sizes[b]``
    sorted indices of subsample b followed by -1 padding (the layout faiss' ``*_by_idx`` kernels
    take, where -1 means "no vector"). Subsamples of different rows are independent.
    """
    sizes = poisson_subsample_sizes(n, sample_rate, count, rng)
    width = int(sizes.max()) if count else 0
    ids = np.full((count, width), -1, dtype=np.int64)
    for b, m in enumerate(sizes):
        ids[b, :m] = _uniform_subset(n, int(m), rng)
    return ids, sizes


def _geometric_block_size(expected: float) -> int:
    # Enough gaps to pass the end of the grid with overwhelming probability (mean + 6 sd), so the
    # loop below almost always runs once; it stays exact when it does not.
    return max(1024, int(expected + 6.0 * np.sqrt(expected) + 16))


def poisson_pairs(n: int, count: int, sample_rate: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """All (record, query) pairs of ``count`` independent Poisson(q) subsamples of range(n).

    Returns ``(rows, queries)``, int64 arrays of equal length, sorted by (row, query): pair j
    says record ``rows[j]`` is in the subsample of query ``queries[j]``. Every cell of the
    n × count grid is included independently with probability q (module docstring).
    """
    parts = list(poisson_pair_blocks(n, count, sample_rate, rng))
    if not parts:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty.copy()
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([r for r, _ in parts]), np.concatenate([c for _, c in parts])


def poisson_pair_blocks(
    n: int, count: int, sample_rate: float, rng: np.random.Generator, *, max_pairs: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`poisson_pairs`, streamed: consecutive blocks of at most ``max_pairs`` pairs.

    The blocks, concatenated, are one draw of :func:`poisson_pairs` (the same geometric-gap
    process, cut into pieces), so a caller can walk the N × count grid once in record-major
    order with bounded memory whatever q and count are. Empty blocks are never yielded.
    """
    n, q = _check(n, sample_rate)
    count = check_int("count", count, minimum=0)
    if max_pairs is not None:
        max_pairs = check_int("max_pairs", max_pairs, minimum=1)
    total = n * count
    if total == 0:
        return
    if q == 1.0:
        step = total if max_pairs is None else max_pairs
        for s in range(0, total, step):
            rows, qid = np.divmod(np.arange(s, min(total, s + step), dtype=np.int64), count)
            yield rows, qid
        return
    last = -1  # position of the previous success (cells are 0-indexed)
    while True:
        block = _geometric_block_size(q * (total - 1 - last))
        if max_pairs is not None:
            block = min(block, max_pairs)
        pos = last + np.cumsum(rng.geometric(q, size=block), dtype=np.int64)
        inside = pos[pos < total] if pos[-1] >= total else pos
        if inside.size:
            rows, qid = np.divmod(inside, count)
            yield rows, qid
        if inside.size < block:  # a success fell beyond the grid: the process is complete
            return
        last = int(pos[-1])
