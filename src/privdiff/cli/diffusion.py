"""``privdiff train diffusion``: train (or resume) a small pixel-space DDPM on a dataset spec."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer

from privdiff.cli._options import size_option


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    @train_app.command("diffusion")
    def train_diffusion_cmd(
        data: str = typer.Option(..., "--data", help="Dataset spec, e.g. fashion-mnist:train[:128]."),
        size: int | None = size_option(),
        out: Path = typer.Option(..., "--out", help="Run directory (checkpoint, training state, loss curve)."),
        steps: int = typer.Option(4000, "--steps", help="Total optimizer steps (a resumed run continues up to this)."),
        batch_size: int = typer.Option(32, "--batch-size"),
        lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate."),
        ema_decay: float = typer.Option(0.999, "--ema-decay", help="EMA decay of the weights (0 = off)."),
        unet: str = typer.Option("fmnist-1m", "--unet", help="U-Net preset (privdiff.diffusion.model.UNET_PRESETS)."),
        checkpoint_every: int = typer.Option(250, "--checkpoint-every"),
        seed: int = typer.Option(0, "--seed"),
        resume: bool = typer.Option(False, "--resume", help="Continue from OUT/training_state.pt."),
        init_from: Path | None = typer.Option(None, "--init-from", help="Fine-tune: start from another run's weights."),
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        device: str = typer.Option(
            "cpu", "--device", help="Where the U-Net trains: cpu, cuda, cuda:N or mps (random numbers stay on the CPU)."
        ),
        stop_at_copy_rate: float | None = typer.Option(
            None,
            "--stop-at-copy-rate",
            help="Fine-tuning stop rule: stop once this fraction of the EMA model's samples are replicas of --data "
            "(CPSample's regime: 0.05). Off by default.",
        ),
        copy_check_every: int | None = typer.Option(
            None, "--copy-check-every", help="Steps between two copy checks (default 250; needs --stop-at-copy-rate)."
        ),
        copy_check_samples: int | None = typer.Option(
            None, "--copy-check-samples", help="Samples per copy check (default 200)."
        ),
        copy_check_steps: int | None = typer.Option(
            None, "--copy-check-steps", help="DDIM steps of the copy checks' samples (default 25)."
        ),
        copy_threshold: float | None = typer.Option(
            None,
            "--copy-threshold",
            help="Replication τ (pixel cosine) of the checks; default: the calibrated one (privdiff eval replication).",
        ),
    ) -> None:
        """Train an ε-prediction U-Net (DDPM loss, linear β 1e-4→0.02, T=1000) until it fits the data."""
        from privdiff.data import check_size, load_dataset
        from privdiff.diffusion.model import count_parameters, unet_config
        from privdiff.diffusion.training import CopyRule, TrainConfig, train_diffusion
        from privdiff.errors import InvalidParameter, check_in_range
        from privdiff.utils.device import check_device

        size = check_size(size)
        check_device(device)  # before the data loads or the run directory is written
        rule = None
        if stop_at_copy_rate is not None:
            defaults = CopyRule(target=stop_at_copy_rate)
            rule = CopyRule(
                target=stop_at_copy_rate,
                check_every=defaults.check_every if copy_check_every is None else copy_check_every,
                samples=defaults.samples if copy_check_samples is None else copy_check_samples,
                ddim_steps=defaults.ddim_steps if copy_check_steps is None else copy_check_steps,
            ).validate()
            if copy_threshold is not None:
                check_in_range("copy_threshold", copy_threshold, -1.0, 1.0, low_inclusive=True, high_inclusive=True)
        else:
            given = {
                "--copy-check-every": copy_check_every,
                "--copy-check-samples": copy_check_samples,
                "--copy-check-steps": copy_check_steps,
                "--copy-threshold": copy_threshold,
            }
            stray = [k for k, v in given.items() if v is not None]
            if stray:
                raise InvalidParameter(
                    "stop_at_copy_rate", None, "a rate in (0, 1]", hint=f"{', '.join(stray)} only apply with it"
                )
        config = TrainConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            ema_decay=ema_decay,
            checkpoint_every=checkpoint_every,
            seed=seed,
        ).validate()
        ds = load_dataset(data, size=size)
        h, w, c = ds.images.shape[1:]
        cfg = unet_config(unet, image_shape=(c, h, w))
        # Recorded with every option explicit, so re-running it reproduces the run whatever the defaults.
        command = "privdiff train diffusion " + " ".join(
            shlex.quote(a)
            for a in _explicit_args(
                data,
                out,
                steps,
                batch_size,
                lr,
                ema_decay,
                unet,
                checkpoint_every,
                seed,
                resume,
                init_from,
                size,
                device,
                rule,
                copy_threshold,
            )
        )
        measure, measure_info = None, None
        if rule is not None:
            from privdiff.evaluation.replication import replication_counter

            # The rate is measured against the very images this run trains on (the paper's D).
            measure, measure_info = replication_counter(ds.images, threshold=copy_threshold)
        model = train_diffusion(
            ds.images,
            out,
            unet_config=cfg,
            config=config,
            data_spec=data,
            command=command,
            resume=resume,
            init_from=init_from,
            device=device,
            copy_rule=rule,
            copy_measure=measure,
            copy_measure_info=measure_info,
        )
        result = {
            "out": str(out),
            "steps_done": model.meta["steps_done"],
            "parameters": count_parameters(model.unet),
            "final_loss": model.meta["final_loss_ema"],
            "train_wall_seconds": model.meta["train_wall_seconds"],
        }
        if rule is not None:
            result["stop_reason"] = model.meta["stop_reason"]
            result["copy_rate"] = model.meta["copy_rate"]
        if json_out:
            typer.echo(json.dumps(result, indent=2))
        else:
            typer.echo(
                f"saved {out}: {result['steps_done']} steps, {result['parameters'] / 1e6:.2f} M params, "
                f"loss {result['final_loss']:.4f}, {result['train_wall_seconds']:.0f} s"
            )
            if rule is not None:
                c = result["copy_rate"]
                typer.echo(
                    f"copies: {c['rate']:.1%} [{c['ci_low']:.1%}, {c['ci_high']:.1%}] of {c['n']} samples at step "
                    f"{c['step']} ({result['stop_reason']}; target {rule.target:g}); curve in {out}/copies.png"
                )


def _explicit_args(
    data,
    out,
    steps,
    batch_size,
    lr,
    ema_decay,
    unet,
    checkpoint_every,
    seed,
    resume,
    init_from,
    size=None,
    device="cpu",
    rule=None,
    copy_threshold=None,
) -> list[str]:
    args = [
        "--data",
        data,
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--batch-size",
        str(batch_size),
        "--lr",
        repr(lr),
        "--ema-decay",
        repr(ema_decay),
        "--unet",
        unet,
        "--checkpoint-every",
        str(checkpoint_every),
        "--seed",
        str(seed),
    ]
    args += ["--size", str(size)] if size is not None else []
    args += ["--device", device] if device != "cpu" else []
    if rule is not None:
        args += [
            "--stop-at-copy-rate",
            repr(rule.target),
            "--copy-check-every",
            str(rule.check_every),
            "--copy-check-samples",
            str(rule.samples),
            "--copy-check-steps",
            str(rule.ddim_steps),
        ]
        args += ["--copy-threshold", repr(copy_threshold)] if copy_threshold is not None else []
    return args + (["--resume"] if resume else []) + (["--init-from", str(init_from)] if init_from else [])
