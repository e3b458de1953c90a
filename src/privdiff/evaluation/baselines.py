"""Evaluation baselines that are not differentially private: the ε = ∞ reference lines.

DP-RDM's FID-vs-queries figure (Lebensold et al. 2024, arXiv 2403.14421; ``methods/dp-rdm.md``
§7.5) draws, next to the private runs, a *non-private retrieval* line: the exact mean of the k
nearest **private** neighbours of each query, with no subsampling (q = 1) and no noise (σ = 0).
It is an upper reference for what retrieval can give, never something to serve users.

The second line here, *subsampled-but-noiseless retrieval* (:class:`SubsampledRetrievalContext`),
is the DP mechanism with its noise removed: a fresh Poisson(q) subsample per query, the top-k of
that subsample, zero-padded, summed and divided by k, exactly as
:class:`~privdiff.retrieval.private.DPRetriever` computes it before adding N(0, σ²I). Comparing it
with the non-private line shows what subsampling alone costs; comparing DP-RDM with it shows what
the noise costs. Without noise the subsampled mean is not private either (ε = ∞): one record that
lands in the subsample moves the context by up to 2/k with nothing to hide it.

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

from privdiff.errors import InvalidParameter, check_in_range, check_int
from privdiff.rdm.conditioning import Conditioning, check_queries, replicate_context
from privdiff.retrieval.private import EmbeddingIndex, ExactTopK, unsafe_nonprivate_rows

__all__ = ["NonPrivateRetrievalContext", "SubsampledRetrievalContext"]

_WHY = "the non-private (σ = 0, q = 1, ε = ∞) evaluation baseline: an upper reference line, marked private=False"
_WHY_SUBSAMPLED = (
    "the subsampled-but-noiseless (σ = 0, Poisson q, ε = ∞) evaluation baseline: a reference line, marked private=False"
)


def _private_rows(private: Any, space_id: str | None, reason: str) -> tuple[np.ndarray, str]:
    """The private rows (through the escape hatch, with ``reason``) and their space."""
    if not isinstance(private, EmbeddingIndex):
        if not space_id:
            raise InvalidParameter("space_id", space_id, "the embedding space of the private embeddings")
        arr = np.asarray(private)
        if arr.ndim != 2 or arr.shape[0] < 1:
            raise InvalidParameter("private_embeddings", f"array of shape {arr.shape}", "(N >= 1, d)")
        private = EmbeddingIndex.from_embeddings(arr, space_id=space_id, visibility="private")
    elif space_id is not None and space_id != private.space_id:
        raise InvalidParameter("space_id", space_id, f"the index's space {private.space_id!r}")
    rows = np.ascontiguousarray(unsafe_nonprivate_rows(private, reason=reason), dtype=np.float32)
    return rows, private.space_id


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

        rows, self.space_id = _private_rows(private, space_id, _WHY)
        self.k = check_int("k", k, 1, maximum=rows.shape[0])
        self.dim = int(rows.shape[1])
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


class SubsampledRetrievalContext:
    """Baseline "subsampled-but-noiseless retrieval" (σ = 0, Poisson(q), **ε = ∞**): NOT private.

    Args:
        private: the private :class:`~privdiff.retrieval.private.EmbeddingIndex`, or its
            embeddings (N, d) as an array (read the same way, through the escape hatch).
        k: neighbours averaged (≥ 1; as in the mechanism, k > q·N leaves zero-padded slots).
        sample_rate: q ∈ (0, 1], the Poisson subsampling rate of the DP-RDM setting it mirrors.
        space_id: the embedding space; required with an array, checked against an index's.
        seed: seed of the subsampling (public randomness here: nothing is private about this
            baseline's output, and a seed makes an evaluation reproducible); ``None``: fresh.

    Per query: a fresh Poisson(q) subsample of the N rows, its k rows with the largest inner
    product with q̂, zero-padded when fewer than k were drawn, summed and divided by k: the
    mechanism's own pre-noise aggregate (the same search, :class:`~privdiff.retrieval.private.ExactTopK`,
    over the same rows), replicated as k context tokens as λ = 1 DP-RDM does. It never takes a
    ledger and marks every output ``private=False`` with ε = ∞: what subsampling alone costs in
    quality, never something to serve users.
    """

    mode = "subsampled"
    private = False

    def __init__(
        self,
        private: Any,
        k: int,
        sample_rate: float,
        *,
        space_id: str | None = None,
        seed: int | None = None,
    ):
        rows, self.space_id = _private_rows(private, space_id, _WHY_SUBSAMPLED)
        self.k = check_int("k", k, 1)
        self.sample_rate = check_in_range("sample_rate", sample_rate, 0.0, 1.0)
        self.dim = int(rows.shape[1])
        self._size = int(rows.shape[0])
        # The rows were read through the escape hatch above; the in-memory copy is searched by the
        # mechanism's exact backend so selection, tie-breaking and padding cannot drift from it.
        self._search = ExactTopK(EmbeddingIndex.from_embeddings(rows, space_id=self.space_id, visibility="private"))
        self._rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        return (
            f"SubsampledRetrievalContext(NOT PRIVATE, k={self.k}, sample_rate={self.sample_rate:g}, "
            f"n={self._size}, space_id={self.space_id!r})"
        )

    def condition(self, queries: np.ndarray, *, request_id: str | None = None) -> Conditioning:
        from privdiff.retrieval import mix_context

        q = check_queries(queries, self.dim)
        sums, _ = self._search.topk_sums(q, self.k, self.sample_rate, self._rng)
        # λ = 1 post-processing of DP-RDM (mix_context), applied to the noiseless aggregate.
        contexts = mix_context(sums / float(self.k), q, 1.0, self.k)
        return Conditioning(
            contexts,
            self.mode,
            False,
            {
                "epsilon": math.inf,
                "sigma": 0.0,
                "sample_rate": self.sample_rate,
                "k": self.k,
                "queries_charged": 0,
                "warning": "subsampled-but-noiseless baseline: outputs carry no privacy guarantee",
            },
        )
