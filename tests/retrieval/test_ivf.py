"""IVF layout with public-only centroids: refuses private training; exact within probed lists."""

import numpy as np
import pytest
from scipy import stats

from privdiff.errors import EncoderMismatch, InvalidParameter
from privdiff.retrieval import DPRetriever, EmbeddingIndex, PublicEmbeddings
from privdiff.retrieval.ivf import IVFLayout, PublicCoarseQuantizer, ivf_subsampled_topk
from ._helpers import RecordingLedger, unit_rows

SPACE = "s/v1"


@pytest.fixture(scope="module")
def setup():
    public = PublicEmbeddings(unit_rows(400, 8, seed=1), space_id=SPACE, source="public-set")
    quant = PublicCoarseQuantizer.train(public, nlist=6, niter=10)
    index = EmbeddingIndex.from_embeddings(unit_rows(300, 8, seed=2), space_id=SPACE)
    return quant, index, IVFLayout(index, quant)


@pytest.mark.parametrize("bad", ["array", "private-index"])
def test_quantizer_refuses_anything_not_declared_public(bad):
    rows = unit_rows(50, 8)
    arg = rows if bad == "array" else EmbeddingIndex.from_embeddings(rows, space_id=SPACE)
    with pytest.raises(InvalidParameter, match="PublicEmbeddings"):
        PublicCoarseQuantizer.train(arg, nlist=4)


def test_layout_refuses_a_quantizer_of_another_space(setup):
    quant, _, _ = setup
    other = EmbeddingIndex.from_embeddings(unit_rows(20, 8), space_id="other/v1")
    with pytest.raises(EncoderMismatch):
        IVFLayout(other, quant)


def test_layout_lists_partition_the_records_by_nearest_public_centroid(setup):
    quant, index, layout = setup
    everything = layout._candidates(np.arange(quant.nlist))
    assert np.array_equal(everything, np.arange(index.count))
    nearest = np.argmax(index._vectors @ quant.centroids.T, axis=1)
    for j in range(quant.nlist):
        assert np.array_equal(layout._candidates([j]), np.flatnonzero(nearest == j))


def test_full_probe_without_subsampling_is_exact_search(setup):
    quant, index, layout = setup
    q = unit_rows(5, 8, seed=3)
    ids = ivf_subsampled_topk(index._vectors, layout, q, 7, 1.0, quant.nlist, np.random.default_rng(0))
    for b in range(5):
        assert sorted(ids[b].tolist()) == sorted(np.argsort(-(index._vectors @ q[b]))[:7].tolist())


def test_partial_probe_is_exact_within_the_probed_lists(setup):
    quant, index, layout = setup
    q = unit_rows(5, 8, seed=4)
    ids = ivf_subsampled_topk(index._vectors, layout, q, 5, 1.0, 2, np.random.default_rng(0))
    probed = quant.nearest(q, 2)
    for b in range(5):
        cand = layout._candidates(probed[b])
        want = cand[np.argsort(-(index._vectors[cand] @ q[b]), kind="stable")[:5]]
        assert sorted(ids[b][ids[b] >= 0].tolist()) == sorted(want.tolist())


def test_candidates_are_poisson_subsampled_at_rate_q(setup):
    quant, index, layout = setup
    q = np.tile(unit_rows(1, 8, seed=5), (3000, 1))
    cand = layout._candidates(quant.nearest(q[:1], 2)[0])
    ids = ivf_subsampled_topk(index._vectors, layout, q, index.count, 0.3, 2, np.random.default_rng(6))
    sizes = (ids >= 0).sum(axis=1)
    assert set(np.unique(ids[ids >= 0]).tolist()) <= set(cand.tolist())
    assert stats.ks_2samp(sizes, stats.binom.rvs(cand.size, 0.3, size=3000, random_state=7)).pvalue > 1e-3


def test_retriever_with_ivf_charges_and_releases_like_the_exact_one(setup):
    quant, index, layout = setup
    ledger = RecordingLedger()
    r = DPRetriever(index, k=4, sigma=0.1, sample_rate=0.5, ledger=ledger, ivf=layout, nprobe=2)
    rel = r.query(unit_rows(3, 8, seed=8))
    assert rel.vectors.shape == (3, 8) and ledger.charged == 3
    assert "nprobe=2" in repr(r)
    with pytest.raises(InvalidParameter, match="nprobe"):
        DPRetriever(index, k=4, sigma=0.1, sample_rate=0.5, ledger=ledger, ivf=layout, nprobe=7)
    with pytest.raises(InvalidParameter, match="ivf"):
        DPRetriever(index, k=4, sigma=0.1, sample_rate=0.5, ledger=ledger, ivf="ivf")
