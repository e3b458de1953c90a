"""Where the RDM's context comes from: DP-RDM and its three baselines, behind one interface.

A *context source* turns B public query embeddings (B, d) into B contexts (B, k, d) for the RDM
and says what that cost in privacy. The generation pipeline does not care which source it has;
every output records the source's ``mode`` and privacy status, so a baseline can never pass for
DP-RDM.

=====================  =========================================================  ============
mode                   context (method notes §3 step 8, §7.5)                     privacy
=====================  =========================================================  ============
``dp-rdm``             C = λ·R̃ + (1−λ)·P; R̃ from :class:`DPRetriever` (charged)  (ε, δ)-DP
``public-retrieval``   mean of the k nearest **public** neighbours, replicated   ε = 0
``non-private``        mean of the k nearest **private** neighbours, no noise,    **ε = ∞**
                       no subsampling (σ = 0, q = 1)                              not private
``subsampled``         DP-RDM's Poisson(q) subsample + top-k mean, no noise       **ε = ∞**
                       (σ = 0): what subsampling alone costs                      not private
``no-retrieval``       the query embedding q̂ replicated (λ = 0)                  ε = 0
=====================  =========================================================  ============

The public-retrieval baseline uses the same transform the model was adapt-trained on (mean of k
normalised neighbours, replicated), with neighbours from the public set; the paper's public
baseline uses RDM-fb with k separate tokens instead, which our single adapt model does not have.

Only :class:`DPRetrievalContext` touches the private set, through the DP mechanism. The
non-private baseline is not here: it reads private rows (through the boundary's one named escape
hatch), so it lives with the evaluation baselines, :class:`privdiff.evaluation.baselines.NonPrivateRetrievalContext`;
it exists to draw the ε = ∞ line of the paper's figure, never takes a ledger, and marks everything
it produces ``private=False``. This module reads no private data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from privdiff.encoders.base import l2_normalize
from privdiff.errors import EncoderMismatch, InvalidParameter, check_in_range, check_int

MODES = ("dp-rdm", "public-retrieval", "non-private", "subsampled", "no-retrieval")


@dataclass(frozen=True)
class Conditioning:
    """Contexts for B queries and what they cost.

    Attributes:
        contexts: float32 (B, k, d).
        mode: one of :data:`MODES`.
        private: whether the contexts are DP with respect to the private set (False only for
            the ε = ∞ baselines, non-private and subsampled).
        privacy: JSON-friendly details (ε spent/remaining and δ from the ledger after the charge,
            σ, q, k, z, queries charged; ε = 0 or ∞ for the baselines).
    """

    contexts: np.ndarray = field(repr=False)
    mode: str
    private: bool
    privacy: dict[str, Any]


class ContextSource(Protocol):
    mode: str
    private: bool
    k: int
    space_id: str

    def condition(self, queries: np.ndarray, *, request_id: str | None = None) -> Conditioning: ...


def check_queries(queries: Any, dim: int) -> np.ndarray:
    """(B, d) finite non-zero public query embeddings → L2-normalised float32; else InvalidParameter."""
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[0] < 1 or q.shape[1] != dim:
        raise InvalidParameter("query_embeddings", f"array of shape {q.shape}", f"(B >= 1, {dim})")
    if not np.isfinite(q).all() or (np.linalg.norm(q, axis=1) == 0).any():
        raise InvalidParameter("query_embeddings", "NaN/inf or zero rows", "finite non-zero rows")
    return l2_normalize(q)


def replicate_context(v: np.ndarray, k: int) -> np.ndarray:
    """(B, d) → (B, k, d) float32: one vector as k identical context tokens."""
    return np.ascontiguousarray(np.broadcast_to(v[:, None, :], (v.shape[0], k, v.shape[1])), dtype=np.float32)


class DPRetrievalContext:
    """DP-RDM: one charged private query per row, then λ-mixing (post-processing).

    Args:
        retriever: a :class:`privdiff.retrieval.DPRetriever` (it holds the private index, k, σ,
            q and the ledger; it charges **before** computing).
        lam: λ ∈ (0, 1], weight of the private context (λ = 1: "omit query", pure DP retrieval).
            λ = 0 would spend budget on a release it ignores: use :class:`QueryOnlyContext`.
        mix_with: ``"query"`` (P = q̂ replicated) or ``"public"`` (P = the k public neighbours of
            q̂ from ``public_retriever``); ignored when λ = 1.
        public_retriever: a :class:`privdiff.retrieval.PublicRetriever` for ``mix_with="public"``.
    """

    mode = "dp-rdm"
    private = True

    def __init__(
        self,
        retriever: Any,
        *,
        lam: float = 1.0,
        mix_with: str = "query",
        public_retriever: Any = None,
    ):
        self.retriever = retriever
        self.lam = check_in_range("lam", lam, 0.0, 1.0)
        if mix_with not in ("query", "public"):
            raise InvalidParameter("mix_with", mix_with, "'query' or 'public'")
        if mix_with == "public" and self.lam < 1.0 and public_retriever is None:
            raise InvalidParameter("public_retriever", None, "a PublicRetriever when mix_with='public'")
        if (
            public_retriever is not None
            and getattr(public_retriever, "space_id", retriever.space_id) != retriever.space_id
        ):
            raise EncoderMismatch(
                expected=retriever.space_id,
                found=public_retriever.space_id,
                what="public retriever",
            )
        self.mix_with = mix_with
        self.public_retriever = public_retriever

    @property
    def k(self) -> int:
        return self.retriever.k

    @property
    def space_id(self) -> str:
        return self.retriever.space_id

    def condition(self, queries: np.ndarray, *, request_id: str | None = None) -> Conditioning:
        from privdiff.retrieval import mix_context

        q = check_queries(queries, self.retriever.dim)
        # Public neighbours are looked up before the charge: if that fails, nothing is spent.
        public = self.public_retriever.search(q) if (self.mix_with == "public" and self.lam < 1.0) else q
        release = self.retriever.query(q, request_id=request_id)  # the one charged step
        contexts = mix_context(release, public, self.lam, self.k)
        return Conditioning(
            contexts=contexts,
            mode=self.mode,
            private=True,
            privacy={
                "epsilon_spent": release.epsilon_spent,
                "epsilon_remaining": release.epsilon_remaining,
                "delta": release.delta,
                "sigma": release.sigma,
                "sample_rate": release.sample_rate,
                "k": release.k,
                "noise_multiplier": release.noise_multiplier,
                "queries_charged": int(q.shape[0]),
                "lam": self.lam,
                "mix_with": self.mix_with if self.lam < 1.0 else None,
            },
        )


class PublicRetrievalContext:
    """Baseline "public-only retrieval" (ε = 0): mean of the query's k public neighbours."""

    mode = "public-retrieval"
    private = True

    def __init__(self, public_retriever: Any):
        self.public_retriever = public_retriever

    @property
    def k(self) -> int:
        return self.public_retriever.k

    @property
    def space_id(self) -> str:
        return self.public_retriever.space_id

    def condition(self, queries: np.ndarray, *, request_id: str | None = None) -> Conditioning:
        q = check_queries(queries, self.public_retriever.dim)
        neigh = l2_normalize(self.public_retriever.search(q))
        contexts = replicate_context(neigh.mean(axis=1), self.k)
        return Conditioning(contexts, self.mode, True, {"epsilon": 0.0, "k": self.k, "queries_charged": 0})


class QueryOnlyContext:
    """Baseline "no retrieval" (λ = 0, ε = 0): the query embedding q̂ replicated k times."""

    mode = "no-retrieval"
    private = True

    def __init__(self, k: int, dim: int, space_id: str):
        self.k = check_int("k", k, 1)
        self.dim = check_int("dim", dim, 1)
        self.space_id = space_id

    def condition(self, queries: np.ndarray, *, request_id: str | None = None) -> Conditioning:
        q = check_queries(queries, self.dim)
        return Conditioning(
            replicate_context(q, self.k),
            self.mode,
            True,
            {"epsilon": 0.0, "k": self.k, "queries_charged": 0},
        )
