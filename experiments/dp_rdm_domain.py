"""DP-RDM's question on real data: does a public model, pointed at a private *domain*, generate it?

The private collection is one domain of Fashion-MNIST's private split (e.g. winter tops = Pullover +
Coat, ``fashion-mnist:dprdm-private{classes=2,4}``; sandals, ``{classes=5}``), the prompts are coarse
("a photo of a top", "a piece of clothing"; "a photo of a shoe"), and the shipped RDM was trained on
the public split only. Every mode answers
the same prompts from the same starting noise x_T, image by image (paired), so differences come
from the context alone:

- ``public``: public-only retrieval (ε = 0);
- ``dprdm_T{T}_lam{λ}``: DP-RDM with q calibrated so that T queries cost ε = ``--epsilon`` at
  δ = 1/N (PLD), σ and k from the model's generation defaults;
- ``nonprivate``: exact retrieval over the private rows (ε = ∞; not the ceiling with coarse
  prompts: the k nearest private rows of "a shoe" are the most sneaker-like sandals, see
  docs/results/dprdm/domain/README.md);
- ``subsampled_T{T}``: subsampled-but-noiseless retrieval at T's q (σ = 0, ε = ∞, NOT private):
  DP-RDM without its noise, so the gap to ``nonprivate`` is what subsampling alone costs and the
  gap to ``dprdm_T{T}`` what the noise costs (``--baselines subsampled``);
- ``noretrieval``: the query embedding alone as context (λ = 0).

Per query quality depends on (σ, q, k) only, so every mode issues the same ``--contexts`` queries
(``--images-per-context`` images each): a T = 10 setting is measured on as many queries as a
T = 1000 one, at *its* q. Each DP-RDM ledger's budget is the ε of the queries actually executed
(recorded), while the setting's guarantee is ε(T) = ``--epsilon`` (recorded too).

Judged by the domain yardstick (``privdiff.evaluation.yardstick``, test accuracy 0.924): in-domain
rate (Wilson 95 % interval), domain FID/KID against the domain's *test* images (bootstrap 95 %),
and paired differences against public-only retrieval. With ``--inception``, also the standard
Inception FID (``privdiff.evaluation.fid``, FID Inception-v3) of the same images against the
same reference, with a bootstrap 95 % interval (``--inception-n-boot`` replicates; ~9 images/s
on 2 cores for the features, cached by content, then ~3 s per replicate at 1,000 vs 2,000
images). Resumable: each setting's images are cached in ``--work``. Writes ``domain_<name>.json``
and ``.png`` (+ grids) under ``--out``.

    python experiments/dp_rdm_domain.py --domain winter-tops --queries 100 1000 --steps 25
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

#: ``--baselines`` names → make_pipeline modes.
BASELINES = {
    "public": "public-retrieval",
    "nonprivate": "non-private",
    "subsampled": "subsampled",
    "noretrieval": "no-retrieval",
}

DOMAINS: dict[str, dict] = {
    "winter-tops": {
        "classes": [2, 4],
        "prompts": ["a photo of a top", "a piece of clothing"],
        "fine_prompts": ["a photo of a pullover", "a photo of a coat"],
    },
    "footwear": {
        "classes": [5, 7, 9],
        "prompts": ["a photo of a shoe", "a photo of footwear"],
        "fine_prompts": ["a photo of a sandal", "a photo of a sneaker", "a photo of an ankle boot"],
    },
    # The same shoe prompts, but a private collection of sandals only: the public set (60 sandals
    # among 10,680 images) answers "a photo of a shoe" with 20/20 sneakers and "a photo of footwear"
    # with 1/20 sandals, so this is a domain the public retrieval set answers poorly, unlike
    # "footwear" as a whole.
    "sandals": {
        "classes": [5],
        "prompts": ["a photo of a shoe", "a photo of footwear"],
        "fine_prompts": ["a photo of a sandal"],
    },
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domain", choices=sorted(DOMAINS), default="winter-tops")
    ap.add_argument(
        "--model", type=Path, default=None, help="RDM folder (default: the shipped one); encoders follow its space"
    )
    ap.add_argument(
        "--prompts",
        choices=["coarse", "fine"],
        default="coarse",
        help="coarse: the domain's generic prompts ('a photo of a shoe'); fine: one per class ('a photo of a sneaker')",
    )
    ap.add_argument("--queries", type=int, nargs="+", default=[10, 100, 1000, 10000], help="T values")
    ap.add_argument("--lams", type=float, nargs="*", default=[1.0], help="λ values (none: only the baselines)")
    ap.add_argument(
        "--cached-only",
        action="store_true",
        help="report only the requested settings whose images are already cached (a partial sweep's figure)",
    )
    ap.add_argument(
        "--baselines", nargs="*", default=["public", "nonprivate", "noretrieval"], choices=sorted(BASELINES)
    )
    ap.add_argument("--contexts", type=int, default=100, help="queries (prompts) per setting")
    ap.add_argument("--images-per-context", type=int, default=10)
    ap.add_argument("--epsilon", type=float, default=10.0)
    ap.add_argument("--accountant", default="pld")
    ap.add_argument("--steps", type=int, default=25, help="DDIM steps")
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--inception", action="store_true", help="also the standard Inception FID, with its interval")
    ap.add_argument("--inception-n-boot", type=int, default=50, help="bootstrap replicates of the Inception FID")
    ap.add_argument(
        "--inception-settings",
        nargs="+",
        default=["*"],
        help="fnmatch patterns of the settings that get the Inception FID (its features cost ~2 min a setting)",
    )
    ap.add_argument(
        "--reference-images",
        type=int,
        default=None,
        help="use this many evenly spaced domain test images as the FID/KID reference (default: all; "
        "a smoke run on a busy CPU, where the Inception features of 2,000 images take many minutes)",
    )
    ap.add_argument("--seed", type=int, default=0, help="public randomness: x_T and the bootstrap")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--work", type=Path, default=Path("out/dprdm_domain"))
    ap.add_argument("--out", type=Path, default=Path("docs/results/dprdm/domain"))
    args = ap.parse_args(argv)
    command = shlex.join(["python", "experiments/dp_rdm_domain.py", *(argv if argv is not None else sys.argv[1:])])

    import absl.logging
    import matplotlib

    absl.logging.set_verbosity(absl.logging.ERROR)  # dp-accounting's RDP convergence chatter
    matplotlib.use("Agg")
    from tqdm.auto import tqdm

    from privdiff.accounting import DPRDMQuery, calibrate, compute_epsilon
    from privdiff.accounting.ledger import Ledger
    from privdiff.data import load_dataset
    from privdiff.encoders import load_image_encoder, load_text_encoder
    from privdiff.evaluation.domain import distance_with_ci, in_domain_rate, paired_difference
    from privdiff.evaluation.yardstick import load_yardstick
    from privdiff.rdm.model import RDMModel
    from privdiff.rdm.pipeline import generation_defaults, make_pipeline, resolve_model_dir
    from privdiff.rdm.train import cached_embeddings
    from privdiff.report.images import save_grid
    from privdiff.retrieval import build_index

    dom = DOMAINS[args.domain]
    classes = dom["classes"]
    spec = "fashion-mnist:dprdm-private{classes=" + ",".join(map(str, classes)) + "}"
    model_dir = resolve_model_dir(args.model)
    defaults = generation_defaults(model_dir)
    sigma, k, w = defaults["sigma"], defaults["k"], defaults["guidance_scale"]
    model = RDMModel.load(model_dir)
    space = model.config.space_id
    # The encoders of the model's own retrieval space: the private index, the public retrieval set
    # and the prompts all live where the model was trained to read its context.
    text, image = load_text_encoder(space), load_image_encoder(space)
    yard = load_yardstick("fashion-mnist")
    # Cached images depend on the model's weights: one work folder per (domain, prompt set, model).
    # The tag hashes the tensors, not a file, so one model in either folder layout (v1 or the
    # converted pipeline folder) shares its cache.
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    model_tag = digest.hexdigest()[:10]

    private = load_dataset(spec)
    n_priv = len(private)
    delta = 1.0 / n_priv
    work = args.work / f"{args.domain}-{args.prompts}-{model_tag}"
    work.mkdir(parents=True, exist_ok=True)
    index_dir = work / "index"
    if not (index_dir / "manifest.json").exists():
        emb = cached_embeddings(private, image, private=True)
        build_index(index_dir, emb, space_id=image.space_id, source=spec, overwrite=True, source_images=private.images)
    test_spec = "fashion-mnist:test{classes=" + ",".join(map(str, classes)) + "}"
    if args.reference_images is not None:
        n_test = len(load_dataset(test_spec))
        test_spec += f"[::{max(1, n_test // max(1, args.reference_images))}]"
    test = load_dataset(test_spec)
    ref_feats = yard.features(test.images)
    prompt_set = dom["prompts"] if args.prompts == "coarse" else dom["fine_prompts"]
    prompts = [prompt_set[i % len(prompt_set)] for i in range(args.contexts)]
    per = args.images_per_context
    print(
        f"{args.domain}: private {spec} N={n_priv} (δ=1/N={delta:.3g}); σ={sigma} k={k} w={w} steps={args.steps}; "
        f"{args.contexts} queries × {per} images; reference {len(test)} test images"
    )

    shared = {"model": model, "text_encoder": text, "image_encoder": image}

    def generate(key: str, pipe) -> np.ndarray:
        path = work / f"{key}.npz"
        if path.exists():
            return np.load(path)["images"]
        out = []
        chunk = max(1, args.batch_size // per)
        for s in tqdm(range(0, args.contexts, chunk), desc=key):
            # Paired x_T: the seed of each chunk depends only on its first context, in every mode.
            res = pipe(
                prompts[s : s + chunk],
                images_per_prompt=per,
                guidance_scale=w,
                num_inference_steps=args.steps,
                seed=args.seed + s,
                batch_size=args.batch_size,
            )
            out.append(res.flat_images())
        images = np.concatenate(out)
        np.savez(path, images=images)
        return images

    settings: dict[str, dict] = {}
    q_of: dict[int, float] = {}
    t_all = time.time()
    for T in args.queries:
        q = float(
            calibrate(
                "sample_rate",
                target_epsilon=args.epsilon,
                delta=delta,
                sigma=sigma,
                k=k,
                queries=T,
                accountant=args.accountant,
            ).value
        )
        q_of[T] = q
        query = DPRDMQuery(sigma=sigma, sample_rate=q, k=k)
        eps_exec = compute_epsilon([(query, args.contexts)], delta, args.accountant).epsilon
        for lam in args.lams:
            key = f"dprdm_T{T}_lam{lam:g}"
            if args.cached_only and not (work / f"{key}.npz").exists():
                continue
            ledger_path = work / f"{key}.ledger"
            pipe = None  # a cached setting is not generated again
            if not (work / f"{key}.npz").exists():
                ledger_path.unlink(missing_ok=True)
                # Budget = the ε of the queries this measurement executes (see the module docstring).
                Ledger.create(
                    ledger_path, epsilon=max(eps_exec, args.epsilon) * 1.0001, delta=delta, accountant=args.accountant
                ).close()
                pipe, _ = make_pipeline(
                    model_dir,
                    mode="dp-rdm",
                    index=index_dir,
                    ledger=ledger_path,
                    k=k,
                    sigma=sigma,
                    sample_rate=q,
                    lam=lam,
                    **shared,
                )
            t0 = time.time()
            images = generate(key, pipe)
            settings[key] = {
                "mode": "dp-rdm",
                "T": T,
                "lam": lam,
                "sample_rate": q,
                "expected_subsample": q * n_priv,
                "epsilon_for_T": args.epsilon,
                "epsilon_of_executed_queries": eps_exec,
                "images": images,
                "seconds": round(time.time() - t0, 1),
            }
    for name in args.baselines:
        mode = BASELINES[name]
        # One subsampled line per T, at that T's q: DP-RDM's setting with σ = 0 (ε = ∞).
        runs = (
            [(f"{name}_T{T}", {"sample_rate": q_of[T], "T": T}) for T in args.queries] if name == "subsampled" else []
        )
        for key, extra in runs or [(name, {})]:
            if args.cached_only and not (work / f"{key}.npz").exists():
                continue
            kw = {"private_data": spec} if mode in ("non-private", "subsampled") else {}
            if "sample_rate" in extra:
                kw["sample_rate"] = extra["sample_rate"]
            pipe = None
            if not (work / f"{key}.npz").exists():
                pipe, _ = make_pipeline(model_dir, mode=mode, k=k, **kw, **shared)
            t0 = time.time()
            images = generate(key, pipe)
            settings[key] = {
                "mode": mode,
                **extra,
                "images": images,
                "seconds": round(time.time() - t0, 1),
                "epsilon": 0.0 if name in ("public", "noretrieval") else "inf",
            }
            if "sample_rate" in extra:
                settings[key]["expected_subsample"] = extra["sample_rate"] * n_priv

    feats = {key: yard.features(s["images"]) for key, s in settings.items()}
    inc: dict = {}
    if args.inception:
        from privdiff.evaluation.fid import FEATURE_EXTRACTOR_ID, cached_inception_features

        # Cached by content hash: a rerun (or a resumed sweep) computes each set's features once.
        inc_ref = cached_inception_features(test.images, progress=True)
        inc = {
            key: cached_inception_features(s["images"], progress=True)
            for key, s in settings.items()
            if any(fnmatch.fnmatch(key, pat) for pat in args.inception_settings)
        }
    preds = {key: yard.predict(s["images"]) for key, s in settings.items()}
    records = {}
    for key, s in settings.items():
        rec = {k2: v for k2, v in s.items() if k2 != "images"}
        rec["n"] = int(len(s["images"]))
        rec["in_domain_rate"] = in_domain_rate(preds[key], classes).to_dict()
        rec["domain_fid"] = distance_with_ci(
            feats[key], ref_feats, metric="fid", n_boot=args.n_boot, seed=args.seed
        ).to_dict()
        rec["domain_kid"] = distance_with_ci(
            feats[key], ref_feats, metric="kid", n_boot=args.n_boot, seed=args.seed
        ).to_dict()
        rec["predicted_classes"] = np.bincount(preds[key], minlength=10).tolist()
        if key in inc:
            rec["inception_fid"] = distance_with_ci(
                inc[key], inc_ref, metric="fid", n_boot=args.inception_n_boot, seed=args.seed
            ).to_dict()
        if "public" in settings and key != "public":
            rec["fid_minus_public"] = paired_difference(
                feats[key], feats["public"], ref_feats, n_boot=args.n_boot, seed=args.seed
            ).to_dict()
            # Paired bootstrap of the in-domain indicator difference (same images indices in both).
            a = np.isin(preds[key], classes).astype(float)
            b = np.isin(preds["public"], classes).astype(float)
            rng = np.random.default_rng(args.seed)
            reps = [(a[i] - b[i]).mean() for i in (rng.integers(0, len(a), len(a)) for _ in range(args.n_boot))]
            lo, hi = np.quantile(reps, [0.025, 0.975])
            rec["in_domain_minus_public"] = {"value": float((a - b).mean()), "low": float(lo), "high": float(hi)}
        records[key] = rec
        save_grid(
            s["images"][:: max(1, len(s["images"]) // 40)][:40],
            args.out / "grids" / f"{args.domain}{'' if args.prompts == 'coarse' else '-' + args.prompts}_{key}.png",
            ncols=10,
            scale=2,
        )
        inc_text = ""
        if key in inc:
            f = rec["inception_fid"]
            inc_text = f"  Inception FID {f['value']:.1f} [{f['low']:.1f}, {f['high']:.1f}]"
        print(
            f"{key:20s} in-domain {rec['in_domain_rate']['value']:.3f} "
            f"[{rec['in_domain_rate']['low']:.3f}, {rec['in_domain_rate']['high']:.3f}]  "
            f"FID {rec['domain_fid']['value']:.1f} [{rec['domain_fid']['low']:.1f}, {rec['domain_fid']['high']:.1f}]"
            + inc_text
        )

    payload = {
        "command": command,
        "domain": args.domain,
        "classes": classes,
        "private_spec": spec,
        "N": n_priv,
        "delta": delta,
        "model": {"dir": str(model_dir), "weights_sha256_10": model_tag, "space_id": space},
        "prompt_set": args.prompts,
        "prompts": prompt_set,
        "contexts": args.contexts,
        "images_per_context": per,
        "steps": args.steps,
        "sigma": sigma,
        "k": k,
        "guidance_scale": w,
        "accountant": args.accountant,
        "epsilon": args.epsilon,
        "yardstick_test_accuracy": yard.config.report.get("test_accuracy"),
        "reference": f"{len(test)} test images ({test_spec})",
        "paired_x_T": True,
        "inception_fid": (
            {"feature_extractor": FEATURE_EXTRACTOR_ID, "n_boot": args.inception_n_boot, "reference": len(test)}
            if args.inception
            else None
        ),
        "settings": records,
        "seconds": round(time.time() - t_all, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"domain_{args.domain}" + ("" if args.prompts == "coarse" else f"_{args.prompts}")
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    out_png = args.out / f"{stem}.png"

    _plot(records, payload, args, out_png)
    print(f"wrote {args.out}/{stem}.json and .png ({payload['seconds']} s)")
    return 0


REFERENCE_STYLE = {
    "public": ("public-only retrieval (ε = 0)", "tab:gray"),
    "nonprivate": ("non-private retrieval (ε = ∞)", "tab:green"),
    "noretrieval": ("no retrieval (λ = 0)", "tab:red"),
}


def _plot(records: dict, payload: dict, args, out_png: Path) -> None:
    """Each metric against T (log axis): one line per λ, the subsampled-noiseless line, and the
    T-independent references as horizontal bands; every point with its 95 % interval."""
    import matplotlib.pyplot as plt

    panels = [("in_domain_rate", "in-domain rate (↑)"), ("domain_fid", "domain FID (↓)")]
    if any("inception_fid" in r for r in records.values()):
        panels.append(("inception_fid", "Inception FID (↓)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.4))
    lams = sorted({r["lam"] for r in records.values() if r["mode"] == "dp-rdm"}, reverse=True)
    for ax, (metric, label) in zip(axes, panels):

        def line(keys, ax=ax, metric=metric, **style):
            pts = [(records[x]["T"], records[x][metric]) for x in keys if metric in records[x]]
            if not pts:
                return
            pts.sort(key=lambda p: p[0])
            t = np.array([p[0] for p in pts], dtype=float)
            v = np.array([p[1]["value"] for p in pts])
            err = np.array([[p[1]["value"] - p[1]["low"], p[1]["high"] - p[1]["value"]] for p in pts]).T
            ax.errorbar(t, v, yerr=err, capsize=3, marker="o", **style)

        for i, lam in enumerate(lams):
            keys = [x for x, r in records.items() if r["mode"] == "dp-rdm" and r["lam"] == lam]
            line(keys, color=plt.cm.Blues(1.0 - 0.25 * i), label=f"DP-RDM ε = {payload['epsilon']:g}, λ = {lam:g}")
        line(
            [x for x, r in records.items() if r["mode"] == "subsampled"],
            color="tab:orange",
            linestyle="--",
            label="subsampled, no noise (not private)",
        )
        for name, (ref_label, color) in REFERENCE_STYLE.items():
            if name in records and metric in records[name]:
                r = records[name][metric]
                ax.axhline(r["value"], color=color, linestyle=":", label=ref_label)
                ax.axhspan(r["low"], r["high"], color=color, alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("T, queries the budget ε covers")
        ax.set_title(f"{label}, 95 % CI, n = {payload['contexts'] * payload['images_per_context']}/setting")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(
        f"DP-RDM on a private domain: {payload['domain']} ({payload['private_spec']}, N = {payload['N']}), "
        f"{payload['prompt_set']} prompts",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
