"""IVF layout with public-only centroids: refuses private training; exact within probed lists."""

import numpy as np
import pytest
from scipy import stats

from privdiff.errors import EncoderMismatch, InvalidParameter
from privdiff.retrieval import DPRetriever, EmbeddingIndex, IVFTopK, PublicEmbeddings
from privdiff.retrieval.private.ivf import IVFLayout, PublicCoarseQuantizer, ivf_subsampled_topk

from ._helpers import RecordingLedger, unit_rows

SPACE = "s/v1"


#: The private rows of the test index, kept by the test (it made them) so that brute force can
#: be compared with the layout without reading the index's internals.
ROWS = unit_rows(300, 8, seed=2)


@pytest.fixture(scope="module")
def setup():
    public = PublicEmbeddings(unit_rows(400, 8, seed=1), space_id=SPACE, source="public-set")
    quant = PublicCoarseQuantizer.train(public, nlist=6, niter=10)
    index = EmbeddingIndex.from_embeddings(ROWS, space_id=SPACE)
    return quant, index, IVFLayout(index, quant)


def _members(layout, quant, lists):
    """Ids of the records of the given lists: a full, unsampled search probing exactly them."""
    # Each centroid is its own nearest centroid, so querying with it probes its own list first.
    q = quant.centroids[np.asarray(lists)]
    ids = ivf_subsampled_topk(ROWS, layout, q, layout.count, 1.0, 1, np.random.default_rng(0))
    return [np.sort(row[row >= 0]) for row in ids]


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
    members = _members(layout, quant, range(quant.nlist))
    assert np.array_equal(np.sort(np.concatenate(members)), np.arange(index.count))
    nearest = np.argmax(ROWS @ quant.centroids.T, axis=1)
    for j in range(quant.nlist):
        assert np.array_equal(members[j], np.flatnonzero(nearest == j))


def test_full_probe_without_subsampling_is_exact_search(setup):
    quant, index, layout = setup
    q = unit_rows(5, 8, seed=3)
    ids = ivf_subsampled_topk(ROWS, layout, q, 7, 1.0, quant.nlist, np.random.default_rng(0))
    for b in range(5):
        assert sorted(ids[b].tolist()) == sorted(np.argsort(-(ROWS @ q[b]))[:7].tolist())


def test_partial_probe_is_exact_within_the_probed_lists(setup):
    quant, index, layout = setup
    q = unit_rows(5, 8, seed=4)
    ids = ivf_subsampled_topk(ROWS, layout, q, 5, 1.0, 2, np.random.default_rng(0))
    probed = quant.nearest(q, 2)
    for b in range(5):
        cand = np.sort(np.concatenate(_members(layout, quant, probed[b])))
        want = cand[np.argsort(-(ROWS[cand] @ q[b]), kind="stable")[:5]]
        assert sorted(ids[b][ids[b] >= 0].tolist()) == sorted(want.tolist())


def test_candidates_are_poisson_subsampled_at_rate_q(setup):
    quant, index, layout = setup
    q = np.tile(unit_rows(1, 8, seed=5), (3000, 1))
    cand = np.concatenate(_members(layout, quant, quant.nearest(q[:1], 2)[0]))
    ids = ivf_subsampled_topk(ROWS, layout, q, index.count, 0.3, 2, np.random.default_rng(6))
    sizes = (ids >= 0).sum(axis=1)
    assert set(np.unique(ids[ids >= 0]).tolist()) <= set(cand.tolist())
    assert stats.ks_2samp(sizes, stats.binom.rvs(cand.size, 0.3, size=3000, random_state=7)).pvalue > 1e-3


def test_retriever_with_ivf_charges_and_releases_like_the_exact_one(setup):
    quant, index, layout = setup
    ledger = RecordingLedger()
    r = DPRetriever(IVFTopK(index, layout, nprobe=2), k=4, sigma=0.1, sample_rate=0.5, ledger=ledger)
    rel = r.query(unit_rows(3, 8, seed=8))
    assert rel.vectors.shape == (3, 8) and ledger.charged == 3
    assert "nprobe=2" in repr(r)
    with pytest.raises(InvalidParameter, match="nprobe"):
        IVFTopK(index, layout, nprobe=7)
    with pytest.raises(InvalidParameter, match="ivf"):
        IVFTopK(index, "ivf")
    other = EmbeddingIndex.from_embeddings(unit_rows(20, 8, seed=9), space_id=SPACE)
    with pytest.raises(InvalidParameter, match="ivf"):
        IVFTopK(other, layout)  # a layout of another index


def test_ivf_backend_with_full_probe_and_no_subsampling_sums_the_exact_topk(setup):
    quant, index, layout = setup
    q = unit_rows(4, 8, seed=10)
    sums, counts = IVFTopK(index, layout, nprobe=quant.nlist).topk_sums(q, 6, 1.0, np.random.default_rng(0))
    assert counts.tolist() == [6] * 4
    for b in range(4):
        top = np.argsort(-(ROWS @ q[b]))[:6]
        np.testing.assert_allclose(sums[b], ROWS[top].astype(np.float64).sum(axis=0), atol=1e-5)
