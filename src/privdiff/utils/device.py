"""Checking a ``--device`` name before anything is loaded, trained or charged."""

from __future__ import annotations

import re

from privdiff.errors import InvalidParameter

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def check_device(name: str):
    """``torch.device(name)`` if this machine has it, else a one-line :class:`InvalidParameter`.

    Accepts ``cpu``, ``cuda``, ``cuda:N`` and ``mps``. Checked up front so that a run asked for a
    GPU on a machine without one stops before it writes a run directory or spends budget, rather
    than failing inside the first forward pass.
    """
    import torch

    allowed = "cpu, cuda, cuda:N or mps, available on this machine"
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise InvalidParameter("device", name, allowed)
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= count:
            raise InvalidParameter("device", name, allowed, hint=f"this machine has {count} CUDA device(s)")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InvalidParameter("device", name, allowed, hint="MPS is not available here")
    return torch.device(name)
