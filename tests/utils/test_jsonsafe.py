"""privdiff.utils.jsonsafe: one sanitiser, strict JSON out."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from privdiff.utils.jsonsafe import dumps, jsonable


def test_non_finite_floats_become_strings_that_float_reads_back():
    out = jsonable({"eps": math.inf, "neg": -math.inf, "nan": float("nan"), "np": np.float32("inf")})
    assert out == {"eps": "inf", "neg": "-inf", "nan": "nan", "np": "inf"}
    assert math.isinf(float(out["eps"])) and math.isnan(float(out["nan"]))


def test_numpy_paths_tuples_sets_and_dataclasses_are_converted():
    @dataclasses.dataclass
    class Row:
        k: int
        path: Path

    out = jsonable(
        {
            1: (np.int64(2), np.bool_(True)),
            "a": np.arange(4).reshape(2, 2),
            "s": {3, 1, 2},
            "row": Row(3, Path("/x/y")),
            "f": np.float64(0.25),
        }
    )
    assert out == {
        "1": [2, True],
        "a": [[0, 1], [2, 3]],
        "s": [1, 2, 3],
        "row": {"k": 3, "path": "/x/y"},
        "f": 0.25,
    }
    assert type(out["f"]) is float and type(out["1"][0]) is int


def test_dumps_is_strict_json():
    text = dumps({"x": [math.inf, np.float64("nan")]}, indent=1)
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"x": ["inf", "nan"]}


def test_unknown_objects_are_refused_not_stringified():
    with pytest.raises(TypeError, match="object"):
        jsonable({"x": object()})
