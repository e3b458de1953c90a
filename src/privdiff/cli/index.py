"""``privdiff index build|shard|info``: the private embedding index on disk (whole or in shard files)."""

from __future__ import annotations

from pathlib import Path

import typer

from privdiff.cli._options import size_option


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    index_app = typer.Typer(help="Build and inspect embedding indexes (private retrieval sets).", no_args_is_help=True)
    app.add_typer(index_app, name="index")

    @index_app.command("build")
    def build(
        out: Path = typer.Option(..., "--out", help="Index directory to create (must not exist)."),
        data: str = typer.Option(None, "--data", help="Dataset spec, e.g. fashion-mnist:dprdm-private, folder:/path."),
        encoder: str = typer.Option(
            "default",
            "--encoder",
            help="Image encoder name or space id (default: the shipped RDM's space, fmnist-public-cnn/v1).",
        ),
        embeddings: Path = typer.Option(
            None,
            "--embeddings",
            help="Instead of --data: a .npy (N, d) float array of precomputed image embeddings "
            "(e.g. MetaCLIP); needs --space-id.",
        ),
        space_id: str = typer.Option(
            None, "--space-id", help="Embedding space of --embeddings (e.g. 'metaclip-b16/v1')."
        ),
        batch_size: int = typer.Option(
            64, "--batch-size", help="Images per encoder batch (64: measured, docs/results/scale/memory_encode.json)."
        ),
        size: int = size_option(),
        public: bool = typer.Option(
            False,
            "--public",
            help="Mark the index public (allows PublicRetriever). Only for public data.",
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index directory."),
        scan_copy: str = typer.Option(
            "none",
            "--scan-copy",
            help="Also write a reduced-precision copy for the exact scan: int8 (a quarter of the bytes; with "
            "numba, 'pip install privdiff[fast]', searches use it and re-rank exactly in float32), float16, "
            "or none. The released neighbours are the same either way.",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
    ) -> None:
        """Encode a dataset (or take precomputed embeddings) and write the index atomically."""
        import json

        import numpy as np

        from privdiff.data import check_size
        from privdiff.errors import DataError, InvalidParameter, check_int
        from privdiff.retrieval import build_index, build_index_from_images

        batch_size = check_int("batch-size", batch_size, minimum=1)
        size = check_size(size)
        if scan_copy not in ("none", "float16", "int8"):
            raise InvalidParameter("--scan-copy", scan_copy, "one of none, float16, int8")
        copy = False if scan_copy == "none" else scan_copy
        if size is not None and embeddings is not None:
            raise InvalidParameter("--size", size, "used with --data only (--embeddings are not images)")
        if (data is None) == (embeddings is None):
            raise InvalidParameter("--data/--embeddings", (data, embeddings), "exactly one of them")
        if out.exists() and not overwrite:
            raise InvalidParameter("out", str(out), "a path that does not exist yet", hint="use --overwrite")
        visibility = "public" if public else "private"
        if embeddings is not None:
            if not space_id:
                raise InvalidParameter("--space-id", space_id, "the embedding space of --embeddings")
            try:
                emb = np.load(embeddings, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot read embeddings {str(embeddings)!r}: {exc}") from None
            idx = build_index(
                out,
                emb,
                space_id=space_id,
                source=f"npy:{embeddings}",
                visibility=visibility,
                overwrite=overwrite,
                scan_copy=copy,
            )
        else:
            from privdiff.data import load_dataset
            from privdiff.encoders import load_image_encoder

            enc = load_image_encoder(encoder)
            ds = load_dataset(data, size=size, progress=True)
            idx = build_index_from_images(
                out,
                ds.images,
                enc,
                source=data,
                visibility=visibility,
                batch_size=batch_size,
                progress=True,
                overwrite=overwrite,
                scan_copy=copy,
            )
        if as_json:
            typer.echo(json.dumps(idx.manifest.shown(), indent=2))
        else:
            extra = f", scan copy {'+'.join(idx.scan_dtypes)}" if idx.scan_dtypes else ""
            typer.echo(f"index: {idx.count} × {idx.dim} ({idx.space_id}, {idx.visibility}{extra}) -> {out}")

    @index_app.command("shard")
    def shard(
        index_dir: Path = typer.Argument(..., help="Index directory to split (it is verified first)."),
        shards: int = typer.Option(..., "--shards", help="Number of shard files S (one Ray actor each)."),
        out: Path = typer.Option(..., "--out", help="Sharded index directory to create (must not exist)."),
        dtype: str = typer.Option(
            "float32", "--dtype", help="Row storage: float32 (exactly the index) or float16 (half the memory)."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing sharded directory."),
        as_json: bool = typer.Option(False, "--json", help="Print the sharded manifest as JSON."),
    ) -> None:
        """Split an index into S memory-mappable shard files (0600, one checksum each); the sharded
        manifest keeps the index's fingerprint, so its ledger serves the shards unchanged."""
        import json

        from privdiff.errors import InvalidParameter, check_int
        from privdiff.retrieval import load_index, shard_index

        shards = check_int("shards", shards, minimum=1)
        if dtype not in ("float32", "float16"):
            raise InvalidParameter("dtype", dtype, "'float32' or 'float16'")
        if out.exists() and not overwrite:
            raise InvalidParameter("out", str(out), "a path that does not exist yet", hint="use --overwrite")
        idx = load_index(index_dir, verify="full", progress=not as_json)
        if shards > idx.count:
            raise InvalidParameter("shards", shards, f"an integer in [1, {idx.count}] (the index's records)")
        sharded = shard_index(idx, out, shards, dtype=dtype, overwrite=overwrite)
        if as_json:
            typer.echo(json.dumps(sharded.shown(), indent=2))
        else:
            typer.echo(
                f"sharded index: {sharded.count} × {sharded.dim} in {sharded.num_shards} {dtype} shards "
                f"(index {sharded.short_fingerprint}) -> {out}"
            )

    @index_app.command("info")
    def info(
        index_dir: Path = typer.Argument(..., help="Index directory."),
        verify: bool = typer.Option(False, "--verify", help="Also re-hash the vectors and check every row (slower)."),
        as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
    ) -> None:
        """Show an index's manifest (never its vectors, nor their hash: the index is named by a short
        fingerprint of its manifest); --verify checks it like a load does."""
        import json

        from privdiff.retrieval import ShardedIndex, is_sharded_index, load_index, read_manifest

        if is_sharded_index(index_dir):
            sharded = ShardedIndex.open(index_dir)
            if verify:
                from privdiff.retrieval import ShardedTopK

                ShardedTopK(sharded, verify="full")  # opens and checks every shard (sha256, unit rows)
            d = sharded.shown() | {"verified": "full" if verify else "manifest only"}
        elif verify:
            manifest = load_index(index_dir, verify="full", progress=not as_json).manifest
            d = manifest.shown() | {"verified": "full"}
        else:
            d = read_manifest(index_dir).shown() | {"verified": "manifest only"}
        if as_json:
            typer.echo(json.dumps(d, indent=2))
            return
        width = max(len(k) for k in d)
        for key, value in d.items():
            typer.echo(f"{key:<{width}}  {value}")
