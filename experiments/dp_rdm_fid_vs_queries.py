"""DP-RDM's main figure, in shape: FID against the number of queries T at a fixed ε budget.

Paper (Lebensold et al., arXiv 2403.14421; method notes §7.5, ``render_fid_plot``): at target
ε = 10, for each T the subsampling rate q is the largest one that keeps T queries within the
budget; FID of DP-RDM samples is plotted against T (log x) with horizontal lines for public-only
retrieval, non-private retrieval (ε = ∞) and λ = 0 (no retrieval).

Here, on the embedded Fashion-MNIST split: the RDM was adapt-trained on
``fashion-mnist:dprdm-public`` (which lacks most footwear); the private retrieval set is
``fashion-mnist:dprdm-private`` (N ≈ 49k, δ = 1/N); FID (standard Inception, fixed sample count)
is against ``fashion-mnist:test``. Prompts are "a photo of a {class}" with classes drawn
uniformly and balanced (a seeded permutation of the 10 classes repeated) over the queries.

For a budget of T queries a user can run at most T private queries; we run
n_ctx = min(T, samples) of them (through a real ledger holding the ε = 10 budget) and draw
samples / n_ctx images from each privatised context (free post-processing), so every setting is
evaluated on the same number of images.

    python experiments/dp_rdm_fid_vs_queries.py --samples 500 --out docs/results/dprdm

Per-setting results are cached under ``--work`` so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np

# One prompt per class from privdiff's captions. The earlier "a photo of a {class name}" turned
# "Trouser" into "a photo of a trouser", which retrieves T-shirts (tests/encoders/
# test_class_prompts.py checks every canonical prompt retrieves its own class from public data).
from privdiff.encoders.captions import CANONICAL_PROMPTS


def calibrate_sample_rate(sigma: float, k: int, queries: int, epsilon: float, delta: float, accountant: str) -> float:
    """Largest q with ε(T queries) ≤ target (one-sided solver of privdiff.accounting)."""
    from privdiff.accounting import calibrate

    return float(
        calibrate(
            "sample_rate",
            target_epsilon=epsilon,
            delta=delta,
            sigma=sigma,
            k=k,
            queries=queries,
            accountant=accountant,
        ).value
    )


def balanced_classes(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    reps = np.resize(np.arange(num_classes), n)
    return rng.permutation(reps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="RDM directory (default: shipped checkpoint)")
    ap.add_argument("--samples", type=int, default=500, help="images per setting (FID sample count)")
    ap.add_argument(
        "--reference",
        type=int,
        default=2000,
        help="fashion-mnist:test images for the FID reference",
    )
    ap.add_argument("--queries", type=int, nargs="+", default=[10, 100, 1000, 10000], help="T values")
    ap.add_argument("--lams", type=float, nargs="+", default=[1.0], help="λ values for DP-RDM")
    ap.add_argument("--epsilon", type=float, default=10.0)
    ap.add_argument("--sigma", type=float, default=None, help="σ (default: model's generation default)")
    ap.add_argument("--k", type=int, default=None, help="k (default: model's generation default)")
    ap.add_argument("--accountant", default="pld", help="accountant for calibration and the ledger")
    ap.add_argument("--guidance-scale", type=float, default=None)
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps")
    ap.add_argument("--baselines", nargs="*", default=["public-retrieval", "non-private", "no-retrieval"])
    ap.add_argument("--seed", type=int, default=0, help="seed of prompts and sampler noise (public randomness)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--work", default="out/dprdm_fid", help="per-setting cache (resumable)")
    ap.add_argument("--out", default="docs/results/dprdm")
    args = ap.parse_args(argv)
    command = shlex.join(
        [
            "python",
            "experiments/dp_rdm_fid_vs_queries.py",
            *(argv if argv is not None else sys.argv[1:]),
        ]
    )

    warnings.filterwarnings("ignore", module="privdiff.evaluation.fid")
    from privdiff.accounting import DPRDMQuery, compute_epsilon
    from privdiff.accounting.ledger import Ledger
    from privdiff.data import load_dataset
    from privdiff.encoders import load_image_encoder, load_text_encoder
    from privdiff.evaluation.baselines import NonPrivateRetrievalContext
    from privdiff.evaluation.fid import compute_fid, fid_stats
    from privdiff.rdm.conditioning import (
        DPRetrievalContext,
        PublicRetrievalContext,
        QueryOnlyContext,
    )
    from privdiff.rdm.model import RDMModel, read_model_info
    from privdiff.rdm.pipeline import DPRDMPipeline, generation_defaults, resolve_model_dir
    from privdiff.rdm.train import cached_embeddings
    from privdiff.report.images import save_grid
    from privdiff.retrieval import DPRetriever, EmbeddingIndex, PublicEmbeddings, PublicRetriever

    model_dir = resolve_model_dir(args.model)
    defaults = generation_defaults(model_dir)
    sigma = args.sigma if args.sigma is not None else defaults["sigma"]
    k = args.k if args.k is not None else defaults["k"]
    w = args.guidance_scale if args.guidance_scale is not None else defaults["guidance_scale"]
    steps = args.steps if args.steps is not None else defaults["num_inference_steps"]
    model = RDMModel.load(model_dir)
    # The model's own space (what "default" means wherever a model is known).
    text = load_text_encoder(model.space_id)
    image_enc = load_image_encoder(model.space_id)
    model.check_space(text.space_id, "text encoder")

    private = load_dataset("fashion-mnist:dprdm-private")
    public = load_dataset("fashion-mnist:dprdm-public")
    test = load_dataset("fashion-mnist:test")
    n_private = len(private)
    delta = 1.0 / n_private
    print(f"private N={n_private} (δ=1/N={delta:.3g}); public N={len(public)}; σ={sigma} k={k} w={w} steps={steps}")
    priv_emb = cached_embeddings(private, image_enc, private=True)
    pub_emb = cached_embeddings(public, image_enc, private=False)
    private_index = EmbeddingIndex.from_embeddings(priv_emb, space_id=image_enc.space_id, source=private.name)
    public_retriever = PublicRetriever(PublicEmbeddings(pub_emb, space_id=image_enc.space_id, source=public.name), k)

    ref_rng = np.random.default_rng(12345)
    ref_idx = np.sort(ref_rng.choice(len(test), size=min(args.reference, len(test)), replace=False))
    ref_stats = fid_stats(test.images[ref_idx], progress=True)

    names = list(private.class_names)
    # A public yardstick for "did the image follow the prompt": nearest class centroid of the test
    # set's embeddings (the test set is the public FID reference here).
    test_emb = cached_embeddings(test, image_enc, private=False)
    centroids = np.stack([test_emb[test.labels == c].mean(axis=0) for c in range(len(names))])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    footwear = [i for i, n in enumerate(private.class_names) if n in ("Sandal", "Sneaker", "Ankle boot")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    (out / "grids").mkdir(parents=True, exist_ok=True)

    def run_setting(key: str, make_source, n_ctx: int, extra: dict) -> dict:
        path = work / f"{key}.json"
        if path.exists():
            rec = json.loads(path.read_text())
            print(f"[cached] {key}: FID {rec['fid']:.2f}, class acc {rec['class_accuracy']:.2f}")
            return rec
        rng = np.random.default_rng(args.seed)
        classes = balanced_classes(n_ctx, len(names), rng)
        prompts = [CANONICAL_PROMPTS[c] for c in classes]
        per_ctx = args.samples // n_ctx
        source = make_source()
        pipe = DPRDMPipeline(model, source, text)
        t0 = time.time()
        imgs = []
        # Chunks of contexts so each pipeline call samples about batch_size images.
        chunk = max(1, args.batch_size // per_ctx)
        from tqdm.auto import tqdm

        for s in tqdm(range(0, n_ctx, chunk), desc=key):
            res = pipe(
                prompts[s : s + chunk],
                images_per_prompt=per_ctx,
                guidance_scale=w,
                num_inference_steps=steps,
                seed=args.seed + s,
                batch_size=args.batch_size,
            )
            imgs.append(res.flat_images())
        images = np.concatenate(imgs)[: args.samples]
        labels = np.repeat(classes, per_ctx)[: args.samples]
        fid = compute_fid(images, ref_stats)
        predicted = np.argmax(image_enc.encode_images(images) @ centroids.T, axis=1)
        hit = predicted == labels
        is_foot = np.isin(labels, footwear)
        order = np.argsort(labels, kind="stable")
        grid_sel = np.concatenate([order[labels[order] == c][:8] for c in range(len(names))])
        save_grid(images[grid_sel], out / "grids" / f"{key}.png", ncols=8, scale=2)
        rec = {
            "setting": key,
            "fid": fid.fid,
            "class_accuracy": float(hit.mean()),
            "footwear_class_accuracy": float(hit[is_foot].mean()) if is_foot.any() else None,
            "samples": int(images.shape[0]),
            "contexts": n_ctx,
            "images_per_context": per_ctx,
            "mode": res.mode,
            "private": res.private,
            "privacy_after_last_call": res.record()["privacy"],
            "seconds": round(time.time() - t0, 1),
            "grid": f"grids/{key}.png",
            "fid_warnings": fid.warnings,
        } | extra
        path.write_text(json.dumps(rec, indent=2) + "\n")
        print(f"{key}: FID {fid.fid:.2f}, class acc {rec['class_accuracy']:.2f} ({rec['seconds']} s)")
        return rec

    results = []
    for T in args.queries:
        q = calibrate_sample_rate(sigma, k, T, args.epsilon, delta, args.accountant)
        query = DPRDMQuery(sigma=sigma, sample_rate=q, k=k)
        eps_T = compute_epsilon([(query, T)], delta, args.accountant).epsilon
        eps_paper = compute_epsilon([(query, T)], delta, "paper", warn_on_edge=False).epsilon
        n_ctx = min(T, args.samples)
        for lam in args.lams:
            key = f"dprdm_T{T}_lam{lam:g}"
            ledger_path = work / f"{key}.ledger"

            def make_source(q=q, lam=lam, ledger_path=ledger_path):
                if ledger_path.exists():
                    ledger_path.unlink()
                ledger = Ledger.create(
                    ledger_path,
                    epsilon=args.epsilon,
                    delta=delta,
                    accountant=args.accountant,
                    dataset=private.name,
                )
                retriever = DPRetriever(private_index, k, sigma, q, ledger)
                return DPRetrievalContext(retriever, lam=lam, mix_with="query")

            rec = run_setting(
                key,
                make_source,
                n_ctx,
                {
                    "T": T,
                    "lam": lam,
                    "sigma": sigma,
                    "k": k,
                    "sample_rate": q,
                    "expected_subsample_size": q * n_private,
                    "noise_multiplier": sigma * k / 2,
                    "epsilon_at_T": eps_T,
                    "epsilon_at_T_paper_accountant": eps_paper,
                    "delta": delta,
                    "accountant": args.accountant,
                    "queries_executed": n_ctx,
                },
            )
            results.append(rec)

    baseline_sources = {
        "public-retrieval": lambda: PublicRetrievalContext(public_retriever),
        "non-private": lambda: NonPrivateRetrievalContext(priv_emb, k, space_id=image_enc.space_id),
        "no-retrieval": lambda: QueryOnlyContext(k, model.embedding_dim, model.space_id),
    }
    baselines = []
    for name in args.baselines:
        eps = {"public-retrieval": 0.0, "non-private": "inf", "no-retrieval": 0.0}[name]
        baselines.append(run_setting(f"baseline_{name}", baseline_sources[name], args.samples, {"epsilon": eps}))

    summary = {
        "figure": "fid_vs_queries.png",
        "command": command,
        "model": str(model_dir),
        "model_training": read_model_info(model_dir).get("training"),
        "private_set": private.name,
        "n_private": n_private,
        "delta": delta,
        "reference": f"fashion-mnist:test, {len(ref_idx)} images (seeded subset, rng 12345)",
        "samples_per_setting": args.samples,
        "target_epsilon": args.epsilon,
        "accountant": args.accountant,
        "sigma": sigma,
        "k": k,
        "guidance_scale": w,
        "ddim_steps": steps,
        "seed": args.seed,
        "prompts": "privdiff.encoders.captions.CANONICAL_PROMPTS, classes balanced-uniform over 10, seeded",
        "dp_rdm": results,
        "baselines": baselines,
    }
    (out / "fid_vs_queries.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, out / "fid_vs_queries.png")
    print(f"wrote {out / 'fid_vs_queries.png'} and {out / 'fid_vs_queries.json'}")
    return 0


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lams = sorted({r["lam"] for r in summary["dp_rdm"]}, reverse=True)
    for lam in lams:
        rows = sorted((r for r in summary["dp_rdm"] if r["lam"] == lam), key=lambda r: r["T"])
        ax.plot(
            [r["T"] for r in rows],
            [r["fid"] for r in rows],
            "o-",
            lw=2,
            label=f"DP-RDM, λ={lam:g} (ε≤{summary['target_epsilon']:g})",
        )
    styles = {
        "public-retrieval": ("tab:green", "--", "public-only retrieval (ε=0)"),
        "non-private": ("tab:red", ":", "non-private retrieval (ε=∞)"),
        "no-retrieval": ("tab:gray", "-.", "no retrieval, λ=0 (ε=0)"),
    }
    xs = [r["T"] for r in summary["dp_rdm"]] or [10, 10000]
    for b in summary["baselines"]:
        name = b["setting"].removeprefix("baseline_")
        color, ls, label = styles[name]
        ax.axhline(b["fid"], color=color, ls=ls, lw=1.5, label=f"{label}: {b['fid']:.1f}")
        if name == "public-retrieval":
            ax.axhspan(0, b["fid"], color=color, alpha=0.06)
    ax.set_xscale("log")
    ax.set_xlim(min(xs) / 1.5, max(xs) * 1.5)
    all_fids = [r["fid"] for r in summary["dp_rdm"]] + [b["fid"] for b in summary["baselines"]]
    if all_fids:
        lo, hi = min(all_fids), max(all_fids)
        pad = 0.15 * (hi - lo + 1e-9)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("number of private queries T answered within the budget")
    ax.set_ylabel(f"FID ({summary['samples_per_setting']} samples vs Fashion-MNIST test)")
    ax.set_title(f"DP-RDM on Fashion-MNIST: FID vs queries at ε={summary['target_epsilon']:g}, δ=1/N")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7.5, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=140)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
