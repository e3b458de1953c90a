"""Replication rate: how often generated images are near-copies of reference (training) images.

The measure of CPSample (Kazdan et al., "CPSample: Classifier Protected Sampling for Guarding
Training Data During Diffusion", ICLR 2025, §2.2, §5.2/Table 1 and Fig. 1, 3; summarised in
``methods/cpsample.md`` §5.2): for every generated image x̂, find its nearest neighbour in the
fine-tuning set D by cosine similarity in a feature space φ,

    s(x̂) = max_{x ∈ D} ⟨φ(x̂), φ(x)⟩ / (‖φ(x̂)‖ ‖φ(x)‖),

and report the fraction of samples with s(x̂) above a threshold τ (the paper's τ: 0.97 CIFAR-10,
0.95 CelebA, 0.90 LSUN Church, all for its own unnamed extractor). τ belongs to the extractor, so
this module also calibrates τ for each privdiff feature space from known copies (augmented
reference images) and known non-copies (held-out images), and exposes the calibrated value with
its provenance through :func:`recommended_threshold`.

Nearest neighbours are exact: a faiss ``IndexFlatIP`` over unit-norm features (inner product =
cosine similarity).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from privdiff.errors import InvalidParameter, check_in_range, check_int, check_nonnegative
from privdiff.evaluation.features import (
    check_feature_space,
    describe_feature_space,
    extract_features,
)
from privdiff.evaluation.fid import check_images, library_versions

# ---------------------------------------------------------------------------------------------
# Calibrated thresholds. Written from docs/results/evaluation/replication_threshold.json by
# experiments/replication_threshold.py (a test checks the two agree), kept here as constants so an
# installed package has them without the repository's docs folder.
# ---------------------------------------------------------------------------------------------

#: feature space → calibrated threshold τ and how it was obtained.
_PROVENANCE = (
    "experiments/replication_threshold.py --n 500 --seed 0 --max-fpr 0.01: reference = 500 random "
    "fashion-mnist:train images, non-copies = 500 random fashion-mnist:test images, copies = the "
    "reference with Gaussian noise σ=8/255 and ±10 % brightness (docs/results/evaluation/"
    "replication_threshold.json)"
)
RECOMMENDED_THRESHOLDS: dict[str, dict[str, Any]] = {
    # Copies are caught (TPR 0.99 at FPR 0.01, AUC 0.999) unless translated: a 1-px shift drops TPR
    # to 0.13, so pixel space detects replicas, not re-positioned copies.
    "pixel": {
        "threshold": 0.9705203175544739,
        "fpr": 0.01,
        "tpr": 0.99,
        "auc": 0.999492,
        "provenance": _PROVENANCE,
    },
    # EfficientNet features of 28-px greyscale items are dominated by texture: σ=8/255 noise moves a
    # copy further than the distance between two different shirts (AUC 0.55). Calibrated but weak.
    "effnet": {
        "threshold": 0.8849606513977051,
        "fpr": 0.01,
        "tpr": 0.138,
        "auc": 0.545148,
        "provenance": _PROVENANCE,
    },
}

#: The feature space CPSample experiments should use by default.
DEFAULT_FEATURE_SPACE = "pixel"


def recommended_threshold_info(feature_space: str = DEFAULT_FEATURE_SPACE) -> dict[str, Any]:
    """The calibrated τ for ``feature_space`` with its provenance (data, FPR target, TPR, AUC)."""
    feature_space = check_feature_space(feature_space)
    if feature_space not in RECOMMENDED_THRESHOLDS:
        raise InvalidParameter(
            "feature_space",
            feature_space,
            "a space with a calibrated threshold: " + ", ".join(sorted(RECOMMENDED_THRESHOLDS))
            if RECOMMENDED_THRESHOLDS
            else "a calibrated space",
            hint="pass an explicit threshold, or calibrate one with experiments/replication_threshold.py",
        )
    return dict(RECOMMENDED_THRESHOLDS[feature_space])


def recommended_threshold(feature_space: str = DEFAULT_FEATURE_SPACE) -> float:
    """The calibrated replication threshold τ for ``feature_space`` (see :func:`recommended_threshold_info`)."""
    return float(recommended_threshold_info(feature_space)["threshold"])


# ---------------------------------------------------------------------------------------------
# Nearest neighbours
# ---------------------------------------------------------------------------------------------


def nearest_neighbours(query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact 1-NN by inner product (cosine for unit rows) with faiss ``IndexFlatIP``.

    Returns ``(similarities float32 (N,), indices int64 (N,))``.
    """
    import faiss

    query = np.ascontiguousarray(query, dtype=np.float32)
    reference = np.ascontiguousarray(reference, dtype=np.float32)
    if query.ndim != 2 or reference.ndim != 2 or query.shape[1] != reference.shape[1]:
        raise InvalidParameter(
            "features",
            f"<query {query.shape}, reference {reference.shape}>",
            "2-d arrays with equal widths",
        )
    if reference.shape[0] == 0 or query.shape[0] == 0:
        raise InvalidParameter("features", f"<query {query.shape}, reference {reference.shape}>", "non-empty")
    index = faiss.IndexFlatIP(reference.shape[1])
    index.add(reference)
    sims, idx = index.search(query, 1)
    return sims[:, 0].astype(np.float32), idx[:, 0].astype(np.int64)


def _check_pair(generated: np.ndarray, reference: np.ndarray, feature_space: str) -> None:
    check_images(generated, "generated")
    check_images(reference, "reference")
    if feature_space == "pixel" and generated.shape[1:] != reference.shape[1:]:
        raise InvalidParameter(
            "generated",
            f"<images of shape {generated.shape[1:]}>",
            f"the reference image shape {reference.shape[1:]} in the pixel feature space",
            hint="resize one side, or use feature_space='effnet' or 'inception'",
        )


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


@dataclass
class ReplicationReport:
    """Nearest-neighbour similarities of generated images to a reference set, and the rate above τ.

    Attributes:
        similarities: s(x̂) for every generated image, float32 (N,).
        nearest_index: index into the reference set of each nearest neighbour, int64 (N,).
        threshold: τ; an image counts as replicated when s(x̂) > τ.
        rate: fraction of generated images above τ.
        feature_space: the space φ (``pixel``, ``effnet``, ``inception``).
        threshold_source: where τ came from (``"explicit"`` or the calibration provenance).
        settings: anything else that produced the numbers (sources, seeds...), for the JSON record.
    """

    similarities: np.ndarray
    nearest_index: np.ndarray
    threshold: float
    rate: float
    feature_space: str
    n_reference: int
    threshold_source: str = "explicit"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_generated(self) -> int:
        return int(self.similarities.shape[0])

    @property
    def n_replicated(self) -> int:
        return int(np.count_nonzero(self.similarities > self.threshold))

    def top_pairs(self, n: int = 4) -> list[dict[str, Any]]:
        """The ``n`` generated images most similar to their nearest reference image, best first."""
        n = check_int("n", n, minimum=1)
        order = np.argsort(-self.similarities, kind="stable")[:n]
        return [
            {
                "generated_index": int(i),
                "reference_index": int(self.nearest_index[i]),
                "similarity": float(self.similarities[i]),
            }
            for i in order
        ]

    def to_dict(self, *, include_arrays: bool = True, top_n: int = 4) -> dict[str, Any]:
        sims = self.similarities.astype(np.float64)
        out: dict[str, Any] = {
            "metric": "replication_rate",
            "definition": "fraction of generated images whose nearest-neighbour cosine similarity "
            "to the reference set exceeds the threshold (CPSample, Kazdan et al. 2025, §2.2)",
            "rate": self.rate,
            "n_replicated": self.n_replicated,
            "n_generated": self.n_generated,
            "n_reference": self.n_reference,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "feature_space": describe_feature_space(self.feature_space),
            "similarity_summary": {
                "min": float(sims.min()),
                "median": float(np.median(sims)),
                "mean": float(sims.mean()),
                "p95": float(np.quantile(sims, 0.95)),
                "max": float(sims.max()),
            },
            "top_pairs": self.top_pairs(min(top_n, self.n_generated)),
            "settings": dict(self.settings),
            "versions": library_versions(),
        }
        if include_arrays:
            out["similarities"] = [round(float(s), 6) for s in sims]
            out["nearest_index"] = [int(i) for i in self.nearest_index]
        return out

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(**kwargs), indent=2)


def _resolve_threshold(threshold: float | None, feature_space: str) -> tuple[float, str]:
    if threshold is None:
        info = recommended_threshold_info(feature_space)
        return float(info["threshold"]), f"calibrated: {info.get('provenance', '')}"
    return check_in_range("threshold", threshold, -1.0, 1.0, low_inclusive=True, high_inclusive=True), "explicit"


def replication_report(
    generated: np.ndarray,
    reference: np.ndarray,
    *,
    feature_space: str = DEFAULT_FEATURE_SPACE,
    threshold: float | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> ReplicationReport:
    """Replication report of ``generated`` against ``reference`` (both uint8 NHWC).

    ``threshold=None`` uses the calibrated τ of ``feature_space`` (:func:`recommended_threshold`).
    Everything is validated before any feature is computed.
    """
    feature_space = check_feature_space(feature_space)
    _check_pair(generated, reference, feature_space)
    tau, source = _resolve_threshold(threshold, feature_space)
    ref_feats = extract_features(reference, feature_space, batch_size=batch_size, progress=progress)
    gen_feats = extract_features(generated, feature_space, batch_size=batch_size, progress=progress)
    sims, idx = nearest_neighbours(gen_feats, ref_feats)
    return ReplicationReport(
        similarities=sims,
        nearest_index=idx,
        threshold=tau,
        rate=float(np.mean(sims > tau)),
        feature_space=feature_space,
        n_reference=int(reference.shape[0]),
        threshold_source=source,
        settings=dict(settings or {}),
    )


def replication_counter(
    reference: np.ndarray,
    *,
    feature_space: str = DEFAULT_FEATURE_SPACE,
    threshold: float | None = None,
    batch_size: int | None = None,
):
    """``(count, info)``: ``count(generated) -> dict`` measures the replication rate against
    ``reference`` again and again (a fine-tuning run's copy checks; the reference features are
    computed once), ``info`` says how (feature space, τ and where τ came from).

    The dict holds ``rate``, ``n_replicated``, ``n``, the 95 % Wilson interval (``ci_low``,
    ``ci_high``; :func:`privdiff.evaluation.domain.wilson_interval`), ``threshold`` and
    ``mean_similarity``, the numbers :func:`replication_report` would give for the same images.
    """
    from privdiff.evaluation.domain import wilson_interval

    feature_space = check_feature_space(feature_space)
    check_images(reference, "reference")
    tau, _source = _resolve_threshold(threshold, feature_space)
    ref_feats = extract_features(reference, feature_space, batch_size=batch_size)
    ref_shape = reference.shape[1:]

    def count(generated: np.ndarray) -> dict[str, Any]:
        check_images(generated, "generated")
        if feature_space == "pixel" and generated.shape[1:] != ref_shape:
            raise InvalidParameter("generated", f"<images of shape {generated.shape[1:]}>", f"shape {ref_shape}")
        sims, _idx = nearest_neighbours(extract_features(generated, feature_space, batch_size=batch_size), ref_feats)
        hits, n = int(np.count_nonzero(sims > tau)), int(sims.shape[0])
        ci = wilson_interval(hits, n)
        return {
            "rate": hits / n,
            "n_replicated": hits,
            "n": n,
            "ci_low": ci.low,
            "ci_high": ci.high,
            "threshold": tau,
            "mean_similarity": float(np.mean(sims)),
        }

    return count, {"feature_space": feature_space, "threshold": tau, "threshold_source": _source}


def compare_rates(report_a: ReplicationReport, report_b: ReplicationReport) -> dict[str, Any]:
    """Two-sided Fisher exact test that two replication rates differ (e.g. DDIM vs CPSample).

    CPSample reports its reduction as statistically significant without naming the test
    (``methods/cpsample.md`` §5.2); a 2×2 exact test on replicated/not-replicated counts is the
    standard choice for small counts (scipy.stats.fisher_exact).
    """
    from scipy.stats import fisher_exact

    if report_a.threshold != report_b.threshold or report_a.feature_space != report_b.feature_space:
        raise InvalidParameter(
            "reports",
            f"<{report_a.feature_space}@{report_a.threshold} vs {report_b.feature_space}@{report_b.threshold}>",
            "two reports with the same feature space and threshold",
        )
    table = [
        [report_a.n_replicated, report_a.n_generated - report_a.n_replicated],
        [report_b.n_replicated, report_b.n_generated - report_b.n_replicated],
    ]
    res = fisher_exact(table, alternative="two-sided")
    return {
        "test": "fisher_exact (two-sided)",
        "table": table,
        "odds_ratio": float(res.statistic),
        "p_value": float(res.pvalue),
        "rate_a": report_a.rate,
        "rate_b": report_b.rate,
    }


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _as_display(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    return (img[..., 0], "gray") if img.shape[-1] == 1 else (img, None)


def save_top_pairs(
    report: ReplicationReport,
    generated: np.ndarray,
    reference: np.ndarray,
    path: str | Path,
    n: int = 4,
) -> Path:
    """PNG of the ``n`` most replicated samples: each row is generated | nearest reference image.

    The layout of CPSample Fig. 1 (the 4 samples closest to their nearest training neighbour), with
    the similarity and both indices in each row's titles.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    check_images(generated, "generated")
    check_images(reference, "reference")
    if generated.shape[0] != report.n_generated:
        raise InvalidParameter(
            "generated",
            f"<{generated.shape[0]} images>",
            f"the {report.n_generated} images of the report",
        )
    pairs = report.top_pairs(min(check_int("n", n, minimum=1), report.n_generated))
    fig, axes = plt.subplots(len(pairs), 2, figsize=(4.2, 2.1 * len(pairs)), squeeze=False)
    for row, pair in zip(axes, pairs, strict=True):
        g, gc = _as_display(generated[pair["generated_index"]])
        r, rc = _as_display(reference[pair["reference_index"]])
        row[0].imshow(g, cmap=gc, vmin=0, vmax=255)
        row[1].imshow(r, cmap=rc, vmin=0, vmax=255)
        above = "above" if pair["similarity"] > report.threshold else "below"
        row[0].set_title(
            f"generated #{pair['generated_index']}\ns={pair['similarity']:.3f} ({above} τ)",
            fontsize=8,
        )
        row[1].set_title(f"nearest reference #{pair['reference_index']}", fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        f"top {len(pairs)} by NN similarity ({report.feature_space}, τ={report.threshold:.3f})",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_histogram(
    similarities: ReplicationReport | np.ndarray | Mapping[str, ReplicationReport | np.ndarray],
    path: str | Path,
    *,
    threshold: float | None = None,
    bins: int = 40,
    title: str | None = None,
    xlabel: str = "nearest-neighbour cosine similarity",
) -> Path:
    """Histogram PNG of NN similarities (CPSample Fig. 3); a mapping overlays several distributions.

    ``threshold`` defaults to the (single) report's τ and is drawn as a vertical line.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    series = similarities if isinstance(similarities, Mapping) else {"generated": similarities}
    if not series:
        raise InvalidParameter("similarities", "<empty mapping>", "at least one distribution")
    arrays: dict[str, np.ndarray] = {}
    for label, s in series.items():
        if isinstance(s, ReplicationReport):
            if threshold is None:
                threshold = s.threshold
            s = s.similarities
        arr = np.asarray(s, dtype=np.float64).ravel()
        if arr.size == 0 or not np.isfinite(arr).all():
            raise InvalidParameter(
                "similarities",
                f"<{arr.size} values for {label!r}>",
                "a non-empty array of finite values",
            )
        arrays[str(label)] = arr
    bins = check_int("bins", bins, minimum=1)
    lo = min(a.min() for a in arrays.values())
    hi = max(a.max() for a in arrays.values())
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-3, bins + 1)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, arr in arrays.items():
        ax.hist(arr, bins=edges, alpha=0.55, label=f"{label} (n={arr.size})", density=len(arrays) > 1)
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"τ = {threshold:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density" if len(arrays) > 1 else "count")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Threshold calibration
# ---------------------------------------------------------------------------------------------


def augment_copies(
    images: np.ndarray,
    *,
    seed: int = 0,
    max_shift: int = 2,
    noise_std: float = 8.0,
    brightness: float = 0.1,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Near-copies of ``images``: what a memorising model emits instead of an exact replica.

    Each image gets, independently: an integer translation (dx, dy) uniform in
    [-max_shift, max_shift]² with edge replication (no wrap-around); additive Gaussian pixel noise
    of std ``noise_std`` (0–255 scale); an additive brightness offset uniform in
    ±``brightness``·255. Results are rounded and clipped to uint8.

    Returns ``(copies, settings)``; the settings go into the calibration JSON.
    """
    images = check_images(images)
    max_shift = check_int("max_shift", max_shift, minimum=0)
    noise_std = check_nonnegative("noise_std", noise_std)
    brightness = check_in_range("brightness", brightness, 0.0, 1.0, low_inclusive=True)
    rng = np.random.default_rng(check_int("seed", seed, minimum=0))
    n, h, w, _ = images.shape
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
    pad = max_shift
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.empty(images.shape, dtype=np.float32)
    for i, (dy, dx) in enumerate(shifts):
        out[i] = padded[i, pad - dy : pad - dy + h, pad - dx : pad - dx + w]
    out += rng.normal(0.0, noise_std, size=out.shape).astype(np.float32)
    out += (rng.uniform(-brightness, brightness, size=(n, 1, 1, 1)) * 255.0).astype(np.float32)
    copies = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return copies, {
        "seed": seed,
        "max_shift": max_shift,
        "noise_std": noise_std,
        "brightness": brightness,
    }


def threshold_at_fpr(negatives: np.ndarray, max_fpr: float) -> float:
    """Smallest τ with (fraction of negatives > τ) ≤ ``max_fpr``.

    With negatives sorted in decreasing order s₁ ≥ s₂ ≥ …, k = ⌊max_fpr·m⌋ negatives may lie above
    τ, so τ = s_{k+1}: any smaller τ would put s_{k+1} (and so k+1 negatives) above it.
    """
    neg = np.sort(np.asarray(negatives, dtype=np.float64).ravel())[::-1]
    if neg.size == 0:
        raise InvalidParameter("negatives", "<empty>", "at least one non-copy similarity")
    max_fpr = check_in_range("max_fpr", max_fpr, 0.0, 1.0, low_inclusive=True, high_inclusive=False)
    k = int(np.floor(max_fpr * neg.size + 1e-9))
    return float(neg[k])


@dataclass
class ThresholdCalibration:
    """A calibrated replication threshold with its error rates on the calibration data."""

    feature_space: str
    threshold: float
    max_fpr: float
    fpr: float
    tpr: float
    auc: float
    copy_similarities: np.ndarray
    noncopy_similarities: np.ndarray
    n_reference: int
    copy_nn_is_source: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, *, include_arrays: bool = False) -> dict[str, Any]:
        c, nc = self.copy_similarities, self.noncopy_similarities
        out = {
            "feature_space": describe_feature_space(self.feature_space),
            "threshold": self.threshold,
            "rule": f"smallest threshold with false-positive rate <= {self.max_fpr} on non-copies; "
            "replicated means similarity > threshold",
            "max_fpr": self.max_fpr,
            "fpr": self.fpr,
            "tpr": self.tpr,
            "auc": self.auc,
            "n_reference": self.n_reference,
            "n_copies": int(c.size),
            "n_noncopies": int(nc.size),
            "copy_nn_is_source": self.copy_nn_is_source,
            "copy_similarity_quantiles": {q: float(np.quantile(c, float(q))) for q in ("0.01", "0.05", "0.5")},
            "noncopy_similarity_quantiles": {q: float(np.quantile(nc, float(q))) for q in ("0.5", "0.95", "0.99")},
            "settings": dict(self.settings),
        }
        if include_arrays:
            out["copy_similarities"] = [round(float(s), 6) for s in c]
            out["noncopy_similarities"] = [round(float(s), 6) for s in nc]
        return out


def calibrate_threshold(
    reference: np.ndarray,
    copies: np.ndarray,
    non_copies: np.ndarray,
    *,
    feature_space: str = DEFAULT_FEATURE_SPACE,
    max_fpr: float = 0.01,
    copy_sources: np.ndarray | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> ThresholdCalibration:
    """Calibrate τ in ``feature_space`` from known copies and known non-copies of ``reference``.

    τ is the smallest threshold whose false-positive rate on ``non_copies`` is ≤ ``max_fpr``
    (:func:`threshold_at_fpr`); the report gives the true-positive rate on ``copies`` at τ and the
    ROC AUC (sklearn ``roc_auc_score``) of NN similarity as a copy detector.

    Args:
        copy_sources: optional reference index each copy was made from; then the fraction of
            copies whose nearest neighbour is their own source is reported too.
    """
    from sklearn.metrics import roc_auc_score

    feature_space = check_feature_space(feature_space)
    _check_pair(copies, reference, feature_space)
    _check_pair(non_copies, reference, feature_space)
    max_fpr = check_in_range("max_fpr", max_fpr, 0.0, 1.0, low_inclusive=True, high_inclusive=False)
    if copy_sources is not None:
        copy_sources = np.asarray(copy_sources)
        if copy_sources.shape != (copies.shape[0],) or not np.issubdtype(copy_sources.dtype, np.integer):
            raise InvalidParameter(
                "copy_sources",
                f"<{copy_sources.dtype} {copy_sources.shape}>",
                f"integers of shape ({copies.shape[0]},)",
            )

    ref = extract_features(reference, feature_space, batch_size=batch_size, progress=progress)
    pos, pos_idx = nearest_neighbours(
        extract_features(copies, feature_space, batch_size=batch_size, progress=progress), ref
    )
    neg, _ = nearest_neighbours(
        extract_features(non_copies, feature_space, batch_size=batch_size, progress=progress), ref
    )
    tau = threshold_at_fpr(neg, max_fpr)
    labels = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    return ThresholdCalibration(
        feature_space=feature_space,
        threshold=tau,
        max_fpr=max_fpr,
        fpr=float(np.mean(neg > tau)),
        tpr=float(np.mean(pos > tau)),
        auc=float(roc_auc_score(labels, np.r_[pos, neg])),
        copy_similarities=pos,
        noncopy_similarities=neg,
        n_reference=int(reference.shape[0]),
        copy_nn_is_source=None if copy_sources is None else float(np.mean(pos_idx == copy_sources)),
        settings=dict(settings or {}),
    )


def save_calibration_plot(calibration: ThresholdCalibration, path: str | Path) -> Path:
    """Overlaid histograms of copy and non-copy NN similarities with the calibrated τ."""
    c = calibration
    return save_histogram(
        {
            "known copies (augmented reference)": c.copy_similarities,
            "non-copies (held out)": c.noncopy_similarities,
        },
        path,
        threshold=c.threshold,
        title=f"{c.feature_space}: τ={c.threshold:.3f}  FPR={c.fpr:.3f}  TPR={c.tpr:.3f}  AUC={c.auc:.3f}",
    )
