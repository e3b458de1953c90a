"""Calibrate the replication threshold τ for each feature space on Fashion-MNIST.

Reference D = a random subset of the training set (the "fine-tuning set" of CPSample §5.2).
Known non-copies = held-out test images; τ is the smallest threshold with ≤ ``--max-fpr`` of them
above it. Known copies = augmented members of D, in three families, each reported separately
because the feature spaces differ most in what they forgive:

* ``mild``: Gaussian pixel noise σ = 3/255 and brightness jitter ±3 %, no shift;
* ``photometric``: Gaussian pixel noise (σ = 8/255) and brightness jitter (±10 %), no shift;
* ``shift1``: photometric plus an integer translation of up to 1 px;
* ``shift2``: photometric plus up to 2 px.

Writes ``replication_threshold.json`` (τ, FPR, TPR per family, AUC, settings, versions) and
``replication_threshold_<space>.png`` (copy vs non-copy distributions with τ), then prints the
constants to paste into ``privdiff.evaluation.replication.RECOMMENDED_THRESHOLDS`` (a test checks
the two agree).

    .venv/bin/python experiments/replication_threshold.py --n 500 --spaces pixel effnet inception
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

FAMILIES = {
    "mild": {"max_shift": 0, "noise_std": 3.0, "brightness": 0.03},
    "photometric": {"max_shift": 0, "noise_std": 8.0, "brightness": 0.1},
    "shift1": {"max_shift": 1, "noise_std": 8.0, "brightness": 0.1},
    "shift2": {"max_shift": 2, "noise_std": 8.0, "brightness": 0.1},
}
#: The family τ's headline TPR refers to: what a memorising diffusion model emits is a near-exact
#: replica (noise-level differences), not a translated one.
PRIMARY_FAMILY = "photometric"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="reference images = copies per family = non-copies")
    parser.add_argument("--spaces", nargs="+", default=["pixel", "effnet", "inception"])
    parser.add_argument("--max-fpr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/results/evaluation"))
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep spaces already in the JSON that are not recomputed in this run",
    )
    args = parser.parse_args()

    from privdiff.data import load_dataset
    from privdiff.evaluation.features import check_feature_space, extract_features
    from privdiff.evaluation.fid import library_versions
    from privdiff.evaluation.replication import (
        augment_copies,
        calibrate_threshold,
        nearest_neighbours,
        save_calibration_plot,
        threshold_at_fpr,
    )

    spaces = [check_feature_space(s) for s in args.spaces]
    rng = np.random.default_rng(args.seed)
    train_all = load_dataset("fashion-mnist:train").images
    test_all = load_dataset("fashion-mnist:test").images
    ref_idx = np.sort(rng.choice(train_all.shape[0], size=args.n, replace=False))
    neg_idx = np.sort(rng.choice(test_all.shape[0], size=args.n, replace=False))
    reference, non_copies = train_all[ref_idx], test_all[neg_idx]
    copies = {
        name: augment_copies(reference, seed=args.seed + i, **kw) for i, (name, kw) in enumerate(FAMILIES.items())
    }

    path = args.out / "replication_threshold.json"
    previous = json.loads(path.read_text()) if (args.merge and path.is_file()) else {}
    per_space = dict(previous.get("spaces", {}))
    for space in spaces:
        t0 = time.perf_counter()
        primary_copies, primary_aug = copies[PRIMARY_FAMILY]
        cal = calibrate_threshold(
            reference,
            primary_copies,
            non_copies,
            feature_space=space,
            max_fpr=args.max_fpr,
            copy_sources=np.arange(args.n),
            progress=True,
            settings={
                "augmentation": primary_aug,
                "family": PRIMARY_FAMILY,
                "n": args.n,
                "seed": args.seed,
                "reference_indices_from_seed": True,
            },
        )
        assert cal.threshold == threshold_at_fpr(cal.noncopy_similarities, args.max_fpr)
        entry = cal.to_dict()
        families = {}
        ref_feats = extract_features(reference, space)
        for name, (imgs, aug) in copies.items():
            sims, idx = nearest_neighbours(extract_features(imgs, space), ref_feats)
            from sklearn.metrics import roc_auc_score

            labels = np.r_[np.ones(sims.size), np.zeros(cal.noncopy_similarities.size)]
            families[name] = {
                "augmentation": aug,
                "tpr_at_threshold": float(np.mean(sims > cal.threshold)),
                "auc": float(roc_auc_score(labels, np.r_[sims, cal.noncopy_similarities])),
                "nn_is_source": float(np.mean(idx == np.arange(args.n))),
                "median_similarity": float(np.median(sims)),
            }
        entry["copy_families"] = families
        entry["seconds"] = time.perf_counter() - t0
        if space == "effnet":
            from privdiff.encoders.registry import load_image_encoder
            from privdiff.evaluation.features import EFFNET_ENCODER

            entry["feature_space"]["encoder_space_id"] = load_image_encoder(EFFNET_ENCODER).space_id
        plot = save_calibration_plot(cal, args.out / f"replication_threshold_{space}.png")
        entry["plot"] = plot.name
        per_space[space] = entry
        print(
            f"{space}: τ={cal.threshold:.4f} FPR={cal.fpr:.3f} AUC={cal.auc:.3f} "
            + " ".join(f"TPR[{k}]={v['tpr_at_threshold']:.3f}" for k, v in families.items()),
            flush=True,
        )

    payload = {
        "experiment": "replication threshold calibration on Fashion-MNIST",
        "rule": f"τ = smallest threshold with <= {args.max_fpr:g} of held-out non-copies above it; "
        "an image is replicated when its NN cosine similarity > τ",
        "settings": {
            "n_reference = n_noncopies = n_copies_per_family": "per space, see spaces.<space>.settings.n",
            "reference_source": "fashion-mnist:train (random subset from seed)",
            "noncopy_source": "fashion-mnist:test (random subset from seed)",
            "max_fpr": args.max_fpr,
            "families": FAMILIES,
            "primary_family": PRIMARY_FAMILY,
        },
        "spaces": per_space,
        "recommended": {
            s: {"threshold": e["threshold"], "fpr": e["fpr"], "tpr": e["tpr"], "auc": e["auc"]}
            for s, e in per_space.items()
        },
        "versions": library_versions(),
        "command": f"python experiments/replication_threshold.py --n {args.n} --spaces {' '.join(args.spaces)} "
        f"--max-fpr {args.max_fpr} --seed {args.seed}" + (" --merge" if args.merge else ""),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    for s, e in per_space.items():
        print(
            f'    "{s}": {{"threshold": {e["threshold"]!r}, "fpr": {e["fpr"]!r}, '
            f'"tpr": {e["tpr"]!r}, "auc": {e["auc"]!r}}},'
        )


if __name__ == "__main__":
    main()
