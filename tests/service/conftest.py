"""Fixtures of the service tests: a tiny model (shared with tests/rdm), index, ledger and keys."""

from __future__ import annotations

import pytest

from rdm.conftest import tiny_model_dir  # noqa: F401 - re-exported fixture

from .tiny import build_env, make_app, patch_encoders


@pytest.fixture()
def env(tiny_model_dir, tmp_path):  # noqa: F811
    return build_env(tmp_path, tiny_model_dir)


@pytest.fixture()
def client_for(monkeypatch):
    """client_for(env, **settings) -> a started TestClient (closed at teardown)."""
    from fastapi.testclient import TestClient

    patch_encoders(monkeypatch.setattr)  # undone at teardown, after the clients are closed
    clients = []

    def make(env, **settings):
        settings.setdefault("rate", 1000.0)
        settings.setdefault("burst", 1000)
        c = TestClient(make_app(env, patch=False, **settings))
        c.__enter__()
        clients.append(c)
        import time

        for _ in range(600):  # the loader runs in a thread at start-up
            if c.get("/healthz").status_code == 200:
                break
            time.sleep(0.05)
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def add_key(env, name="alice", role="user", quota=None) -> str:
    from privdiff.service.keys import KeyStore

    store = KeyStore(env["keys"])
    try:
        return store.add(name, role, quota)[0]
    finally:
        store.close()
