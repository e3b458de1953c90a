"""How much DP noise can the adapt-trained RDM read through? (choice of s_max, method notes §5).

The private retriever releases r̃ = r̄ + σ·ξ with ξ ~ N(0, I_d) (notes §3 step 6). With d = 1280
(EfficientNet-Lite0 features) the noise norm σ·√d is 36·σ, against ‖r̄‖ ≤ 1; the model was
trained with s ~ s_max·(1 − u) up to s_max. Here, for several σ, we condition on r̄ = the mean of
k random *test* images of one class (normalised embeddings, no retrieval involved) plus fresh
noise per image, generate, and measure whether the image is of that class (nearest class centroid
of the test embeddings). σ = 0 is the noiseless ceiling, the null context is the floor.

    python experiments/dp_rdm_noise_robustness.py --out docs/results/dprdm
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.025, 0.05, 0.075, 0.1, 0.15])
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--per-class", type=int, default=10, help="images per class per σ")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance-scale", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/results/dprdm")
    args = ap.parse_args(argv)
    command = shlex.join(
        [
            "python",
            "experiments/dp_rdm_noise_robustness.py",
            *(argv if argv is not None else sys.argv[1:]),
        ]
    )

    import torch

    from privdiff.data import load_dataset
    from privdiff.diffusion.sampling import ddim_sample
    from privdiff.encoders import load_image_encoder
    from privdiff.rdm.model import ClassifierFreeGuidance, RDMModel, read_model_info
    from privdiff.rdm.pipeline import resolve_model_dir
    from privdiff.rdm.train import cached_embeddings
    from privdiff.report.images import save_grid, to_uint8

    model_dir = resolve_model_dir(args.model)
    model = RDMModel.load(model_dir)
    enc = load_image_encoder(model.space_id)  # the model's own space
    model.check_space(enc.space_id)
    test = load_dataset("fashion-mnist:test")
    emb = cached_embeddings(test, enc, private=False)
    n_cls = len(test.class_names)
    centroids = np.stack([emb[test.labels == c].mean(axis=0) for c in range(n_cls)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)

    rng = np.random.default_rng(args.seed)
    labels = np.repeat(np.arange(n_cls), args.per_class)
    # One r̄ per image: the mean of k random test images of its class (normalised rows).
    r_bar = np.stack(
        [emb[rng.choice(np.flatnonzero(test.labels == c), args.k, replace=False)].mean(axis=0) for c in labels]
    )
    scheduler = model.ddim_scheduler()
    gen = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn((labels.size, 1, model.config.sample_size, model.config.sample_size), generator=gen)
    noise = torch.randn((labels.size, model.embedding_dim), generator=gen)

    rows, grids = [], []
    settings = [("null context", None)] + [(f"σ={s:g}", s) for s in args.sigmas]
    for name, sigma in settings:
        t0 = time.time()
        if sigma is None:
            ctx = torch.zeros(labels.size, model.config.k, model.embedding_dim)
        else:
            ctx = (torch.from_numpy(r_bar) + sigma * noise)[:, None, :].expand(-1, model.config.k, -1)
        x0 = ddim_sample(
            ClassifierFreeGuidance(model, ctx, args.guidance_scale),
            scheduler,
            x_T,
            num_inference_steps=args.steps,
            progress=True,
            desc=name,
        )
        images = to_uint8(x0)
        pred = np.argmax(enc.encode_images(images) @ centroids.T, axis=1)
        acc = float((pred == labels).mean())
        foot = np.isin(labels, [5, 7, 9])
        rows.append(
            {
                "setting": name,
                "sigma": sigma,
                "noise_norm": None if sigma is None else sigma * model.embedding_dim**0.5,
                "class_accuracy": acc,
                "footwear_class_accuracy": float((pred == labels)[foot].mean()),
                "seconds": round(time.time() - t0, 1),
            }
        )
        print(f"{name}: class accuracy {acc:.2f}")
        grids.append(images[np.concatenate([np.flatnonzero(labels == c)[:2] for c in range(n_cls)])])

    info = read_model_info(model_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "command": command,
        "model": str(model_dir),
        "s_max": info.get("training", {}).get("s_max"),
        "embedding_dim": model.embedding_dim,
        "k": args.k,
        "images_per_setting": int(labels.size),
        "ddim_steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "seed": args.seed,
        "yardstick": "nearest class centroid of fashion-mnist:test embeddings (chance = 0.1)",
        "results": rows,
    }
    (out / "noise_robustness.json").write_text(json.dumps(summary, indent=2) + "\n")
    save_grid(np.concatenate(grids), out / "noise_robustness_samples.png", ncols=2 * n_cls, scale=2)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    pts = [r for r in rows if r["sigma"] is not None]
    ax.plot([r["sigma"] for r in pts], [r["class_accuracy"] for r in pts], "o-", label="all classes")
    ax.plot(
        [r["sigma"] for r in pts],
        [r["footwear_class_accuracy"] for r in pts],
        "s--",
        label="footwear (rare in public set)",
    )
    ax.axhline(rows[0]["class_accuracy"], color="gray", ls=":", label="null context")
    if summary["s_max"] is not None:
        ax.axvline(
            summary["s_max"],
            color="tab:red",
            ls="--",
            lw=1,
            label=f"training s_max={summary['s_max']:g}",
        )
    ax.set_xlabel("σ (noise std per coordinate of the context)")
    ax.set_ylabel("class accuracy of generated images")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"RDM conditioning under DP noise (d={model.embedding_dim}, k={args.k})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "noise_robustness.png", dpi=140)
    plt.close(fig)
    print(f"wrote {out / 'noise_robustness.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
