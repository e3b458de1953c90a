"""Evaluation baselines that are not differentially private: the ε = ∞ reference line.

DP-RDM's FID-vs-queries figure (Lebensold et al. 2024, arXiv 2403.14421; ``methods/dp-rdm.md``
§7.5) draws, next to the private runs, a *non-private retrieval* line: the exact mean of the k
nearest **private** neighbours of each query, with no subsampling (q = 1) and no noise (σ = 0).
It is an upper reference for what retrieval can give, never something to serve users.

It lives here, with the evaluation code, and not in the generation package: it reads private rows
without the DP mechanism, and the only way privdiff lets code outside the privacy boundary
(:mod:`privdiff.retrieval.private`) do that is the named escape hatch
:func:`~privdiff.retrieval.private.unsafe_nonprivate_rows`, which ``tests/test_privacy_boundary.py``
allows in this module only. Everything it produces is marked ``private=False`` with ε = ∞, and it
never takes a ledger.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from privdiff.errors import InvalidParameter, check_int
from privdiff.rdm.conditioning import Conditioning, check_queries, replicate_context
from privdiff.retrieval.private import EmbeddingIndex, unsafe_nonprivate_rows

__all__ = ["NonPrivateRetrievalContext"]

_WHY = "the non-private (σ = 0, q = 1, ε = ∞) evaluation baseline: an upper reference line, marked private=False"


class NonPrivateRetrievalContext:
    """Baseline "non-private retrieval" (σ = 0, q = 1, **ε = ∞**): NOT differentially private.

    Args:
        private: the private :class:`~privdiff.retrieval.private.EmbeddingIndex`, or its
            embeddings (N, d) as an array (wrapped in an in-memory private index first, so the
            rows are read the same way, through the escape hatch).
        k: neighbours averaged (1 ≤ k ≤ N).
        space_id: the embedding space; required with an array, checked against an index's.

    The exact mean of the k nearest private neighbours with no subsampling and no noise: the
    upper reference line of the paper's FID-vs-queries figure. It never takes a ledger, and marks
    every output ``private=False`` with ε = ∞. Never use it to serve users.
    """

    mode = "non-private"
    private = False

    def __init__(self, private: Any, k: int, *, space_id: str | None = None):
        import faiss

        if not isinstance(private, EmbeddingIndex):
            if not space_id:
                raise InvalidParameter("space_id", space_id, "the embedding space of the private embeddings")
            arr = np.asarray(private)
            if arr.ndim != 2 or arr.shape[0] < 1:
                raise InvalidParameter("private_embeddings", f"array of shape {arr.shape}", "(N >= 1, d)")
            private = EmbeddingIndex.from_embeddings(arr, space_id=space_id, visibility="private")
        elif space_id is not None and space_id != private.space_id:
            raise InvalidParameter("space_id", space_id, f"the index's space {private.space_id!r}")
        rows = np.ascontiguousarray(unsafe_nonprivate_rows(private, reason=_WHY), dtype=np.float32)
        self.k = check_int("k", k, 1, maximum=rows.shape[0])
        self.dim = int(rows.shape[1])
        self.space_id = private.space_id
        self._size = int(rows.shape[0])
        self._search = faiss.IndexFlatIP(self.dim)
        self._search.add(rows)
        self._rows = rows

    def __repr__(self) -> str:
        return f"NonPrivateRetrievalContext(NOT PRIVATE, k={self.k}, n={self._size}, space_id={self.space_id!r})"

    def condition(self, queries: np.ndarray, *, request_id: str | None = None) -> Conditioning:
        q = check_queries(queries, self.dim)
        _, ids = self._search.search(q, self.k)
        contexts = replicate_context(self._rows[ids].mean(axis=1), self.k)
        return Conditioning(
            contexts,
            self.mode,
            False,
            {
                "epsilon": math.inf,
                "sigma": 0.0,
                "sample_rate": 1.0,
                "k": self.k,
                "queries_charged": 0,
                "warning": "non-private baseline: outputs carry no privacy guarantee",
            },
        )
