"""Domain metrics with confidence intervals: in-domain rate, confusion, domain FID and KID.

These resolve the question DP-RDM asks (Lebensold et al., arXiv 2403.14421, §5): *are the
generated images in the private collection's domain, and how close is their distribution to it?*
They work in the feature space of a :mod:`~privdiff.evaluation.yardstick` (a classifier trained on
the full labelled training set) and every number comes with a 95 % interval, because at a few
hundred samples FID differences of a few points are noise (five disjoint sets of 200 real
Fashion-MNIST images score Inception-FID 54.8 ± 0.8 against one reference).

- In-domain rate: fraction of generated images the yardstick assigns to one of the domain's
  classes; Wilson score interval (Wilson 1927, JASA 22:209; Brown, Cai & DasGupta 2001 recommend
  it over the normal interval for small n or rates near 0/1).
- Domain FID: Fréchet distance (Heusel et al. 2017, Eq. 6) between Gaussian fits of yardstick
  features, with a bootstrap interval resampling both sets (Efron & Tibshirani 1993, §13.3).
- KID: unbiased MMD² with the cubic polynomial kernel k(x, y) = (xᵀy/d + 1)³ (Bińkowski et al.
  2018, "Demystifying MMD GANs", Eq. 4 with Appendix D's kernel); unbiased, so it is comparable
  across sample sizes, with the same bootstrap interval.
- Why the intervals are *centred*: a replicate drawn with replacement holds ~63 % distinct rows,
  so FID (and KID, whose within-set sums then include self-pairs) is biased upwards in every
  replicate; plain percentile intervals of a same-distribution pair lie entirely above the
  estimate (measured: FID 0.111, percentile interval [0.118, 0.299]). We shift the replicates so
  their mean is the estimate and take percentiles of that: the interval is the sampling spread of
  the estimate at this sample size, i.e. an interval for E[FID_n]. FID is biased by n, so compare
  only settings with equal n (the experiments use the same n in every mode).
- Paired differences: when two modes share their starting noise x_T image by image (the
  experiments do this), resampling the *same* indices in both gives an interval for the
  difference that is much tighter than comparing two separate intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privdiff.errors import InvalidParameter, check_in_range, check_int
from privdiff.evaluation.fid import frechet_distance


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a two-sided confidence interval [low, high] at ``level``."""

    value: float
    low: float
    high: float
    level: float = 0.95
    n: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def excludes(self, x: float) -> bool:
        return not (self.low <= x <= self.high)

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"


def wilson_interval(successes: int, n: int, level: float = 0.95) -> Estimate:
    """Wilson score interval for a binomial proportion (Wilson 1927), computed by SciPy's
    ``binomtest(...).proportion_ci(method="wilson")`` (no continuity correction)."""
    from scipy.stats import binomtest

    n = check_int("n", n, 1)
    successes = check_int("successes", successes, 0, n)
    level = check_in_range("level", level, 0.0, 1.0, high_inclusive=False)
    ci = binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    return Estimate(successes / n, float(ci.low), float(ci.high), level, n)


def in_domain_rate(predicted: Sequence[int], domain_classes: Sequence[int], level: float = 0.95) -> Estimate:
    """Fraction of predicted labels that lie in ``domain_classes``, with its Wilson interval."""
    pred = np.asarray(predicted, dtype=np.int64)
    if pred.ndim != 1 or pred.size == 0:
        raise InvalidParameter("predicted", f"<array of shape {pred.shape}>", "a non-empty 1-d array of labels")
    if len(domain_classes) == 0:
        raise InvalidParameter("domain_classes", list(domain_classes), "at least one class")
    hits = int(np.isin(pred, np.asarray(domain_classes, dtype=np.int64)).sum())
    return wilson_interval(hits, int(pred.size), level)


def confusion(intended: Sequence[int], predicted: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts C[i, j] = #images meant as class i that the yardstick calls class j."""
    a = np.asarray(intended, dtype=np.int64)
    b = np.asarray(predicted, dtype=np.int64)
    num_classes = check_int("num_classes", num_classes, 1)
    if a.shape != b.shape or a.ndim != 1:
        raise InvalidParameter("intended/predicted", f"shapes {a.shape}/{b.shape}", "two 1-d arrays of equal length")
    if a.size and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= num_classes):
        raise InvalidParameter(
            "labels",
            f"range [{min(a.min(), b.min())}, {max(a.max(), b.max())}]",
            f"in [0, {num_classes - 1}]",
        )
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(out, (a, b), 1)
    return out


def _feats(name: str, x: Any, min_rows: int = 2) -> np.ndarray:
    f = np.asarray(x, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < min_rows or not np.isfinite(f).all():
        raise InvalidParameter(name, f"<array of shape {f.shape}>", f"finite features (N >= {min_rows}, d)")
    return f


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits (np.cov, unbiased) of two feature sets.

    When the feature dimension exceeds a sample count (Inception's 2,048-d features of 1,000
    images) the d × d route is slow (a 2,048² ``sqrtm`` per bootstrap replicate) and its product
    is singular; :func:`_fid_low_rank` computes the same quantity exactly in sample space.
    """
    if a.shape[1] > min(a.shape[0], b.shape[0]):
        return _fid_low_rank(a, b)
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))[0]


def _fid_low_rank(a: np.ndarray, b: np.ndarray) -> float:
    """FID through the samples: with Σ_a = XXᵀ, X = A_cᵀ/√(n−1) (A_c the centred rows) and
    Σ_b = YYᵀ likewise, the non-zero eigenvalues of Σ_aΣ_b = XXᵀYYᵀ are those of (YᵀX)ᵀ(YᵀX),
    so Tr (Σ_aΣ_b)^{1/2} is the sum of the singular values of YᵀX = B_c A_cᵀ/√((n−1)(m−1)), an
    m × n matrix; Tr Σ is the squared Frobenius norm of the centred rows over (n − 1)."""
    n, m = a.shape[0], b.shape[0]
    ac, bc = a - a.mean(0), b - b.mean(0)
    cross = (bc @ ac.T) / math.sqrt((n - 1) * (m - 1))
    gram = cross.T @ cross if n <= m else cross @ cross.T
    trace_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None)).sum())
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + (ac * ac).sum() / (n - 1) + (bc * bc).sum() / (m - 1) - 2.0 * trace_sqrt)


def kid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD² with k(x, y) = (xᵀy/d + 1)³ (Bińkowski et al. 2018)."""
    d = a.shape[1]
    m, n = a.shape[0], b.shape[0]
    kaa = (a @ a.T / d + 1.0) ** 3
    kbb = (b @ b.T / d + 1.0) ** 3
    kab = (a @ b.T / d + 1.0) ** 3
    # Unbiased: drop the diagonal (self-similarity) terms of the within-set sums.
    return float(
        (kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1)) - 2.0 * kab.mean()
    )


_METRICS = {"fid": fid_from_features, "kid": kid_from_features}


def _check_metric(metric: str):
    if metric not in _METRICS:
        raise InvalidParameter("metric", metric, "one of " + ", ".join(_METRICS))
    return _METRICS[metric]


def distance_with_ci(
    generated: Any,
    reference: Any,
    *,
    metric: str = "fid",
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """A distribution distance (``fid`` or ``kid``) between feature sets, with a bootstrap interval.

    Both sets are resampled with replacement in each replicate (both are finite samples of their
    distributions). The interval is the centred percentile interval of the replicates (module
    docstring); the point value is the distance on the full sets. The bootstrap seed is public randomness of
    the *evaluation*.
    """
    fn = _check_metric(metric)
    a, b = _feats("generated", generated), _feats("reference", reference)
    if a.shape[1] != b.shape[1]:
        raise InvalidParameter("features", f"dims {a.shape[1]}/{b.shape[1]}", "equal feature dimensions")
    n_boot = check_int("n_boot", n_boot, 10, 100_000)
    level = check_in_range("level", level, 0.0, 1.0, high_inclusive=False)
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for r in range(n_boot):
        reps[r] = fn(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))])
    value = fn(a, b)
    lo, hi = _centred_interval(reps, value, level)
    return Estimate(value, lo, hi, level, int(len(a)))


def _centred_interval(reps: np.ndarray, value: float, level: float) -> tuple[float, float]:
    """Percentiles of the replicates shifted to mean ``value`` (see the module docstring: why)."""
    lo, hi = np.quantile(reps - reps.mean() + value, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_difference(
    generated_a: Any,
    generated_b: Any,
    reference: Any,
    *,
    metric: str = "fid",
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """metric(a, ref) − metric(b, ref) with a paired bootstrap interval.

    Row i of ``generated_a`` and of ``generated_b`` must come from the same starting noise x_T
    (and the same prompt); each replicate resamples the same row indices in both, and one
    reference resample, so the noise the two modes share cancels in the difference.
    """
    fn = _check_metric(metric)
    a, b, r = (
        _feats("generated_a", generated_a),
        _feats("generated_b", generated_b),
        _feats("reference", reference),
    )
    if a.shape != b.shape or a.shape[1] != r.shape[1]:
        raise InvalidParameter(
            "features",
            f"shapes {a.shape}/{b.shape}/{r.shape}",
            "paired sets of equal shape (N, d) and a reference (M, d)",
        )
    n_boot = check_int("n_boot", n_boot, 10, 100_000)
    level = check_in_range("level", level, 0.0, 1.0, high_inclusive=False)
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for k in range(n_boot):
        i = rng.integers(0, len(a), len(a))
        j = rng.integers(0, len(r), len(r))
        reps[k] = fn(a[i], r[j]) - fn(b[i], r[j])
    value = fn(a, r) - fn(b, r)
    lo, hi = _centred_interval(reps, value, level)
    return Estimate(value, lo, hi, level, int(len(a)))


# ---------------------------------------------------------------------------------------------
# Context following: does the RDM render the class its context comes from?
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContextFollowing:
    """Result of :func:`context_following`: per-class and overall accuracy with Wilson intervals.

    Attributes:
        class_names: names of all classes (the yardstick's), index = class id.
        classes: the class ids that were measured.
        per_class: one :class:`Estimate` per measured class (fraction judged as that class).
        overall: all measured images pooled.
        confusion: (C, C) counts, row = class the context came from, column = yardstick's call.
        settings: how the contexts were built and sampled (k, σ, w, steps, seed, counts).
    """

    class_names: tuple[str, ...]
    classes: tuple[int, ...]
    per_class: tuple[Estimate, ...]
    overall: Estimate
    confusion: np.ndarray
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall.to_dict(),
            "per_class": {self.class_names[c]: e.to_dict() for c, e in zip(self.classes, self.per_class, strict=True)},
            "confusion": {
                "rows": "class the context came from",
                "columns": "class the yardstick assigns",
                "class_names": list(self.class_names),
                "counts": self.confusion.tolist(),
            },
            "settings": dict(self.settings),
            "interval": "95 % Wilson score interval (privdiff.evaluation.domain.wilson_interval)",
        }


def class_contexts(
    embeddings: Any,
    labels: Any,
    *,
    classes: Sequence[int],
    per_class: int,
    k: int,
    sigma: float,
    tokens: int,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Contexts built like DP-RDM inference contexts from real images of each class.

    For each class c and each of ``per_class`` images: k distinct random rows of class c, each
    L2-normalised, averaged, plus N(0, σ²I), replicated to ``tokens`` identical tokens. That is
    the private retriever's release (mean of k unit vectors + Gaussian noise, method notes §3)
    followed by ``mix_context`` at λ = 1, with the class's own images standing in for the top-k
    of a subsample, so the context carries the class and nothing else.

    The row choice and the noise come from generators seeded by (``seed``, class): two embedding
    spaces measured with the same seed use the same images (only their embeddings differ), and
    the first m contexts of a class do not depend on ``per_class`` or on the other classes.

    Returns (contexts float32 (len(classes)·per_class, tokens, d), intended class per row).
    """
    from privdiff.encoders.base import l2_normalize
    from privdiff.rdm.conditioning import replicate_context

    emb = np.asarray(embeddings, dtype=np.float32)
    lab = np.asarray(labels, dtype=np.int64)
    if emb.ndim != 2 or lab.shape != (emb.shape[0],) or not np.isfinite(emb).all():
        raise InvalidParameter(
            "embeddings/labels", f"shapes {emb.shape}/{lab.shape}", "finite (N, d) embeddings with N labels"
        )
    per_class = check_int("per_class", per_class, 1)
    k = check_int("k", k, 1)
    tokens = check_int("tokens", tokens, 1)
    sigma = check_in_range("sigma", sigma, 0.0, float("inf"), low_inclusive=True)
    classes = [int(c) for c in classes]
    if not classes:
        raise InvalidParameter("classes", classes, "at least one class id")
    unit = l2_normalize(emb)
    means = np.empty((len(classes) * per_class, emb.shape[1]), dtype=np.float32)
    intended = np.repeat(np.asarray(classes, dtype=np.int64), per_class)
    for ci, c in enumerate(classes):
        rows = np.flatnonzero(lab == c)
        if rows.size < k:
            raise InvalidParameter("k", k, f"at most {rows.size} (the images of class {c})")
        pick = np.random.default_rng([seed, 0, c])
        noise = np.random.default_rng([seed, 1, c])
        for j in range(per_class):
            block = unit[pick.choice(rows, size=k, replace=False)].mean(axis=0)
            means[ci * per_class + j] = block + (sigma * noise.standard_normal(block.shape)).astype(np.float32)
    return replicate_context(means, tokens), intended


def _class_seed(seed: int, c: int) -> int:
    return int(np.random.SeedSequence([seed, 2, c]).generate_state(1, dtype=np.uint64)[0] % 2**63)


def context_following(
    model: Any,
    embeddings: Any,
    labels: Any,
    yardstick: Any,
    *,
    classes: Sequence[int] | None = None,
    per_class: int = 50,
    k: int = 20,
    sigma: float = 0.05,
    guidance_scale: float = 2.0,
    num_inference_steps: int = 50,
    seed: int = 0,
    batch_size: int = 100,
    progress: bool = False,
) -> tuple[ContextFollowing, np.ndarray]:
    """Context-following accuracy of an RDM: contexts from class c → fraction of images judged c.

    ``embeddings``/``labels`` are real held-out images of every class (the Fashion-MNIST *test*
    split) in the model's space; contexts come from :func:`class_contexts`; each context gets
    one image from x_T drawn with ``seed`` (row i's x_T is the same for every model of the same
    image shape, so two models are compared on paired noise); the yardstick judges the images.

    Returns (result, images uint8 (len(classes)·per_class, H, W, C)).
    """
    import torch

    from privdiff.diffusion.sampling import ddim_sample
    from privdiff.rdm.model import ClassifierFreeGuidance
    from privdiff.report.images import to_uint8

    names = tuple(yardstick.config.class_names)
    classes = list(range(len(names))) if classes is None else [int(c) for c in classes]
    for c in classes:
        check_int("class", c, 0, len(names) - 1)
    batch_size = check_int("batch_size", batch_size, 1)
    num_inference_steps = check_int("num_inference_steps", num_inference_steps, 1)
    cfg = model.config
    if np.asarray(embeddings).shape[-1] != cfg.embedding_dim:
        raise InvalidParameter(
            "embeddings", f"dimension {np.asarray(embeddings).shape[-1]}", f"the model's {cfg.embedding_dim}"
        )
    contexts, intended = class_contexts(
        embeddings, labels, classes=classes, per_class=per_class, k=k, sigma=sigma, tokens=k, seed=seed
    )
    n = contexts.shape[0]
    # x_T per class from its own generator (seed, class): image j of class c starts from the same
    # noise for every model of this image shape and every per_class >= j + 1 (paired comparisons).
    shape = (cfg.channels, cfg.sample_size, cfg.sample_size)
    x_T = torch.cat(
        [
            torch.randn((per_class, *shape), generator=torch.Generator().manual_seed(_class_seed(seed, c)))
            for c in classes
        ]
    )
    gen = torch.Generator().manual_seed(seed)  # DDIM with η = 0 draws nothing from it
    scheduler = model.ddim_scheduler()
    model.eval()
    out = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="context following", unit="img")
    with torch.no_grad():
        for s in range(0, n, batch_size):
            ctx = torch.from_numpy(contexts[s : s + batch_size])
            x0 = ddim_sample(
                ClassifierFreeGuidance(model, ctx, guidance_scale),
                scheduler,
                x_T[s : s + batch_size],
                num_inference_steps=num_inference_steps,
                generator=gen,
            )
            out.append(to_uint8(x0))
            if bar is not None:
                bar.update(ctx.shape[0])
    if bar is not None:
        bar.close()
    images = np.concatenate(out)
    pred = yardstick.predict(images)
    per = tuple(wilson_interval(int((pred[intended == c] == c).sum()), int((intended == c).sum())) for c in classes)
    overall = wilson_interval(int((pred == intended).sum()), n)
    settings = {
        "per_class": per_class,
        "n_images": n,
        "k": k,
        "sigma": sigma,
        "context_tokens": k,
        "guidance_scale": guidance_scale,
        "num_inference_steps": num_inference_steps,
        "seed": seed,
        "space_id": cfg.space_id,
        "x_T": "per class c: torch.randn((per_class, C, H, W)) from a generator seeded with "
        "SeedSequence([seed, 2, c]) (privdiff.evaluation.domain._class_seed)",
    }
    result = ContextFollowing(names, tuple(classes), per, overall, confusion(intended, pred, len(names)), settings)
    return result, images


def save_confusion_png(result: ContextFollowing, path: Any, title: str = "context following") -> Any:
    """Row-normalised confusion heat map (rows: context class, columns: yardstick's call)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = result.confusion[list(result.classes)].astype(np.float64)
    frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7.5, 6))
    im = ax.imshow(frac, vmin=0, vmax=1, cmap="Blues")
    for i in range(frac.shape[0]):
        for j in range(frac.shape[1]):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    f"{frac[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if frac[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(len(result.class_names)), result.class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(result.classes)), [result.class_names[c] for c in result.classes])
    ax.set_xlabel("yardstick's class of the generated image")
    ax.set_ylabel("class of the context's test images")
    o = result.overall
    ax.set_title(f"{title}\noverall {o.value:.3f} [{o.low:.3f}, {o.high:.3f}], n={o.n}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
