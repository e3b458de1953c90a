"""privdiff.errors: the shared validators name the parameter, the value and the allowed range."""

import pytest

from privdiff.errors import InvalidParameter, check_in_range, check_int


def test_check_in_range_names_value_and_range():
    with pytest.raises(InvalidParameter) as ei:
        check_in_range("sample_rate", 1.5, 0, 1)
    assert "sample_rate" in str(ei.value) and "(0, 1]" in str(ei.value) and "1.5" in str(ei.value)
    assert check_in_range("sample_rate", 1.0, 0, 1) == 1.0


@pytest.mark.parametrize("bad", [0, -1, 2.5, float("nan"), "x", True])
def test_check_int_rejects(bad):
    with pytest.raises(InvalidParameter):
        check_int("k", bad, minimum=1)
