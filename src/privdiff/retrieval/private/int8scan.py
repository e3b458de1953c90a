"""int8 per-row-scaled scan copy: quantisation, its proven error bound, and the compiled gather-dot.

An index row e (float32, ‖e‖₂ ≤ 1 + τ) is stored for the scan as a scale s_e = max_i |e_i| / 127
(float32) and codes ê = round(e / s_e) ∈ [-127, 127]^d (int8), a quarter of the float32 bytes plus
4 bytes per row. A query x is quantised the same way but finer (s_x = max|x_i| / L_q with
L_q = min(32767, ⌊(2³¹ − 1) / (127 d)⌋) levels, int16 codes x̂: 32,766 levels at d = 512), which
makes the query's own rounding error negligible in the bound at no cost (the kernel widens to
int16 anyway). The scan scores a (row, query) pair as a = fl₃₂(fl₃₂(ê·x̂) · fl₃₂(s_e s_x)), the
integer dot product ê·x̂ being exact in int32 (|ê·x̂| ≤ 127 L_q d < 2³¹);
:func:`int8_scan_slack` bounds |fl₃₂(x·e) − a| so that ``search._sparse_topk`` can keep every pair
that may belong to the exact float32 top-k and re-rank those in float32 (same ids, always).

The kernel (:func:`score_pairs_int8`) is compiled with numba, an optional dependency
(``pip install 'privdiff[fast]'``): it is imported, and the kernel compiled, on first use only, so
nothing on privdiff's default import path needs numba. Without numba an int8 scan is refused with
:class:`~privdiff.errors.MissingDependency` when the backend is created (before any charge); it
never silently falls back.

Internal to the privacy boundary (``privdiff.retrieval.private``): everything here reads private
rows and returns private scores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from privdiff.errors import InvalidParameter, MissingDependency

__all__ = [
    "INT8_MAX_DIM",
    "Int8ScanCopy",
    "int8_scan_slack",
    "numba_available",
    "query_levels",
    "quantise_rows",
    "row_stats",
    "score_pairs_int8",
    "score_pairs_int8_kept",
]

#: int32 accumulation of d products of magnitude ≤ 127² is exact while d·127² < 2³¹.
INT8_MAX_DIM = (2**31 - 1) // (127 * 127)
_INSTALL = "pip install 'privdiff[fast]'"


@dataclass(frozen=True)
class Int8ScanCopy:
    """The int8 scan copy of an index's rows and the index-wide maxima its error bound uses.

    codes: (N, d) int8; scales: (N,) float32 (codes · scale ≈ row). The maxima are over all rows,
    computed in float64 from the stored float32 rows when the copy was made (:func:`row_stats`):
    ``max_resid_inf`` = max ‖e − s_e ê‖_∞, ``max_resid_l2`` = max ‖e − s_e ê‖₂,
    ``max_l1`` = max ‖s_e ê‖₁, ``max_l2`` = max ‖s_e ê‖₂.
    """

    codes: np.ndarray
    scales: np.ndarray
    max_resid_inf: float
    max_resid_l2: float
    max_l1: float
    max_l2: float

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.scales.nbytes)


def query_levels(d: int) -> int:
    """L_q, the query codes' largest magnitude: int16, and 127 · L_q · d < 2³¹ (exact int32 dots)."""
    return int(min(32767, (2**31 - 1) // (127 * max(1, int(d)))))


def quantise_rows(rows: np.ndarray, levels: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric quantisation: ``(codes (n, d), scales float32 (n,))``.

    s = fl₃₂(max|e_i| / levels) (an all-zero row gets s = 1, codes 0); codes = clip(rint(e / s))
    in float64, int8 for ``levels`` ≤ 127 (index rows), int16 up to 32767 (queries). Whatever
    float32 value s takes, the residual e − s·ê is measured afterwards (:func:`row_stats`), so
    the bound never assumes |e_i − s ê_i| ≤ s/2.
    """
    e = np.asarray(rows, dtype=np.float64)
    if e.ndim != 2:
        raise InvalidParameter("rows", f"shape {e.shape}", "a 2-d array")
    if not 1 <= levels <= 32767:
        raise InvalidParameter("levels", levels, "1 <= levels <= 32767")
    amax = np.abs(e).max(axis=1) if e.shape[1] else np.zeros(e.shape[0])
    scales = (amax / float(levels)).astype(np.float32)
    scales[scales == 0] = 1.0
    dtype = np.int8 if levels <= 127 else np.int16
    codes = np.clip(np.rint(e / scales.astype(np.float64)[:, None]), -levels, levels).astype(dtype)
    return codes, scales


def row_stats(rows: np.ndarray, codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Per row (float64, (n, 4)): ‖δ‖_∞, ‖δ‖₂, ‖s ê‖₁, ‖s ê‖₂ with δ = e − s ê (the bound's inputs)."""
    e = np.asarray(rows, dtype=np.float64)
    rec = codes.astype(np.float64) * scales.astype(np.float64)[:, None]  # exact: 8-bit × 24-bit
    resid = e - rec
    return np.stack(
        [
            np.abs(resid).max(axis=1),
            np.linalg.norm(resid, axis=1),
            np.abs(rec).sum(axis=1),
            np.linalg.norm(rec, axis=1),
        ],
        axis=1,
    )


def int8_scan_slack(queries: np.ndarray, copy: Int8ScanCopy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantise the queries and return ``(codes, scales, 2β per query)`` for an int8 scan of ``copy``.

    Derivation (ours; the float32 terms reuse ``search.float16_scan_slack``'s). Row e = s_e ê + δ_e,
    query x = s_x x̂ + δ_x (δ measured, not assumed). Then exactly

        x·e − s_e s_x (x̂·ê) = x·δ_e + δ_x·(s_e ê),

    (expand x·(s_e ê + δ_e) and s_e (s_x x̂ + δ_x)·ê). Each term is bounded two ways, Hölder
    (ℓ₁/ℓ∞) and Cauchy-Schwarz (ℓ₂/ℓ₂), with the index-wide maxima R_∞, R₂ (of ‖δ_e‖), L₁, L₂ (of
    ‖s_e ê‖) stored with the copy:

        Q := min(‖x‖₁ R_∞ + ‖δ_x‖_∞ L₁,  ‖x‖₂ R₂ + ‖δ_x‖₂ L₂).

    With L_q query levels (:func:`query_levels`) ‖δ_x‖ is ~L_q/127 times smaller than e's, so Q is
    essentially ‖x‖₂ R₂ (the rows' own rounding, which no query-side choice can remove).

    Rounding of the scan score. ê·x̂ is an exact int32 (every partial sum is at most
    Σ|ê_i x̂_i| ≤ 127 L_q d < 2³¹); a = fl₃₂(fl₃₂(ê·x̂) · fl₃₂(s_e s_x)) takes three float32 roundings, so
    |a − s_e s_x ê·x̂| ≤ γ₃ |s_e s_x ê·x̂| ≤ γ₃ ‖s_x x̂‖_∞ L₁ with γ₃ = 3u/(1 − 3u), u = 2⁻²⁴
    (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., Lemma 3.1); should
    fl₃₂(s_e s_x) or a fall below the normal range (only for queries of norm ≲ 1e-30), each of
    those two roundings adds at most 2⁻¹⁵⁰ absolute, times |ê·x̂| ≤ 127 L_q d for the first:
    the term (127 L_q d + 1) 2⁻¹⁴⁹ covers it.
    Rounding of the exact path: |fl₃₂(x·e) − x·e| ≤ γ_d ‖x‖₂ (1 + τ) (Higham (3.5), any summation
    order, FMA or not; τ = ``UNIT_NORM_TOLERANCE``).

    So |fl₃₂(x·e) − a| ≤ β := Q + γ₃ ‖s_x x̂‖_∞ L₁ + (127 L_q d + 1) 2⁻¹⁴⁹ + γ_d ‖x‖₂ (1 + τ),
    and keeping every pair with a ≥ a₍ₖ₎ − 2β keeps the exact float32 top-k (the argument of
    ``float16_scan_slack``, with this β). All norms are computed in float64 (relative error
    ≲ d·2⁻⁵³); the result is inflated by 1e-6 (relative) to absorb that, and the caller rounds
    thresholds down to float32.
    """
    from privdiff.retrieval.private.index import UNIT_NORM_TOLERANCE

    x = np.asarray(queries, dtype=np.float64)
    d = x.shape[1]
    qcodes, qscales = quantise_rows(x, query_levels(d))
    st = row_stats(x, qcodes, qscales)  # ‖δ_x‖_∞, ‖δ_x‖₂, ‖s_x x̂‖₁, ‖s_x x̂‖₂
    l1, l2 = np.abs(x).sum(axis=1), np.linalg.norm(x, axis=1)
    quant = np.minimum(
        l1 * copy.max_resid_inf + st[:, 0] * copy.max_l1,
        l2 * copy.max_resid_l2 + st[:, 1] * copy.max_l2,
    )
    u32 = 2.0**-24
    gamma3 = 3 * u32 / (1 - 3 * u32)
    gamma_d = d * u32 / (1.0 - d * u32)
    xhat_inf = qscales.astype(np.float64) * np.abs(qcodes.astype(np.float64)).max(axis=1, initial=0.0)
    underflow = (127.0 * query_levels(d) * d + 1.0) * 2.0**-149
    beta = quant + gamma3 * xhat_inf * copy.max_l1 + underflow + gamma_d * l2 * (1.0 + float(UNIT_NORM_TOLERANCE))
    return np.ascontiguousarray(qcodes, dtype=np.int16), qscales, 2.0 * beta * (1.0 + 1e-6)


# --- the compiled kernel ------------------------------------------------------------------------

_KERNEL = None
_WARM = False  # compile_kernel has run the kernels on every argument type


def numba_available() -> bool:
    """Whether numba can be imported (the int8 scan's kernel needs it)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def require_numba(feature: str = "the int8 scan (scan='int8')") -> None:
    """Raise :class:`~privdiff.errors.MissingDependency` unless numba is importable."""
    if not numba_available():
        raise MissingDependency("numba", feature, install=_INSTALL)


def _cache_ok() -> bool:
    """numba's on-disk cache only where it can be written: NUMBA_CACHE_DIR, or next to this file.

    numba writes its cache to ``$NUMBA_CACHE_DIR`` if set, else to ``__pycache__`` beside the
    source (falling back to a user-wide directory with a warning). An unwritable location would
    warn on every process start; then the kernel is compiled in memory only (~1-2 s per process).
    """
    target = os.environ.get("NUMBA_CACHE_DIR")
    if target:
        return os.path.isdir(target) and os.access(target, os.W_OK)
    here = os.path.dirname(os.path.abspath(__file__))
    pyc = os.path.join(here, "__pycache__")
    return os.access(pyc if os.path.isdir(pyc) else here, os.W_OK)


def compile_kernel() -> None:
    """Compile the kernel now (or load it from numba's cache); MissingDependency without numba.

    numba compiles a function lazily, once per argument *type*, at its first call; a read-only
    array (an index memory-mapped for reading) is a different type from a writable one. So the
    kernels are called here on tiny arrays of every type a search passes them (int8 codes and
    float32 scales, read-only and writable; int16 query codes; int64 pair indices), and a search
    after this compiles nothing (tests/retrieval/test_scan_int8.py checks the signatures).
    """
    require_numba()
    _compile()
    global _WARM
    if _WARM:
        return
    rows, qid = np.zeros(2, dtype=np.int64), np.zeros(2, dtype=np.int64)
    thr = np.full(1, -np.inf, dtype=np.float32)
    for writable in (False, True):
        codes, scales = np.ones((1, 4), dtype=np.int8), np.ones(1, dtype=np.float32)
        codes.setflags(write=writable)
        scales.setflags(write=writable)
        copy = Int8ScanCopy(codes, scales, 0.0, 0.0, 4.0, 2.0)
        qcodes, qscales = np.ones((1, 4), dtype=np.int16), np.ones(1, dtype=np.float32)
        score_pairs_int8(copy, qcodes, qscales, rows, qid)
        score_pairs_int8_kept(copy, qcodes, qscales, rows, qid, thr)
    _WARM = True


def _compile():
    """Compile the kernel (first call in a process only). See ``benchmarks/scan.py`` for the variant choice."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    require_numba()
    import numba

    cache = _cache_ok()

    @numba.njit(cache=cache, nogil=True, boundscheck=False)
    def gather_dot(codes, qcodes, rows, qid, acc_out):  # pragma: no cover - compiled
        # One pair at a time, int8 row × int16 query, int32 accumulation (exact: 127·L_q·d < 2³¹);
        # LLVM vectorises it with
        # vpmaddwd. Measured against variants that reuse a row across its adjacent pairs (widen the
        # row once into a buffer; score two queries per row load): both slower here
        # (docs/results/scale/scan_README.md). The float scaling is a separate loop: in the same
        # loop nest LLVM drops the vpmaddwd pattern and the kernel runs 2x slower (measured).
        # No fastmath: integer sums are exact in any order, and the float32 scaling must round
        # as the bound assumes.
        d = codes.shape[1]
        for j in range(rows.size):
            r = rows[j]
            q = qid[j]
            acc = np.int32(0)
            for t in range(d):
                acc += np.int32(codes[r, t]) * np.int32(qcodes[q, t])
            acc_out[j] = acc

    @numba.njit(cache=cache, nogil=True, boundscheck=False)
    def scale(acc, scales, qscales, rows, qid, out):  # pragma: no cover - compiled
        for j in range(rows.size):
            out[j] = np.float32(acc[j]) * (scales[rows[j]] * qscales[qid[j]])

    @numba.njit(cache=cache, nogil=True, boundscheck=False)
    def scale_keep(acc, scales, qscales, rows, qid, thr, out_q, out_r, out_s):  # pragma: no cover - compiled
        # The scale loop fused with _Survivors.add's filter (drop a pair scoring below its query's
        # running threshold): saves numpy's mask and three gathers over every pair.
        m = 0
        for j in range(rows.size):
            r = rows[j]
            q = qid[j]
            a = np.float32(acc[j]) * (scales[r] * qscales[q])
            if not (a < thr[q]):
                out_q[m] = q
                out_r[m] = r
                out_s[m] = a
                m += 1
        return m

    _KERNEL = (gather_dot, scale, scale_keep)
    return _KERNEL


def score_pairs_int8(
    copy: Int8ScanCopy, qcodes: np.ndarray, qscales: np.ndarray, rows: np.ndarray, qid: np.ndarray
) -> np.ndarray:
    """a_j = fl₃₂(ê_{rows[j]}·x̂_{qid[j]}) · fl₃₂(s_e s_x) for every pair, as float32 (one thread)."""
    dot, scale, _ = _compile()
    if qcodes.dtype != np.int16:
        raise InvalidParameter("qcodes", str(qcodes.dtype), "int16 (int8scan.int8_scan_slack's codes, widened)")
    out = np.empty(rows.size, dtype=np.float32)
    if rows.size:
        acc = np.empty(rows.size, dtype=np.int32)
        dot(np.asarray(copy.codes), qcodes, rows, qid, acc)
        scale(acc, np.asarray(copy.scales), qscales, rows, qid, out)
    return out


def score_pairs_int8_kept(
    copy: Int8ScanCopy,
    qcodes: np.ndarray,
    qscales: np.ndarray,
    rows: np.ndarray,
    qid: np.ndarray,
    thr: np.ndarray,
    work: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`score_pairs_int8`, keeping only pairs with ``not (a < thr[qid])``: ``(qid, rows, a)``.

    Exactly the pairs ``search._Survivors.add`` would keep with thresholds ``thr`` (the same
    float32 comparison), so pre-filtering here changes nothing but the cost. ``work`` (a dict
    the caller keeps across blocks) holds the block-sized temporaries: fresh multi-MiB arrays
    per block cost page faults; the kept pairs are returned as copies, never views of it.
    """
    dot, _, scale_keep = _compile()
    if qcodes.dtype != np.int16:
        raise InvalidParameter("qcodes", str(qcodes.dtype), "int16 (int8scan.int8_scan_slack's codes, widened)")
    n = rows.size
    work = {} if work is None else work
    if work.get("n", -1) < n:
        work.update(
            n=n,
            acc=np.empty(n, dtype=np.int32),
            q=np.empty(n, dtype=np.int64),
            r=np.empty(n, dtype=np.int64),
            s=np.empty(n, dtype=np.float32),
        )
    acc, out_q, out_r, out_s = (work[key][:n] for key in ("acc", "q", "r", "s"))
    if n:
        dot(np.asarray(copy.codes), qcodes, rows, qid, acc)
        m = scale_keep(acc, np.asarray(copy.scales), qscales, rows, qid, thr, out_q, out_r, out_s)
    else:
        m = 0
    return out_q[:m].copy(), out_r[:m].copy(), out_s[:m].copy()
