"""Exact k-NN over a **public** retrieval set: no subsampling, no noise, no privacy cost.

DP-RDM (arXiv 2403.14421; ``methods/dp-rdm.md`` §3 step 8) can mix the private context with the
k nearest neighbours of the query in a public set (ImageNet-FB in the paper). Public data carries
no privacy budget, so its neighbours are returned as they are, and nothing is charged.

Because this class returns raw neighbour vectors, it must never see private rows: it accepts a
plain array the caller declares public, a :class:`PublicEmbeddings`, or an
:class:`~privdiff.retrieval.private.EmbeddingIndex` whose manifest says ``visibility: public``, and
it refuses a private index.

A set *declared* public may still be the private data (e.g. the private split passed as
``--public-data``), and its neighbours would then go out raw, labelled ε = 0.
:func:`check_public_disjoint` refuses a public image set that shares any image with a private
index (by the per-image hashes the index records; :func:`~privdiff.retrieval.private.shared_source_rows`).
It needs the index: where none is given (the public-retrieval baseline run without ``--index``)
there is nothing to compare against, and the caller's declaration is all there is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from privdiff.encoders.base import l2_normalize
from privdiff.errors import EncoderMismatch, InvalidParameter, PrivdiffError, check_int

# check_public_disjoint lives in the boundary (it reads the private index's source hashes); it is
# re-exported here because this module is where callers of public data look for it.
from privdiff.retrieval.private import EmbeddingIndex, check_public_disjoint, validated_unit_rows

__all__ = ["PublicEmbeddings", "PublicRetriever", "check_public_disjoint"]


@dataclass(frozen=True)
class PublicEmbeddings:
    """Embeddings the caller declares public (e.g. of a public image set), with their space.

    Wrapping an array in this type is the explicit statement "this is not private data"; APIs
    that must never touch private rows (public retrieval, public training of index structures)
    take it.
    """

    vectors: np.ndarray
    space_id: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "vectors", validated_unit_rows(self.vectors))
        self.vectors.setflags(write=False)


def _public_rows(public_embeddings: Any) -> tuple[np.ndarray, str]:
    if isinstance(public_embeddings, EmbeddingIndex):
        if public_embeddings.visibility != "public":
            raise PrivdiffError(
                "PublicRetriever refuses a private index: it returns raw neighbours, which is only "
                "allowed for public data. Use DPRetriever for private data."
            )
        return np.asarray(public_embeddings.public_vectors(), dtype=np.float32), public_embeddings.space_id
    if isinstance(public_embeddings, PublicEmbeddings):
        return public_embeddings.vectors, public_embeddings.space_id
    return validated_unit_rows(public_embeddings), ""


class PublicRetriever:
    """Exact top-k inner-product search (faiss ``IndexFlatIP``) over public unit vectors.

    Args:
        public_embeddings: (M, d) array declared public, :class:`PublicEmbeddings`, or a public
            :class:`EmbeddingIndex`. Rows are L2-normalised (n(p) in §3 step 8).
        k: neighbours returned per query.
        space_id: optional encoder space of the queries; checked against the set's space when
            both are known.
    """

    def __init__(self, public_embeddings: Any, k: int, *, space_id: str | None = None):
        import faiss

        rows, own_space = _public_rows(public_embeddings)
        self.k = check_int("k", k, minimum=1)
        if self.k > rows.shape[0]:
            raise InvalidParameter("k", k, f"an integer <= {rows.shape[0]} (the public set's size)")
        if space_id and own_space and space_id != own_space:
            raise EncoderMismatch(expected=own_space, found=space_id, what="query encoder")
        self.space_id = own_space or space_id or ""
        self.dim = int(rows.shape[1])
        self._rows = np.ascontiguousarray(rows, dtype=np.float32)
        self._faiss = faiss.IndexFlatIP(self.dim)
        self._faiss.add(self._rows)

    def __len__(self) -> int:
        return int(self._rows.shape[0])

    def search(self, queries: np.ndarray) -> np.ndarray:
        """The k nearest public neighbours of each query: (B, k, d) float32 unit rows.

        Exact (``IndexFlatIP``); costs no privacy (public data, no charge).
        """
        q = np.asarray(queries)
        if q.ndim != 2 or q.shape[1] != self.dim or q.shape[0] < 1:
            raise InvalidParameter("queries", f"array of shape {q.shape}", f"(B, {self.dim}) with B >= 1")
        if not np.isfinite(q).all():
            raise InvalidParameter("queries", "NaN/inf values", "finite values")
        if (np.linalg.norm(q.astype(np.float64), axis=1) == 0).any():
            raise InvalidParameter("queries", "a zero row", "non-zero rows")
        qn = np.ascontiguousarray(l2_normalize(q), dtype=np.float32)
        _, ids = self._faiss.search(qn, self.k)
        return self._rows[ids]

    __call__ = search

    def __repr__(self) -> str:
        return f"PublicRetriever(size={len(self)}, dim={self.dim}, k={self.k}, space_id={self.space_id!r})"
