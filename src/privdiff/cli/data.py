"""``privdiff data show SPEC``: look at a dataset (grid PNG + summary)."""

from __future__ import annotations

from pathlib import Path

import typer

from privdiff.cli._options import size_option


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    data_app = typer.Typer(help="Inspect datasets (bundled, Fashion-MNIST, folders, npz).", no_args_is_help=True)
    app.add_typer(data_app, name="data")

    @data_app.command("show")
    def show(
        spec: str = typer.Argument(..., help="Dataset spec, e.g. fashion-mnist:train[:500], folder:/path, npz:/x.npz"),
        n: int = typer.Option(64, "--n", help="Number of images in the grid (the first n)."),
        out: Path | None = typer.Option(None, "--out", help="Grid PNG path (default: out/data/<spec>.png)."),
        scale: int = typer.Option(3, "--scale", help="Integer upscaling of the grid (nearest neighbour)."),
        size: int | None = size_option(),
        skip_corrupt: bool = typer.Option(False, "--skip-corrupt", help="Folders: skip unreadable files (counted)."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Write a grid PNG of the first N images and print N, shape and class counts."""
        import json
        import re

        from privdiff.data import check_size, load_dataset
        from privdiff.errors import check_int
        from privdiff.report.images import save_grid

        n = check_int("n", n, minimum=1, maximum=4096)
        scale = check_int("scale", scale, minimum=1, maximum=32)
        size = check_size(size)
        ds = load_dataset(spec, size=size, skip_corrupt=skip_corrupt)
        if out is None:
            out = Path("out") / "data" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("_") + ".png")
        shown = ds.images[: min(n, len(ds))]
        save_grid(shown, out, scale=scale)
        summary = ds.summary() | {"grid": str(out), "grid_images": int(shown.shape[0])}
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
            return
        typer.echo(f"{ds.name}: N={len(ds)}  shape={tuple(ds.images.shape)}  channels={ds.channels}")
        if ds.labels is not None:
            for name, count in ds.class_counts().items():
                typer.echo(f"  {name:<14} {count}")
        else:
            typer.echo("  (unlabelled)")
        if "n_skipped" in ds.metadata:
            typer.echo(f"  skipped unreadable files: {ds.metadata['n_skipped']}")
        typer.echo(f"grid of {shown.shape[0]} images -> {out}")
