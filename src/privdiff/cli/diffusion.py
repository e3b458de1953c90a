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
    ) -> None:
        """Train an ε-prediction U-Net (DDPM loss, linear β 1e-4→0.02, T=1000) until it fits the data."""
        from privdiff.data import check_size, load_dataset
        from privdiff.diffusion.model import count_parameters, unet_config
        from privdiff.diffusion.training import TrainConfig, train_diffusion

        size = check_size(size)
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
            )
        )
        model = train_diffusion(
            ds.images,
            out,
            unet_config=cfg,
            config=config,
            data_spec=data,
            command=command,
            resume=resume,
            init_from=init_from,
        )
        result = {
            "out": str(out),
            "steps_done": model.meta["steps_done"],
            "parameters": count_parameters(model.unet),
            "final_loss": model.meta["final_loss_ema"],
            "train_wall_seconds": model.meta["train_wall_seconds"],
        }
        if json_out:
            typer.echo(json.dumps(result, indent=2))
        else:
            typer.echo(
                f"saved {out}: {result['steps_done']} steps, {result['parameters'] / 1e6:.2f} M params, "
                f"loss {result['final_loss']:.4f}, {result['train_wall_seconds']:.0f} s"
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
    return args + (["--resume"] if resume else []) + (["--init-from", str(init_from)] if init_from else [])
