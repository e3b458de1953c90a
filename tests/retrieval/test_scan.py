"""The streamed exact scan and the float16 scan with exact float32 re-rank (issue 14, item 2).

The float16 path must return exactly the float32 path's ids on the same subsample, including for
rows that differ only below float16 resolution; the streamed survivors must return exactly the
brute-force top-k over the pairs drawn.
"""

import numpy as np
import pytest

import privdiff.retrieval.private.search as search
from privdiff.errors import InvalidParameter
from privdiff.retrieval.private.search import float16_scan_slack, subsampled_topk
from privdiff.retrieval.private.subsample import poisson_pair_blocks


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _random_unit(n, d, seed):
    return _unit(np.random.default_rng(seed).standard_normal((n, d)))


def _near_ties(n_base=40, copies=12, d=48, seed=0):
    """Clusters of rows that differ only below float16 resolution (plus exact duplicates).

    Each base row gets ``copies`` variants e + 1e-6·z (renormalised): their float16 roundings
    mostly coincide, so the float16 scores cannot order them, while their float32 scores differ
    by ~1e-6. Every third variant is an exact duplicate of the base row (a real tie, resolved by
    the smaller id). Queries are the base rows themselves, so the clusters are the top-k.
    """
    rng = np.random.default_rng(seed)
    base = _random_unit(n_base, d, seed)
    rows = []
    for e in base.astype(np.float64):
        for c in range(copies):
            v = e.copy() if c % 3 == 0 else e + 1e-6 * rng.standard_normal(d)
            rows.append(v / np.linalg.norm(v))
    x = np.asarray(rows, dtype=np.float32)
    perm = rng.permutation(x.shape[0])  # clusters spread over the index, ids interleaved
    return np.ascontiguousarray(x[perm]), base


def _brute_topk_over_pairs(x, queries, rows, qid, k):
    """Reference: per query, sort its sampled rows by (float32 score desc, id asc), keep k."""
    out = np.full((queries.shape[0], k), -1, dtype=np.int64)
    # Score with the very kernel the scan uses, so "exact" means bit-identical float32 scores.
    scores = search._score_pairs(x, None, queries, rows, qid, None)
    for b in range(queries.shape[0]):
        sel = qid == b
        r, s = rows[sel], scores[sel]
        order = np.lexsort((r, -s))
        top = np.sort(r[order][:k])
        out[b, : top.size] = top
    return out


@pytest.mark.parametrize(("k", "q"), [(1, 0.3), (5, 0.05), (20, 0.5), (7, 1.0)])
def test_float16_scan_returns_the_float32_ids_on_many_subsamples(k, q):
    x = _random_unit(3000, 64, 1)
    scan = x.astype(np.float16)
    queries = _random_unit(23, 64, 2)
    for seed in range(6):
        want = subsampled_topk(x, queries, k, q, np.random.default_rng(seed), method="sparse")
        got = subsampled_topk(x, queries, k, q, np.random.default_rng(seed), method="sparse", scan=scan)
        np.testing.assert_array_equal(got, want)


def test_float16_scan_is_exact_on_adversarial_near_ties():
    x, base = _near_ties()
    scan = x.astype(np.float16)
    # The construction really is adversarial: many distinct float32 rows share one float16 row.
    assert np.unique(scan, axis=0).shape[0] < np.unique(x, axis=0).shape[0]
    for k in (3, 5, 12, 30):
        for seed in range(8):
            q = 0.6 if seed % 2 else 1.0
            want = subsampled_topk(x, base, k, q, np.random.default_rng(seed), method="sparse")
            got = subsampled_topk(x, base, k, q, np.random.default_rng(seed), method="sparse", scan=scan)
            np.testing.assert_array_equal(got, want)


def test_the_near_tie_test_detects_a_scan_without_the_error_bound(monkeypatch):
    """Sensitivity check: with 2β = 0 the float16 scan drops winners, and the comparison sees it."""
    x, base = _near_ties()
    scan = x.astype(np.float16)
    monkeypatch.setattr(search, "float16_scan_slack", lambda norms, d: np.zeros(len(norms)))
    differs = 0
    for seed in range(8):
        want = subsampled_topk(x, base, 5, 1.0, np.random.default_rng(seed), method="sparse")
        got = subsampled_topk(x, base, 5, 1.0, np.random.default_rng(seed), method="sparse", scan=scan)
        differs += int((got != want).any())
    assert differs > 0


def test_error_bound_covers_every_observed_float16_error():
    """|fl32(x·e) − fl32(x·fl16(e))| ≤ β = slack/2 on random rows and on adversarial near-ties."""
    d = 512
    x = _random_unit(4000, d, 3)
    # Adversarial for the bound: rows whose coordinates sit halfway between float16 neighbours
    # (maximal rounding error), and rows with subnormal-range coordinates.
    half = np.full((1, d), 1.0, dtype=np.float64) * (1 + 2.0**-11)
    tiny = np.where(np.arange(d) % 2 == 0, 1.0, 3e-6)[None, :].astype(np.float64)
    x = np.concatenate([x, _unit(half), _unit(tiny)])
    queries = np.concatenate([_random_unit(16, d, 4), x[-2:], np.sign(x[-2:]) / np.sqrt(d)]).astype(np.float32)
    rows = np.repeat(np.arange(x.shape[0], dtype=np.int64), queries.shape[0])
    qid = np.tile(np.arange(queries.shape[0], dtype=np.int64), x.shape[0])
    exact = search._score_pairs(x, None, queries, rows, qid, None)
    approx = search._score_pairs(
        x, x.astype(np.float16), queries, rows, qid, np.empty((search._SCAN_ROW_BLOCK, d), np.float32)
    )
    beta = float16_scan_slack(np.linalg.norm(queries.astype(np.float64), axis=1), d)[qid] / 2
    err = np.abs(exact.astype(np.float64) - approx.astype(np.float64))
    assert (err <= beta).all()
    assert err.max() > 0  # the rounding is real, the bound is not vacuous
    assert beta.max() < 1e-3  # and tight enough to prune: ~2^-11 for unit rows


def test_float16_scan_in_the_padded_regime_and_with_few_queries():
    x = _random_unit(400, 32, 5)
    scan = x.astype(np.float16)
    queries = _random_unit(3, 32, 6)  # few queries: the sparse (gather) widening branch
    for seed in range(10):
        want = subsampled_topk(x, queries, 50, 0.05, np.random.default_rng(seed), method="sparse")
        got = subsampled_topk(x, queries, 50, 0.05, np.random.default_rng(seed), method="sparse", scan=scan)
        np.testing.assert_array_equal(got, want)
        assert (want == -1).any()  # |S| < k: padded


def test_streamed_survivors_equal_brute_force_topk_over_the_drawn_pairs(monkeypatch):
    """Tiny pair blocks and aggressive compaction still give the exact top-k, ties included."""
    monkeypatch.setattr(search, "_PAIR_BLOCK", 37)
    monkeypatch.setattr(search._Survivors, "__init__", _small_floor_init(search._Survivors.__init__))
    rng = np.random.default_rng(7)
    x = rng.integers(-2, 3, size=(600, 8)).astype(np.float32)  # integer rows: many exact ties
    queries = rng.integers(-2, 3, size=(11, 8)).astype(np.float32)
    for k, q in [(1, 0.5), (6, 0.2), (25, 0.05), (9, 1.0)]:
        got = subsampled_topk(x, queries, k, q, np.random.default_rng(k), method="sparse")
        blocks = list(poisson_pair_blocks(600, 11, q, np.random.default_rng(k), max_pairs=37))
        rows = np.concatenate([r for r, _ in blocks])
        qid = np.concatenate([c for _, c in blocks])
        np.testing.assert_array_equal(got, _brute_topk_over_pairs(x, queries, rows, qid, k))


def _small_floor_init(orig):
    def init(self, nb, k, slack):
        orig(self, nb, k, slack)
        self._floor = self._next = 16  # compact after almost every block

    return init


def test_one_pass_serves_every_query_of_a_large_batch(monkeypatch):
    """No pair cap: a batch is scored in one record-major pass (rows non-decreasing across blocks)."""
    seen = []
    real = search._score_pairs

    def spy(vectors, scan, queries, rows, qid, buf):
        seen.append((int(rows[0]), int(rows[-1])))
        return real(vectors, scan, queries, rows, qid, buf)

    monkeypatch.setattr(search, "_score_pairs", spy)
    monkeypatch.setattr(search, "_PAIR_BLOCK", 4096)
    x = _random_unit(2000, 16, 8)
    subsampled_topk(x, _random_unit(300, 16, 9), 5, 0.2, np.random.default_rng(0), method="sparse")
    starts = [a for a, _ in seen]
    assert starts == sorted(starts) and seen[-1][1] >= 1900  # one monotone sweep over the rows


def test_scan_copy_must_match_the_rows_shape_and_be_float16():
    x = _random_unit(50, 8, 10)
    with pytest.raises(InvalidParameter, match="scan"):
        subsampled_topk(x, x[:2], 3, 0.5, np.random.default_rng(0), method="sparse", scan=x)
    with pytest.raises(InvalidParameter, match="scan"):
        subsampled_topk(x, x[:2], 3, 0.5, np.random.default_rng(0), method="sparse", scan=x[:10].astype(np.float16))
