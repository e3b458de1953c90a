"""Choose and build the default image embedding space (run as ``python -m privdiff.encoders.calibrate``).

1. On a subset of the DP-RDM *public* split and of Fashion-MNIST *test*, compare input sizes and
   post-processing variants (raw / centred on public / centred + PCA fitted on public) by class
   precision@10 among test images, and measure encoding throughput.
2. Compute the centring vector at ``--asset-size`` on the full public split and save it as
   ``src/privdiff/assets/encoders/effnet-lite0-<size>px-centre.safetensors``.

Results go to ``docs/results/encoders/image_retrieval.{json,png}`` with the settings used. Only
public data (and the test set, for measurement) is read: the shipped centre leaks nothing private.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from privdiff.encoders.base import l2_normalize
from privdiff.encoders.efficientnet import (
    EfficientNetLite0Encoder,
    centre_asset_path,
    load_centre,
    save_centre,
)
from privdiff.encoders.evaluation import cached_features, class_precision_at_k
from privdiff.utils.atomic import atomic_write_json

# Lazy imports: privdiff.data and matplotlib are imported where used: this script's --help must not
# load them.


def _variants(pub: np.ndarray, test: np.ndarray, pca_dim: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (test embeddings, public embeddings) under each post-processing variant."""
    centre = pub.mean(axis=0)
    out = {
        "raw": (l2_normalize(test), l2_normalize(pub)),
        "centred": (l2_normalize(test - centre), l2_normalize(pub - centre)),
    }
    # PCA fitted on public features only (SVD of the centred public matrix).
    _, _, vt = np.linalg.svd(pub - centre, full_matrices=False)
    out[f"centred+pca{pca_dim}"] = (
        l2_normalize((test - centre) @ vt[:pca_dim].T),
        l2_normalize((pub - centre) @ vt[:pca_dim].T),
    )
    return out


def noisy_mean_accuracy(
    test: np.ndarray,
    labels: np.ndarray,
    pub: np.ndarray,
    pub_labels: np.ndarray,
    k: int,
    noise_std: float,
    n_queries: int = 500,
    seed: int = 0,
) -> float:
    """How much class information survives in a DP-RDM-style release: for each query image, the
    mean of its k nearest other test images plus N(0, noise_std² I) (the privatised context of
    arXiv 2403.14421 §3, Eq. for the noisy aggregate), classified by the most similar (cosine) public class
    centroid. Shows the effect of the space on the mechanism's signal-to-noise, which plain
    precision@k does not."""
    rng = np.random.default_rng(seed)
    q = test[:n_queries]
    sims = q @ test.T
    sims[np.arange(len(q)), np.arange(len(q))] = -np.inf
    top = np.argpartition(-sims, kth=k - 1, axis=1)[:, :k]
    release = test[top].mean(axis=1) + rng.normal(scale=noise_std, size=(len(q), test.shape[1]))
    # Unit centroids: a raw dot product would favour tight classes, whose mean vectors are longer.
    centroids = l2_normalize(np.stack([pub[pub_labels == c].mean(0) for c in np.unique(pub_labels)]))
    return float((np.argmax(release @ centroids.T, axis=1) == labels[:n_queries]).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96])
    ap.add_argument("--n-public", type=int, default=1500, help="public images used for the comparison")
    ap.add_argument("--n-test", type=int, default=2000, help="test images used as queries")
    ap.add_argument("--pca-dim", type=int, default=256)
    ap.add_argument("--n-timing", type=int, default=256, help="images encoded afresh to time throughput")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument(
        "--noise-stds",
        type=float,
        nargs="+",
        default=[0.0, 0.02, 0.05, 0.1],
        help="per-coordinate noise std for the noisy neighbour-mean metric",
    )
    ap.add_argument("--asset-size", type=int, default=64, help="input size of the shipped centre")
    ap.add_argument("--no-asset", action="store_true", help="only compare, do not (re)write the asset")
    ap.add_argument("--cache", type=Path, default=Path("out/encoders/cache"))
    ap.add_argument("--out", type=Path, default=Path("docs/results/encoders"))
    args = ap.parse_args(argv)

    from privdiff.data import load_dataset

    public = load_dataset("fashion-mnist:dprdm-public")
    test = load_dataset(f"fashion-mnist:test[:{args.n_test}]")
    rng = np.random.default_rng(0)
    pub_idx = np.sort(rng.choice(len(public), size=min(args.n_public, len(public)), replace=False))
    pub_imgs = public.images[pub_idx]

    comparison = []
    for size in args.sizes:
        enc = EfficientNetLite0Encoder(size)
        enc.features(test.images[:16])  # warm-up (lazy weight load) outside the timing
        # Throughput is always measured afresh on a fixed batch (the features below may be cached).
        t0 = time.perf_counter()
        enc.features(test.images[: args.n_timing], batch_size=128)
        images_per_s = args.n_timing / (time.perf_counter() - t0)
        f_test = cached_features(enc, test.images, args.cache, f"test{args.n_test}")
        f_pub = cached_features(enc, pub_imgs, args.cache, f"pub{args.n_public}")
        row = {"input_size": size}
        for name, (emb, pub_emb) in _variants(f_pub, f_test, args.pca_dim).items():
            row[f"precision@{args.k}/{name}"] = round(class_precision_at_k(emb, test.labels, k=args.k), 4)
            row[f"mean_cosine_random_pairs/{name}"] = round(float((emb[:500] @ emb[500:1000].T).mean()), 4)
            for std in args.noise_stds:
                row[f"noisy_mean_accuracy@std{std:g}/{name}"] = round(
                    noisy_mean_accuracy(emb, test.labels, pub_emb, public.labels[pub_idx], args.k, std),
                    4,
                )
        row["images_per_s"] = round(images_per_s, 1)
        comparison.append(row)
        print(json.dumps(row), flush=True)

    result = {
        "what": "class precision@k among Fashion-MNIST test images (leave-one-out, cosine), "
        "EfficientNet-Lite0 features; centre/PCA fitted on a random subset of the DP-RDM public split; "
        "mean_cosine_random_pairs: mean cosine of unrelated test images; noisy_mean_accuracy: class accuracy of "
        "(mean of k nearest test images + Gaussian noise) by nearest public class centroid",
        "settings": vars(args) | {"cache": str(args.cache), "out": str(args.out)},
        "command": "python -m privdiff.encoders.calibrate " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "comparison": comparison,
    }

    if not args.no_asset:
        enc = EfficientNetLite0Encoder(args.asset_size)
        f_all = cached_features(enc, public.images, args.cache, "dprdm-public-full")
        centre = f_all.mean(axis=0).astype(np.float32)
        meta = {
            "source": "fashion-mnist:dprdm-public",
            "n_images": str(len(public)),
            "input_size": str(args.asset_size),
            "sha256_12": hashlib.sha256(centre.tobytes()).hexdigest()[:12],
            "command": f"python -m privdiff.encoders.calibrate --asset-size {args.asset_size}",
        }
        path = centre_asset_path(args.asset_size)
        # safetensors writes metadata in hash order, so rewrite only when the vector changed.
        if not path.is_file() or not np.array_equal(load_centre(path)[0], centre):
            save_centre(path, centre, meta)
        result["asset"] = meta | {"path": str(centre_asset_path(args.asset_size).name)}
        print(f"wrote {centre_asset_path(args.asset_size)}")

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "image_retrieval.json", result)
    _plot(comparison, args.k, args.out / "image_retrieval.png")
    print(f"wrote {args.out / 'image_retrieval.json'}")
    return 0


def _plot(comparison: list[dict], k: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [key.split("/", 1)[1] for key in comparison[0] if key.startswith(f"precision@{k}/")]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        xs = np.arange(len(comparison)) + i * width
        ax.bar(xs, [row[f"precision@{k}/{v}"] for row in comparison], width, label=v)
    ax.set_xticks(np.arange(len(comparison)) + width * (len(variants) - 1) / 2)
    ax.set_xticklabels([f"{row['input_size']} px" for row in comparison])
    ax.set_ylabel(f"class precision@{k}")
    ax.set_ylim(0, 1)
    ax.set_title("EfficientNet-Lite0 features, Fashion-MNIST test")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
