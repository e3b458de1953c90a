"""The ``privdiff`` command: one typer app, thin over the library.

Each concept registers its own commands from a module of this package (``cli/account.py``,
``cli/data.py``, ...), so a change to one command touches one file. A module exposes
``register(app, train_app)``; heavy imports (torch, faiss) happen inside the command functions so
``privdiff --help`` stays fast.

Exit codes: 0 success; 2 bad input (:class:`~privdiff.errors.InvalidParameter`,
:class:`~privdiff.errors.DataError`, usage errors); 3 privacy budget exceeded; 1 any other
privdiff error.
"""

from __future__ import annotations

import importlib
import sys

import typer

from privdiff.errors import DataError, InvalidParameter, PrivacyBudgetExceeded, PrivdiffError

app = typer.Typer(
    name="privdiff",
    help="Generate images with diffusion models without leaking the images behind them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train models (RDM on public data, plain diffusion models).", no_args_is_help=True)
app.add_typer(train_app, name="train")

# Modules that register commands, in help order. A module missing here is simply skipped, so the
# packages can grow independently.
_COMMAND_MODULES = (
    "account",
    "budget",
    "data",
    "evaluate",
    "index",
    "audit",
    "rdm",
    "diffusion",
    "cpsample",
    "yardstick",
    "demo",
)

for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"privdiff.cli.{_name}")
    except ModuleNotFoundError as exc:  # only tolerate the module itself being absent
        if exc.name != f"privdiff.cli.{_name}":
            raise
        continue
    _mod.register(app, train_app)


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, (InvalidParameter, DataError)):
        return 2
    if isinstance(exc, PrivacyBudgetExceeded):
        return 3
    return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning privdiff errors into one clean line and an exit code."""
    try:
        app(args=argv, standalone_mode=False)
    except PrivdiffError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        return exit_code_for(exc)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 1
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0


def run() -> None:  # console_scripts target
    sys.exit(main())
