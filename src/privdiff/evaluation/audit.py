"""Empirical privacy audit of the DP-RDM retrieval mechanism (a canary test with a lower bound on ε).

An (ε, δ)-DP mechanism M bounds every test that tries to tell M(D) from M(D'), D' = D ∪ {x}:
for any rejection region, FPR and FNR (false positive / false negative rates) satisfy

    1 − δ − FNR ≤ e^ε · FPR   and   1 − δ − FPR ≤ e^ε · FNR,

(the hypothesis-testing characterisation of DP: Wasserman & Zhou 2010; Kairouz, Oh & Viswanath
2015, "The composition theorem for differential privacy", ICML). So, from observed
errors, ε ≥ log((1 − δ − FNR)/FPR). Auditing replaces the rates by one-sided Clopper-Pearson upper
confidence bounds FPR_hi, FNR_hi, which gives a lower confidence bound ε̂ on the mechanism's true
ε (Jagielski, Ullman & Oprea 2020, "Auditing differentially private machine learning: how private
is private SGD?", NeurIPS; Nasr, Song, Thakurta, Papernot & Carlini 2021, "Adversary
instantiation: lower bounds for differentially private machine learning", IEEE S&P):

    ε̂ = max( log((1 − δ − FNR_hi)/FPR_hi), log((1 − δ − FPR_hi)/FNR_hi) ).

If ε̂ exceeds the accountant's ε the implementation (or the analysis) is broken, with the stated
confidence. Each of the two Clopper-Pearson bounds is taken at level α/2 so both hold jointly
with probability ≥ 1 − α (union bound; default α = 0.05, 95 % confidence). The threshold of the
test is chosen on a separate *selection* split of the runs and ε̂ is computed on the held-out
*evaluation* split, so choosing the best threshold does not void the confidence level.

The audit drives the **real** mechanism: :class:`~privdiff.retrieval.DPRetriever` over an
in-memory index, charging a real :class:`~privdiff.accounting.Ledger` in a temporary file with a
large budget. The canary set-up is the worst case of the sensitivity argument (§4.2 of
``methods/dp-rdm.md``): every base record is −c, the canary is c (unit vector), the query is c, so
including the canary moves the mean by exactly 2/k (or 1/k when it fills a pad slot). The
distinguisher is the projection ⟨r̃, c⟩ of the release on the canary direction, which is the
likelihood-ratio statistic for the Gaussian part of the mechanism (isotropic noise).

For a demonstration that the audit has teeth, two deliberately broken mechanisms are composed
here from the real retriever with one of its steps swapped (its ``noise`` / ``padding`` strategy
objects; the defaults are the analysed mechanism and nothing else in privdiff passes others):

* ``broken-pad-last-record``: pads short subsamples with the dataset's last record
  (:class:`~privdiff.retrieval.private.PadWithLastRecord`, which lives in the boundary because it
  reads a private row), reproducing the authors' faiss ``-1`` bug (gotcha (a) in §3); the canary
  is the last record of D'.
* ``broken-half-noise``: adds noise with std σ/2 while the ledger is charged for σ
  (:class:`HalfNoise`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from privdiff.errors import InvalidParameter, check_in_range, check_int, check_positive
from privdiff.retrieval.private import DPRetriever, EmbeddingIndex, PadWithLastRecord

__all__ = [
    "MECHANISMS",
    "STANDARD_SUITE",
    "run_suite",
    "AuditResult",
    "HalfNoise",
    "audit_retrieval",
    "clopper_pearson_upper",
    "epsilon_lower_bound",
    "write_audit_report",
]

_AUDIT_SPACE = "audit-canary/v1"
_CHUNK_ROWS = 20000  # query rows per mechanism call; bounds the (B, k, d) float64 temporaries
# The audit makes many releases on purpose (each one charged); the audited quantity is ε of ONE
# release, so the ledger only needs to be large enough never to refuse.
_AUDIT_BUDGET = 1e12


class HalfNoise:
    """BROKEN on purpose: noise std σ/2 while the ledger is charged for σ (a noise strategy)."""

    __slots__ = ()

    def sample(self, shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
        return (sigma / 2.0) * rng.standard_normal(shape)

    def __repr__(self) -> str:
        return "HalfNoise(BROKEN)"


#: Mechanisms the audit can run, as the keyword arguments that compose them from the real
#: :class:`DPRetriever`: the real one (its default strategies) and two broken controls.
MECHANISMS: dict[str, dict[str, Any]] = {
    "dp": {},
    "broken-pad-last-record": {"padding": PadWithLastRecord()},
    "broken-half-noise": {"noise": HalfNoise()},
}


def clopper_pearson_upper(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """One-sided (1 − α) Clopper-Pearson upper bound on a binomial rate (Clopper & Pearson 1934).

    p_hi = Beta⁻¹(1 − α; x + 1, n − x), and 1 when x = n.
    """
    from scipy import stats

    x = np.asarray(successes, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        hi = stats.beta.ppf(1.0 - alpha, x + 1.0, trials - x)
    return np.where(x >= trials, 1.0, hi)


def epsilon_lower_bound(
    scores_null: np.ndarray,
    scores_alt: np.ndarray,
    thresholds: np.ndarray,
    delta: float,
    alpha: float = 0.05,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ε̂ at each threshold t of the test "say D' when score > t" (module docstring formula).

    Args:
        scores_null: distinguisher scores of releases from D (without the canary).
        scores_alt: scores of releases from D' (with the canary).
        thresholds: candidate thresholds.
        delta: δ of the guarantee being audited.
        alpha: 1 − confidence; each CP bound is taken at α/2.

    Returns:
        ``(eps_hat, fpr, fnr)`` arrays over thresholds (point estimates of the rates for plots);
        ``eps_hat`` is the larger of the two directions, floored at 0.
    """
    s0 = np.sort(np.asarray(scores_null, dtype=np.float64))
    s1 = np.sort(np.asarray(scores_alt, dtype=np.float64))
    t = np.asarray(thresholds, dtype=np.float64)
    n0, n1 = len(s0), len(s1)
    fp = n0 - np.searchsorted(s0, t, side="right")
    fn = np.searchsorted(s1, t, side="right")
    fpr_hi = clopper_pearson_upper(fp, n0, alpha / 2)
    fnr_hi = clopper_pearson_upper(fn, n1, alpha / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        forward = np.log(np.clip(1.0 - delta - fnr_hi, 0.0, None) / fpr_hi)
        backward = np.log(np.clip(1.0 - delta - fpr_hi, 0.0, None) / fnr_hi)
    eps = np.maximum(np.maximum(forward, backward), 0.0)
    eps = np.nan_to_num(eps, nan=0.0, neginf=0.0)
    return eps, fp / n0, fn / n1


@dataclass
class AuditResult:
    """Settings, the lower bound ε̂, the accountant's ε for one query, and curves for plotting."""

    mechanism: str
    sigma: float
    sample_rate: float
    k: int
    noise_multiplier: float
    delta: float
    runs: int
    dim: int
    n_records: int
    selection_fraction: float
    confidence: float
    accountant: str
    epsilon_accountant: float
    epsilon_accountant_paper: float
    epsilon_hat: float
    threshold: float
    false_positives: int
    false_negatives: int
    evaluation_runs: int
    queries_charged: int
    passed: bool
    curves: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def to_dict(self, with_curves: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_curves:
            d.pop("curves")
        return d


def _canary_datasets(dim: int, n_records: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    canary = np.zeros(dim, dtype=np.float32)
    canary[0] = 1.0
    base = np.tile(-canary, (n_records, 1))
    with_canary = np.vstack([base, canary[None]])  # the canary is the LAST record of D'
    return base, with_canary, canary


def _release_scores(retriever: DPRetriever, canary: np.ndarray, runs: int, progress: Any) -> np.ndarray:
    scores = np.empty(runs, dtype=np.float64)
    done = 0
    while done < runs:
        b = min(_CHUNK_ROWS, runs - done)
        rel = retriever.query(np.tile(canary, (b, 1)), request_id=None)
        scores[done : done + b] = rel.vectors.astype(np.float64) @ canary.astype(np.float64)
        done += b
        if progress is not None:
            progress.update(b)
    return scores


def audit_retrieval(
    sigma: float,
    sample_rate: float,
    k: int,
    *,
    runs: int = 20000,
    delta: float = 1e-5,
    dim: int = 16,
    n_records: int | None = None,
    mechanism: str = "dp",
    confidence: float = 0.95,
    selection_fraction: float = 0.25,
    accountant: str = "pld",
    progress: bool = False,
) -> AuditResult:
    """Run the canary audit on ``runs`` releases from D and ``runs`` from D' = D ∪ {canary}.

    Args:
        sigma, sample_rate, k: the mechanism's σ, q, k.
        runs: releases per dataset (each is one charged query of the real mechanism).
        delta: δ of the guarantee audited (and of the accountant's ε).
        dim: embedding dimension of the synthetic canary set-up.
        n_records: base records (copies of −c); default k, so that subsampling with q < 1 lands in
            the padding regime (|S| < k) where the padding bug shows.
        mechanism: ``"dp"`` (the real one) or a broken control from :data:`MECHANISMS`.
        confidence: 1 − α of the lower bound.
        selection_fraction: share of the runs used to pick the threshold (the rest evaluates).
        accountant: accountant for ε of one query (``pld`` is the tightest valid bound).
        progress: show a progress bar.

    Returns:
        An :class:`AuditResult`; ``passed`` is ``epsilon_hat <= epsilon_accountant``.
    """
    from privdiff.accounting import DPRDMQuery, Ledger, epsilon_for

    if mechanism not in MECHANISMS:
        raise InvalidParameter("mechanism", mechanism, "one of " + ", ".join(MECHANISMS))
    sigma = check_positive("sigma", sigma)
    sample_rate = check_in_range("sample_rate", sample_rate, 0.0, 1.0)
    k = check_int("k", k, minimum=1)
    runs = check_int("runs", runs, minimum=100)
    delta = check_in_range("delta", delta, 0.0, 1.0, high_inclusive=False)
    dim = check_int("dim", dim, minimum=2)
    n_records = k if n_records is None else check_int("n_records", n_records, minimum=1)
    confidence = check_in_range("confidence", confidence, 0.5, 1.0, low_inclusive=True, high_inclusive=False)
    selection_fraction = check_in_range("selection_fraction", selection_fraction, 0.0, 0.9, high_inclusive=True)
    alpha = 1.0 - confidence

    query = DPRDMQuery(sigma=sigma, sample_rate=sample_rate, k=k)
    eps_acc = epsilon_for(query, 1, delta, accountant).epsilon
    eps_paper = epsilon_for(query, 1, delta, "paper", warn_on_edge=False).epsilon

    base, with_canary, canary = _canary_datasets(dim, n_records)
    parts = MECHANISMS[mechanism]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=2 * runs, desc=f"audit {mechanism}", unit="release")
    with tempfile.TemporaryDirectory(prefix="privdiff-audit-") as tmp:
        scores: dict[str, np.ndarray] = {}
        charged: dict[str, int] = {}
        for name, rows in (("null", base), ("alt", with_canary)):
            # A real ledger, charged for every run (see _AUDIT_BUDGET).
            ledger_path = Path(tmp) / f"{name}.sqlite"
            with Ledger.create(
                ledger_path,
                epsilon=_AUDIT_BUDGET,
                delta=delta,
                accountant="paper",
                dataset=f"audit:{name}",
            ) as ledger:
                index = EmbeddingIndex.from_embeddings(rows, space_id=_AUDIT_SPACE, source=f"audit:{name}")
                retriever = DPRetriever(index, k=k, sigma=sigma, sample_rate=sample_rate, ledger=ledger, **parts)
                scores[name] = _release_scores(retriever, canary, runs, bar)
                charged[name] = ledger.status().queries
    if bar is not None:
        bar.close()

    n_sel = int(round(runs * selection_fraction))
    sel0, ev0 = scores["null"][:n_sel], scores["null"][n_sel:]
    sel1, ev1 = scores["alt"][:n_sel], scores["alt"][n_sel:]
    if n_sel > 0:
        cand = np.unique(np.concatenate([sel0, sel1]))
        eps_sel, _, _ = epsilon_lower_bound(sel0, sel1, cand, delta, alpha)
        threshold = float(cand[int(np.argmax(eps_sel))])
    else:  # no selection split: fall back to the midpoint of the two sample means
        threshold = float((ev0.mean() + ev1.mean()) / 2)
    eps_hat_arr, fpr, fnr = epsilon_lower_bound(ev0, ev1, np.array([threshold]), delta, alpha)
    eps_hat = float(eps_hat_arr[0])
    n_eval = len(ev0)

    # Curves over a threshold grid on the evaluation split, for the ROC / ε̂(t) figure only.
    grid = np.quantile(np.concatenate([ev0, ev1]), np.linspace(0.001, 0.999, 200))
    eps_grid, fpr_grid, fnr_grid = epsilon_lower_bound(ev0, ev1, grid, delta, alpha)
    return AuditResult(
        mechanism=mechanism,
        sigma=sigma,
        sample_rate=sample_rate,
        k=k,
        noise_multiplier=query.noise_multiplier,
        delta=delta,
        runs=runs,
        dim=dim,
        n_records=n_records,
        selection_fraction=selection_fraction,
        confidence=confidence,
        accountant=accountant,
        epsilon_accountant=float(eps_acc),
        epsilon_accountant_paper=float(eps_paper),
        epsilon_hat=eps_hat,
        threshold=threshold,
        false_positives=int(round(fpr[0] * n_eval)),
        false_negatives=int(round(fnr[0] * n_eval)),
        evaluation_runs=n_eval,
        queries_charged=int(charged["null"] + charged["alt"]),
        passed=bool(eps_hat <= eps_acc),
        curves={
            "threshold": grid.tolist(),
            "epsilon_hat": eps_grid.tolist(),
            "fpr": fpr_grid.tolist(),
            "fnr": fnr_grid.tolist(),
        },
    )


#: The documented audit suite: the real mechanism in an auditable setting without subsampling
#: (z = 1.5) and two subsampled settings, plus each broken control in the setting where its bug
#: shows. ``expect_pass`` is what a correct implementation must produce.
STANDARD_SUITE: tuple[dict[str, Any], ...] = (
    {
        "mechanism": "dp",
        "sigma": 0.3,
        "sample_rate": 1.0,
        "k": 10,
        "runs": 200000,
        "expect_pass": True,
    },
    {
        "mechanism": "broken-half-noise",
        "sigma": 0.3,
        "sample_rate": 1.0,
        "k": 10,
        "runs": 200000,
        "expect_pass": False,
    },
    {
        "mechanism": "dp",
        "sigma": 0.2,
        "sample_rate": 0.2,
        "k": 5,
        "n_records": 200,
        "runs": 50000,
        "expect_pass": True,
    },
    {
        "mechanism": "dp",
        "sigma": 0.2,
        "sample_rate": 0.05,
        "k": 10,
        "n_records": 10,
        "runs": 20000,
        "expect_pass": True,
    },
    {
        "mechanism": "broken-pad-last-record",
        "sigma": 0.2,
        "sample_rate": 0.05,
        "k": 10,
        "n_records": 10,
        "runs": 20000,
        "expect_pass": False,
    },
)


def run_suite(
    suite: tuple[dict[str, Any], ...] = STANDARD_SUITE,
    *,
    delta: float = 1e-5,
    scale: float = 1.0,
    progress: bool = False,
) -> tuple[list[AuditResult], bool]:
    """Run every audit of ``suite`` (``runs`` multiplied by ``scale``); returns (results, ok).

    ``ok`` is True when every real-mechanism audit passed and every broken control was flagged.
    """
    scale = check_positive("scale", scale)
    results, ok = [], True
    for item in suite:
        kw = {key: v for key, v in item.items() if key != "expect_pass"}
        kw["runs"] = max(100, int(round(kw["runs"] * scale)))
        res = audit_retrieval(delta=delta, progress=progress, **kw)
        results.append(res)
        ok = ok and (res.passed == item["expect_pass"])
    return results, ok


def write_audit_report(results: list[AuditResult], out_dir: str | Path, name: str = "audit") -> tuple[Path, Path]:
    """Write ``<name>.json`` (settings + results, curves included) and ``<name>.png``.

    The PNG has the empirical ROC of each audit (TPR vs FPR, log axes), ε̂ over the threshold sweep
    with the accountant's ε dashed, and a summary of ε̂ at the selected threshold vs ε per audit.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}.json"
    png_path = out / f"{name}.png"
    payload = {"audits": [r.to_dict(with_curves=True) for r in results]}
    json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4), gridspec_kw={"width_ratios": [1, 1.1, 0.9]})
    colours = []
    for r in results:
        label = f"{r.mechanism} (σ={r.sigma:g}, q={r.sample_rate:g}, k={r.k})"
        fpr = np.asarray(r.curves["fpr"])
        tpr = 1.0 - np.asarray(r.curves["fnr"])
        floor = 0.5 / r.evaluation_runs
        (line,) = axes[0].plot(np.maximum(fpr, floor), np.maximum(tpr, floor), label=label)
        colours.append(line.get_color())
        axes[1].plot(r.curves["threshold"], r.curves["epsilon_hat"], color=line.get_color(), label=label)
        axes[1].axhline(r.epsilon_accountant, color=line.get_color(), linestyle="--", linewidth=1)
        axes[1].axvline(r.threshold, color=line.get_color(), linestyle=":", linewidth=0.8)
    axes[0].plot([1e-6, 1], [1e-6, 1], color="grey", linewidth=0.8, linestyle=":")
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="false positive rate",
        ylabel="true positive rate",
        title="canary distinguisher ROC (evaluation runs)",
    )
    axes[1].set(
        xlabel="threshold on ⟨release, canary⟩",
        ylabel=f"ε̂ ({results[0].confidence:.0%} lower bound)",
        title="ε̂ over thresholds (dashed: accountant ε)",
    )
    axes[0].legend(fontsize=7)
    # Summary: the selected-threshold ε̂ (held-out runs) next to the accountant's ε, per audit.
    x = np.arange(len(results))
    axes[2].bar(x - 0.2, [r.epsilon_hat for r in results], width=0.4, color=colours, label="ε̂ (audit)")
    axes[2].bar(
        x + 0.2,
        [r.epsilon_accountant for r in results],
        width=0.4,
        color="white",
        edgecolor=colours,
        hatch="//",
        label=f"ε ({results[0].accountant} accountant)",
    )
    for i, r in enumerate(results):
        axes[2].text(
            i,
            max(r.epsilon_hat, r.epsilon_accountant) * 1.02,
            "ok" if r.passed else "FLAGGED",
            ha="center",
            va="bottom",
            fontsize=8,
            color="black" if r.passed else "red",
        )
    axes[2].set_xticks(x, [f"{r.mechanism}\nq={r.sample_rate:g}" for r in results], fontsize=7, rotation=20)
    axes[2].set(ylabel="ε", title=f"audit vs accountant, one query (δ={results[0].delta:g})")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return json_path, png_path
