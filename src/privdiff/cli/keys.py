"""``privdiff keys add|list|revoke``: API keys of ``privdiff serve`` (salted hashes in SQLite)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    keys_app = typer.Typer(help="API keys of `privdiff serve` (only salted hashes are stored).", no_args_is_help=True)
    app.add_typer(keys_app, name="keys")

    @keys_app.command("add")
    def add_cmd(
        name: str = typer.Argument(..., help="A name for the key's holder (letters, digits, _ . @ -)."),
        role: str = typer.Option("user", "--role", help="user | admin (admin may read the ledger history)."),
        epsilon_quota: float | None = typer.Option(
            None, "--epsilon-quota", help="ε this key may spend in all (default: up to the dataset's budget)."
        ),
        keys: Path = typer.Option(..., "--keys", help="Keys file (SQLite; created if missing)."),
    ) -> None:
        """Create a key and print it once (it cannot be shown again)."""
        from privdiff.service.keys import KeyStore

        store = KeyStore(keys, create=True)
        try:
            key, info = store.add(name, role, epsilon_quota)
        finally:
            store.close()
        quota = "the dataset's budget" if info.epsilon_quota is None else f"ε {info.epsilon_quota:g}"
        typer.echo(key)
        typer.echo(f"key {info.name} ({info.role}, id {info.id}, quota {quota}): shown once, store it now", err=True)

    @keys_app.command("list")
    def list_cmd(keys: Path = typer.Option(..., "--keys", help="Keys file.")) -> None:
        """List keys (names, roles, quotas, revocation; never secrets)."""
        import time

        from privdiff.service.keys import KeyStore

        store = KeyStore(keys)
        try:
            rows = store.list()
        finally:
            store.close()
        typer.echo(f"{'id':<13} {'name':<20} {'role':<6} {'quota':>8}  {'created':<17} revoked")
        for k in rows:
            quota = "dataset" if k.epsilon_quota is None else f"{k.epsilon_quota:g}"
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created))
            revoked = time.strftime("%Y-%m-%d %H:%M", time.localtime(k.revoked)) if k.revoked else "-"
            typer.echo(f"{k.id:<13} {k.name:<20} {k.role:<6} {quota:>8}  {created:<17} {revoked}")

    @keys_app.command("revoke")
    def revoke_cmd(
        name: str = typer.Argument(..., help="Name or id of the key."),
        keys: Path = typer.Option(..., "--keys", help="Keys file."),
    ) -> None:
        """Revoke a key: its next request gets 401."""
        from privdiff.service.keys import KeyStore

        store = KeyStore(keys)
        try:
            info = store.revoke(name)
        finally:
            store.close()
        typer.echo(f"revoked key {info.name} (id {info.id})")
