"""A small measurement to choose CPSample's guidance defaults (issue 15, item 3).

On the shipped ``checkpoints/cpsample/fmnist64`` model (64 Fashion-MNIST images, copies > 50 %)
and its classifier, every condition samples the same ``--n`` x_T (paired) with DDIM (η = 0) and
records: the replication rate (pixel feature space, the evaluation toolkit's calibrated τ), the
mean nearest-neighbour similarity, the gate-firing rate, the timesteps at which the gate fired
(to check the t-window cuts nothing), classifier passes and wall time. Conditions compare the
objective (boundary / toward_opposite), the gate variable (x̂_0 / x_t), the unit step's s, the
t-window, and the previous sampler (toward_opposite on x_t, raw-gradient step, α = 0.1, s = 100:
issue 15's reference setting).

    nice python experiments/cpsample_guidance.py --n 128 --out docs/results/cpsample/guidance

Small on purpose (CPU, one thread): it picks defaults, it is not the ≥ 1,000-sample evaluation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="diffusion model (default: the shipped fmnist64)")
    p.add_argument("--train-data", default="fashion-mnist:train[:64]", help="the model's training set")
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fid-reference", default="fashion-mnist:test[1000:1256]", help="held-out images for FID")
    p.add_argument("--no-fid", action="store_true")
    p.add_argument("--only", nargs="*", default=None, help="run only these condition names")
    p.add_argument("--out", default="docs/results/cpsample/guidance")
    return p.parse_args(argv)


def conditions(t_window: int | None) -> list[tuple[str, dict | None]]:
    legacy = {"mode": "toward_opposite", "gate_on": "xt", "step": "gradient", "alpha": 0.1, "scale": 100.0}
    rows: list[tuple[str, dict | None]] = [("ddim", None), ("legacy_xt_gradient_a0.1_s100", legacy)]
    for s in (0.5, 1.0, 2.0, 4.0):
        rows.append(
            (f"boundary_x0_unit_a0.25_s{s:g}", {"mode": "boundary", "gate_on": "x0", "alpha": 0.25, "scale": s})
        )
    rows.append(("toward_x0_unit_a0.25_s2", {"mode": "toward_opposite", "gate_on": "x0", "alpha": 0.25, "scale": 2.0}))
    rows.append(("boundary_xt_unit_a0.25_s2", {"mode": "boundary", "gate_on": "xt", "alpha": 0.25, "scale": 2.0}))
    rows.append(
        (
            "boundary_x0_unit_a0.25_s2_window",
            {"mode": "boundary", "gate_on": "x0", "alpha": 0.25, "scale": 2.0, "t_max": t_window},
        )
    )
    rows.append(
        (
            "toward_x0_unit_a0.25_s2_window",
            {"mode": "toward_opposite", "gate_on": "x0", "alpha": 0.25, "scale": 2.0, "t_max": t_window},
        )
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from privdiff.checkpoints import CPSAMPLE_MODEL, resolve_checkpoint
    from privdiff.cpsample import CPSampleGuidance, load_classifier
    from privdiff.cpsample.diagnostics import fire_window, suggest_alpha
    from privdiff.data import load_dataset
    from privdiff.diffusion import load_model
    from privdiff.diffusion.generate import generate
    from privdiff.evaluation.replication import recommended_threshold_info, replication_report

    model_dir = resolve_checkpoint(CPSAMPLE_MODEL, args.model)
    model = load_model(model_dir)
    protection = load_classifier(model_dir / "classifier")
    train = load_dataset(args.train_data).images
    tau = float(recommended_threshold_info("pixel")["threshold"])
    reference = None if args.no_fid else load_dataset(args.fid_reference).images
    window = fire_window(protection.meta["report"]["train"], 0.25)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "guidance.json"
    results = json.loads(path.read_text())["conditions"] if path.exists() else {}
    for name, setting in conditions(window):
        if args.only and name not in args.only:
            continue
        guidance = CPSampleGuidance(protection.classifier, **setting) if setting else None
        t0 = time.perf_counter()
        images, _ = generate(
            model,
            args.n,
            num_inference_steps=args.steps,
            seed=args.seed,
            guidance=guidance,
            batch_size=args.n,
            progress=False,
        )
        wall = time.perf_counter() - t0
        rep = replication_report(images, train, feature_space="pixel", threshold=tau)
        row = {
            "settings": guidance.settings() if guidance else None,
            "replicated": rep.n_replicated,
            "n": rep.n_generated,
            "replication_rate": rep.rate,
            "nn_similarity_mean": float(np.mean(rep.similarities)),
            "wall_seconds": round(wall, 1),
        }
        if guidance is not None:
            st = guidance.stats
            fired_t = sorted({s["t"] for s in st.per_step if s["fired"]})
            row |= {
                "gate_firing_rate": st.firing_rate,
                "classifier_calls": st.classifier_calls,
                "calls": len(st.per_step),
                "max_t_fired": max(fired_t) if fired_t else None,
                "fired_per_t": {str(s["t"]): s["fired"] for s in st.per_step if s["fired"]},
            }
        if not args.no_fid:
            import warnings

            from privdiff.evaluation.fid import compute_fid

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # small-n warnings: recorded as fid_n instead
                fid = compute_fid(images, reference)
            row |= {"fid": fid.fid, "fid_n": [fid.n_a, fid.n_b]}
        results[name] = row
        print(
            f"{name}: {rep.n_replicated}/{rep.n_generated} replicated, NN sim {row['nn_similarity_mean']:.4f}, "
            f"FID {row.get('fid', float('nan')):.1f}, "
            f"{wall:.0f} s"
            + (f", fired {row['gate_firing_rate']:.2%}, max t fired {row['max_t_fired']}" if guidance else ""),
            flush=True,
        )
        path.write_text(
            json.dumps(
                {
                    "command": "nice python experiments/cpsample_guidance.py "
                    f"--n {args.n} --steps {args.steps} --seed {args.seed} --out {args.out}",
                    "fid_reference": None if args.no_fid else args.fid_reference,
                    "model": str(model_dir),
                    "replication_threshold_pixel": tau,
                    "suggested_alpha_x0": suggest_alpha(protection.meta, "x0"),
                    "t_window_alpha_0.25": window,
                    "torch_threads": args.threads,
                    "conditions": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
