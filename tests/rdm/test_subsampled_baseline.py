"""The subsampled-but-noiseless reference line (σ = 0, Poisson q, ε = ∞): the mechanism minus its noise."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import chisquare

from privdiff.errors import InvalidParameter
from privdiff.evaluation.baselines import NonPrivateRetrievalContext, SubsampledRetrievalContext
from privdiff.rdm.model import RDMModel
from privdiff.rdm.pipeline import DPRDMPipeline, make_pipeline

from .conftest import PixelProjectionEncoder

N, D, K, Q = 5, 4, 2, 0.4
DRAWS = 3000


def _rows() -> tuple[np.ndarray, np.ndarray]:
    """N unit rows with distinct inner products with the query (no ties to break)."""
    rng = np.random.default_rng(7)
    rows = rng.normal(size=(N, D))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    query = rng.normal(size=D)
    query /= np.linalg.norm(query)
    assert len(set(np.round(rows @ query, 6))) == N
    return rows.astype(np.float32), query.astype(np.float32)


def _exact_law(rows: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every possible noiseless context and its probability, by enumerating all 2^N subsamples:
    subset S has probability q^|S| (1 − q)^(N − |S|); its context is the sum of its k best rows
    (zero-padded) divided by k (methods/dp-rdm.md §3 steps 2-5, without step 6's noise)."""
    outcomes: dict[tuple, float] = {}
    order = np.argsort(-(rows @ query))
    for mask in itertools.product((0, 1), repeat=N):
        chosen = [i for i in order if mask[i]][:K]
        key = tuple(sorted(chosen))
        p = Q ** sum(mask) * (1 - Q) ** (N - sum(mask))
        outcomes[key] = outcomes.get(key, 0.0) + p
    keys = sorted(outcomes)
    vectors = np.stack([rows[list(c)].sum(axis=0) / K if c else np.zeros(D, np.float32) for c in keys])
    return vectors, np.array([outcomes[c] for c in keys])


def _histogram(contexts: np.ndarray, outcomes: np.ndarray, tol: float) -> np.ndarray:
    dist = np.linalg.norm(contexts[:, None, :] - outcomes[None], axis=2)
    nearest = dist.argmin(axis=1)
    assert (dist.min(axis=1) < tol).all(), "a context that no subsample can produce"
    return np.bincount(nearest, minlength=len(outcomes))


def test_matches_the_exact_subsampled_top_k_law():
    rows, query = _rows()
    outcomes, probs = _exact_law(rows, query)
    source = SubsampledRetrievalContext(rows, K, Q, space_id="toy/v1", seed=0)
    cond = source.condition(np.repeat(query[None], DRAWS, axis=0))
    assert cond.contexts.shape == (DRAWS, K, D)
    assert np.allclose(cond.contexts[:, 0], cond.contexts[:, 1])  # one vector, replicated as k tokens
    counts = _histogram(cond.contexts[:, 0], outcomes, 1e-5)
    assert chisquare(counts, probs * DRAWS).pvalue > 1e-3


class _PermissiveLedger:
    """Charges anything (the accountant is not under test): lets the mechanism run at σ → 0."""

    def charge(self, query, count, request_id=None):
        return SimpleNamespace(queries_charged=count, epsilon_spent=0.0, epsilon_remaining=0.0, delta=0.0)


def test_has_the_same_law_as_the_mechanism_with_vanishing_noise():
    from privdiff.retrieval import DPRetriever, EmbeddingIndex

    rows, query = _rows()
    outcomes, probs = _exact_law(rows, query)
    index = EmbeddingIndex.from_embeddings(rows, space_id="toy/v1", visibility="private")
    mech = DPRetriever(index, K, 1e-9, Q, _PermissiveLedger())
    released = mech.query(np.repeat(query[None], DRAWS, axis=0)).vectors
    baseline = SubsampledRetrievalContext(index, K, Q, seed=1).condition(np.repeat(query[None], DRAWS, axis=0))
    a = _histogram(released, outcomes, 1e-5)
    b = _histogram(baseline.contexts[:, 0], outcomes, 1e-5)
    assert chisquare(a, probs * DRAWS).pvalue > 1e-3 and chisquare(b, probs * DRAWS).pvalue > 1e-3
    # Two-sample check as well: the same categories, the same frequencies.
    table = np.stack([a, b])[:, (a + b) > 0]
    from scipy.stats import chi2_contingency

    assert chi2_contingency(table).pvalue > 1e-3


def test_q_one_is_the_non_private_line_and_small_q_pads_with_zeros(tiny_data):
    _, emb, enc = tiny_data
    q = enc.encode_text(["a photo of a sandal", "a coat"])
    full = SubsampledRetrievalContext(emb, 3, 1.0, space_id=enc.space_id).condition(q)
    exact = NonPrivateRetrievalContext(emb, 3, space_id=enc.space_id).condition(q)
    np.testing.assert_allclose(full.contexts, exact.contexts, atol=1e-5)
    # q·N = 0.32 ≪ k: most slots are the zero pad, so contexts shrink towards 0 (divided by k, not by count).
    tiny = SubsampledRetrievalContext(emb, 3, 0.01, space_id=enc.space_id, seed=0).condition(np.repeat(q, 200, 0))
    norms = np.linalg.norm(tiny.contexts[:, 0], axis=1)
    assert (norms <= 1 / 3 + 1e-5).mean() > 0.9 and (norms == 0).any()


def test_is_flagged_not_private_and_reads_through_the_escape_hatch(tiny_model_dir, tiny_data, monkeypatch):
    import privdiff.evaluation.baselines as baselines

    _, emb, enc = tiny_data
    reasons = []
    real = baselines.unsafe_nonprivate_rows
    monkeypatch.setattr(
        baselines, "unsafe_nonprivate_rows", lambda idx, reason: reasons.append(reason) or real(idx, reason=reason)
    )
    source = SubsampledRetrievalContext(emb, 3, 0.5, space_id=enc.space_id, seed=0)
    assert len(reasons) == 1 and "subsampled-but-noiseless" in reasons[0] and "ε = ∞" in reasons[0]
    assert "NOT PRIVATE" in repr(source)
    out = DPRDMPipeline(RDMModel.load(tiny_model_dir), source, enc)(["a photo of a bag"], num_inference_steps=2, seed=0)
    assert out.mode == "subsampled" and not out.private
    assert math.isinf(out.privacy["epsilon"]) and out.privacy["queries_charged"] == 0
    assert out.record()["privacy"]["epsilon"] == "inf" and out.privacy["sigma"] == 0.0
    with pytest.raises(InvalidParameter, match="sample_rate"):
        SubsampledRetrievalContext(emb, 3, 0.0, space_id=enc.space_id)
    with pytest.raises(InvalidParameter, match="space_id"):
        SubsampledRetrievalContext(emb, 3, 0.5)


def test_make_pipeline_refuses_a_ledger_in_subsampled_mode(tiny_model_dir, tmp_path):
    """Where a guarantee is asked for (a ledger), the ε = ∞ line is refused, and nothing is charged."""
    from privdiff.accounting.ledger import Ledger

    ledger = tmp_path / "budget.db"
    Ledger.create(ledger, epsilon=10.0, delta=1e-5).close()
    enc = PixelProjectionEncoder()
    shared = dict(model=RDMModel.load(tiny_model_dir), text_encoder=enc, image_encoder=enc)
    with pytest.raises(InvalidParameter, match="ledger.*ε = ∞"):
        make_pipeline(tiny_model_dir, mode="subsampled", ledger=ledger, private_data="anything", **shared)
    with pytest.raises(InvalidParameter, match="private_data"):
        make_pipeline(tiny_model_dir, mode="subsampled", **shared)
    with pytest.raises(InvalidParameter, match="sample_rate"):
        make_pipeline(tiny_model_dir, mode="subsampled", private_data="anything", sample_rate=1.5, **shared)
    with Ledger.open(ledger) as book:
        assert book.status().queries == 0 and book.history() == []
