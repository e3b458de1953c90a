"""Sharded private retrieval (in process): the shard files, and the same mechanism as one node.

Equivalence is checked two ways: with q = 1 (no randomness) the sharded sums equal ExactTopK's
bit for bit, ties included; with q < 1 the per-record selection frequencies of the two backends
are compared with a chi-square homogeneity test (as test_search compares its two paths), in the
ordinary and the padded (qN < k) regime. Basis vectors make the selected set readable from the
sums: with rows e_i, Σ_j r_j is the indicator vector of the selected records.
"""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from privdiff.errors import IndexCorrupt, InvalidParameter, LedgerIndexMismatch
from privdiff.retrieval.private import (
    DPRetriever,
    ExactTopK,
    ShardedIndex,
    ShardedTopK,
    build_index,
    read_manifest,
    shard_index,
)
from privdiff.retrieval.private.sharded import merge_candidates, shard_candidates

from ._helpers import unit_rows

ALPHA = 1e-3


def _basis_index(tmp_path, n, name="basis"):
    return build_index(tmp_path / name, np.eye(n), space_id="basis/v1", source="basis")


def _query(weights):
    w = np.asarray(weights, dtype=np.float64)
    return (w / np.linalg.norm(w)).astype(np.float32)[None, :]


def _selected(sums):
    """Rows e_i: the sum is the 0/1 indicator of the selected records."""
    ind = np.rint(sums).astype(np.int64)
    assert np.allclose(sums, ind) and set(np.unique(ind)) <= {0, 1}
    return ind.astype(bool)


# ------------------------------------------------------------------------------- files on disk


def test_shard_files_are_private_memmappable_and_keep_the_parent_fingerprint(tmp_path):
    idx = build_index(tmp_path / "idx", unit_rows(103, 8, seed=1), space_id="s/v1", source="src")
    sh = shard_index(idx, tmp_path / "sh", 4)
    assert isinstance(sh, ShardedIndex) and sh.num_shards == 4 and sh.count == 103
    assert sh.fingerprint == idx.fingerprint and read_manifest(tmp_path / "sh").fingerprint == idx.fingerprint
    record = json.loads((tmp_path / "sh" / "sharded.json").read_text())
    assert [s["count"] for s in record["shards"]] == [26, 26, 26, 25]
    assert [s["start"] for s in record["shards"]] == [0, 26, 52, 78]
    assert len({s["sha256"] for s in record["shards"]}) == 4
    for s in record["shards"]:
        path = tmp_path / "sh" / s["file"]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        rows = np.load(path, mmap_mode="r")
        assert isinstance(rows, np.memmap) and rows.shape == (s["count"], 8)
    # Together the shards are the parent's rows, in order.
    from privdiff.retrieval.private.index import unsafe_nonprivate_rows

    stacked = np.concatenate([np.load(tmp_path / "sh" / s["file"]) for s in record["shards"]])
    assert np.array_equal(stacked, unsafe_nonprivate_rows(idx, reason="test compares the shard contents"))


def test_sharding_refuses_bad_arguments_before_writing(tmp_path):
    idx = build_index(tmp_path / "idx", unit_rows(10, 4), space_id="s/v1")
    for shards in (0, 11, 2.5):
        with pytest.raises(InvalidParameter, match="shards"):
            shard_index(idx, tmp_path / "sh", shards)
    with pytest.raises(InvalidParameter, match="dtype"):
        shard_index(idx, tmp_path / "sh", 2, dtype="int8")
    assert not (tmp_path / "sh").exists()
    shard_index(idx, tmp_path / "sh", 2)
    with pytest.raises(InvalidParameter, match="does not exist yet"):
        shard_index(idx, tmp_path / "sh", 3)
    assert ShardedIndex.open(tmp_path / "sh").num_shards == 2
    assert shard_index(idx, tmp_path / "sh", 3, overwrite=True).num_shards == 3


def test_altered_or_truncated_shard_is_refused(tmp_path):
    idx = build_index(tmp_path / "idx", unit_rows(40, 4), space_id="s/v1")
    shard_index(idx, tmp_path / "sh", 2)
    path = tmp_path / "sh" / "shard-0001.npy"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(IndexCorrupt, match="shard 1 .*sha256"):
        ShardedTopK(tmp_path / "sh")
    path.write_bytes(bytes(data[:-4]))
    with pytest.raises(IndexCorrupt, match="bytes on disk"):
        ShardedTopK(tmp_path / "sh", verify="size")
    record = json.loads((tmp_path / "sh" / "sharded.json").read_text())
    record["shards"][1]["start"] += 1
    (tmp_path / "sh" / "sharded.json").write_text(json.dumps(record))
    with pytest.raises(IndexCorrupt, match="contiguous"):
        ShardedIndex.open(tmp_path / "sh")


# ----------------------------------------------------------------- exact equivalence at q = 1


@pytest.mark.parametrize("shards", [1, 2, 3, 7])
def test_full_sample_rate_gives_exactly_the_single_node_sums_with_ties(tmp_path, shards):
    # Integer-valued rows: many exact score ties, which must go to the smaller global id.
    rng = np.random.default_rng(5)
    x = rng.integers(-2, 3, size=(60, 4)).astype(np.float64)
    x[np.linalg.norm(x, axis=1) == 0] = 1.0
    idx = build_index(tmp_path / "idx", x, space_id="s/v1")
    sh = shard_index(idx, tmp_path / "sh", shards)
    q = rng.standard_normal((9, 4))
    q[0] = [1, 0, 0, 0]  # many rows tie on this query
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    for k in (1, 5, 17, 60, 80):  # 80 > N: every record, zero-padded
        exact = ExactTopK(idx, method="sparse").topk_sums(q, k, 1.0, np.random.default_rng(0))
        sharded = ShardedTopK(sh).topk_sums(q, k, 1.0, np.random.default_rng(0))
        assert np.array_equal(exact[0], sharded[0]) and np.array_equal(exact[1], sharded[1])


def test_ties_across_shards_go_to_the_smaller_global_id(tmp_path):
    idx = _basis_index(tmp_path, 12)
    sh = shard_index(idx, tmp_path / "sh", 4)  # 3 records per shard
    # Records 2, 5, 8 and 11 (one per shard) tie for the top score; k = 2 keeps 2 and 5.
    w = np.full(12, 0.1)
    w[[2, 5, 8, 11]] = 1.0
    sums, counts = ShardedTopK(sh).topk_sums(_query(w), 2, 1.0, np.random.default_rng(0))
    assert counts.tolist() == [2] and np.flatnonzero(_selected(sums)[0]).tolist() == [2, 5]


def test_merge_of_shard_candidates_is_the_global_topk_of_their_union():
    rng = np.random.default_rng(3)
    rows = rng.integers(-3, 4, size=(50, 3)).astype(np.float32)
    q = rng.standard_normal((6, 3)).astype(np.float32)
    parts = [shard_candidates(rows[a:b], a, q, 4, 1.0, rng) for a, b in ((0, 17), (17, 30), (30, 50))]
    sums, counts = merge_candidates(parts, 4)
    assert counts.tolist() == [4] * 6
    for b in range(6):
        scores = rows @ q[b]
        order = np.lexsort((np.arange(50), -scores))[:4]  # (score desc, id asc)
        ref = np.asarray(rows[np.sort(order)], dtype=np.float64)
        ref /= np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1.0)
        assert np.allclose(sums[b], ref.sum(axis=0))


# ---------------------------------------------------------- distribution equivalence at q < 1


def _selection_counts(backend, w, k, q, runs, seed):
    queries = np.repeat(_query(w), runs, axis=0)
    sums, counts = backend.topk_sums(queries, k, q, np.random.default_rng(seed))
    sel = _selected(sums)
    assert np.array_equal(sel.sum(axis=1), counts)
    return sel.sum(axis=0), counts


@pytest.mark.parametrize(
    "k, q",
    [(4, 0.3), (8, 0.1)],  # ordinary regime (qN = 7.2 > k) and padded regime (qN = 2.4 < k)
    ids=["ordinary", "padded"],
)
def test_sharded_selection_frequencies_match_single_node(tmp_path, k, q):
    n, runs = 24, 4000
    idx = _basis_index(tmp_path, n)
    sh = shard_index(idx, tmp_path / "sh", 5)
    # Scores with ties (records 3, 9, 15, 21 tie, and so on) spread over the shards.
    w = np.array([(i % 6) + 1.0 for i in range(n)])
    exact, exact_counts = _selection_counts(ExactTopK(idx), w, k, q, runs, seed=1)
    sharded, sharded_counts = _selection_counts(ShardedTopK(sh), w, k, q, runs, seed=2)
    table = np.array([exact, sharded])
    table = table[:, table.sum(axis=0) >= 10]
    assert table.shape[1] >= 6
    assert stats.chi2_contingency(table).pvalue > ALPHA
    # The number found per query (min(k, |S|)) has the same distribution too.
    bins = np.arange(k + 2)
    ct = np.array([np.histogram(exact_counts, bins)[0], np.histogram(sharded_counts, bins)[0]])
    ct = ct[:, ct.sum(axis=0) >= 10]
    assert stats.chi2_contingency(ct).pvalue > ALPHA
    if q * n < k:
        assert (sharded_counts < k).mean() > 0.5  # the padded regime really is padded


def test_the_frequency_check_detects_a_wrong_tie_break(tmp_path):
    """Power: the same check fails for a merge that breaks ties towards the larger id."""
    n, runs, k, q = 24, 4000, 4, 0.3
    idx = _basis_index(tmp_path, n)
    flipped = _basis_index(tmp_path, n, name="flipped")  # same scores, ids reversed
    w = np.array([(i % 6) + 1.0 for i in range(n)])
    exact, _ = _selection_counts(ExactTopK(idx), w, k, q, runs, seed=1)
    wrong, _ = _selection_counts(ExactTopK(flipped), w[::-1], k, q, runs, seed=2)
    table = np.array([exact, wrong[::-1]])
    table = table[:, table.sum(axis=0) >= 10]
    assert stats.chi2_contingency(table).pvalue < 1e-6


# ------------------------------------------- a Poisson draw per shard is one Poisson draw of all


def test_per_shard_poisson_draws_are_one_poisson_draw_of_the_whole(tmp_path):
    """With k >= N the top-k is the subsample itself: check it is i.i.d. Bernoulli(q) over all N."""
    n, shards, q, runs = 24, 4, 0.3, 6000
    idx = _basis_index(tmp_path, n)
    sh = shard_index(idx, tmp_path / "sh", shards)  # equal shards: a shared stream would repeat
    queries = np.repeat(_query(np.ones(n)), runs, axis=0)
    sums, _ = ShardedTopK(sh).topk_sums(queries, n, q, np.random.default_rng(7))
    mat = _selected(sums)
    # (1) each record with probability q (Bonferroni over records);
    lo, hi = stats.binom.ppf(ALPHA / (2 * n), runs, q), stats.binom.isf(ALPHA / (2 * n), runs, q)
    assert ((mat.sum(axis=0) >= lo) & (mat.sum(axis=0) <= hi)).all()
    # (2) |S| ~ Binomial(N, q) (chi-square, tails pooled);
    sizes = mat.sum(axis=1)
    a, b = int(stats.binom.ppf(0.001, n, q)), int(stats.binom.isf(0.001, n, q))
    pmf = stats.binom.pmf(np.arange(n + 1), n, q)
    obs = [np.sum(sizes <= a)] + [np.sum(sizes == s) for s in range(a + 1, b)] + [np.sum(sizes >= b)]
    exp = np.array([pmf[: a + 1].sum()] + [pmf[s] for s in range(a + 1, b)] + [pmf[b:].sum()]) * runs
    assert stats.chisquare(obs, exp).pvalue > ALPHA
    # (3) records in different shards are included independently: co-inclusion q², not q.
    per = n // shards
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if i // per != j // per]
    lo, hi = (
        stats.binom.ppf(ALPHA / (2 * len(pairs)), runs, q * q),
        stats.binom.isf(ALPHA / (2 * len(pairs)), runs, q * q),
    )
    co = mat.T.astype(np.int64) @ mat.astype(np.int64)
    assert all(lo <= co[i, j] <= hi for i, j in pairs)


def test_shards_draw_from_independent_children_of_the_mechanism_generator(tmp_path):
    """Same shard content, same seed: the shards' draws still differ (spawned streams)."""
    n = 40
    idx = build_index(tmp_path / "idx", np.tile(np.eye(4), (n // 4, 1)) + 0.0, space_id="s/v1")
    sh = shard_index(idx, tmp_path / "sh", 2)
    queries = np.repeat(_query([1.0, 0.5, 0.25, 0.125]), 200, axis=0)
    a = ShardedTopK(sh).topk_sums(queries, 40, 0.5, np.random.default_rng(3))
    b = ShardedTopK(sh).topk_sums(queries, 40, 0.5, np.random.default_rng(3))
    assert np.array_equal(a[0], b[0])  # reproducible from the generator (tests may seed it)
    c = ShardedTopK(sh).topk_sums(queries, 40, 0.5, np.random.default_rng(4))
    assert not np.array_equal(a[0], c[0])


# ---------------------------------------------------------------------- the mechanism on shards


def test_dp_retriever_on_shards_uses_the_parent_indexs_ledger(tmp_path):
    from privdiff.accounting import Ledger

    idx = build_index(tmp_path / "idx", unit_rows(50, 8), space_id="s/v1")
    other = build_index(tmp_path / "other", unit_rows(50, 8, seed=9), space_id="s/v1")
    sh = shard_index(idx, tmp_path / "sh", 3)
    q = unit_rows(3, 8, seed=2)
    with Ledger.create(tmp_path / "l.db", epsilon=50.0, delta=1e-5, index_fingerprint=idx.fingerprint) as book:
        release = DPRetriever(ShardedTopK(sh), k=4, sigma=0.5, sample_rate=0.5, ledger=book).query(q)
        assert release.vectors.shape == (3, 8) and book.status().queries == 3
    with Ledger.create(tmp_path / "o.db", epsilon=50.0, delta=1e-5, index_fingerprint=other.fingerprint) as book:
        with pytest.raises(LedgerIndexMismatch):
            DPRetriever(ShardedTopK(sh), k=4, sigma=0.5, sample_rate=0.5, ledger=book)


def test_float16_shards_select_exactly_over_their_rows_and_keep_the_norm_bound(tmp_path):
    n = 30
    idx = _basis_index(tmp_path, n)
    sh = shard_index(idx, tmp_path / "sh", 3, dtype="float16")
    assert sh.dtype == "float16" and np.load(tmp_path / "sh" / "shard-0000.npy").dtype == np.float16
    w = np.array([(i % 5) + 1.0 for i in range(n)])
    sums, counts = ShardedTopK(sh).topk_sums(_query(w), 6, 1.0, np.random.default_rng(0))
    exact, _ = ExactTopK(idx).topk_sums(_query(w), 6, 1.0, np.random.default_rng(0))
    assert np.array_equal(sums, exact) and counts.tolist() == [6]
    rows = unit_rows(200, 16, seed=4)
    idx2 = build_index(tmp_path / "idx2", rows, space_id="s/v1")
    sh2 = shard_index(idx2, tmp_path / "sh2", 4, dtype="float16")
    s, c = ShardedTopK(sh2).topk_sums(unit_rows(20, 16, seed=5), 5, 0.5, np.random.default_rng(0))
    assert (np.linalg.norm(s, axis=1) <= c + 1e-9).all()


def test_the_default_import_path_does_not_import_ray():
    code = (
        "import sys, privdiff.cli, privdiff.rdm.pipeline, privdiff.retrieval;"
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)})


# ---------------------------------------------------------------------------------------- CLI


def test_cli_index_shard_then_info_and_budget_binding(tmp_path, capsys):
    from privdiff.accounting import Ledger
    from privdiff.cli import main

    idx = build_index(tmp_path / "idx", unit_rows(30, 4), space_id="s/v1", source="src")
    out = tmp_path / "sh"
    assert main(["index", "shard", str(idx.path), "--shards", "3", "--out", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["fingerprint"] == idx.short_fingerprint and shown["shards"] == 3 and "sha256" not in shown
    assert main(["index", "info", str(out), "--verify", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["verified"] == "full" and info["shard_rows"] == [10, 10, 10]
    assert (
        main(["budget", "init", str(tmp_path / "l.db"), "--epsilon", "5", "--delta", "1e-5", "--index", str(out)]) == 0
    )
    with Ledger.open(tmp_path / "l.db") as book:
        assert book.index_fingerprint == idx.fingerprint
    # Refused before writing: too many shards, an existing output, a bad dtype.
    assert main(["index", "shard", str(idx.path), "--shards", "31", "--out", str(tmp_path / "x")]) == 2
    assert main(["index", "shard", str(idx.path), "--shards", "2", "--out", str(out)]) == 2
    assert main(["index", "shard", str(idx.path), "--shards", "2", "--out", str(tmp_path / "y"), "--dtype", "i8"]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_ray_backend_without_ray_installed_is_a_typed_missing_dependency(tmp_path, monkeypatch):
    from privdiff.errors import MissingDependency
    from privdiff.retrieval.private import RayShardedTopK

    idx = build_index(tmp_path / "idx", unit_rows(10, 4), space_id="s/v1")
    sh = shard_index(idx, tmp_path / "sh", 2)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(MissingDependency, match=r"privdiff\[ray\]"):
        RayShardedTopK(sh)
