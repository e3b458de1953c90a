"""CPSample commands: ``privdiff protect train`` (the random-label classifier) and ``privdiff sample``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import typer

from privdiff.cli._options import size_option

# privdiff.cpsample.guidance's defaults, repeated so that `privdiff --help` does not import torch
# (tests/cpsample/test_cli_and_benchmark.py checks the two agree).
DEFAULT_ALPHA = 0.25
DEFAULT_SCALE = 2.0
DEFAULT_MODE = "toward_opposite"
DEFAULT_GATE_ON = "x0"
DEFAULT_STEP = "unit"


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    protect_app = typer.Typer(help="CPSample: protect a diffusion model's training images.", no_args_is_help=True)
    app.add_typer(protect_app, name="protect")

    @protect_app.command("train")
    def protect_train_cmd(
        data: str = typer.Option(
            ..., "--data", help="The model's training set (spec), e.g. fashion-mnist:train[:128]."
        ),
        size: int | None = size_option(),
        model: Path = typer.Option(..., "--model", help="Diffusion model directory (its noise schedule is used)."),
        out: Path = typer.Option(..., "--out", help="Where to write the classifier directory."),
        vae: Path | None = typer.Option(
            None,
            "--vae",
            help="Latent models: an AutoencoderKL folder (or a pipeline folder with vae/); the classifier "
            "is trained on its latents and --model only supplies the scheduler.",
        ),
        holdout: str | None = typer.Option(
            None, "--holdout", help="Held-out images (spec) for the report; never trained on."
        ),
        calibration: str | None = typer.Option(
            None,
            "--calibration",
            help="Non-training images (spec, disjoint from --holdout) trained towards p = 1/2. Off by "
            "default: a privdiff option, not in the paper.",
        ),
        calibration_batch_size: int = typer.Option(32, "--calibration-batch-size"),
        steps: int = typer.Option(3000, "--steps", help="Most training steps (the stopping rule may end sooner)."),
        target_alpha: float | None = typer.Option(
            0.001,
            "--target-alpha",
            help="Stopping rule: stop once ≥ 99 % of the training images have confidence > 1 − α at "
            "t < --stop-t-max (checked every --check-every steps). 0 = train exactly --steps steps.",
        ),
        check_every: int = typer.Option(100, "--check-every"),
        stop_t_max: int = typer.Option(50, "--stop-t-max", help="The rule checks t ∈ [0, stop-t-max)."),
        batch_size: int = typer.Option(128, "--batch-size"),
        lr: float = typer.Option(1e-3, "--lr"),
        small_t_fraction: float = typer.Option(
            0.5, "--small-t-fraction", help="Share of t drawn from [0, small-t-max)."
        ),
        small_t_max: int = typer.Option(300, "--small-t-max"),
        label_seed: int = typer.Option(0, "--label-seed", help="Seed of the Bernoulli(1/2) labels."),
        seed: int = typer.Option(0, "--seed"),
        json_out: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
        device: str = typer.Option(
            "cpu",
            "--device",
            help="Where the classifier trains: cpu, cuda, cuda:N or mps (random numbers stay on the CPU).",
        ),
    ) -> None:
        """Train the noise-aware classifier to overfit random labels, then report it per timestep band."""
        from privdiff.cpsample.training import (
            ClassifierTrainConfig,
            ProtectionClassifier,
            evaluate_classifier,
            train_classifier,
            training_config_dict,
        )
        from privdiff.data import check_size, load_dataset
        from privdiff.diffusion.model import load_model
        from privdiff.report.images import to_model_space
        from privdiff.utils.atomic import atomic_write_json
        from privdiff.utils.device import check_device

        size = check_size(size)
        check_device(device)  # before the model and data load
        config = ClassifierTrainConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            small_t_fraction=small_t_fraction,
            small_t_max=small_t_max,
            label_seed=label_seed,
            seed=seed,
            calibration_batch_size=calibration_batch_size,
            target_alpha=target_alpha or None,
            check_every=check_every,
            stop_t_max=stop_t_max,
        ).validate()
        if vae is not None:
            from privdiff.cpsample.latents import encode_latents, load_vae, scheduler_alphas_cumprod

            autoencoder = load_vae(vae)
            acp = scheduler_alphas_cumprod(model)

            def space(images):
                return encode_latents(autoencoder, to_model_space(images))
        else:
            acp = load_model(model).alphas_cumprod()

            def space(images):
                return to_model_space(images)

        ds = load_dataset(data, size=size)
        held = load_dataset(holdout, size=size) if holdout else None
        calib = space(load_dataset(calibration, size=size).images) if calibration else None
        x0 = space(ds.images)
        clf, labels, log = train_classifier(x0, alphas_cumprod=acp, config=config, calibration=calib, device=device)
        report: dict[str, Any] = {"train": evaluate_classifier(clf, x0, labels, alphas_cumprod=acp, seed=seed + 1)}
        if held is not None:
            report["holdout"] = evaluate_classifier(clf, space(held.images), None, alphas_cumprod=acp, seed=seed + 2)
        args = [
            "--data",
            data,
            "--model",
            str(model),
            "--out",
            str(out),
            *(["--vae", str(vae)] if vae is not None else []),
            *(["--holdout", holdout] if holdout else []),
            "--steps",
            str(steps),
            "--batch-size",
            str(batch_size),
            "--lr",
            repr(lr),
            "--small-t-fraction",
            repr(small_t_fraction),
            "--small-t-max",
            str(small_t_max),
            "--label-seed",
            str(label_seed),
            "--seed",
            str(seed),
            "--target-alpha",
            repr(target_alpha or 0),
            "--check-every",
            str(check_every),
            "--stop-t-max",
            str(stop_t_max),
            *(["--size", str(size)] if size is not None else []),
            *(["--device", device] if device != "cpu" else []),
            *(
                [
                    "--calibration",
                    calibration,
                    "--calibration-batch-size",
                    str(calibration_batch_size),
                ]
                if calibration
                else []
            ),
        ]
        meta = {
            "data_spec": data,
            "holdout_spec": holdout,
            "calibration_spec": calibration,
            "model": str(model),
            "vae": str(vae) if vae is not None else None,
            "num_train_images": int(len(ds.images)),
            "label_seed": label_seed,
            "train_config": training_config_dict(config),
            "parameters": log["parameters"],
            "train_wall_seconds": log["train_wall_seconds"],
            "final_bce": float(sum(log["loss_per_step"][-50:]) / len(log["loss_per_step"][-50:])),
            "steps_run": log["steps_run"],
            "stop_reason": log["stop_reason"],
            "rule": log["rule"],
            "rule_checks": log["rule_checks"],
            "report": report,
            "command": "privdiff protect train " + " ".join(shlex.quote(a) for a in args),
        }
        ProtectionClassifier(classifier=clf, labels=labels, meta=meta).save(out)
        atomic_write_json(
            out / "report.json",
            {"settings": {k: meta[k] for k in meta if k != "report"}, "report": report},
        )
        if json_out:
            typer.echo(json.dumps(report, indent=2))
        else:
            print_classifier_report(report)
            for line in _stop_lines(meta) + _suggestion_lines(meta):
                typer.echo(line)
            typer.echo(f"saved {out} ({log['parameters'] / 1e6:.2f} M params, {log['train_wall_seconds']:.0f} s)")
        _warn_about_classifier(meta, alpha=None)

    @app.command("sample")
    def sample_cmd(
        model: Path = typer.Option(..., "--model", help="Diffusion model directory (privdiff train diffusion)."),
        n: int = typer.Option(16, "-n", "--n", help="Number of images."),
        out: Path = typer.Option(
            ...,
            "--out",
            help="Output directory: images/*.png, images.npz (key 'images'), grid.png, sample.json.",
        ),
        protect: Path | None = typer.Option(
            None, "--protect", help="CPSample classifier directory (privdiff protect train)."
        ),
        alpha: float | None = typer.Option(
            None,
            "--alpha",
            help="CPSample confidence threshold α ∈ (0, 0.5]. Default: the classifier report's suggestion (the "
            f"smallest α that fires on 99 % of its training images where the gate reads it), else {DEFAULT_ALPHA:g}.",
        ),
        scale: float = typer.Option(
            DEFAULT_SCALE,
            "--scale",
            help="CPSample guidance scale s ≥ 0. With --step unit: the RMS shift of ε in units of √(1−ᾱ_t).",
        ),
        mode: str = typer.Option(DEFAULT_MODE, "--mode", help="boundary | toward_opposite | away_from_predicted."),
        gate_on: str = typer.Option(
            DEFAULT_GATE_ON, "--gate-on", help="x0 (predicted clean image, t = 0) | xt (noisy input at t)."
        ),
        step: str = typer.Option(
            DEFAULT_STEP, "--step", help="unit (s has one meaning) | gradient (the old raw-gradient step)."
        ),
        t_max: int | None = typer.Option(
            None,
            "--t-max",
            help="Skip the classifier at t ≥ t-max. Default: from the classifier's report (where its training "
            "images' confidence never exceeds 1 − α). 0 = never skip.",
        ),
        steps: int = typer.Option(50, "--steps", help="DDIM steps."),
        eta: float = typer.Option(0.0, "--eta", help="DDIM η (0 = deterministic)."),
        batch_size: int = typer.Option(100, "--batch-size"),
        seed: int = typer.Option(0, "--seed", help="Seed of x_T (same seed, same x_T with or without --protect)."),
        json_out: bool = typer.Option(False, "--json", help="Print the result JSON."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Sample images with DDIM, optionally protected by CPSample (writes PNGs, a grid and a JSON)."""
        from privdiff.cpsample.diagnostics import sampling_defaults
        from privdiff.cpsample.guidance import CPSampleGuidance
        from privdiff.cpsample.training import load_classifier
        from privdiff.diffusion.generate import MAX_SEED, check_sampling, generate
        from privdiff.diffusion.model import load_model
        from privdiff.errors import check_int
        from privdiff.report.images import save_labelled_grid
        from privdiff.report.outputs import OutputDir, files_record

        guidance = None
        if protect is not None:
            # Validate α, s, the mode, gate and step before loading anything heavy or writing anything.
            CPSampleGuidance(
                lambda x, t: x,  # type: ignore[arg-type]
                alpha=DEFAULT_ALPHA if alpha is None else alpha,
                scale=scale,
                mode=mode,  # type: ignore[arg-type]
                gate_on=gate_on,
                step=step,
                t_max=t_max or None,
            )
        check_int("n", n, 1)
        check_int("seed", seed, 0, MAX_SEED)
        # The output folder is created and write-tested before the (long) sampling run.
        target = OutputDir.prepare(out, record="sample.json")
        try:
            diffusion = load_model(model)
            check_sampling(diffusion, n, num_inference_steps=steps, eta=eta, seed=seed, batch_size=batch_size)
            if protect is not None:
                pc = load_classifier(protect)
                alpha, t_max, why = sampling_defaults(pc.meta, alpha, t_max, gate_on)
                _warn_about_classifier(pc.meta, alpha=alpha, gate_on=gate_on)
                guidance = CPSampleGuidance(
                    pc.classifier,
                    alpha=alpha,
                    scale=scale,
                    mode=mode,  # type: ignore[arg-type]
                    gate_on=gate_on,
                    step=step,
                    t_max=t_max,
                )
                if not quiet:
                    typer.echo(
                        f"CPSample: α = {alpha:g} ({why['alpha']}), s = {scale:g} ({step} step), {mode} on "
                        f"{'x̂_0' if gate_on == 'x0' else 'x_t'}, "
                        + (f"classifier at t < {t_max} ({why['t_max']})" if t_max else "classifier at every t"),
                        err=True,
                    )
            images, info = generate(
                diffusion,
                n,
                num_inference_steps=steps,
                eta=eta,
                seed=seed,
                guidance=guidance,
                batch_size=batch_size,
                progress=not quiet,
            )
            target.write_images(images, [f"{i:05d}" for i in range(n)])
            ncols = min(10, n)
            rows = [images[i : i + ncols] for i in range(0, n, ncols)]
            setting = (
                f"CPSample alpha={alpha:g} s={scale:g} {mode} {gate_on}" if guidance else "unprotected"
            ) + f"  steps={steps} eta={eta:g} seed={seed}"
            target.write_grid(
                lambda path: save_labelled_grid(
                    rows,
                    [f"#{i}-{i + len(r) - 1}" for i, r in zip(range(0, n, ncols), rows)],
                    path,
                    title=setting,
                    scale=3 if images.shape[1] <= 64 else 1,
                )
            )
            result = {
                "model": str(model),
                "protect": str(protect) if protect else None,
                "cpsample": guidance.settings() if guidance else None,
                **info,
                "seconds_per_image": info["wall_seconds"] / n,
                "gate": guidance.stats.summary() if guidance else None,
                "files": files_record("<index:05d>.png", "sample.json"),
            }
            target.commit(json.dumps(result, indent=2))
        except BaseException:
            target.abort()
            raise
        if json_out:
            typer.echo(
                json.dumps(
                    {k: v for k, v in result.items() if k != "gate"}
                    | ({"gate_firing_rate": guidance.stats.firing_rate} if guidance else {}),
                    indent=2,
                )
            )
        else:
            msg = f"wrote {n} images to {out} in {info['wall_seconds']:.1f} s"
            if guidance:
                msg += f"; CPSample gate fired on {guidance.stats.firing_rate:.2%} of (sample, step) pairs"
            typer.echo(msg)


def _warn_about_classifier(meta: dict[str, Any], alpha: float | None, gate_on: str = DEFAULT_GATE_ON) -> None:
    """Print (stderr, one line each) why this classifier's gate would do little or too much."""
    from privdiff.cpsample.diagnostics import classifier_warnings

    for msg in classifier_warnings(meta, alpha=alpha, gate_on=gate_on):
        typer.secho(f"warning: {msg}", err=True, fg=typer.colors.YELLOW)


def _stop_lines(meta: dict[str, Any]) -> list[str]:
    """How training ended (the stopping rule), in lines that fit 80 columns."""
    rule, checks = meta.get("rule") or {}, meta.get("rule_checks") or []
    if meta.get("stop_reason") == "fixed_steps" or not rule.get("target_alpha"):
        return [f"trained {meta.get('steps_run')} steps (no stopping rule)"]
    last = checks[-1]["coverage"] if checks else float("nan")
    lo, hi = rule["t_range"]
    verdict = "met" if meta.get("stop_reason") == "rule" else "NOT met (step cap reached)"
    return [
        f"stopping rule {verdict} after {meta.get('steps_run')} steps:",
        f"  {last:.1%} of training images above 1 − α = {1 - rule['target_alpha']:g} at t ∈ [{lo}, {hi})"
        f" (needs {rule['coverage_needed']:.0%})",
    ]


def _suggestion_lines(meta: dict[str, Any]) -> list[str]:
    """The α to sample with, for the default x̂_0 gate and for the x_t gate, and its t-window."""
    from privdiff.cpsample.diagnostics import fire_window, suggest_alpha

    train = (meta.get("report") or {}).get("train") or []
    lines = ["suggested for privdiff sample (α firing on 99 % of the training images):"]
    for gate in ("x0", "xt"):
        a = suggest_alpha(meta, gate)
        if a is None:
            lines.append(f"  --gate-on {gate}: no α ≤ 0.5 fires on 99 % of them")
            continue
        window = fire_window(train, a)
        lines.append(f"  --gate-on {gate}: --alpha {a:g}" + (f" (classifier at t < {window})" if window else ""))
    return lines


def print_classifier_report(report: dict[str, Any]) -> None:
    """A table of one row per timestep band, train and held-out side by side, that fits 80 columns.

    Thresholds are shown as 1 − α (">0.999" is α = 0.001) so every header is a few characters; the
    held-out accuracy is left out because held-out images have no labels (it is 0.5 by construction,
    see :func:`privdiff.cpsample.training.evaluate_classifier`): their confidence is what matters.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    alphas = list(report["train"][0]["fraction_above_1_minus_alpha"])
    thresholds = {a: f">{1 - float(a):.6g}" for a in alphas}
    has_holdout = "holdout" in report
    table = Table(
        title="CPSample classifier per timestep band",
        caption="conf: mean max(p, 1−p); >c: share of images with conf > c (c = 1 − α)",
        box=box.SIMPLE_HEAD,
        caption_justify="left",
    )
    table.add_column("t", no_wrap=True)
    table.add_column("train\nacc", justify="right", no_wrap=True)
    table.add_column("train\nconf", justify="right", no_wrap=True)
    for a in alphas:
        table.add_column(f"train\n{thresholds[a]}", justify="right", no_wrap=True)
    if has_holdout:
        table.add_column("held-out\nconf", justify="right", no_wrap=True)
        table.add_column(f"held-out\n{thresholds[alphas[-1]]}", justify="right", no_wrap=True)
    for i, row in enumerate(report["train"]):
        cells = [
            f"{row['band'][0]}-{row['band'][1]}",
            f"{row['accuracy']:.3f}",
            f"{row['mean_confidence']:.3f}",
        ]
        cells += [f"{row['fraction_above_1_minus_alpha'][a]:.3f}" for a in alphas]
        if has_holdout:
            h = report["holdout"][i]
            cells += [
                f"{h['mean_confidence']:.3f}",
                f"{h['fraction_above_1_minus_alpha'][alphas[-1]]:.3f}",
            ]
        table.add_row(*cells)
    Console().print(table)
