"""Public retrieval and λ-mixing: exact, uncharged, and never fed private rows."""

import numpy as np
import pytest

from privdiff.errors import EncoderMismatch, InvalidParameter, PrivdiffError
from privdiff.retrieval import (
    DPRetriever,
    EmbeddingIndex,
    PublicEmbeddings,
    PublicRetriever,
    mix_context,
)

from ._helpers import RecordingLedger, unit_rows


def test_public_retriever_returns_exact_neighbour_embeddings():
    pub = unit_rows(200, 12, seed=1)
    q = unit_rows(5, 12, seed=2)
    out = PublicRetriever(PublicEmbeddings(pub, space_id="s"), k=4).search(q)
    assert out.shape == (5, 4, 12) and out.dtype == np.float32
    for b in range(5):
        want = pub[np.argsort(-(pub @ q[b]))[:4]]
        np.testing.assert_allclose(out[b], want, rtol=1e-6)


def test_public_retriever_refuses_private_index_but_accepts_public_one():
    rows = unit_rows(20, 4)
    with pytest.raises(PrivdiffError, match="private"):
        PublicRetriever(EmbeddingIndex.from_embeddings(rows, space_id="s"), k=3)
    pub = EmbeddingIndex.from_embeddings(rows, space_id="s", visibility="public")
    r = PublicRetriever(pub, k=3, space_id="s")
    assert r.search(unit_rows(2, 4, seed=3)).shape == (2, 3, 4)
    with pytest.raises(EncoderMismatch):
        PublicRetriever(pub, k=3, space_id="other")


@pytest.mark.parametrize("k", [0, 21])
def test_public_retriever_refuses_k_outside_set_size(k):
    with pytest.raises(InvalidParameter, match="k"):
        PublicRetriever(unit_rows(20, 4), k=k)


def test_public_retriever_refuses_bad_queries():
    r = PublicRetriever(unit_rows(20, 4), k=2)
    for bad in (np.zeros((1, 4)), np.full((1, 4), np.nan), unit_rows(1, 5)):
        with pytest.raises(InvalidParameter, match="queries"):
            r.search(bad)


def test_mix_context_interpolates_replicated_private_vector_with_public_tokens():
    rng = np.random.default_rng(0)
    priv = rng.standard_normal((3, 6)).astype(np.float32)
    pub = unit_rows(3 * 4, 6, seed=1).reshape(3, 4, 6)
    c = mix_context(priv, pub, lam=0.25, k=4)
    assert c.shape == (3, 4, 6) and c.dtype == np.float32
    np.testing.assert_allclose(c, 0.25 * priv[:, None, :] + 0.75 * pub, rtol=1e-5, atol=1e-6)


def test_mix_context_extremes_are_pure_private_and_pure_public():
    priv = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    query = 2.0 * unit_rows(2, 5, seed=3)  # normalised inside, as q̂ in the paper
    np.testing.assert_allclose(mix_context(priv, query, 1.0, 3), np.repeat(priv[:, None], 3, axis=1))
    np.testing.assert_allclose(mix_context(priv, query, 0.0, 3), np.repeat((query / 2)[:, None], 3, axis=1), rtol=1e-6)


def test_mix_context_accepts_a_release_and_costs_no_privacy():
    ledger = RecordingLedger()
    idx = EmbeddingIndex.from_embeddings(unit_rows(30, 6), space_id="s")
    q = unit_rows(2, 6, seed=4)
    rel = DPRetriever(idx, k=3, sigma=0.1, sample_rate=1.0, ledger=ledger).query(q)
    before = ledger.charged
    c = mix_context(rel, q, lam=0.5, k=3)
    assert c.shape == (2, 3, 6)
    assert ledger.charged == before == 2


@pytest.mark.parametrize(
    "public_shape, lam, k, match",
    [
        ((2, 6), 1.5, 3, "lam"),
        ((2, 6), -0.1, 3, "lam"),
        ((3, 6), 0.5, 3, "public"),
        ((2, 4, 6), 0.5, 3, "public"),
        ((2, 3, 3, 6), 0.5, 3, "public"),
        ((2, 6), 0.5, 0, "k"),
    ],
)
def test_mix_context_refuses_bad_shapes_and_weights(public_shape, lam, k, match):
    with pytest.raises(InvalidParameter, match=match):
        mix_context(np.zeros((2, 6), np.float32), np.ones(public_shape, np.float32), lam, k)
