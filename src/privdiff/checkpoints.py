"""Where privdiff finds a trained checkpoint: one resolver for every shipped model.

A checkpoint is looked for, in this order, and the first place that is set wins:

1. an **explicit path** (``--model DIR``, ``rdm_model=...``);
2. its **environment variable** (``PRIVDIFF_RDM_MODEL``, ``PRIVDIFF_CPSAMPLE_MODEL``);
3. the **installed package data** (``privdiff/assets/checkpoints/<name>``; the wheel ships the
   small shipped models, so ``pip install privdiff && privdiff demo`` runs);
4. the **privdiff home directory**: ``$PRIVDIFF_HOME``, else ``$XDG_DATA_HOME/privdiff``, else
   ``~/.local/share/privdiff``, holding ``checkpoints/<name>`` (where an installation without the
   package data, or a user's own retrained copy, puts them).

An explicit path or an environment variable is what the user asked for: when it does not hold
the checkpoint the resolver raises instead of quietly falling back to another model. Only the
last two are searched. Every miss is a :class:`CheckpointNotFound` (a
:class:`~privdiff.errors.CheckpointError`) that names each
place it looked and how to make the checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from privdiff.errors import CheckpointError


class CheckpointNotFound(CheckpointError):
    """A checkpoint is in none of the places the resolver looked.

    Attributes:
        checkpoint: the :class:`ShippedCheckpoint` asked for.
        looked_in: every directory checked, in order.
    """

    def __init__(self, message: str, checkpoint: ShippedCheckpoint, looked_in: list[Path]):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.looked_in = looked_in


#: Environment variable naming the privdiff home directory (checkpoints go under ``checkpoints/``).
HOME_ENV_VAR = "PRIVDIFF_HOME"


@dataclass(frozen=True)
class ShippedCheckpoint:
    """A checkpoint privdiff ships and knows how to find.

    Attributes:
        name: its path under ``assets/checkpoints/`` and ``<home>/checkpoints/``.
        env_var: the environment variable that overrides it.
        marker: a file every complete checkpoint directory of this kind holds.
        older_markers: markers of earlier layouts that still load (any one of them will do).
        what: what it is, for messages.
        remedy: how to make one (quoted in the error).
    """

    name: str
    env_var: str
    marker: str
    what: str
    remedy: str
    older_markers: tuple[str, ...] = ()


RDM_MODEL = ShippedCheckpoint(
    "rdm/fashion-mnist",
    "PRIVDIFF_RDM_MODEL",
    "model_index.json",
    "RDM model",
    "train one with `privdiff train rdm --out DIR`",
    older_markers=("config.json",),  # the privdiff v1 layout (config.json + model.safetensors)
)
CPSAMPLE_MODEL = ShippedCheckpoint(
    "cpsample/fmnist64",
    "PRIVDIFF_CPSAMPLE_MODEL",
    "model_index.json",
    "CPSample diffusion model",
    "train one with `privdiff train diffusion --data 'fashion-mnist:train[:64]' --out DIR`",
    older_markers=("model.json",),  # the privdiff v1 layout (model.json + unet/)
)
SHIPPED = (RDM_MODEL, CPSAMPLE_MODEL)
#: The variables :func:`resolve_checkpoint` reads (recorded by the demo with its command).
ENV_VARS = (RDM_MODEL.env_var, CPSAMPLE_MODEL.env_var, HOME_ENV_VAR)


def package_checkpoints() -> Path | None:
    """``privdiff/assets/checkpoints`` of the installed package, or None when it is not a directory.

    Read through :mod:`importlib.resources` so it is the package's data wherever it is installed
    (a wheel, an editable install, a source tree), not a path relative to this file.
    """
    root = resources.files("privdiff") / "assets" / "checkpoints"
    # Loading a model needs real files; a zipped install has none, so it falls through to the home.
    return Path(str(root)) if isinstance(root, Path) and root.is_dir() else None


def home_dir() -> Path:
    """The privdiff home: ``$PRIVDIFF_HOME``, else ``$XDG_DATA_HOME/privdiff``, else ``~/.local/share/privdiff``."""
    if os.environ.get(HOME_ENV_VAR):
        return Path(os.environ[HOME_ENV_VAR]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "privdiff"


def resolve_checkpoint(checkpoint: ShippedCheckpoint, explicit: str | os.PathLike | None = None) -> Path:
    """The directory of ``checkpoint``: explicit path → env var → package data → home directory.

    Raises:
        CheckpointNotFound: the chosen explicit path or environment variable, or none of the searched
            places, holds the checkpoint (``<dir>/<marker>``); the message lists every place looked at.
    """
    if explicit is not None:
        return _require(checkpoint, Path(explicit), [("given path", Path(explicit))])
    env = os.environ.get(checkpoint.env_var)
    if env:
        return _require(checkpoint, Path(env).expanduser(), [(f"${checkpoint.env_var}", Path(env).expanduser())])
    looked: list[tuple[str, Path]] = []
    package = package_checkpoints()
    if package is not None:
        looked.append(("package data", package / checkpoint.name))
    looked.append(("privdiff home", home_dir() / "checkpoints" / checkpoint.name))
    for _, candidate in looked:
        if _has_marker(checkpoint, candidate):
            return candidate
    raise _missing(checkpoint, looked)


def _markers(checkpoint: ShippedCheckpoint) -> tuple[str, ...]:
    return (checkpoint.marker, *checkpoint.older_markers)


def _has_marker(checkpoint: ShippedCheckpoint, path: Path) -> bool:
    return any((path / m).is_file() for m in _markers(checkpoint))


def _require(checkpoint: ShippedCheckpoint, path: Path, looked: list[tuple[str, Path]]) -> Path:
    if not _has_marker(checkpoint, path):
        raise _missing(checkpoint, looked)
    return path


def _missing(checkpoint: ShippedCheckpoint, looked: list[tuple[str, Path]]) -> CheckpointNotFound:
    where = "; ".join(f"{label}: {path}" for label, path in looked)
    markers = " or ".join(_markers(checkpoint))
    return CheckpointNotFound(
        f"no {checkpoint.what} ({markers} not found); looked in {where}. Pass a directory, set "
        f"{checkpoint.env_var}, or put one in {home_dir() / 'checkpoints' / checkpoint.name} ({checkpoint.remedy})",
        checkpoint,
        [path for _, path in looked],
    )


__all__ = [
    "CPSAMPLE_MODEL",
    "CheckpointNotFound",
    "ENV_VARS",
    "HOME_ENV_VAR",
    "RDM_MODEL",
    "SHIPPED",
    "ShippedCheckpoint",
    "home_dir",
    "package_checkpoints",
    "resolve_checkpoint",
]
