"""The int8 scan copy with exact float32 re-rank (issue 14, item 2).

The int8 path must return exactly the float32 path's ids on the same subsample, including for
rows that differ only below int8 resolution, exact duplicates and equal scores; the error bound
must cover every observed error, and without it (β = 0) the adversarial case must fail.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import privdiff.retrieval.private.search as search
from privdiff.errors import IndexCorrupt, InvalidParameter, MissingDependency, PrivdiffWarning
from privdiff.retrieval.private import ExactTopK, add_scan_copy, build_index, load_index
from privdiff.retrieval.private.index import (
    INT8_CODES_FILE,
    INT8_MANIFEST,
    INT8_SCALES_FILE,
    MANIFEST_FILE,
    EmbeddingIndex,
    _int8_copy_of,
    int8_scan_for_mechanism,
)
from privdiff.retrieval.private.int8scan import int8_scan_slack, quantise_rows, row_stats, score_pairs_int8

pytest.importorskip("numba")  # the `fast` extra, which `.[test]` installs: CI always runs these

SPACE = "test/int8-v1"


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _random_unit(n, d, seed):
    return _unit(np.random.default_rng(seed).standard_normal((n, d)))


def _near_ties(n_base=40, copies=12, d=48, seed=0, eps=1e-4):
    """Clusters of rows that differ only below int8 resolution, plus exact duplicates.

    Each base row gets ``copies`` variants e + eps·z (renormalised; eps = 1e-4 is far below the
    int8 step s_e ≈ 2e-3 at d = 48), so their codes mostly coincide and the int8 scores cannot
    order them, while their float32 scores differ. Every third variant is an exact duplicate of
    the base row (a real tie, resolved by the smaller id). Queries are the base rows themselves,
    so the clusters are the top-k.
    """
    rng = np.random.default_rng(seed)
    base = _random_unit(n_base, d, seed)
    rows = []
    for e in base.astype(np.float64):
        for c in range(copies):
            v = e.copy() if c % 3 == 0 else e + eps * rng.standard_normal(d)
            rows.append(v / np.linalg.norm(v))
    x = np.asarray(rows, dtype=np.float32)
    perm = rng.permutation(x.shape[0])  # clusters spread over the index, ids interleaved
    return np.ascontiguousarray(x[perm]), base


def _equal_scores(n=500, d=16, seed=11):
    """Rows with few distinct values (±1, 0 normalised): many exactly equal float32 scores."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-1, 2, size=(n, d)).astype(np.float64)
    x[np.abs(x).sum(axis=1) == 0, 0] = 1.0
    q = rng.integers(-1, 2, size=(9, d)).astype(np.float64)
    q[np.abs(q).sum(axis=1) == 0, 0] = 1.0
    return _unit(x), _unit(q)


@pytest.mark.parametrize(("k", "q"), [(1, 0.3), (5, 0.05), (20, 0.5), (7, 1.0)])
def test_int8_scan_returns_the_float32_ids_on_many_subsamples(k, q):
    x = _random_unit(3000, 64, 1)
    copy = _int8_copy_of(x)
    queries = _random_unit(23, 64, 2)
    for seed in range(6):
        want = subsampled(x, queries, k, q, seed)
        got = subsampled(x, queries, k, q, seed, scan=copy)
        np.testing.assert_array_equal(got, want)


def subsampled(x, queries, k, q, seed, scan=None):
    return search.subsampled_topk(x, queries, k, q, np.random.default_rng(seed), method="sparse", scan=scan)


@pytest.mark.parametrize("eps", [1e-4, 1e-6])
def test_int8_scan_is_exact_on_adversarial_near_ties(eps):
    x, base = _near_ties(eps=eps)
    copy = _int8_copy_of(x)
    # The construction really is adversarial: many distinct float32 rows share one int8 code row.
    assert np.unique(np.asarray(copy.codes), axis=0).shape[0] < np.unique(x, axis=0).shape[0]
    for k in (3, 5, 12, 30):
        for seed in range(8):
            q = 0.6 if seed % 2 else 1.0
            np.testing.assert_array_equal(subsampled(x, base, k, q, seed, copy), subsampled(x, base, k, q, seed))


def test_int8_scan_is_exact_on_equal_scores_and_in_the_padded_regime():
    x, queries = _equal_scores()
    copy = _int8_copy_of(x)
    for k, q in [(4, 1.0), (10, 0.3), (60, 0.05)]:
        for seed in range(6):
            want = subsampled(x, queries, k, q, seed)
            np.testing.assert_array_equal(subsampled(x, queries, k, q, seed, copy), want)
    assert (subsampled(x, queries, 60, 0.05, 0) == -1).any()  # |S| < k really happened


def test_the_near_tie_test_detects_an_int8_scan_without_the_error_bound(monkeypatch):
    """Sensitivity check: with β = 0 the int8 scan drops winners, and the comparison sees it."""
    x, base = _near_ties()
    copy = _int8_copy_of(x)
    real = search.int8_scan_slack

    def no_slack(queries, c):
        codes, scales, slack = real(queries, c)
        return codes, scales, np.zeros_like(slack)

    monkeypatch.setattr(search, "int8_scan_slack", no_slack)
    differs = sum(int((subsampled(x, base, 5, 1.0, s, copy) != subsampled(x, base, 5, 1.0, s)).any()) for s in range(8))
    assert differs > 0


def test_error_bound_covers_every_observed_int8_error():
    """|fl32(x·e) − a| ≤ β = slack/2 on random rows and on rows built to maximise the error."""
    d = 512
    x = _random_unit(3000, d, 3)
    rng = np.random.default_rng(4)
    # Adversarial for the bound: coordinates half-way between int8 steps (maximal rounding error),
    # one dominant coordinate (a huge scale, so every other coordinate is coarsely quantised),
    # and tiny coordinates that all round to zero.
    steps = (rng.integers(0, 120, size=(8, d)) + 0.5) * rng.choice([-1, 1], size=(8, d))
    steps[:, 0] = 127.0
    spike = np.full((4, d), 1e-3)
    spike[:, 0] = 1.0
    spike[1:, 1::2] *= -1
    x = np.concatenate([x, _unit(steps), _unit(spike)])
    queries = np.concatenate([_random_unit(12, d, 5), x[-12:], np.sign(x[-12:]) / np.sqrt(d)]).astype(np.float32)
    copy = _int8_copy_of(x)
    qcodes, qscales, slack = int8_scan_slack(queries, copy)
    rows = np.repeat(np.arange(x.shape[0], dtype=np.int64), queries.shape[0])
    qid = np.tile(np.arange(queries.shape[0], dtype=np.int64), x.shape[0])
    exact = search._score_pairs(x, None, queries, rows, qid, None)
    approx = score_pairs_int8(copy, qcodes, qscales, rows, qid)
    err = np.abs(exact.astype(np.float64) - approx.astype(np.float64))
    beta = slack[qid] / 2
    assert (err <= beta).all()
    assert err.max() > 1e-3  # the quantisation error is real, the bound is not vacuous
    assert beta.max() < 0.05  # and tight enough to prune (scores of random unit rows spread ~1/√d)


def test_quantisation_and_its_measured_residuals():
    x = _random_unit(200, 32, 6)
    codes, scales = quantise_rows(x)
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    assert (np.abs(codes).max(axis=1) == 127).all()  # the largest coordinate uses the full range
    st = row_stats(x, codes, scales)
    np.testing.assert_array_less(st[:, 0], scales * 0.5 * (1 + 1e-6))  # |δ_i| ≤ s/2
    zero_codes, zero_scales = quantise_rows(np.zeros((1, 4)))
    assert (zero_codes == 0).all() and zero_scales[0] == 1.0  # no division by zero


def test_int8_copy_is_built_verified_and_used_by_exact_topk(tmp_path):
    raw = np.random.default_rng(7).standard_normal((500, 24))
    plain = build_index(tmp_path / "plain", raw, space_id=SPACE)
    idx = build_index(tmp_path / "idx", raw, space_id=SPACE, scan_copy="int8")
    for name in (INT8_CODES_FILE, INT8_SCALES_FILE, INT8_MANIFEST):
        assert (tmp_path / "idx" / name).is_file()
    assert oct(os.stat(tmp_path / "idx" / INT8_CODES_FILE).st_mode & 0o777) == "0o600"  # private rows
    idx = load_index(tmp_path / "idx")  # verify="full": codes, scales and maxima recomputed
    assert idx.scan_dtypes == ("int8",) and idx.scan_dtype == "int8"
    # The scan copy lives outside the manifest: same rows → same vectors hash as without it.
    assert idx.manifest.sha256 == plain.manifest.sha256
    mem = EmbeddingIndex.from_embeddings(raw, space_id=SPACE, scan_copy="int8")
    disk = int8_scan_for_mechanism(idx)
    np.testing.assert_array_equal(np.asarray(disk.codes), int8_scan_for_mechanism(mem).codes)
    assert disk.max_l1 == int8_scan_for_mechanism(mem).max_l1
    q = _random_unit(11, 24, 8)
    a = ExactTopK(idx).topk_sums(q, 7, 0.3, np.random.default_rng(1))
    b = ExactTopK(idx, scan="int8").topk_sums(q, 7, 0.3, np.random.default_rng(1))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert "int8" in repr(ExactTopK(idx, scan="int8"))


def test_add_int8_copy_keeps_the_fingerprint_and_coexists_with_float16(tmp_path):
    idx = build_index(tmp_path / "idx", np.random.default_rng(9).standard_normal((300, 8)), space_id=SPACE)
    before = (tmp_path / "idx" / MANIFEST_FILE).read_bytes()
    with pytest.raises(InvalidParameter, match="scan copy"):
        ExactTopK(idx, scan="int8")  # none yet: refused, with the hint
    added = add_scan_copy(tmp_path / "idx", dtype="int8")
    assert added.fingerprint == idx.fingerprint
    assert (tmp_path / "idx" / MANIFEST_FILE).read_bytes() == before
    with pytest.raises(InvalidParameter):
        add_scan_copy(tmp_path / "idx", dtype="int8")  # already there
    add_scan_copy(tmp_path / "idx", dtype="int8", overwrite=True)
    add_scan_copy(tmp_path / "idx")  # float16 beside it
    both = load_index(tmp_path / "idx")
    assert both.scan_dtypes == ("float16", "int8") and both.fingerprint == idx.fingerprint
    assert [p.name for p in (tmp_path / "idx").iterdir() if ".tmp-" in p.name] == []
    with pytest.raises(InvalidParameter, match="dtype"):
        add_scan_copy(tmp_path / "idx", dtype="int4")
    with pytest.raises(InvalidParameter, match="scan_copy"):
        build_index(tmp_path / "bad", np.ones((3, 4)), space_id=SPACE, scan_copy="bfloat16")


def test_corrupt_foreign_or_understated_int8_copy_is_refused(tmp_path):
    raw = np.random.default_rng(10).standard_normal((200, 8))
    build_index(tmp_path / "a", raw, space_id=SPACE, scan_copy="int8")
    build_index(tmp_path / "b", raw[::-1].copy(), space_id=SPACE, scan_copy="int8")
    # A copy derived from another index.
    (tmp_path / "a" / INT8_MANIFEST).write_bytes((tmp_path / "b" / INT8_MANIFEST).read_bytes())
    with pytest.raises(IndexCorrupt, match="another index"):
        load_index(tmp_path / "a", verify="size")
    build_index(tmp_path / "c", raw, space_id=SPACE, scan_copy="int8")
    meta = json.loads((tmp_path / "c" / INT8_MANIFEST).read_text())
    # Maxima that understate the rows' would make the bound, and the re-rank, wrong: refused on a
    # full load even with a consistent file (sha256 is of the arrays, not of the maxima).
    (tmp_path / "c" / INT8_MANIFEST).write_text(json.dumps({**meta, "max_l1": meta["max_l1"] / 2}))
    with pytest.raises(IndexCorrupt, match="understate"):
        load_index(tmp_path / "c")
    (tmp_path / "c" / INT8_MANIFEST).write_text(json.dumps({**meta, "max_l2": -1.0}))
    with pytest.raises(IndexCorrupt, match="maxima"):
        load_index(tmp_path / "c", verify="size")
    (tmp_path / "c" / INT8_MANIFEST).write_text(json.dumps(meta))
    load_index(tmp_path / "c")
    # A flipped code byte: the sha256 catches it.
    p = tmp_path / "c" / INT8_CODES_FILE
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(IndexCorrupt, match="sha256"):
        load_index(tmp_path / "c")


def test_int8_copy_that_is_not_the_quantisation_of_the_rows_is_refused(tmp_path):
    from privdiff.retrieval.private.index import _sha256_of_file

    raw = np.random.default_rng(12).standard_normal((100, 8))
    build_index(tmp_path / "c", raw, space_id=SPACE, scan_copy="int8")
    p = tmp_path / "c" / INT8_CODES_FILE
    codes = np.load(p)
    codes[5, 0] = codes[5, 0] // 2  # consistent file, recorded hash updated: only re-quantising sees it
    np.save(p, codes)
    meta = json.loads((tmp_path / "c" / INT8_MANIFEST).read_text())
    (tmp_path / "c" / INT8_MANIFEST).write_text(json.dumps({**meta, "sha256": _sha256_of_file(p)}))
    with pytest.raises(IndexCorrupt, match="int8 quantisation"):
        load_index(tmp_path / "c")


def test_without_numba_the_int8_scan_is_refused_before_any_search(tmp_path, monkeypatch):
    idx = EmbeddingIndex.from_embeddings(
        np.random.default_rng(13).standard_normal((50, 8)), space_id=SPACE, scan_copy="int8"
    )
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` now raises ImportError
    with pytest.raises(MissingDependency, match="numba"):
        ExactTopK(idx, scan="int8")
    ExactTopK(idx, scan="float32")  # the float32 scan needs nothing more
    # The default picks int8 only where it can run it: here it warns once and scans float32.
    with pytest.warns(PrivdiffWarning, match="numba"):
        backend = ExactTopK(idx)
    assert "int8" not in repr(backend)


def test_the_default_scan_is_int8_where_the_index_has_the_copy():
    raw = np.random.default_rng(16).standard_normal((300, 16))
    with_copy = EmbeddingIndex.from_embeddings(raw, space_id=SPACE, scan_copy="int8")
    assert "scan='int8'" in repr(ExactTopK(with_copy))
    plain = EmbeddingIndex.from_embeddings(raw, space_id=SPACE, scan_copy="float16")
    assert repr(ExactTopK(plain)) == "ExactTopK(count=300)"  # float32, as before
    q = _random_unit(5, 16, 17)
    a = ExactTopK(plain).topk_sums(q, 6, 0.4, np.random.default_rng(3))
    b = ExactTopK(with_copy).topk_sums(q, 6, 0.4, np.random.default_rng(3))
    np.testing.assert_array_equal(a[0], b[0])


def test_default_import_and_float32_search_do_not_import_numba():
    code = (
        "import sys, numpy as np\n"
        "import privdiff, privdiff.retrieval, privdiff.retrieval.private as P, privdiff.cli\n"
        "q = np.eye(8, dtype=np.float32)[:2]\n"
        "idx = P.EmbeddingIndex.from_embeddings(np.eye(8) + 0.1, space_id='t/v1', scan_copy='float16')\n"
        "P.ExactTopK(idx).topk_sums(q, 2, 0.5, np.random.default_rng(0))\n"
        "idx8 = P.EmbeddingIndex.from_embeddings(np.eye(8) + 0.1, space_id='t/v1', scan_copy='int8')\n"
        "P.ExactTopK(idx8, scan='float32').topk_sums(q, 2, 0.5, np.random.default_rng(0))\n"
        "assert 'numba' not in sys.modules, 'numba imported on the default path'\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    )


def test_fused_filter_keeps_exactly_what_the_survivors_would_keep():
    from privdiff.retrieval.private.int8scan import query_levels, score_pairs_int8_kept

    x = _random_unit(400, 32, 14)
    queries = _random_unit(6, 32, 15)
    copy = _int8_copy_of(x)
    qcodes, qscales, _ = int8_scan_slack(queries, copy)
    assert qcodes.dtype == np.int16 and np.abs(qcodes).max() == query_levels(32) == 32767
    rows = np.repeat(np.arange(400, dtype=np.int64), 6)
    qid = np.tile(np.arange(6, dtype=np.int64), 400)
    full = score_pairs_int8(copy, qcodes, qscales, rows, qid)
    thr = np.array([-np.inf, 0.0, 0.1, 0.2, np.inf, -0.1], dtype=np.float32)
    thr[2] = full[2]  # a pair exactly at its threshold is kept (the survivors keep `not (a < thr)`)
    keep = ~(full < thr[qid])
    q_k, r_k, s_k = score_pairs_int8_kept(copy, qcodes, qscales, rows, qid, thr)
    np.testing.assert_array_equal(q_k, qid[keep])
    np.testing.assert_array_equal(r_k, rows[keep])
    np.testing.assert_array_equal(s_k, full[keep])
    assert 0 < keep.sum() < keep.size
    assert query_levels(512) == 32767 and query_levels(4096) == 4128
    assert all(127 * query_levels(d) * d < 2**31 for d in (1, 512, 516, 517, 4096, 133_000))


def test_int8_scan_refuses_non_finite_queries():
    x = _random_unit(50, 8, 18)
    q = _random_unit(2, 8, 19)
    q[1, 3] = np.nan
    with pytest.raises(InvalidParameter, match="queries"):
        subsampled(x, q, 3, 0.5, 0, _int8_copy_of(x))


def test_a_search_after_the_backend_is_made_compiles_nothing(tmp_path):
    """ExactTopK compiles the kernel for every argument type at construction (before any charge).

    numba compiles lazily per argument type (a read-only memory-mapped index is its own type), so
    a search on an index loaded from disk must add no signature after the backend exists. A fresh
    process: in this one other tests may have compiled every variant already.
    """
    build_index(tmp_path / "idx", np.random.default_rng(3).standard_normal((400, 16)), space_id=SPACE, scan_copy="int8")
    code = (
        "import sys, numpy as np\n"
        "import privdiff.retrieval.private as P, privdiff.retrieval.private.int8scan as I\n"
        f"idx = P.load_index({str(tmp_path / 'idx')!r})\n"
        "be = P.ExactTopK(idx)\n"
        "assert repr(be).endswith(\"scan='int8')\"), repr(be)\n"
        "before = [len(f.signatures) for f in I._KERNEL]\n"
        "q = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)\n"
        "be.topk_sums(q / np.linalg.norm(q, axis=1, keepdims=True), 4, 0.1, np.random.default_rng(1))\n"
        "after = [len(f.signatures) for f in I._KERNEL]\n"
        "assert min(before) > 0 and before == after, (before, after)\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    )
