"""λ-interpolation of the private context with public tokens: post-processing, no privacy cost.

DP-RDM (arXiv 2403.14421; ``methods/dp-rdm.md`` §3 steps 7-8) turns the privatised vector r̃ of a
query into the k-token cross-attention context

    C = λ·R̃ + (1 − λ)·P ∈ ℝ^{k×d},   R̃ = [r̃; …; r̃] (r̃ replicated k times),

where P is either the k public neighbours [n(p_1); …; n(p_k)] of the query (public retrieval) or
the normalised query embedding q̂ repeated k times. λ = 1 ("omit query") is pure DP retrieval;
λ = 0 uses no private data at all. Everything here is a function of the released r̃ and public
data only, so by the post-processing property of DP (Dwork & Roth 2014, Prop. 2.1) it costs no
privacy and needs no ledger.
"""

from __future__ import annotations

import numpy as np

from privdiff.encoders.base import l2_normalize
from privdiff.errors import InvalidParameter, check_in_range, check_int
from privdiff.retrieval.private import PrivateRelease

__all__ = ["mix_context"]


def mix_context(private: PrivateRelease | np.ndarray, public: np.ndarray, lam: float, k: int) -> np.ndarray:
    """C = λ·R̃ + (1 − λ)·P, shape (B, k, d) float32.

    Args:
        private: the :class:`PrivateRelease` (or its ``vectors``), (B, d): r̃ per query.
        public: either (B, k, d) public neighbour embeddings (``PublicRetriever.search``) or
            (B, d) query embeddings (replicated k times). Rows are L2-normalised here, as the
            paper normalises both (n(p_j), q̂).
        lam: λ ∈ [0, 1], weight of the private context.
        k: number of context tokens (the k the private vector was computed with).
    """
    r = private.vectors if isinstance(private, PrivateRelease) else np.asarray(private)
    lam = check_in_range("lam", lam, 0.0, 1.0, low_inclusive=True)
    k = check_int("k", k, minimum=1)
    if r.ndim != 2:
        raise InvalidParameter("private", f"array of shape {r.shape}", "(B, d)")
    B, d = r.shape
    p = np.asarray(public)
    if p.ndim == 2:
        if p.shape != (B, d):
            raise InvalidParameter(
                "public",
                f"array of shape {p.shape}",
                f"({B}, {d}) query embeddings or ({B}, {k}, {d}) neighbours",
            )
        p = np.broadcast_to(p[:, None, :], (B, k, d))
    elif p.ndim == 3:
        if p.shape != (B, k, d):
            raise InvalidParameter("public", f"array of shape {p.shape}", f"({B}, {k}, {d}) public neighbours")
    else:
        raise InvalidParameter("public", f"array of shape {p.shape}", f"({B}, {d}) or ({B}, {k}, {d})")
    if not (np.isfinite(r).all() and np.isfinite(p).all()):
        raise InvalidParameter("context", "NaN/inf values", "finite values")
    p_unit = l2_normalize(p.astype(np.float32))
    r_rep = np.broadcast_to(r.astype(np.float32)[:, None, :], (B, k, d))
    return (lam * r_rep + (1.0 - lam) * p_unit).astype(np.float32)
