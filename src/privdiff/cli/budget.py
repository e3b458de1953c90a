"""``privdiff budget``: create and inspect a dataset's persistent privacy ledger."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import typer


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    budget_app = typer.Typer(
        help="The privacy ledger of a private dataset (budget, spend, history).",
        no_args_is_help=True,
    )
    app.add_typer(budget_app, name="budget")

    @budget_app.command("init")
    def init_cmd(
        ledger: Path = typer.Argument(..., help="Ledger file to create (refuses to overwrite)."),
        epsilon: float = typer.Option(..., "--epsilon", help="ε budget of the dataset."),
        delta: float = typer.Option(..., "--delta", help="δ of the budget (the authors use 1/N)."),
        accountant: str | None = typer.Option(
            None, "--accountant", help="A registered accountant: pld (the default), rdp or paper."
        ),
        dataset: str = typer.Option(
            "",
            "--dataset",
            help="A free-text label shown by `budget status` (it binds nothing; --index does).",
        ),
        index: Path | None = typer.Option(
            None,
            "--index",
            help="Bind the ledger to this private index (by its manifest's fingerprint, not its path): "
            "queries on any other index are refused.",
        ),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Create a new ledger with budget (ε, δ), optionally bound to one private index."""
        from privdiff.accounting import DEFAULT_ACCOUNTANT, Ledger

        fingerprint = ""
        if index is not None:
            from privdiff.retrieval import read_manifest

            fingerprint = read_manifest(index).fingerprint  # IndexCorrupt before anything is created
        with Ledger.create(
            ledger,
            epsilon=epsilon,
            delta=delta,
            accountant=accountant or DEFAULT_ACCOUNTANT,
            dataset=dataset,
            index_fingerprint=fingerprint,
        ) as led:
            status = led.status()
        if as_json:
            typer.echo(json.dumps(status.to_dict()))
        else:
            typer.echo(
                f"created ledger {ledger}: ε={status.epsilon_budget:g}, δ={status.delta:.3g}, "
                f"accountant {status.accountant}"
                + (f", dataset {dataset!r}" if dataset else "")
                + (f", bound to index {status.index}" if status.index else "")
            )

    @budget_app.command("bind")
    def bind_cmd(
        ledger: Path = typer.Argument(..., help="Existing ledger file (keeps its history and budget)."),
        index: Path = typer.Option(..., "--index", help="The private index this ledger's budget is for."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Bind an existing (unbound, or older) ledger to its private index; refuses to re-bind."""
        from privdiff.accounting import Ledger
        from privdiff.retrieval import read_manifest

        fingerprint = read_manifest(index).fingerprint
        with Ledger.open(ledger) as led:
            led.bind_index(fingerprint)
            status = led.status()
        if as_json:
            typer.echo(json.dumps(status.to_dict()))
        else:
            typer.echo(f"ledger {ledger} is bound to index {status.index} ({index})")

    @budget_app.command("status")
    def status_cmd(
        ledger: Path = typer.Argument(..., help="Ledger file."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Budget, ε spent and remaining, number of queries."""
        from privdiff.accounting import Ledger

        with Ledger.open(ledger) as led:
            st = led.status()
        if as_json:
            typer.echo(json.dumps(st.to_dict()))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"Privacy ledger {ledger}", show_header=False)
        table.add_column("field")
        table.add_column("value", justify="right")
        for key, value in [
            ("dataset", st.dataset or "-"),
            ("index", st.index or "- (not bound)"),
            ("accountant", st.accountant),
            ("ε budget", f"{st.epsilon_budget:g}"),
            ("δ", f"{st.delta:.3g}"),
            ("ε spent", f"{st.epsilon_spent:.6g}"),
            ("ε remaining", f"{st.epsilon_remaining:.6g}"),
            ("queries charged", f"{st.queries:,}"),
            ("distinct (σ, q, k)", str(st.groups)),
            ("created", _when(st.created)),
        ]:
            table.add_row(key, value)
        Console().print(table)

    @budget_app.command("history")
    def history_cmd(
        ledger: Path = typer.Argument(..., help="Ledger file."),
        limit: int | None = typer.Option(None, "--limit", help="Only the last N charges."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Every charged query (time, σ, q, k, count, request id, ε after)."""
        from privdiff.accounting import Ledger

        with Ledger.open(ledger) as led:
            records = led.history(limit=limit)
        if as_json:
            typer.echo(json.dumps([r.to_dict() for r in records]))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"Charges in {ledger}")
        for col in ("#", "time", "request", "σ", "q", "k", "count", "ε after"):
            table.add_column(col, justify="left" if col in ("time", "request") else "right")
        for r in records:
            table.add_row(
                str(r.id),
                _when(r.time),
                r.request_id,
                f"{r.sigma:g}",
                f"{r.sample_rate:g}",
                str(r.k),
                str(r.count),
                f"{r.epsilon_after:.6g}",
            )
        Console().print(table)

    @budget_app.command("preview")
    def preview_cmd(
        ledger: Path = typer.Argument(..., help="Ledger file."),
        sigma: float | None = typer.Option(None, "--sigma", help="σ (default: the model's generation default)."),
        sample_rate: float | None = typer.Option(
            None, "--sample-rate", help="q (default: the model's generation default)."
        ),
        k: int | None = typer.Option(None, "--k", help="k (default: the model's generation default)."),
        model: Path | None = typer.Option(
            None,
            "--model",
            help="RDM directory whose generation defaults fill in σ, q, k (default: the shipped one).",
        ),
        queries: int = typer.Option(1, "--queries", help="How many such queries."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """ε the ledger would reach after T more queries (charges nothing).

        σ, q and k default to what `privdiff generate` would use with the same model, so the
        preview is of the query that would actually be charged.
        """
        from privdiff.accounting import DPRDMQuery, Ledger

        if None in (sigma, sample_rate, k):
            from privdiff.rdm.pipeline import generation_defaults, resolve_model_dir

            defaults = generation_defaults(resolve_model_dir(model))
            sigma = defaults["sigma"] if sigma is None else sigma
            sample_rate = defaults["sample_rate"] if sample_rate is None else sample_rate
            k = defaults["k"] if k is None else k
        query = DPRDMQuery(sigma, sample_rate, k)
        with Ledger.open(ledger) as led:
            eps = led.preview(query, queries)
            st = led.status()
        fits = eps <= st.epsilon_budget
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "epsilon_after": eps,
                        "epsilon_budget": st.epsilon_budget,
                        "fits": fits,
                        "epsilon_spent": st.epsilon_spent,
                        "delta": st.delta,
                        "queries": queries,
                        **query.as_dict(),
                    }
                )
            )
        else:
            typer.echo(
                f"{queries} more quer{'y' if queries == 1 else 'ies'} would bring ε from "
                f"{st.epsilon_spent:.6g} to {eps:.6g} (budget {st.epsilon_budget:g}): "
                + ("fits" if fits else "over budget")
            )
