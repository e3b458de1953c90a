"""``privdiff index build|info``: the private embedding index on disk."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    index_app = typer.Typer(help="Build and inspect embedding indexes (private retrieval sets).", no_args_is_help=True)
    app.add_typer(index_app, name="index")

    @index_app.command("build")
    def build(
        data: str = typer.Option(..., "--data", help="Dataset spec, e.g. fashion-mnist:dprdm-private, folder:/path."),
        out: Path = typer.Option(..., "--out", help="Index directory to create (must not exist)."),
        encoder: str = typer.Option("default", "--encoder", help="Image encoder name or space id."),
        batch_size: int = typer.Option(256, "--batch-size", help="Images per encoder batch."),
        public: bool = typer.Option(
            False, "--public", help="Mark the index public (allows PublicRetriever). Only for public data."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index directory."),
        as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
    ) -> None:
        """Encode a dataset and write DIR/embeddings.npy + DIR/manifest.json atomically."""
        import json

        from privdiff.data import load_dataset
        from privdiff.encoders import load_image_encoder
        from privdiff.errors import InvalidParameter, check_int
        from privdiff.retrieval import build_index_from_images

        batch_size = check_int("batch-size", batch_size, minimum=1)
        if out.exists() and not overwrite:
            raise InvalidParameter("out", str(out), "a path that does not exist yet", hint="use --overwrite")
        enc = load_image_encoder(encoder)
        ds = load_dataset(data, progress=True)
        idx = build_index_from_images(
            out, ds.images, enc, source=data, visibility="public" if public else "private",
            batch_size=batch_size, progress=True, overwrite=overwrite,
        )
        if as_json:
            typer.echo(json.dumps(idx.manifest.to_dict(), indent=2))
        else:
            typer.echo(f"index: {idx.count} × {idx.dim} ({idx.space_id}, {idx.visibility}) -> {out}")

    @index_app.command("info")
    def info(
        index_dir: Path = typer.Argument(..., help="Index directory."),
        verify: bool = typer.Option(
            False, "--verify", help="Also re-hash the vectors and check every row (slower)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
    ) -> None:
        """Show an index's manifest (never its vectors); --verify checks it like a load does."""
        import json

        from privdiff.retrieval import load_index, read_manifest

        if verify:
            manifest = load_index(index_dir, verify="full", progress=not as_json).manifest
        else:
            manifest = read_manifest(index_dir)
        d = manifest.to_dict() | {"verified": "full" if verify else "manifest only"}
        if as_json:
            typer.echo(json.dumps(d, indent=2))
            return
        width = max(len(k) for k in d)
        for key, value in d.items():
            typer.echo(f"{key:<{width}}  {value}")
