"""Options shared by several commands, declared once so their name, help and checks agree."""

from __future__ import annotations

from typing import Any

import typer


def size_option() -> Any:
    """``--size N``: resize every image of the command's dataset(s) to N×N.

    The value is checked with :func:`privdiff.data.check_size` at the top of each command, before
    any model, encoder or dataset is loaded.
    """
    return typer.Option(
        None,
        "--size",
        metavar="N",
        help="Resize every image to N×N, N in [8, 1024] (Lanczos; folders are centre-cropped first).",
    )
