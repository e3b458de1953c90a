"""CPSample's replication result in shape: plain DDIM vs CPSample on a model that memorises.

Reproduces, on a Fashion-MNIST model fine-tuned to memorise a small subset, the paper's
(Kazdan et al., arXiv 2409.07025)

* Fig. 1: the 4 of 100 samples most similar to their nearest training image, DDIM vs CPSample;
* Fig. 3: histograms of nearest-neighbour cosine similarity to the fine-tuning set;
* the replication rate (fraction of samples above the calibrated threshold τ) with a Fisher exact
  test of the reduction, and FID against held-out images (equal sample counts) for every setting.

Every condition starts from the same x_T (same seed), so differences are due to the guidance alone.
Writes PNG + JSON to ``--out`` (default ``docs/results/cpsample``).

    python experiments/cpsample_replication.py --model src/privdiff/assets/checkpoints/cpsample/fmnist64 \
        --classifier src/privdiff/assets/checkpoints/cpsample/fmnist64/classifier \\
        --train-data 'fashion-mnist:train[:64]'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="diffusion model directory")
    p.add_argument("--classifier", required=True, help="CPSample classifier directory")
    p.add_argument("--train-data", required=True, help="the model's (fine-tuning) training set, a dataset spec")
    p.add_argument(
        "--fid-reference",
        default="fashion-mnist:test[1000:1100]",
        help="held-out images for FID (use as many as --n)",
    )
    p.add_argument("--n", type=int, default=100, help="samples per condition (paper's Fig. 1: 100)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (η = 0)")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.25, 0.001])
    p.add_argument("--scale", type=float, default=1000.0, help="guidance scale s (same for every α)")
    p.add_argument("--mode", default="toward_opposite", choices=["toward_opposite", "away_from_predicted"])
    p.add_argument("--feature-space", default="pixel", help="replication feature space (privdiff.evaluation)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="replication τ; default: the evaluation toolkit's calibrated τ for the feature space",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of x_T (shared by every condition)")
    p.add_argument("--no-fid", action="store_true", help="skip FID (it is the slow part on CPU)")
    p.add_argument("--out", default="docs/results/cpsample")
    p.add_argument("--tag", default="", help="suffix for the output files (e.g. for a pilot run)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from privdiff.cpsample import CPSampleGuidance, load_classifier
    from privdiff.data import load_dataset
    from privdiff.diffusion import load_model
    from privdiff.diffusion.generate import generate
    from privdiff.evaluation.replication import (
        compare_rates,
        recommended_threshold_info,
        replication_report,
        save_histogram,
        save_top_pairs,
    )
    from privdiff.report.images import save_grid

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"_{args.tag}" if args.tag else ""
    model = load_model(args.model)
    protection = load_classifier(args.classifier)
    train = load_dataset(args.train_data).images
    threshold, threshold_source = args.threshold, "explicit (--threshold)"
    if threshold is None:
        info = recommended_threshold_info(args.feature_space)
        threshold, threshold_source = float(info["threshold"]), info
    conditions: list[tuple[str, float | None]] = [("DDIM", None)] + [(f"CPSample α={a:g}", a) for a in args.alphas]

    results, samples, reports = [], {}, {}
    for name, alpha in conditions:
        guidance = (
            CPSampleGuidance(
                protection.classifier, alpha=alpha, scale=args.scale, mode=args.mode, gate_on="xt", step="gradient"
            )
            if alpha
            else None
        )
        images, info = generate(model, args.n, num_inference_steps=args.steps, seed=args.seed, guidance=guidance)
        samples[name] = images
        rep = replication_report(images, train, feature_space=args.feature_space, threshold=threshold)
        reports[name] = rep
        row = {
            "condition": name,
            "alpha": alpha,
            "scale": args.scale if alpha else None,
            "replication_rate": rep.rate,
            "n_replicated": rep.n_replicated,
            "n": rep.n_generated,
            "similarity_mean": float(rep.similarities.mean()),
            "similarity_max": float(rep.similarities.max()),
            "top_pairs": rep.top_pairs(4),
            "sampling_seconds": info["wall_seconds"],
            "gate_firing_rate": guidance.stats.firing_rate if guidance else None,
            "gate_calls_with_firing": guidance.stats.steps_with_firing if guidance else None,
        }
        results.append(row)
        slug = "ddim" if alpha is None else f"cpsample_a{alpha:g}"
        save_grid(images, out / f"samples_{slug}{tag}.png", ncols=10, scale=2)
        save_top_pairs(rep, images, train, out / f"top4_{slug}{tag}.png", n=4)
        print(
            f"{name}: replication {rep.rate:.1%} ({rep.n_replicated}/{rep.n_generated}), "
            f"mean NN sim {row['similarity_mean']:.4f}, {info['wall_seconds']:.0f} s"
            + (f", gate fired {guidance.stats.firing_rate:.2%}" if guidance else ""),
            flush=True,
        )

    base = reports["DDIM"]
    for row in results[1:]:
        row["vs_ddim"] = compare_rates(base, reports[row["condition"]])

    if not args.no_fid:
        from privdiff.evaluation.fid import compute_fid

        ref = load_dataset(args.fid_reference).images
        for row in results:
            t0 = time.perf_counter()
            fid = compute_fid(samples[row["condition"]], ref)
            row["fid"] = fid.fid
            row["fid_n"] = [fid.n_a, fid.n_b]
            row["fid_warnings"] = fid.warnings
            print(
                f"{row['condition']}: FID {fid.fid:.2f} (n={fid.n_a} vs {fid.n_b}, {time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        ddim_fid = results[0]["fid"]
        for row in results[1:]:
            row["fid_relative_change"] = (row["fid"] - ddim_fid) / ddim_fid

    fig1 = _figure1(samples, reports, train, results, out / f"fig1_top4_ddim_vs_cpsample{tag}.png")
    save_histogram(
        {name: reports[name] for name, _ in conditions},
        out / f"fig3_similarity_hist{tag}.png",
        threshold=threshold,
        title=f"NN similarity to the {len(train)} training images ({args.feature_space})",
    )
    record = {
        "experiment": "cpsample_replication",
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "settings": {
            **vars(args),
            "threshold": threshold,
            "threshold_source": threshold_source,
            "n_train": int(len(train)),
            "model_meta": model.meta,
            "classifier_meta": {k: v for k, v in protection.meta.items() if k != "report"},
        },
        "results": results,
        "figures": {"fig1": fig1.name, "fig3": f"fig3_similarity_hist{tag}.png"},
    }
    (out / f"replication{tag}.json").write_text(json.dumps(record, indent=2, default=_jsonable))
    print(f"wrote {out / f'replication{tag}.json'}")
    return 0


def _figure1(samples, reports, train, results, path: Path) -> Path:
    """Paper Fig. 1 layout: top-4 most similar of the samples, DDIM (left) vs CPSample at the smallest α."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    guarded = [r for r in results if r["alpha"] is not None]
    right = min(guarded, key=lambda r: r["alpha"])["condition"]
    cols = ["DDIM", right]
    fig, axes = plt.subplots(4, 4, figsize=(6.4, 6.6))
    for c, name in enumerate(cols):
        rep = reports[name]
        for r, pair in enumerate(rep.top_pairs(4)):
            gen = samples[name][pair["generated_index"]][..., 0]
            ref = train[pair["reference_index"]][..., 0]
            axes[r, 2 * c].imshow(gen, cmap="gray", vmin=0, vmax=255)
            axes[r, 2 * c + 1].imshow(ref, cmap="gray", vmin=0, vmax=255)
            flag = " ≥τ" if pair["similarity"] > rep.threshold else ""
            axes[r, 2 * c].set_title(f"s={pair['similarity']:.3f}{flag}", fontsize=7)
            axes[r, 2 * c + 1].set_title("nearest train", fontsize=7)
        axes[0, 2 * c].annotate(
            f"{name}: {rep.n_replicated}/{rep.n_generated} above τ",
            xy=(1.1, 1.3),
            xycoords="axes fraction",
            ha="center",
            fontsize=9,
            fontweight="bold",
        )
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    n = len(next(iter(samples.values())))
    fig.suptitle(
        f"Top-4 of {n} samples by similarity to the nearest training image (same x_T; τ = {rep.threshold:.3f})",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _jsonable(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(type(obj).__name__)


if __name__ == "__main__":
    raise SystemExit(main())
