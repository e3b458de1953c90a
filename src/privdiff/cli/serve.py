"""``privdiff serve``: the DP-RDM generation service (FastAPI + uvicorn; the ``serve`` extra)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    @app.command("serve")
    def serve_cmd(
        model: Path | None = typer.Option(None, "--model", help="RDM directory (default: the shipped checkpoint)."),
        index: Path = typer.Option(..., "--index", help="Private index directory."),
        ledger: Path = typer.Option(..., "--ledger", help="The dataset's privacy ledger."),
        keys: Path = typer.Option(..., "--keys", help="Keys file (`privdiff keys add ... --keys FILE`)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
        port: int = typer.Option(8000, "--port", help="TCP port, 1-65535."),
        encoder: str = typer.Option(
            "default", "--encoder", help="Encoder name (text + image, one space; default: the model's own space)."
        ),
        k: int | None = typer.Option(None, "--k", help="k neighbours (default: the model's)."),
        sigma: float | None = typer.Option(None, "--sigma", help="σ: noise std per coordinate."),
        sample_rate: float | None = typer.Option(None, "--sample-rate", help="q: Poisson subsampling rate."),
        max_images: int = typer.Option(16, "--max-images", help="Largest n per request (above: 413)."),
        rate: float = typer.Option(1.0, "--rate", help="Generate requests per second per key (token bucket)."),
        burst: int = typer.Option(10, "--burst", help="Token bucket size per key."),
        workers: int = typer.Option(1, "--workers", help="Generation threads."),
    ) -> None:
        """Serve DP-RDM generation over HTTP until SIGINT/SIGTERM (in-flight requests finish).

        Everything is checked before the port opens (ledger, keys file, index, limits); the model
        loads once in the background, and the API answers 503 until it has.
        """
        from privdiff.accounting.ledger import Ledger
        from privdiff.errors import InvalidParameter, check_int
        from privdiff.rdm.pipeline import make_pipeline, resolve_model_dir

        try:
            from privdiff.service.app import ServiceSettings, create_app, serve
        except ImportError as exc:
            raise InvalidParameter(
                "serve", "missing dependency", "installed: pip install 'privdiff[serve]'", hint=str(exc)
            ) from None
        from privdiff.service.keys import KeyStore

        check_int("port", port, 1, 65535)
        settings = ServiceSettings(max_images=max_images, rate=rate, burst=burst, workers=workers).validate()
        Ledger.open(ledger).close()
        KeyStore(keys).close()
        if not Path(index).is_dir():
            raise InvalidParameter("index", str(index), "an index directory (`privdiff index build`)")
        model_dir = resolve_model_dir(model)

        def loader(book):  # the service's own open ledger: one SQLite handle per process
            return make_pipeline(
                model_dir,
                mode="dp-rdm",
                index=index,
                ledger=book,
                k=k,
                sigma=sigma,
                sample_rate=sample_rate,
                encoder=encoder,
            )

        serve(create_app(ledger=ledger, keys=keys, loader=loader, settings=settings), host=host, port=port)
