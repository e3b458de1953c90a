"""Validate the domain yardstick on real Fashion-MNIST before it judges any generated image.

A yardstick can only resolve a difference between generation modes if, on *real* images, (1) it
classifies accurately, (2) its FID/KID separate "same distribution" from degraded or wrong-domain
sets by far more than their own confidence intervals, and (3) its in-domain rate is near 1 on a
domain's real test images and near 0 on the rest. This script measures all three:

- accuracy of the shipped yardstick on the 10,000 test images, overall and per class;
- domain FID and KID (95 % bootstrap intervals, ``privdiff.evaluation.domain``) of ``--n`` real
  train images against ``--n`` test images, for several disjoint train sets (the spread of the
  same-distribution floor), and for degraded sets (blur, down-up, pixel noise) and wrong-domain
  sets (the other classes, against each domain's test images);
- in-domain rate of each domain's real test images (ceiling) and of the other classes (floor).

Writes ``domain_yardstick_validation.json`` and ``.png`` under ``--out``.

    .venv/bin/python experiments/domain_yardstick_validation.py --n 1000 --out docs/results/evaluation
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fid_validation import down_up, gaussian_blur  # noqa: E402  (same degradations as the Inception-FID check)

#: The private domains of the DP-RDM experiments (Fashion-MNIST class ids).
DOMAINS: dict[str, list[int]] = {
    "winter tops (Pullover, Coat)": [2, 4],
    "footwear (Sandal, Sneaker, Ankle boot)": [5, 7, 9],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="images per set (equal on both sides)")
    ap.add_argument("--repeats", type=int, default=5, help="disjoint same-distribution train sets")
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--yardstick", default="fashion-mnist")
    ap.add_argument("--out", type=Path, default=Path("docs/results/evaluation"))
    args = ap.parse_args(argv)
    command = shlex.join(
        [
            "python",
            "experiments/domain_yardstick_validation.py",
            *(argv if argv is not None else sys.argv[1:]),
        ]
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from privdiff.data import load_dataset
    from privdiff.evaluation.domain import distance_with_ci, in_domain_rate
    from privdiff.evaluation.yardstick import load_yardstick

    t0 = time.time()
    rng = np.random.default_rng(args.seed)
    yard = load_yardstick(args.yardstick)
    train, test = load_dataset("fashion-mnist:train"), load_dataset("fashion-mnist:test")
    acc, per = yard.accuracy(test.images, test.labels)
    print(f"test accuracy {acc:.4f}; per class " + ", ".join(f"{n} {a:.3f}" for n, a in zip(test.class_names, per)))

    ref_idx = rng.choice(len(test), size=args.n, replace=False)
    ref = yard.features(test.images[ref_idx])
    perm = rng.permutation(len(train))
    noise_rng = np.random.default_rng(args.seed + 1)

    def both(images: np.ndarray, reference: np.ndarray, seed: int) -> dict:
        f = yard.features(images)
        return {
            m: distance_with_ci(f, reference, metric=m, n_boot=args.n_boot, seed=seed).to_dict() for m in ("fid", "kid")
        }

    sets: dict[str, dict] = {}
    for r in range(args.repeats):
        sets[f"train set {r + 1} (same distribution)"] = both(train.images[perm[r * args.n : (r + 1) * args.n]], ref, r)
    base = train.images[perm[: args.n]]
    noisy = np.clip(
        base.astype(np.int16) + noise_rng.normal(0, 25, base.shape).round().astype(np.int16), 0, 255
    ).astype(np.uint8)
    sets["blur σ=1"] = both(gaussian_blur(base, 1.0), ref, 100)
    sets["down×2-up"] = both(down_up(base, 2), ref, 101)
    sets["pixel noise σ=25/255"] = both(noisy, ref, 102)
    for name, v in sets.items():
        print(
            f"{name:34s} FID {v['fid']['value']:8.3f} [{v['fid']['low']:.3f}, {v['fid']['high']:.3f}]  "
            f"KID {v['kid']['value']:.4f} [{v['kid']['low']:.4f}, {v['kid']['high']:.4f}]"
        )

    domains: dict[str, dict] = {}
    for name, classes in DOMAINS.items():
        in_test = np.isin(test.labels, classes)
        in_train = np.isin(train.labels, classes)
        n_ref = min(args.n, int(in_test.sum()))
        d_ref = yard.features(test.images[rng.choice(np.flatnonzero(in_test), n_ref, replace=False)])
        same = train.images[rng.choice(np.flatnonzero(in_train), args.n, replace=False)]
        other = train.images[rng.choice(np.flatnonzero(~in_train), args.n, replace=False)]
        ceiling = in_domain_rate(yard.predict(test.images[in_test]), classes)
        floor = in_domain_rate(yard.predict(test.images[~in_test]), classes)
        domains[name] = {
            "classes": classes,
            "reference_test_images": n_ref,
            "in_domain_rate_real_domain_test": ceiling.to_dict(),
            "in_domain_rate_real_other_test": floor.to_dict(),
            "vs_domain_test": {
                "same domain (train)": both(same, d_ref, 200),
                "other classes (train)": both(other, d_ref, 201),
            },
        }
        print(
            f"{name}: in-domain rate real {ceiling} / others {floor}; FID same "
            f"{domains[name]['vs_domain_test']['same domain (train)']['fid']['value']:.2f} vs other "
            f"{domains[name]['vs_domain_test']['other classes (train)']['fid']['value']:.2f}"
        )

    same_fids = [v["fid"]["value"] for k, v in sets.items() if "same distribution" in k]
    record = {
        "command": command,
        "yardstick": args.yardstick,
        "yardstick_report": yard.config.report,
        "test_accuracy": round(acc, 4),
        "test_accuracy_per_class": {n: round(float(a), 4) for n, a in zip(test.class_names, per)},
        "n": args.n,
        "n_boot": args.n_boot,
        "interval": "95 % centred percentile bootstrap, both sets resampled (privdiff.evaluation.domain)",
        "sets_vs_test": sets,
        "same_distribution_fid_mean_sd": [
            float(np.mean(same_fids)),
            float(np.std(same_fids, ddof=1)) if len(same_fids) > 1 else 0.0,
        ],
        "domains": domains,
        "seconds": round(time.time() - t0, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "domain_yardstick_validation.json").write_text(json.dumps(record, indent=2) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    names = list(sets)
    for ax, metric in zip(axes, ("fid", "kid")):
        vals = np.array([sets[n][metric]["value"] for n in names])
        err = np.array(
            [[vals[i] - sets[n][metric]["low"], sets[n][metric]["high"] - vals[i]] for i, n in enumerate(names)]
        ).T
        colors = ["tab:green" if "same" in n else "tab:red" for n in names]
        ax.bar(range(len(names)), vals, yerr=err, color=colors, capsize=3)
        ax.set_xticks(
            range(len(names)),
            [n.replace(" (same distribution)", "") for n in names],
            rotation=35,
            ha="right",
            fontsize=8,
        )
        if metric == "fid":  # KID is unbiased and can be slightly negative: linear axis
            ax.set_yscale("log")
        ax.set_title(f"domain {metric.upper()} vs {args.n} test images (95 % CI)")
    fig.suptitle(f"Yardstick validation on real Fashion-MNIST (test accuracy {acc:.3f}): green = same distribution")
    fig.tight_layout()
    fig.savefig(args.out / "domain_yardstick_validation.png", dpi=110)
    print(f"wrote {args.out}/domain_yardstick_validation.json and .png ({record['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
