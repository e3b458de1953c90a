"""The ``privdiff`` command: one typer app, thin over the library.

Each concept registers its own commands from a module of this package (``cli/account.py``,
``cli/data.py``, ...), so a change to one command touches one file. A module exposes
``register(app, train_app)``; heavy imports (torch, faiss) happen inside the command functions so
``privdiff --help`` stays fast.

Exit codes (:func:`exit_code_for`; the README's table says the same):

* 0: the command did what it said (a demo with a skipped section is not that);
* 2: bad input: :class:`~privdiff.errors.InvalidParameter`, :class:`~privdiff.errors.DataError`,
  and every usage error (unknown option or command, a value of the wrong type, a missing option);
* 3: privacy budget exceeded (:class:`~privdiff.errors.PrivacyBudgetExceeded`; nothing charged);
* 4: a corrupt or mismatched index or ledger (:class:`~privdiff.errors.IndexCorrupt`,
  :class:`~privdiff.errors.LedgerError`, :class:`~privdiff.errors.EncoderMismatch`);
* 1: anything else (another privdiff error, e.g. a missing checkpoint or an audit violation).

Every error is one line on stderr (``error: ...``), never a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from privdiff.errors import (
    DataError,
    EncoderMismatch,
    IndexCorrupt,
    InvalidParameter,
    LedgerError,
    PrivacyBudgetExceeded,
    PrivdiffError,
)

#: ``-h`` and ``--help`` on every command: click hands a context's help option names down to its
#: sub-contexts, so setting them on the root app covers every sub-command.
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="privdiff",
    help="Generate images with diffusion models without leaking the images behind them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings=CONTEXT_SETTINGS,
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("privdiff")
    except PackageNotFoundError:  # running from a source tree without an install
        from privdiff import __version__

        return __version__


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"privdiff {_version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool | None = typer.Option(
        None,
        "--version",
        help="Print the version and exit.",
        callback=_version_callback,
        is_eager=True,
    ),
) -> None:
    """Generate images with diffusion models without leaking the images behind them."""


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
    "serve",
    "keys",
)

for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"privdiff.cli.{_name}")
    except ModuleNotFoundError as exc:  # only tolerate the module itself being absent
        if exc.name != f"privdiff.cli.{_name}":
            raise
        continue
    _mod.register(app, train_app)


EXIT_OK, EXIT_OTHER, EXIT_BAD_INPUT, EXIT_OVER_BUDGET, EXIT_CORRUPT = 0, 1, 2, 3, 4


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code of an error (module docstring)."""
    if isinstance(exc, (InvalidParameter, DataError)):
        return EXIT_BAD_INPUT
    if isinstance(exc, PrivacyBudgetExceeded):
        return EXIT_OVER_BUDGET
    if isinstance(exc, (IndexCorrupt, LedgerError, EncoderMismatch)):
        return EXIT_CORRUPT
    return EXIT_OTHER


def _one_line(text: str) -> str:
    """Errors are one line on stderr (so ``2>err; wc -l err`` is 1): fold any newlines."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _usage_message(exc: Exception) -> str:
    """click's message for a usage error, plus the offending value where typer knows it.

    typer 0.29 coerces values with pydantic; the ``BadParameter`` it raises says "Input should be a
    valid integer" without the value, so the value is taken from the pydantic error it wraps.
    """
    msg = exc.format_message()  # type: ignore[attr-defined]
    cause = exc.__cause__
    errors = getattr(cause, "errors", None)
    if callable(errors):
        try:
            values = [e["input"] for e in errors() if "input" in e]
        except Exception:  # a foreign error type: the message alone still names the option
            values = []
        if values:
            msg = f"{msg.rstrip('.')} (got {values[0]!r})"
    return msg


def _usage_errors() -> tuple[type[BaseException], ...]:
    # typer 0.29 vendors click as typer._click and raises those classes; a plain click install
    # raises its own. Both are caught so the contract holds whichever one a command uses.
    kinds: list[type[BaseException]] = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            kinds.append(importlib.import_module(module).ClickException)
        except (ImportError, AttributeError):
            continue
    return tuple(kinds)


def _quiet_libraries() -> None:
    # dp-accounting logs "_compute_log_a_frac failed to converge ... Excluding this order" through
    # absl for RDP orders it cannot evaluate; the accountant already drops those orders, so the
    # message is noise to a user (it is not a failure of the ε computation).
    logging.getLogger("absl").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning every error into one clean line and an exit code."""
    _quiet_libraries()
    usage_errors = _usage_errors()
    try:
        result = app(args=argv, standalone_mode=False)
    except PrivdiffError as exc:
        typer.secho(f"error: {_one_line(exc)}", err=True, fg=typer.colors.RED)
        return exit_code_for(exc)
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("error: aborted", err=True)
        return EXIT_OTHER
    except usage_errors as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `privdiff account`: the help, as asked
            exc.show()  # type: ignore[attr-defined]
            return EXIT_BAD_INPUT
        typer.secho(f"error: {_one_line(_usage_message(exc))}", err=True, fg=typer.colors.RED)
        # Usage errors are bad input (2); other click errors (e.g. a file that cannot be opened)
        # carry click's own code (1).
        return EXIT_BAD_INPUT if getattr(exc, "exit_code", 1) == 2 else EXIT_OTHER
    # typer returns the exit code of a `raise typer.Exit(n)` in non-standalone mode (see
    # typer.core._main) instead of raising it.
    return result if isinstance(result, int) and not isinstance(result, bool) else EXIT_OK


def run() -> None:  # console_scripts target
    sys.exit(main())
