import pytest
import torch

from privdiff.errors import InvalidParameter
from privdiff.utils.device import check_device


def test_cpu_is_always_there():
    assert check_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "CPU", "", " cpu", 3, None])
def test_names_that_are_not_devices_are_refused_by_name(name):
    with pytest.raises(InvalidParameter, match="device") as info:
        check_device(name)
    assert "cpu, cuda, cuda:N or mps" in str(info.value)


def test_a_cuda_index_beyond_the_machines_devices_is_refused_with_the_count():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(InvalidParameter, match=f"{count} CUDA device"):
        check_device(f"cuda:{count}")
