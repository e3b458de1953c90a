"""The DP-RDM private retrieval mechanism: the only code in privdiff that reads private embeddings.

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
3. subsample → exact top-k → pad → sum/k → + Gaussian noise, with DP randomness drawn from a
   generator freshly seeded from OS entropy;
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
attributes, the class exposes no method returning ids, distances or neighbours, and its ``repr``
shows parameters only. Code in the same process can still reach private attributes; reviews and
tests keep the rest of privdiff outside. Timing side channels (how long a query takes) are not
defended against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from privdiff.errors import EncoderMismatch, InvalidParameter, check_in_range, check_int, check_positive
from privdiff.retrieval.index import EmbeddingIndex
from privdiff.retrieval.search import subsampled_topk

__all__ = ["QUERY_NORM_TOLERANCE", "DPRetriever", "PrivateRelease"]

#: Query rows must have | ‖q‖₂ − 1 | ≤ this; they are then renormalised exactly. Queries are
#: public, so their norm costs no privacy; the check exists to catch callers that pass
#: un-normalised or wrong arrays (e.g. raw features) instead of encoder outputs. 1e-2 leaves room
#: for float16 encoders.
QUERY_NORM_TOLERANCE = 1e-2

# The (rows, k, d) float64 temporary of the aggregate is chunked to this many cells (32 MiB).
_AGGREGATE_CELLS = 4 * 1024 * 1024


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
            "embeddings", f"array of shape {arr.shape}", f"a 2-D array (B, {dim})", hint="use x[None] for one query"
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


def padded_topk_mean(vectors: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Pre-noise aggregate r̄ = (1/k) Σ_j r_j with -1 ids replaced by the zero vector (§3 step 5).

    Args:
        vectors: (N, d) index rows.
        ids: (B, k) selected ids, -1 where fewer than k records were sampled.
        k: the divisor, always the requested k (never the number found).

    Returns (B, d) float64. Fetched rows are projected onto the unit ball and non-finite rows
    are zeroed, so ‖r_j‖ ≤ 1 holds, and with it Δ₂ ≤ 2/k, whatever the file on disk contains
    (``load_index`` reports corruption; this only guarantees the bound).
    """
    B, width = ids.shape
    d = vectors.shape[1]
    out = np.empty((B, d), dtype=np.float64)
    step = max(1, _AGGREGATE_CELLS // max(1, width * d))
    for s in range(0, B, step):
        chunk = ids[s : s + step]
        found = chunk >= 0
        rows = np.zeros((chunk.shape[0], width, d), dtype=np.float64)
        if found.any():
            rows[found] = np.asarray(vectors[chunk[found]], dtype=np.float64)
        rows[~np.isfinite(rows).all(axis=2)] = 0.0
        norms = np.linalg.norm(rows, axis=2, keepdims=True)
        rows /= np.maximum(norms, 1.0)
        out[s : s + step] = rows.sum(axis=1) / float(k)
    return out


def _fresh_dp_rng() -> np.random.Generator:
    # default_rng() with no seed draws 128 bits from the OS via SeedSequence (secrets.randbits);
    # creating it per call makes it independent of np.random's global state and fork-safe.
    return np.random.default_rng()


class DPRetriever:
    """DP-RDM's private retrieval: charge → Poisson subsample → top-k → pad → mean → + N(0, σ²I).

    Args:
        index: the private :class:`~privdiff.retrieval.index.EmbeddingIndex` (unit rows).
        k: κ, neighbours averaged per query (≥ 1; k > N is allowed: the zero padding covers it).
        sigma: σ > 0, noise std per coordinate (absolute, not a multiplier; z = σk/2).
        sample_rate: q ∈ (0, 1], Poisson subsampling rate (1 = no subsampling).
        ledger: a :class:`privdiff.accounting.Ledger` (or an object with the same ``charge``). If
            it is bound to an index, that must be this one (same manifest fingerprint); an
            unbound ledger that names a dataset must name this index (source spec or directory).
        query_space: optional encoder ``space_id`` of the queries; must equal the index's.
        ivf: optional :class:`~privdiff.retrieval.ivf.IVFLayout` (coarse centroids trained on
            public data only) for approximate search over the ``nprobe`` nearest lists; the
            privacy analysis is unchanged (see ``privdiff.retrieval.ivf``). ``None``: exact.
        nprobe: lists probed per query when ``ivf`` is given.

    The constructor takes no seed on purpose (module docstring, "Randomness").
    """

    __slots__ = (
        "_index", "_vectors", "_k", "_sigma", "_sample_rate", "_ledger", "_query", "_query_space", "_ivf", "_nprobe",
    )

    def __init__(
        self,
        index: EmbeddingIndex,
        k: int,
        sigma: float,
        sample_rate: float,
        ledger: Any,
        *,
        query_space: str | None = None,
        ivf: Any = None,
        nprobe: int = 8,
    ):
        from privdiff.accounting import DPRDMQuery
        from privdiff.retrieval.ivf import IVFLayout

        if not isinstance(index, EmbeddingIndex):
            raise InvalidParameter("index", type(index).__name__, "an EmbeddingIndex (see privdiff.retrieval.load_index)")
        self._k = check_int("k", k, minimum=1)
        self._sigma = check_positive("sigma", sigma)
        self._sample_rate = check_in_range("sample_rate", sample_rate, 0.0, 1.0)
        if ledger is None or not callable(getattr(ledger, "charge", None)):
            raise InvalidParameter("ledger", type(ledger).__name__, "a privdiff.accounting.Ledger")
        if query_space is not None and query_space != index.space_id:
            raise EncoderMismatch(expected=index.space_id, found=query_space, what="query encoder")
        _check_ledger_names_index(ledger, index)
        if ivf is not None:
            if not isinstance(ivf, IVFLayout):
                raise InvalidParameter("ivf", type(ivf).__name__, "an IVFLayout (public centroids) or None")
            if ivf.count != index.count:
                raise InvalidParameter("ivf", repr(ivf), f"a layout built from this index ({index.count} records)")
            nprobe = check_int("nprobe", nprobe, minimum=1, maximum=ivf.quantizer.nlist)
        self._ivf = ivf
        self._nprobe = nprobe
        self._index = index
        self._vectors = index._vectors  # the single read of private rows in privdiff
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
        return self._index.space_id

    @property
    def dim(self) -> int:
        return self._index.dim

    def __repr__(self) -> str:
        search = "" if self._ivf is None else f", ivf_nlist={self._ivf.quantizer.nlist}, nprobe={self._nprobe}"
        return (
            f"DPRetriever(k={self._k}, sigma={self._sigma:g}, sample_rate={self._sample_rate:g}, "
            f"noise_multiplier={self.noise_multiplier:g}, space_id={self.space_id!r}{search})"
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
        if space_id is not None and space_id != self._index.space_id:
            raise EncoderMismatch(expected=self._index.space_id, found=space_id, what="query embeddings")
        queries = _validate_queries(embeddings, self._index.dim)
        if request_id is not None and not isinstance(request_id, str):
            raise InvalidParameter("request_id", request_id, "a string or None")
        charge = self._ledger.charge(self._query, count=queries.shape[0], request_id=request_id)
        charged = getattr(charge, "queries_charged", None)
        if charged is not None and charged != queries.shape[0]:
            # E.g. a ledger that treats a repeated request_id as already paid: a fresh release
            # would then go out unpaid. Refuse rather than trust it.
            from privdiff.errors import LedgerError

            raise LedgerError(
                f"ledger charged {charged} queries for a batch of {queries.shape[0]}; nothing released"
            )
        rng = _fresh_dp_rng()
        aggregate = self._pre_noise_aggregate(queries, rng)
        noisy = aggregate + self._noise_std() * rng.standard_normal(aggregate.shape)
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
            space_id=self._index.space_id,
        )

    # Internal steps, separated so the audit's deliberately broken variants
    # (privdiff.evaluation.audit) can override exactly one of them. Not part of the API.
    def _pre_noise_aggregate(self, queries: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self._ivf is None:
            ids = subsampled_topk(self._vectors, queries, self._k, self._sample_rate, rng)
        else:
            from privdiff.retrieval.ivf import ivf_subsampled_topk

            ids = ivf_subsampled_topk(
                self._vectors, self._ivf, queries, self._k, self._sample_rate, self._nprobe, rng
            )
        return padded_topk_mean(self._vectors, ids, self._k)

    def _noise_std(self) -> float:
        return self._sigma


def _check_ledger_names_index(ledger: Any, index: EmbeddingIndex) -> None:
    """A ledger bound to an index must be used with that index only, or budgets get mixed up.

    One private dataset has one budget: charging queries on index B to the ledger of dataset A
    would leave B's spending unrecorded. A ledger created with ``budget init --index DIR`` is
    bound to the index's fingerprint (the sha256 of its manifest), so the path the index is
    opened by does not matter. A ledger from before binding existed may instead name its
    dataset (the index's source spec, its directory or its vectors' sha256); that is still
    enforced. A ledger that is neither bound nor named is not checked.
    """
    from privdiff.errors import LedgerError, LedgerIndexMismatch

    bound = getattr(ledger, "index_fingerprint", "") or ""
    if isinstance(bound, str) and bound:
        if bound != index.fingerprint:
            raise LedgerIndexMismatch(
                f"ledger is bound to index {bound[:12]}, but this index is {index.short_fingerprint} "
                f"({index.manifest.source or index.path or 'in memory'}): use this index's own ledger"
            )
        return
    name = getattr(ledger, "dataset", "") or ""
    if not isinstance(name, str) or not name:
        return
    accepted = {index.manifest.source, index.manifest.sha256}
    if index.path is not None:
        accepted |= {str(index.path), str(index.path.resolve())}
    accepted.discard("")
    same_dir = False
    if index.path is not None:
        try:  # the same directory by another spelling (relative vs absolute, a symlink)
            same_dir = Path(name).resolve() == index.path.resolve()
        except (OSError, ValueError):
            same_dir = False
    if name not in accepted and not same_dir:
        raise LedgerError(
            f"ledger is for dataset {name!r}, but this index is {index.manifest.source or index.path!s} "
            f"(index {index.short_fingerprint}): use this dataset's ledger. An unbound ledger's dataset must "
            f"be empty or name the index (its source spec {index.manifest.source!r} or its directory); "
            "bind a ledger to an index with `privdiff budget init LEDGER --index DIR ...`"
        )


def _budget_after(charge: Any) -> tuple[float, float, float]:
    """(ε spent, ε remaining, δ) after a charge, read from the ledger's Charge record."""
    return float(charge.epsilon_spent), float(charge.epsilon_remaining), float(charge.delta)
