"""JSON sanitising, written once: what privdiff records hold → strict JSON values.

``json.dumps`` writes ``Infinity``/``NaN`` for non-finite floats (not JSON: browsers' and most
other languages' parsers reject it) and refuses numpy scalars, arrays, tuples-as-keys and paths.
:func:`jsonable` maps them once, the same way everywhere:

* ``inf``/``-inf``/``nan`` (Python or numpy floats) → the strings ``"inf"``, ``"-inf"``, ``"nan"``
  (``float()`` reads each back; ε = ∞ is the non-private baseline, a real value in records);
* numpy scalars → Python scalars; numpy arrays → (nested) lists;
* tuples, lists, sets and frozensets → lists (sets sorted when their items allow: stable output);
* :class:`os.PathLike` → ``str``; mapping keys → ``str``; dataclass instances → their fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np


def jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that :func:`json.dumps` writes as strict JSON (``allow_nan=False``)."""
    if obj is None or isinstance(obj, (bool, str, int)) and not isinstance(obj, np.generic):
        return obj
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else _non_finite(obj)
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        items = [jsonable(v) for v in obj]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "item") and callable(obj.item):  # 0-d tensors and other array scalars
        return jsonable(obj.item())
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any, *, indent: int | None = None, **kwargs: Any) -> str:
    """``json.dumps(jsonable(obj))`` with ``allow_nan=False``: the output is always strict JSON."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False, **kwargs)


def _non_finite(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"
