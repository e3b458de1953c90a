import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _isolated_fid_cache(tmp_path, monkeypatch):
    """Every test gets its own FID cache so nothing leaks into ~/.cache or between tests."""
    monkeypatch.setenv("PRIVDIFF_CACHE_DIR", str(tmp_path / "privdiff-cache"))


@pytest.fixture(scope="session")
def fashion():
    """Small Fashion-MNIST slices (train reference, held-out test), or skip with an install hint."""
    from privdiff.data import load_dataset
    from privdiff.errors import DataError

    try:
        train = load_dataset("fashion-mnist:train[:300]").images
        test = load_dataset("fashion-mnist:test[:300]").images
    except DataError as exc:
        pytest.skip(f"Fashion-MNIST not available ({exc}); install with `apt-get install dataset-fashion-mnist`")
    return train, test


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
