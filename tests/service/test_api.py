"""The HTTP API of `privdiff serve` in process (FastAPI TestClient, tiny model): answers, errors,
budgets, keys, idempotency. Every refusal is checked to leave both ledgers as they were."""

from __future__ import annotations

import base64
import io
import threading

import pytest

from privdiff.accounting import Ledger

from .conftest import add_key
from .tiny import build_env


def _h(key):
    return {"Authorization": f"Bearer {key}"}


def _ledger(env):
    with Ledger.open(env["ledger"]) as book:
        return book.status().queries, [r.request_id for r in book.history()]


def _gen(client, key, body=None, **headers):
    return client.post(
        "/v1/generate", json=body or {"prompt": "a sandal", "n": 2, "steps": 2}, headers=_h(key) | headers
    )


def test_generate_returns_pngs_and_charges_one_query_on_both_ledgers(env, client_for):
    from PIL import Image

    client = client_for(env)
    key = add_key(env, quota=1e6)
    r = _gen(client, key, {"prompt": "a sandal", "n": 3, "steps": 2, "seed": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["images"]) == 3
    for b64 in body["images"]:
        img = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert img.format == "PNG" and img.size == (12, 12)
    pv = body["privacy"]
    assert set(pv) >= {
        "epsilon_request",
        "epsilon_remaining_key",
        "epsilon_remaining_dataset",
        "delta",
        "sigma",
        "q",
        "k",
    }
    assert pv["epsilon_request"] > 0 and pv["k"] == 4
    queries, ids = _ledger(env)
    assert queries == 1 and ids == [body["request_id"]]
    key_ledgers = list((env["keys"].parent / "keys.db.ledgers").glob("*.db"))
    with Ledger.open(key_ledgers[0]) as kb:
        assert [r.request_id for r in kb.history()] == [body["request_id"]]
        assert kb.accountant == Ledger.open(env["ledger"]).accountant
    # Same seed, same public noise; the DP noise is fresh, so the images may differ but not the shape.
    assert body["seed"] == 7


def test_budget_moves_and_history_is_admin_only_and_holds_nothing_private(env, client_for):
    client = client_for(env)
    user, admin = add_key(env, "u"), add_key(env, "boss", role="admin")
    before = client.get("/v1/budget", headers=_h(user)).json()
    assert before["dataset"]["epsilon_spent"] == 0 and before["queries_remaining"] == 1000
    assert _gen(client, user).status_code == 200
    after = client.get("/v1/budget", headers=_h(user)).json()
    assert after["dataset"]["epsilon_remaining"] < before["dataset"]["epsilon_remaining"]
    assert after["key"]["epsilon_spent"] > 0 and after["queries_remaining"] == 999
    assert client.get("/v1/history", headers=_h(user)).json()["error"] == "forbidden"
    assert client.get("/v1/history", headers=_h(user)).status_code == 403
    hist = client.get("/v1/history", headers=_h(admin))
    assert hist.status_code == 200
    (row,) = hist.json()["charges"]
    assert set(row) == {"time", "request_id", "sigma", "q", "k", "count", "epsilon_after"}
    assert "path" not in hist.json()["status"]


@pytest.mark.parametrize(
    "headers, status, code",
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer pdk_000000000000_" + "A" * 43}, 401, "unauthorized"),
        ({"Authorization": "Bearer nonsense"}, 401, "unauthorized"),
    ],
)
def test_missing_or_invalid_key_is_401_and_charges_nothing(env, client_for, headers, status, code):
    client = client_for(env)
    add_key(env)
    r = client.post("/v1/generate", json={"prompt": "x"}, headers=headers)
    assert (r.status_code, r.json()["error"]) == (status, code)
    assert client.get("/v1/budget", headers=headers).status_code == 401
    assert _ledger(env) == (0, [])


def test_revoked_key_is_refused_at_once(env, client_for):
    from privdiff.cli import main

    client = client_for(env)
    key = add_key(env, "mallory")
    assert client.get("/v1/budget", headers=_h(key)).status_code == 200
    assert main(["keys", "revoke", "mallory", "--keys", str(env["keys"])]) == 0
    r = _gen(client, key)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert _ledger(env) == (0, [])


BAD = [
    ({"n": 1}, 422, "prompt"),
    ({"prompt": ""}, 422, "prompt"),
    ({"prompt": 3}, 422, "prompt"),
    ({"prompt": "x" * 1001}, 422, "prompt"),
    ({"prompt": "x", "n": 0}, 422, "'n'"),
    ({"prompt": "x", "n": "2"}, 422, "'n'"),
    ({"prompt": "x", "n": 2.5}, 422, "'n'"),
    ({"prompt": "x", "n": True}, 422, "'n'"),
    ({"prompt": "x", "n": 17}, 413, "at most 16"),
    ({"prompt": "x", "seed": -1}, 422, "'seed'"),
    ({"prompt": "x", "seed": 2**63}, 422, "'seed'"),
    ({"prompt": "x", "steps": 0}, 422, "'steps'"),
    ({"prompt": "x", "steps": 10**6}, 422, "'steps'"),
    ({"prompt": "x", "mode": "non-private"}, 422, "'mode'"),
    ({"prompt": "x", "guidance_scale": float("nan")}, 422, "'guidance_scale'"),
    ({"prompt": "x", "extra": 1}, 422, "unknown field"),
    (["x"], 422, "JSON object"),
]


@pytest.mark.parametrize("body, status, needle", BAD, ids=[str(b)[:40] for b, _, _ in BAD])
def test_every_malformed_field_is_refused_with_its_range_and_nothing_charged(env, client_for, body, status, needle):
    import json

    client = client_for(env)
    key = add_key(env)
    raw = json.dumps(body, allow_nan=True)
    r = client.post("/v1/generate", content=raw, headers=_h(key) | {"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "detail"} and needle in r.json()["detail"]
    assert "Traceback" not in r.text
    assert _ledger(env) == (0, [])


def test_wrong_content_type_bad_json_and_oversized_bodies(env, client_for):
    client = client_for(env)
    key = add_key(env)
    r = client.post("/v1/generate", content="prompt=x", headers=_h(key) | {"Content-Type": "text/plain"})
    assert (r.status_code, r.json()["error"]) == (415, "unsupported_media_type")
    r = client.post("/v1/generate", content="{not json", headers=_h(key) | {"Content-Type": "application/json"})
    assert (r.status_code, r.json()["error"]) == (422, "invalid_input")
    r = client.post(
        "/v1/generate",
        content='{"prompt": "' + "x" * 20000 + '"}',
        headers=_h(key) | {"Content-Type": "application/json"},
    )
    assert (r.status_code, r.json()["error"]) == (413, "payload_too_large")
    assert _ledger(env) == (0, [])


def test_unknown_route_and_method_are_json(env, client_for):
    client = client_for(env)
    assert client.get("/v1/nope").json()["error"] == "not_found"
    assert client.get("/v1/generate").json()["error"] == "method_not_allowed"


def test_rate_limit_is_a_per_key_token_bucket(env, client_for):
    client = client_for(env, rate=0.001, burst=2)
    a, b = add_key(env, "a"), add_key(env, "b")
    assert [_gen(client, a).status_code for _ in range(3)] == [200, 200, 429]
    r = _gen(client, a)
    assert r.json()["error"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1
    assert _gen(client, b).status_code == 200  # another key has its own bucket
    assert _ledger(env)[0] == 3


def test_key_quota_is_a_sub_budget_on_the_same_accountant(tiny_model_dir, tmp_path, client_for):
    from .tiny import budget_for

    env = build_env(tmp_path, tiny_model_dir)
    client = client_for(env)
    key = add_key(env, quota=budget_for(tiny_model_dir, 2))
    other = add_key(env, "other")
    assert [_gen(client, key).status_code for _ in range(2)] == [200, 200]
    r = _gen(client, key)
    assert (r.status_code, r.json()["error"]) == (409, "over_budget")
    assert "key" in r.json()["detail"]
    assert client.get("/v1/budget", headers=_h(key)).json()["queries_remaining"] == 0
    assert _ledger(env)[0] == 2  # the refusal charged nothing
    assert _gen(client, other).status_code == 200


def test_dataset_budget_refuses_with_409_and_charges_nothing(tiny_model_dir, tmp_path, client_for):
    env = build_env(tmp_path, tiny_model_dir, queries=2)
    client = client_for(env)
    key = add_key(env)
    assert [_gen(client, key).status_code for _ in range(3)] == [200, 200, 409]
    r = _gen(client, key)
    assert r.json()["error"] == "over_budget" and "dataset" in r.json()["detail"]
    assert _ledger(env)[0] == 2
    kb = next((env["keys"].parent / "keys.db.ledgers").glob("*.db"))
    with Ledger.open(kb) as book:
        assert book.status().queries == 2  # the key was not charged for the refusals either


def test_idempotency_key_replays_result_and_error_and_charges_once_also_after_restart(env, client_for):
    client = client_for(env)
    key = add_key(env)
    body = {"prompt": "a boot", "n": 2, "steps": 2}
    first = _gen(client, key, body, **{"Idempotency-Key": "abc"})
    again = _gen(client, key, body, **{"Idempotency-Key": "abc"})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert _ledger(env)[0] == 1
    other = _gen(client, key, {"prompt": "a hat", "n": 2, "steps": 2}, **{"Idempotency-Key": "abc"})
    assert (other.status_code, other.json()["error"]) == (422, "idempotency_mismatch")
    # A fresh app on the same files (a restart) answers from disk.
    restarted = client_for(env)
    assert _gen(restarted, key, body, **{"Idempotency-Key": "abc"}).json() == first.json()
    assert _ledger(env)[0] == 1


def test_idempotency_replays_an_error_too(tiny_model_dir, tmp_path, client_for):
    env = build_env(tmp_path, tiny_model_dir, queries=1)
    client = client_for(env)
    key = add_key(env)
    assert _gen(client, key).status_code == 200
    e1 = _gen(client, key, **{"Idempotency-Key": "k2"})
    e2 = _gen(client, key, **{"Idempotency-Key": "k2"})
    assert e1.status_code == e2.status_code == 409 and e1.json() == e2.json()


def test_503_until_the_model_is_loaded_and_healthz_says_so(env):
    from fastapi.testclient import TestClient

    from privdiff.service.app import create_app

    gate = threading.Event()

    def loader(book):
        gate.wait(30)
        raise RuntimeError("never loads")

    key = add_key(env)
    with TestClient(create_app(ledger=env["ledger"], keys=env["keys"], loader=loader)) as client:
        assert client.get("/healthz").status_code == 503
        r = _gen(client, key)
        assert (r.status_code, r.json()["error"]) == (503, "not_ready")
        assert client.get("/v1/budget", headers=_h(key)).status_code == 503
        gate.set()


def test_unexpected_errors_are_a_json_500_without_internals(env, client_for):
    client = client_for(env)
    key = add_key(env)
    service = client.app.state.service

    def boom(*a, **k):
        raise RuntimeError("/secret/path neighbour ids 3 17")

    from fastapi.testclient import TestClient

    service.budget = boom
    r = TestClient(client.app, raise_server_exceptions=False).get("/v1/budget", headers=_h(key))
    assert r.status_code == 500 and r.json() == {
        "error": "internal",
        "detail": "internal error; the server log has the details",
    }


def test_budget_and_healthz_answer_while_an_image_is_being_made(env, client_for):
    client = client_for(env)
    key = add_key(env)
    service = client.app.state.service
    started, release = threading.Event(), threading.Event()
    real = service.run_generation

    def slow(*args):
        started.set()
        release.wait(30)
        return real(*args)

    service.run_generation = slow
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", _gen(client, key)))
    t.start()
    try:
        assert started.wait(30)
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/budget", headers=_h(key)).status_code == 200
        assert "r" not in result  # the generation is still running
    finally:
        release.set()
        t.join(60)
    assert result["r"].status_code == 200


def test_openapi_documents_the_api_and_the_page_is_served(env, client_for):
    client = client_for(env)
    spec = client.get("/openapi.json").json()
    assert {"/v1/generate", "/v1/budget", "/v1/history", "/healthz"} <= set(spec["paths"])
    schema = spec["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"prompt", "n", "seed", "steps", "mode"} <= set(schema["properties"])
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert "cdn" not in page.text.lower() and "http" not in client.get("/static/app.js").text.split("fetch")[0]


def test_keys_file_stores_only_salted_hashes(env):
    import sqlite3

    key = add_key(env, "carol")
    secret = key.split("_", 2)[2]
    raw = env["keys"].read_bytes() + b"".join(
        p.read_bytes() for p in env["keys"].parent.glob("keys.db*") if p.is_file()
    )
    assert secret.encode() not in raw and key.encode() not in raw
    add_key(env, "dave")
    conn = sqlite3.connect(env["keys"])
    salts = [r[0] for r in conn.execute("SELECT salt FROM keys")]
    conn.close()
    assert len(set(salts)) == 2 and all(len(s) == 16 for s in salts)
