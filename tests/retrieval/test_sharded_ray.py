"""The Ray-sharded backend: one actor per shard, same mechanism as one node, typed shard failures.

Starts a local Ray (2 CPUs, no dashboard) once per session (``ray_session`` in tests/conftest.py).
"""

import threading
import time

import numpy as np
import pytest
from scipy import stats

from privdiff.errors import IndexCorrupt, ShardFailure
from privdiff.retrieval.private import DPRetriever, ExactTopK, RayShardedTopK, build_index, shard_index

from ._helpers import unit_rows

pytestmark = pytest.mark.integration
ALPHA = 1e-3


@pytest.fixture(scope="module")
def sharded(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-shards")
    rng = np.random.default_rng(5)
    x = rng.integers(-2, 3, size=(90, 6)).astype(np.float64)  # exact score ties
    x[np.linalg.norm(x, axis=1) == 0] = 1.0
    idx = build_index(root / "idx", x, space_id="s/v1")
    sh = shard_index(idx, root / "sh", 3)
    backend = RayShardedTopK(sh)
    yield idx, sh, backend
    backend.close()


def test_ray_backend_returns_exactly_the_single_node_sums_at_full_sample_rate(sharded):
    idx, _, backend = sharded
    q = unit_rows(7, 6, seed=3)
    q[0] = [1, 0, 0, 0, 0, 0]
    for k in (1, 6, 40, 120):
        exact = ExactTopK(idx, method="sparse").topk_sums(q, k, 1.0, np.random.default_rng(0))
        got = backend.topk_sums(q, k, 1.0, np.random.default_rng(0))
        assert np.array_equal(exact[0], got[0]) and np.array_equal(exact[1], got[1])


def test_actors_draw_independent_poisson_subsamples_of_the_whole(ray_session, tmp_path):
    """The actors' own OS-seeded draws: each record with probability q, shards independent."""
    n, q, runs = 12, 0.4, 3000
    idx = build_index(tmp_path / "idx", np.eye(n), space_id="basis/v1")
    backend = RayShardedTopK(shard_index(idx, tmp_path / "sh", 3))
    try:
        queries = np.repeat(np.full((1, n), 1 / np.sqrt(n), dtype=np.float32), runs, axis=0)
        sums, counts = backend.topk_sums(queries, n, q, np.random.default_rng(0))
        again, _ = backend.topk_sums(queries, n, q, np.random.default_rng(0))
    finally:
        backend.close()
    mat = np.rint(sums).astype(bool)
    assert np.array_equal(mat.sum(axis=1), counts)
    assert not np.array_equal(sums, again)  # the mechanism's generator does not drive the actors
    lo, hi = stats.binom.ppf(ALPHA / (2 * n), runs, q), stats.binom.isf(ALPHA / (2 * n), runs, q)
    assert ((mat.sum(axis=0) >= lo) & (mat.sum(axis=0) <= hi)).all()
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if i // 4 != j // 4]  # different shards
    lo, hi = (
        stats.binom.ppf(ALPHA / (2 * len(pairs)), runs, q * q),
        stats.binom.isf(ALPHA / (2 * len(pairs)), runs, q * q),
    )
    co = mat.T.astype(np.int64) @ mat.astype(np.int64)
    assert all(lo <= co[i, j] <= hi for i, j in pairs)


def test_a_shard_killed_mid_query_fails_typed_after_the_charge_then_recovers(ray_session, sharded, tmp_path):
    from privdiff.accounting import Ledger

    idx, _, backend = sharded
    q = unit_rows(2, 6, seed=4)
    with Ledger.create(tmp_path / "l.db", epsilon=50.0, delta=1e-5, index_fingerprint=idx.fingerprint) as book:
        retriever = DPRetriever(backend, k=4, sigma=0.5, sample_rate=0.5, ledger=book)
        actor = backend._actors[0]
        busy = actor.ping.remote(60.0)  # the query's task for shard 0 queues behind this call
        outcome = {}

        def run():
            try:
                outcome["release"] = retriever.query(q)
            except Exception as exc:  # noqa: BLE001 - recorded for the assertion
                outcome["error"] = exc

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 60
        while book.status().queries < 2 and time.monotonic() < deadline:  # charged: shards are being asked
            time.sleep(0.05)
        time.sleep(0.5)
        ray_session.kill(actor, no_restart=False)
        worker.join(120)
        assert not worker.is_alive()
        assert "release" not in outcome
        err = outcome["error"]
        assert isinstance(err, ShardFailure)
        assert "already charged" in str(err) and "nothing was released" in str(err)
        assert book.status().queries == 2  # charged once, before any shard was asked
        with pytest.raises(Exception):  # noqa: B017 - the held call died with its actor
            ray_session.get(busy, timeout=60)
        # Ray restarts the actor (max_restarts); the next query is served and charged normally.
        release = retriever.query(q)
        assert release.vectors.shape == (2, 6) and book.status().queries == 4


def test_a_corrupt_shard_is_refused_when_the_backend_starts(ray_session, tmp_path):
    idx = build_index(tmp_path / "idx", unit_rows(20, 4), space_id="s/v1")
    shard_index(idx, tmp_path / "sh", 2)
    path = tmp_path / "sh" / "shard-0001.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IndexCorrupt, match="shard 1 .*sha256"):  # before anything could be charged
        RayShardedTopK(tmp_path / "sh", start_timeout_s=120)
