import os

# Tests run on 2 cores; keep torch from oversubscribing them when pytest-xdist runs workers.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray for the `--backend ray` tests: 2 CPUs, no dashboard, shut down at the end."""
    ray = pytest.importorskip("ray")  # installed by `make test` (the `test` extra pulls it in)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
