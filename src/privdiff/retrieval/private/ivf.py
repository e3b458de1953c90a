"""Optional approximate IVF layout whose coarse centroids are trained on **public** data only.

The authors' Shutterstock index is an IVF-PQ whose quantiser and codebooks are trained on the
private embeddings, and that training is not accounted for (``methods/dp-rdm.md`` §3 gotcha c,
§8 item 2): the centroids are themselves a non-private release of the private set. Here the
coarse centroids can only be trained from :class:`~privdiff.retrieval.public.PublicEmbeddings`
(an explicit "this is public" wrapper); passing an array or a private index is refused, so
private training cannot happen by accident.

How the mechanism uses it (``DPRetriever(IVFTopK(index, layout, nprobe=p), ...)``, see
``backends``): for a query q̂, the p
public centroids with the largest inner product are probed (a function of public data only);
the candidates are the private records assigned to those lists; each candidate is included
with probability q (Binomial size + uniform subset, as in ``subsample.py``) and the exact top-k
of the sampled candidates is averaged. A record's assignment depends only on itself and the
public centroids, so "top-k by score among sampled records of the probed lists" is still a
selection by a per-record rule: adding one record changes the selected set by at most one swap,
and Δ₂ = 2/k and the Poisson-subsampled Gaussian accounting are unchanged (§4.2). Records
outside the probed lists can never be selected, so sampling only the candidates releases exactly
the same distribution as sampling all N records first. The only cost is recall (approximation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from privdiff.errors import EncoderMismatch, InvalidParameter, check_int
from privdiff.retrieval.private.index import EmbeddingIndex, rows_for_mechanism
from privdiff.retrieval.private.search import sparse_topk_from_subsets

if TYPE_CHECKING:  # imported lazily below: retrieval.public imports this package
    from privdiff.retrieval.public import PublicEmbeddings

__all__ = ["IVFLayout", "PublicCoarseQuantizer", "ivf_subsampled_topk"]


class PublicCoarseQuantizer:
    """``nlist`` unit-norm coarse centroids trained with faiss k-means on public embeddings."""

    def __init__(self, centroids: np.ndarray, *, space_id: str, source: str = ""):
        c = np.ascontiguousarray(centroids, dtype=np.float32)
        if c.ndim != 2 or c.shape[0] < 1 or not np.isfinite(c).all():
            raise InvalidParameter("centroids", f"array of shape {c.shape}", "finite (nlist, d)")
        self.centroids = c
        self.centroids.setflags(write=False)
        self.space_id = space_id
        self.source = source

    @classmethod
    def train(cls, public: PublicEmbeddings, nlist: int, *, niter: int = 20, seed: int = 0) -> PublicCoarseQuantizer:
        """Spherical k-means (faiss ``Kmeans``) on public embeddings; the seed is public too."""
        import faiss

        # Imported here, not at the top: privdiff.retrieval.public imports this package (a cycle).
        from privdiff.retrieval.public import PublicEmbeddings

        if not isinstance(public, PublicEmbeddings):
            raise InvalidParameter(
                "public",
                type(public).__name__,
                "a PublicEmbeddings (wrap embeddings of a PUBLIC set); private rows must never "
                "train index structures (DP-RDM §8 item 2)",
            )
        x = public.vectors
        nlist = check_int("nlist", nlist, minimum=1, maximum=x.shape[0])
        niter = check_int("niter", niter, minimum=1)
        km = faiss.Kmeans(x.shape[1], nlist, niter=niter, spherical=True, seed=int(seed), verbose=False)
        km.train(np.ascontiguousarray(x, dtype=np.float32))
        return cls(km.centroids, space_id=public.space_id, source=public.source)

    @property
    def nlist(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def nearest(self, x: np.ndarray, nprobe: int = 1) -> np.ndarray:
        """The ``nprobe`` centroids with the largest inner product with each row of ``x``."""
        import faiss

        nprobe = check_int("nprobe", nprobe, minimum=1, maximum=self.nlist)
        index = faiss.IndexFlatIP(self.dim)
        index.add(self.centroids)
        _, lists = index.search(np.ascontiguousarray(x, dtype=np.float32), nprobe)
        return lists

    def __repr__(self) -> str:
        return f"PublicCoarseQuantizer(nlist={self.nlist}, dim={self.dim}, space_id={self.space_id!r})"


class IVFLayout:
    """Private records grouped by their nearest public centroid (inverted lists of ids).

    Built from a private index; the lists are private (they hold record ids) and, like the
    index, are read only inside the boundary (by :class:`~privdiff.retrieval.private.backends.IVFTopK`).
    """

    __slots__ = ("quantizer", "_ids", "_offsets", "_count")

    def __init__(self, index: EmbeddingIndex, quantizer: PublicCoarseQuantizer):
        if not isinstance(quantizer, PublicCoarseQuantizer):
            raise InvalidParameter("quantizer", type(quantizer).__name__, "a PublicCoarseQuantizer")
        if quantizer.space_id and quantizer.space_id != index.space_id:
            raise EncoderMismatch(expected=index.space_id, found=quantizer.space_id, what="coarse quantizer")
        if quantizer.dim != index.dim:
            raise InvalidParameter("quantizer", f"dimension {quantizer.dim}", f"dimension {index.dim}")
        vectors = rows_for_mechanism(index)
        assign = np.empty(index.count, dtype=np.int64)
        for s in range(0, index.count, 65536):
            assign[s : s + 65536] = quantizer.nearest(vectors[s : s + 65536], 1)[:, 0]
        # Stable sort: ids stay ascending inside each list.
        self._ids = np.argsort(assign, kind="stable").astype(np.int64)
        counts = np.bincount(assign, minlength=quantizer.nlist)
        self._offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        self._count = index.count
        self.quantizer = quantizer

    @property
    def count(self) -> int:
        return self._count

    def _candidates(self, lists: np.ndarray) -> np.ndarray:
        parts = [self._ids[self._offsets[j] : self._offsets[j + 1]] for j in lists]
        cand = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        cand.sort()
        return cand

    def __repr__(self) -> str:
        return f"IVFLayout(nlist={self.quantizer.nlist}, count={self._count})"


def ivf_subsampled_topk(
    vectors: np.ndarray,
    layout: IVFLayout,
    queries: np.ndarray,
    k: int,
    sample_rate: float,
    nprobe: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Per query: probe ``nprobe`` public lists, Poisson(q)-sample their records, exact top-k.

    Returns (B, k) int64 ids, -1 padded. Internal to the private boundary (module docstring).
    """
    if vectors.shape[0] != layout.count:
        raise InvalidParameter("layout", repr(layout), f"a layout of this index ({vectors.shape[0]} records)")
    lists = layout.quantizer.nearest(queries, nprobe)
    B = queries.shape[0]
    subsets = []
    for b in range(B):
        cand = layout._candidates(lists[b])
        m = int(rng.binomial(cand.size, sample_rate)) if sample_rate < 1.0 else cand.size
        pick = np.sort(rng.choice(cand.size, size=m, replace=False, shuffle=False)) if m < cand.size else None
        subsets.append(cand if pick is None else cand[pick])
    width = max((s.size for s in subsets), default=0)
    padded = np.full((B, width), -1, dtype=np.int64)
    for b, s in enumerate(subsets):
        padded[b, : s.size] = s
    return sparse_topk_from_subsets(vectors, queries, padded, k)
