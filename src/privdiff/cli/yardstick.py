"""``privdiff train yardstick``: the domain classifier the evaluation judges generated images with."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    @train_app.command("yardstick")
    def train_yardstick_cmd(
        data: str = typer.Option("fashion-mnist:train", "--data", help="Labelled training set (dataset spec)."),
        test: str = typer.Option("fashion-mnist:test", "--test", help="Labelled held-out set for the report."),
        out: Path = typer.Option(..., "--out", help="Directory to write (config.json + model.safetensors)."),
        epochs: int = typer.Option(4, "--epochs"),
        batch_size: int = typer.Option(128, "--batch-size"),
        lr: float = typer.Option(2e-3, "--lr", help="Peak learning rate of the one-cycle schedule."),
        seed: int = typer.Option(0, "--seed"),
        threads: int = typer.Option(1, "--threads", help="torch CPU threads (1 makes runs reproducible bit for bit)."),
    ) -> None:
        """Train a small CNN on a full labelled set; its test accuracy goes into config.json."""
        import torch

        from privdiff.data import load_dataset
        from privdiff.errors import DataError, check_int
        from privdiff.evaluation.yardstick import train_yardstick

        torch.set_num_threads(check_int("threads", threads, 1, 256))
        check_int("epochs", epochs, 1, 1000)
        train = load_dataset(data)
        held = load_dataset(test)
        if train.labels is None or held.labels is None or train.class_names != held.class_names:
            raise DataError(f"--data {data!r} and --test {test!r} must both be labelled with the same classes")
        command = shlex.join(
            [
                "privdiff",
                "train",
                "yardstick",
                "--data",
                data,
                "--test",
                test,
                "--out",
                str(out),
                "--epochs",
                str(epochs),
                "--batch-size",
                str(batch_size),
                "--lr",
                str(lr),
                "--seed",
                str(seed),
                "--threads",
                str(threads),
            ]
        )
        yard = train_yardstick(
            train.images,
            train.labels,
            train.class_names,
            test_images=held.images,
            test_labels=held.labels,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            train_data=data,
            progress=True,
        )
        yard.config.report["command"] = command
        yard.config.report["test_data"] = test
        yard.save_pretrained(out)
        rep = yard.config.report
        typer.echo(f"yardstick -> {out}: test accuracy {rep['test_accuracy']:.4f} on {rep['test_images']} images")
        worst = min(rep["test_accuracy_per_class"].items(), key=lambda kv: kv[1])
        typer.echo(f"hardest class: {worst[0]} {worst[1]:.4f}")
