"""The noise and padding steps of the DP mechanism, as objects the mechanism is composed from.

:class:`~privdiff.retrieval.private.mechanism.DPRetriever` releases
r̃ = (padding.complete(Σ found rows) / k) + noise.sample(σ) (``methods/dp-rdm.md`` §3 steps 5-6).
The defaults, :class:`ZeroPadding` and :class:`GaussianNoise`, **are** the mechanism the
accountant analyses; they are the only strategies the rest of privdiff uses. The seam exists so
the empirical audit (:mod:`privdiff.evaluation.audit`) can run the real mechanism with one step
deliberately broken and show that it notices, without subclassing the retriever or overriding its
internals. A non-default strategy shows in the retriever's ``repr``.

Protocols:

* noise: ``sample(shape, sigma, rng) -> ndarray`` of that shape (added to the aggregate);
* padding: ``complete(sums, counts, k, backend) -> sums`` (fills the k − count empty slots of
  each query's sum; the zero vector adds nothing).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from privdiff.errors import InvalidParameter
from privdiff.retrieval.private.index import EmbeddingIndex, rows_for_mechanism

__all__ = ["GaussianNoise", "NoiseStrategy", "PadWithLastRecord", "PaddingStrategy", "ZeroPadding"]


@runtime_checkable
class NoiseStrategy(Protocol):
    def sample(self, shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray: ...


@runtime_checkable
class PaddingStrategy(Protocol):
    def complete(self, sums: np.ndarray, counts: np.ndarray, k: int, backend: Any) -> np.ndarray: ...


class GaussianNoise:
    """σ·ξ with ξ ~ N(0, I): the Gaussian mechanism's noise (§3 step 6). The real one."""

    __slots__ = ()

    def sample(self, shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
        return sigma * rng.standard_normal(shape)

    def __repr__(self) -> str:
        return "GaussianNoise()"


class ZeroPadding:
    """Empty slots hold the zero vector, a fixed public vector: Δ₂ ≤ 2/k (§4.2). The real one."""

    __slots__ = ()

    def complete(self, sums: np.ndarray, counts: np.ndarray, k: int, backend: Any) -> np.ndarray:
        return sums  # adding (k - count) zero vectors changes nothing

    def __repr__(self) -> str:
        return "ZeroPadding()"


class PadWithLastRecord:
    """BROKEN on purpose, for the audit only: empty slots hold the index's last record.

    This reproduces the authors' faiss bug (id −1 read as ``embedding[-1]``, gotcha (a) in §3):
    adding a record at the end of the set changes every padded release, so Δ₂ is no longer 2/k
    and the accountant's ε is wrong. :mod:`privdiff.evaluation.audit` uses it as a control that
    the audit must flag. It lives inside the boundary because it reads a private row.
    """

    __slots__ = ()

    def complete(self, sums: np.ndarray, counts: np.ndarray, k: int, backend: Any) -> np.ndarray:
        index = getattr(backend, "_index", None)  # ExactTopK / IVFTopK (same package)
        if not isinstance(index, EmbeddingIndex):
            raise InvalidParameter("backend", type(backend).__name__, "ExactTopK or IVFTopK for PadWithLastRecord")
        last = np.asarray(rows_for_mechanism(index)[-1], dtype=np.float64)
        last = last / max(1.0, float(np.linalg.norm(last)))  # the same unit-ball projection as found rows
        return sums + (k - counts)[:, None].astype(np.float64) * last[None, :]

    def __repr__(self) -> str:
        return "PadWithLastRecord(BROKEN)"
