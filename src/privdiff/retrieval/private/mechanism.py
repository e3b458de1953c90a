"""The DP-RDM private retrieval mechanism: the only way privdiff releases anything about private rows.

For every query row q̂ (Lebensold et al. 2024, arXiv 2403.14421; ``methods/dp-rdm.md`` §3 steps
2-6 and §4.1)::

    M(D) = (1/k) Σ_{j=1..k} r_j  +  N(0, σ² I_d)

where r_1..r_k are the k records of a fresh Poisson(q) subsample of D with the largest inner
product with q̂, **padded with the zero vector** when the subsample holds fewer than k records, and
the sum is divided by k (not by the number found). The authors' code instead pads with the
dataset's last record (faiss returns id -1 and ``embedding[-1]`` is read: gotcha (a) in §3), which
breaks the sensitivity bound; the zero pad is a fixed public vector, so adding one record changes
the sum by at most one unit vector (it fills a pad slot) or one swap (it displaces the k-th
neighbour): Δ₂ ≤ 2/k (§4.2). Each query is then one Poisson-subsampled Gaussian mechanism with
noise multiplier z = σk/2 (§4.3), which :class:`privdiff.accounting.DPRDMQuery` accounts for.

Order of operations per call of :meth:`DPRetriever.query`:

1. validate everything (typed errors; nothing charged on bad input);
2. charge the ledger for all B rows in one atomic call (over budget → nothing computed);
3. the top-k backend (``backends``: exact or IVF) draws the subsample and returns the padded
   top-k sum of each query (never ids); → sum/k → + Gaussian noise (``strategies``), with DP
   randomness drawn from a generator freshly seeded from OS entropy;
4. return a :class:`PrivateRelease` holding only the noisy vectors and public parameters.

If step 3 fails after the charge (e.g. out of memory), the charge stands and nothing is
released: spending budget without releasing is safe, the reverse never happens.

**Randomness.** Subsampling and noise are both part of the mechanism, so both come from
``np.random.default_rng()`` created inside each call: numpy seeds it from ``secrets`` (OS
entropy) through ``SeedSequence``, so ``np.random.seed``, ``torch.manual_seed`` or any user seed
cannot reproduce it, and a forked worker cannot inherit and replay a parent's noise stream.

**Known limitation (floating point).** The Gaussian noise is sampled and added in IEEE doubles.
Mironov (2012, "On significance of the least significant bits for differential privacy", CCS)
showed that textbook floating-point Laplace sampling can leak through the pattern of
representable outputs; the same concern applies in principle to floating-point Gaussian noise.
We follow the paper and the field's libraries (Opacus, TF-Privacy) in not using a discretised or
snapping mechanism; the float32 rounding of the release is post-processing.

**The boundary is a code convention, not a sandbox.** The index and its rows live in private
attributes of the backend, the class exposes no method returning ids, distances or neighbours,
and its ``repr`` shows parameters only. Code in the same process can still reach private attributes; reviews and
tests keep the rest of privdiff outside. Timing side channels (how long a query takes) are not
defended against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from privdiff.errors import (
    EncoderMismatch,
    InvalidParameter,
    PrivdiffError,
    check_in_range,
    check_int,
    check_positive,
)
from privdiff.retrieval.private.backends import ExactTopK, TopKBackend
from privdiff.retrieval.private.index import SHORT_FINGERPRINT, EmbeddingIndex, IndexManifest
from privdiff.retrieval.private.strategies import (
    GaussianNoise,
    NoiseStrategy,
    PaddingStrategy,
    ZeroPadding,
)

__all__ = ["QUERY_NORM_TOLERANCE", "DPRetriever", "PrivateRelease"]

#: Query rows must have | ‖q‖₂ − 1 | ≤ this; they are then renormalised exactly. Queries are
#: public, so their norm costs no privacy; the check exists to catch callers that pass
#: un-normalised or wrong arrays (e.g. raw features) instead of encoder outputs. 1e-2 leaves room
#: for float16 encoders.
QUERY_NORM_TOLERANCE = 1e-2

#: A backend's sums must satisfy ‖sum_b‖ ≤ count_b · (1 + this) (each summed row has norm ≤ 1).
_SUM_NORM_SLACK = 1e-6


@dataclass(frozen=True)
class PrivateRelease:
    """What one call of :meth:`DPRetriever.query` releases: privatised vectors + public numbers.

    Attributes:
        vectors: (B, d) float32, read-only; row b is r̃_b = r̄_b + σξ_b (§3 step 6). Everything
            computed from it (λ-mixing, sampling, images) is post-processing.
        sigma: σ, noise standard deviation per coordinate.
        sample_rate: q, Poisson subsampling rate.
        k: number of neighbours averaged.
        noise_multiplier: z = σk/2.
        delta: the ledger's δ.
        epsilon_spent: the ledger's ε after this release was charged.
        epsilon_remaining: budget ε minus ``epsilon_spent``.
        space_id: the embedding space of ``vectors``.

    It deliberately has no ids, neighbours, distances, scores, subsample sizes or raw embeddings.
    """

    vectors: np.ndarray = field(repr=False)
    sigma: float
    sample_rate: float
    k: int
    noise_multiplier: float
    delta: float
    epsilon_spent: float
    epsilon_remaining: float
    space_id: str

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


def _validate_queries(embeddings: Any, dim: int) -> np.ndarray:
    """(B, d) finite, near-unit rows → exactly normalised float32 copy; else InvalidParameter."""
    if isinstance(embeddings, PrivateRelease):
        raise InvalidParameter("embeddings", "a PrivateRelease", "public query embeddings (B, d)")
    try:
        arr = np.asarray(embeddings)
    except Exception:  # noqa: BLE001 - anything unconvertible is a bad argument
        raise InvalidParameter("embeddings", type(embeddings).__name__, "a float array (B, d)") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidParameter("embeddings", f"dtype {arr.dtype}", "a real-valued array (B, d)")
    if arr.ndim != 2:
        raise InvalidParameter(
            "embeddings",
            f"array of shape {arr.shape}",
            f"a 2-D array (B, {dim})",
            hint="use x[None] for one query",
        )
    if arr.shape[0] < 1:
        raise InvalidParameter("embeddings", f"array of shape {arr.shape}", "at least one query row")
    if arr.shape[1] != dim:
        raise InvalidParameter("embeddings", f"dimension {arr.shape[1]}", f"dimension {dim} (the index's)")
    a64 = arr.astype(np.float64)
    finite = np.isfinite(a64).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise InvalidParameter("embeddings", f"row {bad} has NaN/inf", "finite values")
    norms = np.linalg.norm(a64, axis=1)
    if (norms == 0).any():
        bad = int(np.flatnonzero(norms == 0)[0])
        raise InvalidParameter("embeddings", f"row {bad} is the zero vector", "unit-norm rows")
    dev = np.abs(norms - 1.0)
    if (dev > QUERY_NORM_TOLERANCE).any():
        bad = int(np.argmax(dev))
        raise InvalidParameter(
            "embeddings",
            f"row {bad} has norm {norms[bad]:.6g}",
            f"unit-norm rows (|norm - 1| <= {QUERY_NORM_TOLERANCE:g})",
            hint="L2-normalise encoder outputs, e.g. privdiff.encoders.l2_normalize",
        )
    return np.ascontiguousarray(a64 / norms[:, None], dtype=np.float32)


def _fresh_dp_rng() -> np.random.Generator:
    # default_rng() with no seed draws 128 bits from the OS via SeedSequence (secrets.randbits);
    # creating it per call makes it independent of np.random's global state and fork-safe.
    return np.random.default_rng()


class DPRetriever:
    """DP-RDM's private retrieval: charge → Poisson subsample → top-k → pad → mean → + N(0, σ²I).

    Args:
        backend: a top-k backend (:class:`~privdiff.retrieval.private.backends.ExactTopK`,
            :class:`~privdiff.retrieval.private.backends.IVFTopK`, or any
            :class:`~privdiff.retrieval.private.backends.TopKBackend`), or an
            :class:`~privdiff.retrieval.private.index.EmbeddingIndex` (unit rows), which is
            served by ``ExactTopK`` (the default, exact search).
        k: κ, neighbours averaged per query (≥ 1; k > N is allowed: the zero padding covers it).
        sigma: σ > 0, noise std per coordinate (absolute, not a multiplier; z = σk/2).
        sample_rate: q ∈ (0, 1], Poisson subsampling rate (1 = no subsampling).
        ledger: a :class:`privdiff.accounting.Ledger` (or an object with the same ``charge``). If
            it is bound to an index, that must be this one (same manifest fingerprint); an
            unbound ledger that names a dataset must name this index (source spec or directory).
        query_space: optional encoder ``space_id`` of the queries; must equal the index's.
        noise, padding: the mechanism's noise and padding steps (``strategies``); the defaults,
            :class:`GaussianNoise` and :class:`ZeroPadding`, are the analysed mechanism. Other
            values exist for the audit's broken controls only and show in the ``repr``.

    The constructor takes no seed on purpose (module docstring, "Randomness").
    """

    __slots__ = (
        "_backend",
        "_manifest",
        "_k",
        "_sigma",
        "_sample_rate",
        "_ledger",
        "_query",
        "_query_space",
        "_noise",
        "_padding",
    )

    def __init__(
        self,
        backend: TopKBackend | EmbeddingIndex,
        k: int,
        sigma: float,
        sample_rate: float,
        ledger: Any,
        *,
        query_space: str | None = None,
        noise: NoiseStrategy | None = None,
        padding: PaddingStrategy | None = None,
    ):
        from privdiff.accounting import DPRDMQuery

        if isinstance(backend, EmbeddingIndex):
            backend = ExactTopK(backend)  # the convenience: an index means exact search
        if not isinstance(backend, TopKBackend) or not isinstance(backend.manifest, IndexManifest):
            raise InvalidParameter(
                "backend",
                type(backend).__name__,
                "an EmbeddingIndex (see privdiff.retrieval.load_index) or a top-k backend (ExactTopK, IVFTopK)",
            )
        noise = GaussianNoise() if noise is None else noise
        padding = ZeroPadding() if padding is None else padding
        if not isinstance(noise, NoiseStrategy):
            raise InvalidParameter("noise", type(noise).__name__, "a noise strategy (default GaussianNoise())")
        if not isinstance(padding, PaddingStrategy):
            raise InvalidParameter("padding", type(padding).__name__, "a padding strategy (default ZeroPadding())")
        manifest = backend.manifest
        self._k = check_int("k", k, minimum=1)
        self._sigma = check_positive("sigma", sigma)
        self._sample_rate = check_in_range("sample_rate", sample_rate, 0.0, 1.0)
        if ledger is None or not callable(getattr(ledger, "charge", None)):
            raise InvalidParameter("ledger", type(ledger).__name__, "a privdiff.accounting.Ledger")
        if query_space is not None and query_space != manifest.space_id:
            raise EncoderMismatch(expected=manifest.space_id, found=query_space, what="query encoder")
        _check_ledger_names_index(ledger, manifest, backend.path)
        self._backend = backend
        self._manifest = manifest
        self._noise = noise
        self._padding = padding
        self._ledger = ledger
        self._query_space = query_space
        self._query = DPRDMQuery(sigma=self._sigma, sample_rate=self._sample_rate, k=self._k)

    # --- public parameters ------------------------------------------------------------------
    @property
    def k(self) -> int:
        return self._k

    @property
    def sigma(self) -> float:
        return self._sigma

    @property
    def sample_rate(self) -> float:
        return self._sample_rate

    @property
    def noise_multiplier(self) -> float:
        """z = σk/2 (§4.3)."""
        return self._query.noise_multiplier

    @property
    def dp_query(self):
        """The :class:`privdiff.accounting.DPRDMQuery` each row is charged as."""
        return self._query

    @property
    def space_id(self) -> str:
        return self._manifest.space_id

    @property
    def dim(self) -> int:
        return self._manifest.dim

    def __repr__(self) -> str:
        extra = ""
        if not isinstance(self._backend, ExactTopK):
            extra += f", backend={self._backend!r}"
        if not isinstance(self._noise, GaussianNoise):
            extra += f", noise={self._noise!r}"
        if not isinstance(self._padding, ZeroPadding):
            extra += f", padding={self._padding!r}"
        return (
            f"DPRetriever(k={self._k}, sigma={self._sigma:g}, sample_rate={self._sample_rate:g}, "
            f"noise_multiplier={self.noise_multiplier:g}, space_id={self.space_id!r}{extra})"
        )

    # --- the mechanism ----------------------------------------------------------------------
    def query(
        self, embeddings: np.ndarray, request_id: str | None = None, *, space_id: str | None = None
    ) -> PrivateRelease:
        """Privately retrieve one context vector per query row; charges B queries first.

        Args:
            embeddings: (B, d) public query embeddings (unit rows, |‖q‖−1| ≤ 1e-2; renormalised).
            request_id: passed to the ledger (idempotency / audit trail).
            space_id: optional encoder space of ``embeddings``; must equal the index's.

        Raises:
            InvalidParameter / EncoderMismatch: bad input; nothing charged.
            PrivacyBudgetExceeded: the B queries do not fit in the budget; nothing charged,
                nothing computed.
        """
        if space_id is not None and space_id != self._manifest.space_id:
            raise EncoderMismatch(expected=self._manifest.space_id, found=space_id, what="query embeddings")
        queries = _validate_queries(embeddings, self._manifest.dim)
        if request_id is not None and not isinstance(request_id, str):
            raise InvalidParameter("request_id", request_id, "a string or None")
        charge = self._ledger.charge(self._query, count=queries.shape[0], request_id=request_id)
        charged = getattr(charge, "queries_charged", None)
        if charged is not None and charged != queries.shape[0]:
            # E.g. a ledger that treats a repeated request_id as already paid: a fresh release
            # would then go out unpaid. Refuse rather than trust it.
            from privdiff.errors import LedgerError

            raise LedgerError(f"ledger charged {charged} queries for a batch of {queries.shape[0]}; nothing released")
        rng = _fresh_dp_rng()
        sums, counts = self._backend.topk_sums(queries, self._k, self._sample_rate, rng)
        _check_backend_sums(sums, counts, queries.shape, self._k, self._backend)
        aggregate = self._padding.complete(sums, counts, self._k, self._backend) / float(self._k)
        noisy = aggregate + self._noise.sample(aggregate.shape, self._sigma, rng)
        vectors = noisy.astype(np.float32)
        vectors.setflags(write=False)
        spent, remaining, delta = _budget_after(charge)
        return PrivateRelease(
            vectors=vectors,
            sigma=self._sigma,
            sample_rate=self._sample_rate,
            k=self._k,
            noise_multiplier=self.noise_multiplier,
            delta=delta,
            epsilon_spent=spent,
            epsilon_remaining=remaining,
            space_id=self._manifest.space_id,
        )


def _check_backend_sums(sums: Any, counts: Any, shape: tuple[int, int], k: int, backend: Any) -> None:
    """Refuse a backend result that breaks what Δ₂ = 2/k needs (after the charge: nothing released).

    The mechanism cannot check that selection was top-k over a Poisson subsample, but it can check
    the shape, 0 ≤ count ≤ k, and ‖sum‖ ≤ count (each summed row has norm ≤ 1): a backend that
    skipped the unit-ball projection or returned more than k records is caught here.
    """
    B, d = shape
    ok = (
        isinstance(sums, np.ndarray)
        and isinstance(counts, np.ndarray)
        and sums.shape == (B, d)
        and counts.shape == (B,)
        and np.issubdtype(counts.dtype, np.integer)
        and np.isfinite(sums).all()
    )
    if ok:
        norms = np.linalg.norm(np.asarray(sums, dtype=np.float64), axis=1)
        ok = bool(((counts >= 0) & (counts <= k)).all() and (norms <= counts * (1.0 + _SUM_NORM_SLACK) + 1e-9).all())
    if not ok:
        raise PrivdiffError(
            f"top-k backend {type(backend).__name__} returned sums/counts that break the sensitivity bound "
            f"(expected (B, d) = {shape} finite sums with norm <= count and counts in [0, {k}]); nothing released"
        )


def _check_ledger_names_index(ledger: Any, manifest: IndexManifest, path: Path | None) -> None:
    """A ledger bound to an index must be used with that index only, or budgets get mixed up.

    One private dataset has one budget: charging queries on index B to the ledger of dataset A
    would leave B's spending unrecorded. A ledger created with ``budget init --index DIR`` is
    bound to the index's fingerprint (the sha256 of its manifest), so the path the index is
    opened by does not matter. A ledger from before binding existed may instead name its
    dataset (the index's source spec, its directory or its vectors' sha256); that is still
    enforced. A ledger that is neither bound nor named is not checked.
    """
    from privdiff.errors import LedgerError, LedgerIndexMismatch

    short = manifest.fingerprint[:SHORT_FINGERPRINT]
    bound = getattr(ledger, "index_fingerprint", "") or ""
    if isinstance(bound, str) and bound:
        if bound != manifest.fingerprint:
            raise LedgerIndexMismatch(
                f"ledger is bound to index {bound[:12]}, but this index is {short} "
                f"({manifest.source or path or 'in memory'}): use this index's own ledger"
            )
        return
    name = getattr(ledger, "dataset", "") or ""
    if not isinstance(name, str) or not name:
        return
    accepted = {manifest.source, manifest.sha256}
    if path is not None:
        accepted |= {str(path), str(path.resolve())}
    accepted.discard("")
    same_dir = False
    if path is not None:
        try:  # the same directory by another spelling (relative vs absolute, a symlink)
            same_dir = Path(name).resolve() == path.resolve()
        except (OSError, ValueError):
            same_dir = False
    if name not in accepted and not same_dir:
        raise LedgerError(
            f"ledger is for dataset {name!r}, but this index is {manifest.source or path!s} "
            f"(index {short}): use this dataset's ledger. An unbound ledger's dataset must "
            f"be empty or name the index (its source spec {manifest.source!r} or its directory); "
            "bind a ledger to an index with `privdiff budget init LEDGER --index DIR ...`"
        )


def _budget_after(charge: Any) -> tuple[float, float, float]:
    """(ε spent, ε remaining, δ) after a charge, read from the ledger's Charge record."""
    return float(charge.epsilon_spent), float(charge.epsilon_remaining), float(charge.delta)
