"""The O(qN) subsampler draws exactly the i.i.d. Bernoulli(q) inclusion distribution."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privdiff.errors import InvalidParameter
from privdiff.retrieval.private.search import subsampled_topk
from privdiff.retrieval.private.subsample import (
    padded_poisson_subsamples,
    poisson_pairs,
    poisson_subsample,
    poisson_subsample_sizes,
)

# Family-wise error of each statistical check below; seeds are fixed, so outcomes are stable,
# but the bounds are the ones a correct sampler passes with probability >= 1 - ALPHA.
ALPHA = 1e-3


def _binomial_bounds(trials: int, p: float, alpha: float) -> tuple[float, float]:
    return stats.binom.ppf(alpha / 2, trials, p), stats.binom.isf(alpha / 2, trials, p)


def _inclusion_matrix(n, q, runs, seed, method="subsample"):
    rng = np.random.default_rng(seed)
    mat = np.zeros((runs, n), dtype=bool)
    if method == "subsample":
        ids, sizes = padded_poisson_subsamples(n, q, runs, rng)
        for b in range(runs):
            mat[b, ids[b, : sizes[b]]] = True
    elif method == "pairs":
        rows, queries = poisson_pairs(n, runs, q, rng)
        mat[queries, rows] = True
    else:  # the dense search path: with k >= N the top-k *is* the subsample
        x = np.random.default_rng(1).standard_normal((n, 4)).astype(np.float32)
        qs = np.ones((runs, 4), dtype=np.float32)
        top = subsampled_topk(x, qs, n, q, rng, method=method)
        for b in range(runs):
            mat[b, top[b][top[b] >= 0]] = True
    return mat


@pytest.mark.parametrize("method", ["subsample", "pairs", "sparse", "dense"])
def test_each_record_is_included_with_probability_q(method):
    n, q, runs = 40, 0.3, 4000
    mat = _inclusion_matrix(n, q, runs, seed=11, method=method)
    lo, hi = _binomial_bounds(runs, q, ALPHA / n)  # Bonferroni over the n records
    counts = mat.sum(axis=0)
    assert ((counts >= lo) & (counts <= hi)).all(), counts


@pytest.mark.parametrize("method", ["subsample", "pairs", "sparse", "dense"])
def test_subsample_size_follows_binomial_n_q(method):
    n, q, runs = 60, 0.2, 6000
    sizes = _inclusion_matrix(n, q, runs, seed=12, method=method).sum(axis=1)
    # Chi-square goodness of fit with tail bins pooled so every expected count is >= 5.
    support = np.arange(n + 1)
    pmf = stats.binom.pmf(support, n, q)
    lo = int(stats.binom.ppf(0.001, n, q))
    hi = int(stats.binom.isf(0.001, n, q))
    obs = [np.sum(sizes <= lo)] + [np.sum(sizes == s) for s in range(lo + 1, hi)] + [np.sum(sizes >= hi)]
    exp = [pmf[: lo + 1].sum()] + [pmf[s] for s in range(lo + 1, hi)] + [pmf[hi:].sum()]
    exp = np.asarray(exp) * runs
    assert exp.min() >= 5
    _, p = stats.chisquare(obs, exp)
    assert p > ALPHA


def test_size_check_rejects_a_fixed_size_sampler():
    """Power check: the same test catches the classic mistake m = round(qN)."""
    n, q, runs = 60, 0.2, 6000
    rng = np.random.default_rng(3)
    fixed = np.full(runs, round(q * n))
    binom = poisson_subsample_sizes(n, q, runs, rng)
    assert stats.ks_2samp(binom, fixed).pvalue < 1e-9


@pytest.mark.parametrize("method", ["subsample", "pairs"])
def test_pairwise_coinclusion_within_and_across_queries_is_q_squared(method):
    n, q, runs = 12, 0.4, 8000
    mat = _inclusion_matrix(n, q, runs, seed=13, method=method)
    pairs = n * (n - 1) // 2
    lo, hi = _binomial_bounds(runs, q * q, ALPHA / (2 * pairs))
    co = mat.T.astype(np.int64) @ mat.astype(np.int64)  # co[i, j] = runs with both i and j
    iu = np.triu_indices(n, 1)
    assert ((co[iu] >= lo) & (co[iu] <= hi)).all()
    # Across queries: record i in run b and in run b+1 (independent subsamples).
    half = runs // 2
    across = (mat[0::2][:half] & mat[1::2][:half]).sum(axis=0)
    lo2, hi2 = _binomial_bounds(half, q * q, ALPHA / n)
    assert ((across >= lo2) & (across <= hi2)).all()


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=3000),
    q=st.floats(min_value=1e-4, max_value=1.0, allow_nan=False),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_subsample_indices_are_sorted_distinct_and_in_range(n, q, seed):
    s = poisson_subsample(n, q, np.random.default_rng(seed))
    assert s.dtype == np.int64
    assert np.all(np.diff(s) > 0)
    if len(s):
        assert s[0] >= 0 and s[-1] < n


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=500),
    count=st.integers(min_value=0, max_value=20),
    q=st.floats(min_value=1e-3, max_value=1.0, allow_nan=False),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_pairs_are_distinct_in_range_and_record_major(n, count, q, seed):
    rows, queries = poisson_pairs(n, count, q, np.random.default_rng(seed))
    assert rows.shape == queries.shape and rows.dtype == queries.dtype == np.int64
    cells = rows * max(count, 1) + queries
    assert np.all(np.diff(cells) > 0)  # sorted by (record, query), no duplicates
    if rows.size:
        assert rows.min() >= 0 and rows.max() < n and queries.min() >= 0 and queries.max() < count


def test_pairs_stitched_from_many_small_geometric_blocks_keep_the_distribution(monkeypatch):
    import privdiff.retrieval.private.subsample as sub

    monkeypatch.setattr(sub, "_geometric_block_size", lambda expected: 7)
    n, q, runs = 30, 0.3, 3000
    rows, queries = poisson_pairs(n, runs, q, np.random.default_rng(8))
    cells = rows * runs + queries
    assert np.all(np.diff(cells) > 0)
    lo, hi = _binomial_bounds(n * runs, q, ALPHA)
    assert lo <= cells.size <= hi
    counts = np.bincount(rows, minlength=n)
    lo, hi = _binomial_bounds(runs, q, ALPHA / n)
    assert ((counts >= lo) & (counts <= hi)).all()


def test_padded_layout_has_sizes_then_minus_one():
    ids, sizes = padded_poisson_subsamples(1000, 0.05, 7, np.random.default_rng(5))
    assert ids.shape == (7, sizes.max())
    for row, m in zip(ids, sizes):
        assert (row[:m] >= 0).all() and (row[m:] == -1).all()
        assert len(np.unique(row[:m])) == m


def test_sample_rate_one_keeps_every_record():
    assert np.array_equal(poisson_subsample(17, 1.0, np.random.default_rng(0)), np.arange(17))


@pytest.mark.parametrize("q", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_sample_rate_outside_unit_interval_is_refused(q):
    with pytest.raises(InvalidParameter, match="sample_rate"):
        poisson_subsample(10, q, np.random.default_rng(0))


def test_pair_blocks_are_bounded_and_concatenate_to_poisson_pairs():
    from privdiff.retrieval.private.subsample import poisson_pair_blocks

    rows, queries = poisson_pairs(5000, 40, 0.02, np.random.default_rng(3))
    blocks = list(poisson_pair_blocks(5000, 40, 0.02, np.random.default_rng(3)))
    np.testing.assert_array_equal(np.concatenate([r for r, _ in blocks]), rows)
    np.testing.assert_array_equal(np.concatenate([c for _, c in blocks]), queries)
    small = list(poisson_pair_blocks(5000, 40, 0.02, np.random.default_rng(3), max_pairs=100))
    assert max(r.size for r, _ in small) <= 100 and all(r.size for r, _ in small)
    cells = np.concatenate([r * 40 + c for r, c in small])
    assert np.all(np.diff(cells) > 0)  # one record-major sweep, no duplicates across blocks


def test_bounded_pair_blocks_keep_the_distribution():
    from privdiff.retrieval.private.subsample import poisson_pair_blocks

    n, q, runs = 30, 0.3, 3000
    blocks = list(poisson_pair_blocks(n, runs, q, np.random.default_rng(9), max_pairs=50))
    rows = np.concatenate([r for r, _ in blocks])
    lo, hi = _binomial_bounds(n * runs, q, ALPHA)
    assert lo <= rows.size <= hi
    counts = np.bincount(rows, minlength=n)
    lo, hi = _binomial_bounds(runs, q, ALPHA / n)
    assert ((counts >= lo) & (counts <= hi)).all()
