"""Sampling cost of CPSample against plain DDIM on the same model, steps, batch and x_T.

CPSample adds one classifier forward pass per step (the gate) and, only for gated samples, a
classifier forward + backward (methods/cpsample.md §3 "Cost"). This times both samplers in one run,
interleaved and repeated (median), and prints the ratio CPSample / DDIM with the gate-firing rate.

The t-window (issue 15): the classifier is skipped at t ≥ t_max, read by default from the
classifier's per-t report (:func:`privdiff.cpsample.diagnostics.fire_window`: where its training
images' confidence never exceeds 1 − α). The aim is ≤ 1.10× plain DDIM with the window; the run
also times the same guidance without the window for comparison (``--no-compare`` skips it).

    python benchmarks/cpsample.py                     # the shipped Fashion-MNIST checkpoint
    python benchmarks/cpsample.py --quick             # tiny random model (CI smoke, seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        default=None,
        help="diffusion model directory (default: the shipped one, privdiff.checkpoints)",
    )
    p.add_argument("--classifier", default=None, help="classifier directory (default: MODEL/classifier)")
    p.add_argument("--alpha", type=float, default=None, help="default: the classifier report's suggestion")
    p.add_argument("--scale", type=float, default=None, help="default: CPSampleGuidance's")
    p.add_argument("--mode", default=None, help="default: CPSampleGuidance's")
    p.add_argument("--gate-on", default=None, help="x0 | xt (default: CPSampleGuidance's)")
    p.add_argument("--step", default=None, help="unit | gradient (default: CPSampleGuidance's)")
    p.add_argument("--t-max", type=int, default=None, help="t-window; default from the report; 0 = none")
    p.add_argument("--no-compare", action="store_true", help="do not also time the guidance without the window")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny random model and classifier, 5 steps, batch 4")
    p.add_argument("--out", default="out/benchmarks/cpsample.json")
    return p.parse_args(argv)


def _components(args):
    import torch

    from privdiff.cpsample import NoiseAwareClassifier, load_classifier
    from privdiff.diffusion import DiffusionModel, build_unet, load_model, unet_config

    if args.quick:
        torch.manual_seed(args.seed)
        model = DiffusionModel(unet=build_unet(unet_config("tiny")).eval())
        clf = NoiseAwareClassifier(in_channels=1, block_out_channels=(8, 16)).eval()
        return model, clf, {}, "tiny random U-Net + classifier"
    from privdiff.checkpoints import CPSAMPLE_MODEL, resolve_checkpoint

    model_dir = resolve_checkpoint(CPSAMPLE_MODEL, args.model)
    model = load_model(model_dir)
    protection = load_classifier(args.classifier or model_dir / "classifier")
    return model, protection.classifier, protection.meta, str(model_dir)


def _settings(args, meta: dict) -> dict:
    """Guidance settings: the flags, else the classifier report's α and window, else the class defaults."""
    from privdiff.cpsample import guidance as g
    from privdiff.cpsample.diagnostics import sampling_defaults

    gate_on = args.gate_on or g.DEFAULT_GATE_ON
    alpha, t_max, _ = sampling_defaults(meta, args.alpha, args.t_max, gate_on)
    return {
        "alpha": alpha,
        "scale": g.DEFAULT_SCALE if args.scale is None else args.scale,
        "mode": args.mode or g.DEFAULT_MODE,
        "gate_on": gate_on,
        "step": args.step or g.DEFAULT_STEP,
        "t_max": t_max,
    }


def run(args: argparse.Namespace) -> dict:
    import torch

    from privdiff.cpsample import CPSampleGuidance
    from privdiff.diffusion import ddim_sample
    from privdiff.diffusion.generate import initial_noise

    if args.quick:
        args.steps, args.batch, args.repeats = 5, 4, 2
    model, clf, meta, what = _components(args)
    settings = _settings(args, meta)
    compare = not args.no_compare and settings["t_max"] is not None
    x_T = initial_noise(args.batch, model.image_shape, args.seed)
    denoiser = model.denoiser()
    plain_t, guided_t, nowin_t, rates, calls = [], [], [], [], []
    for _ in range(args.repeats):  # interleaved, so background load hits all alike
        t0 = time.perf_counter()
        ddim_sample(denoiser, model.ddim_scheduler(), x_T, num_inference_steps=args.steps)
        plain_t.append(time.perf_counter() - t0)
        guidance = CPSampleGuidance(clf, **settings)
        t0 = time.perf_counter()
        ddim_sample(denoiser, model.ddim_scheduler(), x_T, num_inference_steps=args.steps, guidance=guidance)
        guided_t.append(time.perf_counter() - t0)
        rates.append(guidance.stats.firing_rate)
        calls.append(guidance.stats.classifier_calls)
        if compare:
            no_window = CPSampleGuidance(clf, **(settings | {"t_max": None}))
            t0 = time.perf_counter()
            ddim_sample(denoiser, model.ddim_scheduler(), x_T, num_inference_steps=args.steps, guidance=no_window)
            nowin_t.append(time.perf_counter() - t0)
    plain, guided = statistics.median(plain_t), statistics.median(guided_t)
    return {
        "benchmark": "cpsample_sampling_overhead",
        "model": what,
        "settings": {
            **settings,
            "steps": args.steps,
            "batch": args.batch,
            "repeats": args.repeats,
            "seed": args.seed,
            "quick": args.quick,
        },
        "ddim_seconds": plain_t,
        "cpsample_seconds": guided_t,
        "ddim_median_s": plain,
        "cpsample_median_s": guided,
        "ratio_cpsample_over_ddim": guided / plain,
        "gate_firing_rate": statistics.mean(rates),
        "classifier_calls_per_run": statistics.mean(calls),
        "no_window_seconds": nowin_t or None,
        "ratio_no_window_over_ddim": statistics.median(nowin_t) / plain if nowin_t else None,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(
        f"DDIM      {result['ddim_median_s']:.3f} s  ({args.steps} steps, batch {args.batch}, median of {args.repeats})"
    )
    st = result["settings"]
    window = f"t < {st['t_max']}" if st["t_max"] else "every t"
    print(
        f"CPSample  {result['cpsample_median_s']:.3f} s  (α={st['alpha']:g}, s={st['scale']:g}, {st['mode']}, "
        f"gate on {st['gate_on']}, classifier at {window}; fired on {result['gate_firing_rate']:.2%} of sample-steps)"
    )
    if result["ratio_no_window_over_ddim"] is not None:
        print(f"ratio without the t-window = {result['ratio_no_window_over_ddim']:.2f}x")
    print(f"ratio CPSample / DDIM = {result['ratio_cpsample_over_ddim']:.2f}x   → {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
