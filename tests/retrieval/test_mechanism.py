"""DPRetriever: charge-before-compute, padding, noise, OS randomness, input refusal, no leaks."""

import dataclasses

import numpy as np
import pytest
from scipy import stats

from privdiff.errors import EncoderMismatch, InvalidParameter, PrivacyBudgetExceeded
from privdiff.retrieval import DPRetriever, EmbeddingIndex, ExactTopK, PrivateRelease
from privdiff.retrieval.private import GaussianNoise, ZeroPadding
from privdiff.retrieval.private.backends import padded_topk_sums

from ._helpers import RecordingLedger, unit_rows

SPACE = "test-space/v1"


def _index(n=40, d=8, seed=0):
    return EmbeddingIndex.from_embeddings(unit_rows(n, d, seed), space_id=SPACE)


def _retriever(ledger, n=40, d=8, k=5, sigma=0.1, q=0.5, **kw):
    return DPRetriever(_index(n, d), k=k, sigma=sigma, sample_rate=q, ledger=ledger, **kw)


def padded_topk_mean(vectors, ids, k):
    sums, counts = padded_topk_sums(vectors, ids)
    assert counts.tolist() == (ids >= 0).sum(axis=1).tolist()
    return sums / k


def _pre_noise_aggregate(rows, queries, k, q, rng):
    """What the mechanism adds noise to: the default backend's padded top-k sum over k."""
    sums, counts = ExactTopK(EmbeddingIndex.from_embeddings(rows, space_id=SPACE)).topk_sums(queries, k, q, rng)
    assert ((counts >= 0) & (counts <= k)).all()
    return ZeroPadding().complete(sums, counts, k, None) / k


# --- the aggregate ------------------------------------------------------------------------


def test_padded_mean_divides_found_neighbours_by_k_not_by_found():
    v = unit_rows(6, 4, seed=3)
    ids = np.array([[0, 2, -1, -1, -1], [1, 3, 4, 5, 0]])
    agg = padded_topk_mean(v, ids, k=5)
    np.testing.assert_allclose(agg[0], (v[0] + v[2]) / 5, rtol=1e-6)  # = mean(found) * found/k
    np.testing.assert_allclose(agg[0], v[[0, 2]].mean(axis=0) * 2 / 5, rtol=1e-6)
    np.testing.assert_allclose(agg[1], v[[1, 3, 4, 5, 0]].mean(axis=0), rtol=1e-6)


def test_padded_mean_is_the_same_when_computed_in_chunks(monkeypatch):
    import privdiff.retrieval.private.backends as backends

    v = unit_rows(50, 6, seed=8)
    ids = np.random.default_rng(0).integers(-1, 50, size=(23, 4))
    whole = padded_topk_mean(v, ids, k=4)
    monkeypatch.setattr(backends, "_AGGREGATE_CELLS", 30)  # 1 query row per chunk
    np.testing.assert_array_equal(padded_topk_mean(v, ids, k=4), whole)


def test_padded_mean_bounds_row_norms_whatever_the_storage_holds():
    v = np.array([[3.0, 4.0], [np.nan, 1.0], [0.6, 0.8]], dtype=np.float32)
    agg = padded_topk_mean(v, np.array([[0, 1, 2]]), k=3)
    np.testing.assert_allclose(agg[0], ([0.6, 0.8] + np.array([0.0, 0.0]) + [0.6, 0.8]) / 3, rtol=1e-6)


def test_pre_noise_aggregate_in_padding_regime_is_sum_of_all_records_over_k(recording_ledger):
    # q = 1 and N = 3 < k = 8: every record is found, 5 pad slots are the zero vector.
    v = unit_rows(3, 4, seed=1)
    agg = _pre_noise_aggregate(v, unit_rows(2, 4, seed=2), 8, 1.0, np.random.default_rng(0))
    np.testing.assert_allclose(agg, np.tile(v.sum(axis=0) / 8, (2, 1)), rtol=1e-6)


@pytest.mark.parametrize("q", [0.25, 0.9])  # sparse and dense search paths (threshold 0.3)
def test_subsampled_padding_regime_scales_found_records_by_found_over_k(recording_ledger, q):
    # N = 5 identical records, k = 20: the aggregate is v·|S|/k with |S| ~ Binomial(5, q).
    v = unit_rows(1, 4, seed=1)
    agg = _pre_noise_aggregate(np.repeat(v, 5, axis=0), np.repeat(v, 2000, axis=0), 20, q, np.random.default_rng(3))
    found = agg @ v[0] * 20  # = |S| for every row
    np.testing.assert_allclose(found, np.round(found), atol=1e-4)
    np.testing.assert_allclose(agg, np.round(found)[:, None] * v / 20, atol=1e-6)
    observed = np.bincount(np.round(found).astype(int), minlength=6)
    expected = stats.binom.pmf(np.arange(6), 5, q) * 2000
    keep = expected >= 5
    pooled_obs = np.append(observed[keep], observed[~keep].sum())
    pooled_exp = np.append(expected[keep], expected[~keep].sum())
    if pooled_exp[-1] < 5:  # fold a tiny tail bin into the last kept one
        pooled_obs[-2] += pooled_obs[-1]
        pooled_exp[-2] += pooled_exp[-1]
        pooled_obs, pooled_exp = pooled_obs[:-1], pooled_exp[:-1]
    assert stats.chisquare(pooled_obs, pooled_exp).pvalue > 1e-3


def test_pre_noise_aggregate_is_mean_of_exact_topk_when_q_is_one(recording_ledger):
    v = unit_rows(30, 6, seed=4)
    q = unit_rows(3, 6, seed=5)
    agg = _pre_noise_aggregate(v, q, 4, 1.0, np.random.default_rng(0))
    for b in range(3):
        top = np.argsort(-(v @ q[b]))[:4]
        np.testing.assert_allclose(agg[b], v[top].mean(axis=0), rtol=1e-5, atol=1e-7)


# --- the release ----------------------------------------------------------------------------


def test_noise_is_gaussian_with_std_sigma_around_the_aggregate(recording_ledger):
    v = unit_rows(20, 16, seed=6)
    r = DPRetriever(
        EmbeddingIndex.from_embeddings(v, space_id=SPACE),
        k=20,
        sigma=0.3,
        sample_rate=1.0,
        ledger=recording_ledger,
    )
    q = np.tile(unit_rows(1, 16, seed=7), (400, 1))
    out = r.query(q).vectors.astype(np.float64)
    resid = (out - v.sum(axis=0) / 20).ravel() / 0.3  # q = 1, k = N: aggregate is known exactly
    assert stats.kstest(resid, "norm").pvalue > 1e-6  # OS-seeded noise: keep flakes negligible
    # One independent noise draw per row (not one shared across the batch).
    assert np.abs(np.corrcoef(out[:200, 0], out[200:, 0])[0, 1]) < 0.3


def test_release_carries_only_noisy_vectors_and_public_parameters(recording_ledger):
    rel = _retriever(recording_ledger).query(unit_rows(3, 8, seed=1))
    assert isinstance(rel, PrivateRelease)
    assert {f.name for f in dataclasses.fields(rel)} == {
        "vectors",
        "sigma",
        "sample_rate",
        "k",
        "noise_multiplier",
        "delta",
        "epsilon_spent",
        "epsilon_remaining",
        "space_id",
    }
    assert rel.vectors.shape == (3, 8) and rel.vectors.dtype == np.float32
    assert not rel.vectors.flags.writeable
    assert rel.noise_multiplier == pytest.approx(0.1 * 5 / 2)
    assert (rel.epsilon_spent, rel.epsilon_remaining) == (3.0, 10**9 - 3.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rel.sigma = 0.0


def test_retriever_exposes_no_index_ids_or_rows(recording_ledger):
    r = _retriever(recording_ledger)
    public = {a for a in dir(r) if not a.startswith("_")}
    assert public == {
        "dim",
        "dp_query",
        "k",
        "noise_multiplier",
        "query",
        "sample_rate",
        "sigma",
        "space_id",
    }
    assert repr(r) == ("DPRetriever(k=5, sigma=0.1, sample_rate=0.5, noise_multiplier=0.25, space_id='test-space/v1')")
    with pytest.raises(AttributeError):
        r.extra = 1  # __slots__: no ad-hoc attributes to stash private data on


# --- charging -------------------------------------------------------------------------------


class _SpyBackend:
    """A top-k backend wrapping the real one, recording the ledger's state when search starts."""

    def __init__(self, index, ledger, fail=False):
        self.inner, self.ledger, self.fail, self.seen = ExactTopK(index), ledger, fail, []
        self.manifest, self.path = index.manifest, index.path

    def topk_sums(self, queries, k, sample_rate, rng):
        if self.fail:
            pytest.fail("computed over budget")
        self.seen.append(list(self.ledger.calls))
        return self.inner.topk_sums(queries, k, sample_rate, rng)


def test_one_ledger_call_charges_all_rows_before_anything_is_computed():
    ledger = RecordingLedger()
    spy = _SpyBackend(_index(), ledger)
    r = DPRetriever(spy, k=5, sigma=0.1, sample_rate=0.5, ledger=ledger)
    r.query(unit_rows(7, 8, seed=2), request_id="req-1")
    assert len(ledger.calls) == 1
    query, count, request_id = ledger.calls[0]
    assert (count, request_id) == (7, "req-1")
    assert (query.sigma, query.sample_rate, query.k) == (0.1, 0.5, 5)
    assert spy.seen == [ledger.calls]


def test_over_budget_batch_is_refused_whole_and_nothing_is_computed():
    ledger = RecordingLedger(max_queries=5)
    _retriever(ledger).query(unit_rows(3, 8))
    r = DPRetriever(_SpyBackend(_index(), ledger, fail=True), k=5, sigma=0.1, sample_rate=0.5, ledger=ledger)
    with pytest.raises(PrivacyBudgetExceeded):
        r.query(unit_rows(3, 8))  # 3 + 3 > 5: all-or-nothing
    assert ledger.charged == 3


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.full((2, 8), np.nan), "NaN"),
        (np.array([[np.inf] + [0.0] * 7]), "NaN/inf"),
        (unit_rows(2, 7), "dimension 7"),
        (np.zeros((1, 8)), "zero vector"),
        (unit_rows(2, 8) * 1.5, "norm 1.5"),
        (unit_rows(1, 8)[0], "2-D"),
        (np.zeros((0, 8)), "at least one"),
        (np.array([["a"] * 8]), "dtype"),
        ("not an array", "dtype"),
    ],
)
def test_bad_queries_raise_typed_error_and_charge_nothing(bad, match):
    ledger = RecordingLedger()
    with pytest.raises(InvalidParameter, match=match):
        _retriever(ledger).query(bad)
    assert ledger.calls == []


def test_slightly_off_unit_queries_are_renormalised_and_accepted(recording_ledger):
    rel = _retriever(recording_ledger).query(unit_rows(2, 8) * (1 + 5e-3))
    assert rel.vectors.shape == (2, 8)


def test_query_space_mismatch_is_refused_before_charging():
    ledger = RecordingLedger()
    with pytest.raises(EncoderMismatch):
        _retriever(ledger, query_space="other-space")
    r = _retriever(ledger, query_space=SPACE)
    with pytest.raises(EncoderMismatch):
        r.query(unit_rows(1, 8), space_id="other-space")
    with pytest.raises(InvalidParameter, match="request_id"):
        r.query(unit_rows(1, 8), request_id=42)
    assert ledger.calls == []


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"k": 0}, "k"),
        ({"k": 2.5}, "k"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"q": 0.0}, "sample_rate"),
        ({"q": 1.01}, "sample_rate"),
    ],
)
def test_invalid_mechanism_parameters_are_refused(kw, name):
    with pytest.raises(InvalidParameter, match=name):
        _retriever(RecordingLedger(), **kw)


def test_k_larger_than_the_index_is_allowed_and_padded(recording_ledger):
    rel = _retriever(recording_ledger, n=4, k=10, q=1.0).query(unit_rows(2, 8))
    assert rel.vectors.shape == (2, 8)


# --- randomness -------------------------------------------------------------------------------


def test_user_seeds_do_not_reproduce_dp_randomness_but_public_randomness_stays_seedable():
    import torch

    ledger = RecordingLedger()
    r = _retriever(ledger, q=0.5)
    q = unit_rows(4, 8, seed=9)
    outs, public = [], []
    for _ in range(2):
        np.random.seed(1234)
        torch.manual_seed(1234)
        outs.append(r.query(q).vectors.copy())
        public.append((np.random.rand(3), torch.rand(3)))
    assert not np.allclose(outs[0], outs[1])
    np.testing.assert_array_equal(public[0][0], public[1][0])
    assert torch.equal(public[0][1], public[1][1])


# --- with the real SQLite ledger -------------------------------------------------------------


def test_real_ledger_records_one_charge_of_all_rows(tmp_path):
    from privdiff.accounting import Ledger

    with Ledger.create(tmp_path / "l.sqlite", epsilon=50.0, delta=1e-5) as ledger:
        r = _retriever(ledger, k=5, sigma=0.5, q=0.1)
        rel = r.query(unit_rows(3, 8), request_id="batch-1")
        status = ledger.status()
        assert status.queries == 3
        assert rel.epsilon_spent == pytest.approx(status.epsilon_spent)
        assert rel.epsilon_remaining == pytest.approx(status.epsilon_remaining)
        assert rel.delta == 1e-5
        (row,) = ledger.history()
        assert (row.count, row.request_id, row.k, row.sigma, row.sample_rate) == (
            3,
            "batch-1",
            5,
            0.5,
            0.1,
        )


def test_real_ledger_over_budget_refuses_and_records_nothing(tmp_path):
    from privdiff.accounting import Ledger

    with Ledger.create(tmp_path / "l.sqlite", epsilon=0.5, delta=1e-5) as ledger:
        r = _retriever(ledger, k=5, sigma=0.1, q=1.0)  # z = 0.25 without subsampling: ε >> 0.5
        with pytest.raises(PrivacyBudgetExceeded):
            r.query(unit_rows(2, 8))
        assert ledger.status().queries == 0
        with pytest.raises(InvalidParameter):
            r.query(np.zeros((1, 8)))
        assert ledger.history() == []


def test_ledger_of_another_dataset_is_refused(tmp_path):
    from privdiff.accounting import Ledger
    from privdiff.errors import LedgerError
    from privdiff.retrieval import build_index

    idx = build_index(tmp_path / "idx", unit_rows(10, 8), space_id=SPACE, source="fashion-mnist:dprdm-private")
    with Ledger.create(tmp_path / "a.sqlite", epsilon=5.0, delta=1e-5, dataset="folder:/other") as other:
        with pytest.raises(LedgerError, match="folder:/other"):
            DPRetriever(idx, k=2, sigma=0.5, sample_rate=0.1, ledger=other)
    for i, name in enumerate(["fashion-mnist:dprdm-private", str(tmp_path / "idx"), idx.manifest.sha256, ""]):
        with Ledger.create(tmp_path / f"ok{i}.sqlite", epsilon=5.0, delta=1e-5, dataset=name) as ok:
            assert DPRetriever(idx, k=2, sigma=0.5, sample_rate=0.1, ledger=ok).k == 2


def test_release_is_refused_if_the_ledger_did_not_charge_every_row():
    from privdiff.errors import LedgerError

    class Idempotent(RecordingLedger):
        def charge(self, query, count=1, request_id=None):
            c = super().charge(query, count, request_id)
            return type("C", (), {**c.__dict__, "queries_charged": 0})()

    r = _retriever(Idempotent())
    with pytest.raises(LedgerError, match="charged 0 queries for a batch of 2"):
        r.query(unit_rows(2, 8))


# --- the backend and strategy seams -------------------------------------------------------------


class _FixedBackend:
    """A top-k backend returning given sums/counts: the mechanism only ever sees these."""

    def __init__(self, sums, counts, index=None):
        index = index or _index(d=sums.shape[1])
        self.manifest, self.path = index.manifest, index.path
        self.sums, self.counts, self.calls = sums, counts, []

    def topk_sums(self, queries, k, sample_rate, rng):
        self.calls.append((queries.shape, k, sample_rate))
        return self.sums.copy(), self.counts.copy()


class _ConstantNoise:
    def __init__(self, value):
        self.value, self.calls = value, []

    def sample(self, shape, sigma, rng):
        self.calls.append((shape, sigma))
        return np.full(shape, self.value)


def test_release_is_backend_sum_over_k_plus_the_noise_strategy(recording_ledger):
    v = unit_rows(2, 8, seed=3).astype(np.float64)
    sums = np.stack([v[0] + v[1], v[1] * 0.5])
    backend = _FixedBackend(sums, np.array([2, 1]))
    noise = _ConstantNoise(0.25)
    r = DPRetriever(backend, k=4, sigma=0.3, sample_rate=0.2, ledger=recording_ledger, noise=noise)
    rel = r.query(unit_rows(2, 8, seed=4))
    np.testing.assert_allclose(rel.vectors, (sums / 4 + 0.25).astype(np.float32), rtol=1e-6)
    assert backend.calls == [((2, 8), 4, 0.2)] and noise.calls == [((2, 8), 0.3)]
    assert "backend=" in repr(r) and "noise=" in repr(r) and "padding=" not in repr(r)


@pytest.mark.parametrize(
    "sums, counts",
    [
        (np.full((2, 8), 1.0), np.array([1, 1])),  # ‖sum‖ = √8 > count: rows not projected
        (np.zeros((2, 8)), np.array([6, 0])),  # more than k records
        (np.zeros((2, 8)), np.array([-1, 0])),
        (np.zeros((3, 8)), np.array([0, 0, 0])),  # wrong batch size
        (np.full((2, 8), np.nan), np.array([5, 5])),
        (np.zeros((2, 8)), np.array([0.5, 0.0])),  # counts must be integers
    ],
)
def test_backend_breaking_the_sensitivity_bound_releases_nothing(sums, counts):
    from privdiff.errors import PrivdiffError

    ledger = RecordingLedger()
    r = DPRetriever(_FixedBackend(sums, counts), k=5, sigma=0.1, sample_rate=0.5, ledger=ledger)
    with pytest.raises(PrivdiffError, match="sensitivity bound"):
        r.query(unit_rows(2, 8))
    assert ledger.charged == 2  # the charge stands; spending without releasing is the safe side


def test_an_index_is_served_by_the_exact_backend_and_strategies_default_to_the_real_ones(
    recording_ledger,
):
    index = _index()
    a = DPRetriever(index, k=5, sigma=0.1, sample_rate=0.5, ledger=recording_ledger)
    b = DPRetriever(
        ExactTopK(index),
        k=5,
        sigma=0.1,
        sample_rate=0.5,
        ledger=recording_ledger,
        noise=GaussianNoise(),
        padding=ZeroPadding(),
    )
    assert (
        repr(a)
        == repr(b)
        == ("DPRetriever(k=5, sigma=0.1, sample_rate=0.5, noise_multiplier=0.25, space_id='test-space/v1')")
    )


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"backend": "an index"}, "backend"),
        ({"backend": np.zeros((4, 8))}, "backend"),
        ({"noise": 0.5}, "noise"),
        ({"padding": "zero"}, "padding"),
    ],
)
def test_what_is_not_a_backend_or_a_strategy_is_refused(kw, name):
    args = {
        "backend": _index(),
        "k": 5,
        "sigma": 0.1,
        "sample_rate": 0.5,
        "ledger": RecordingLedger(),
    } | kw
    with pytest.raises(InvalidParameter, match=name):
        DPRetriever(**args)
