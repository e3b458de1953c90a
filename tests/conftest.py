import os

# Tests run on 2 cores; keep torch from oversubscribing them when pytest-xdist runs workers.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests draw the same examples on every run (derandomize: examples follow from the test's
# own source), so CI cannot turn red or slow on a new draw; `HYPOTHESIS_PROFILE=explore` searches
# fresh examples (and keeps failures in the local example database).
settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


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
