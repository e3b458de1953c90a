import pytest

from privdiff.data.fashion_mnist import INSTALL_HINT, resolve_dir


@pytest.fixture(scope="session")
def fashion_dir():
    d = resolve_dir()
    if not (d / "train-labels-idx1-ubyte.gz").exists() and not (d / "train-labels-idx1-ubyte").exists():
        pytest.skip(f"Fashion-MNIST not found in {d}: {INSTALL_HINT}")
    return d
