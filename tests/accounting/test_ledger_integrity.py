"""Ledger hardening: corruption never lowers ε silently, typed errors, stale temporary files,
accounting outside the write lock, and binding a ledger to an index by its fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from privdiff.accounting import DPRDMQuery, Ledger, compute_epsilon
from privdiff.accounting import ledger as ledger_mod
from privdiff.errors import (
    InvalidParameter,
    LedgerCorrupt,
    LedgerError,
    LedgerIndexMismatch,
    PrivacyBudgetExceeded,
)

from ._ledger_workers import QUERY

Q = DPRDMQuery(*QUERY)
DELTA = 1e-5
ROOT = Path(__file__).resolve().parents[2]


def _filled(path: Path, accountant: str = "rdp") -> float:
    """A closed ledger (WAL checkpointed into the file) with a few groups; returns its ε."""
    with Ledger.create(path, epsilon=1e6, delta=DELTA, accountant=accountant, dataset="flip-test") as led:
        led.charge(Q, count=3, request_id="a")
        led.charge(DPRDMQuery(0.5, 0.01, 4), count=7, request_id="b")
        led.charge_many([Q, DPRDMQuery(0.3, 0.2, 2)], request_id="c")
        eps = led.status().epsilon_spent
    assert not path.with_name(path.name + "-wal").exists()
    return eps


def _eps_after_flip(data: bytes, offset: int, where: Path) -> float | None:
    """ε reported by a copy of the ledger with one byte flipped; None when it is refused (typed)."""
    flipped = bytearray(data)
    flipped[offset] ^= 0xFF
    where.write_bytes(bytes(flipped))
    for suffix in ("-wal", "-shm"):
        where.with_name(where.name + suffix).unlink(missing_ok=True)
    try:
        with Ledger.open(where) as led:
            st = led.status()
            assert (st.epsilon_budget, st.delta, st.accountant) == (1e6, DELTA, "rdp"), offset
            return st.epsilon_spent
    except LedgerError:  # LedgerCorrupt included: a typed refusal
        return None


def _check_flips(tmp_path: Path, offsets) -> dict[str, int]:
    path = tmp_path / "l.sqlite"
    eps = _filled(path)
    data = path.read_bytes()
    outcome = {"unchanged": 0, "refused": 0}
    for off in offsets:
        if off >= len(data):
            continue
        got = _eps_after_flip(data, off, tmp_path / "flipped.sqlite")
        # Never a lower (or otherwise different) ε silently, never an untyped exception.
        assert got is None or got == eps, f"flip at byte {off}: ε {eps} -> {got}"
        outcome["unchanged" if got is not None else "refused"] += 1
    return outcome


@pytest.mark.integration
def test_byte_flips_never_change_epsilon_silently(tmp_path):
    # Every byte of the header and of each page's cell area at the end (where SQLite stores the
    # records: meta, charges, query_groups), plus a stride over the rest of the file.
    page = 4096
    size = _filled(tmp_path / "probe.sqlite") and (tmp_path / "probe.sqlite").stat().st_size
    offsets = set(range(0, 100, 3))
    for start in range(0, size, page):
        offsets |= set(range(start + page - 240, start + page, 3))  # records fill pages from the end
        offsets |= set(range(start, start + page, 127))
    outcome = _check_flips(tmp_path, sorted(offsets))
    assert outcome["refused"] > 20 and outcome["unchanged"] > 20, outcome


@pytest.mark.slow
def test_every_single_byte_flip_leaves_epsilon_or_is_refused(tmp_path):
    size = _filled(tmp_path / "probe.sqlite") and (tmp_path / "probe.sqlite").stat().st_size
    _check_flips(tmp_path, range(size))


def _sql(path: Path, *statements: str) -> None:
    con = sqlite3.connect(path)
    for s in statements:
        con.execute(s)
    con.commit()
    con.close()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE query_groups SET count = count - 1 WHERE count > 1",  # fewer queries: lower ε
        "UPDATE query_groups SET sigma = sigma * 2",  # more noise: lower ε
        "DELETE FROM query_groups WHERE k = 4",
        "UPDATE charges SET count = count + 1 WHERE request_id = 'b'",
        "DELETE FROM charges WHERE request_id = 'a'",
    ],
)
def test_history_that_disagrees_with_the_charges_is_refused(tmp_path, statement):
    path = tmp_path / "l.sqlite"
    _filled(path)
    _sql(path, statement)
    with pytest.raises(LedgerCorrupt, match="disagrees with its per-charge records"):
        Ledger.open(path)


def test_status_rechecks_the_history_of_an_open_ledger(tmp_path):
    path = tmp_path / "l.sqlite"
    _filled(path)
    with Ledger.open(path) as led:
        _sql(path, "UPDATE query_groups SET count = 1")
        with pytest.raises(LedgerCorrupt):
            led.status()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE meta SET value = '0.001' WHERE key = 'delta'",  # a larger δ lowers ε
        "UPDATE meta SET value = '1e9' WHERE key = 'epsilon'",  # a larger budget
        "UPDATE meta SET value = 'paper' WHERE key = 'accountant'",
        "UPDATE meta SET value = '" + "0" * 64 + "' WHERE key = 'index'",  # re-binding
        "DELETE FROM meta WHERE key = 'checksum'",
    ],
)
def test_metadata_is_protected_by_its_checksum(tmp_path, statement):
    path = tmp_path / "l.sqlite"
    _filled(path)
    _sql(path, statement)
    with pytest.raises(LedgerCorrupt, match="checksum"):
        Ledger.open(path)


def _make_schema_1(path: Path, **meta_updates: str) -> None:
    """Turn a fresh ledger into what privdiff wrote before schema 2 (no checksum, no index)."""
    _sql(
        path,
        "DELETE FROM meta WHERE key IN ('checksum', 'index')",
        "UPDATE meta SET value = '1' WHERE key = 'schema_version'",
        *(f"UPDATE meta SET value = {v!r} WHERE key = {k!r}" for k, v in meta_updates.items()),
        "PRAGMA user_version=1",
    )


@pytest.mark.parametrize(
    "value, match",
    [("yesterday", "invalid metadata"), ("nan", "invalid metadata")],
)
def test_unparseable_metadata_is_a_typed_error(tmp_path, value, match):
    path = tmp_path / "l.sqlite"
    _filled(path)
    _make_schema_1(path, created=value)  # schema 1: no checksum to catch it first
    with pytest.raises(LedgerError, match=match):
        Ledger.open(path)


def test_invalid_utf8_in_the_metadata_is_a_typed_error(tmp_path):
    path = tmp_path / "l.sqlite"
    _filled(path)
    _make_schema_1(path)
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = CAST(x'fffe41' AS TEXT) WHERE key = 'dataset'")
    con.commit()
    con.close()
    with pytest.raises(LedgerError):
        Ledger.open(path)


def test_schema_1_ledgers_still_open_and_charge(tmp_path):
    path = tmp_path / "old.sqlite"
    _filled(path)
    _make_schema_1(path)
    with Ledger.open(path) as led:
        assert led.index_fingerprint == ""
        before = led.status().queries
        led.charge(Q)
        assert led.status().queries == before + 1


# ------------------------------------------------------------------ stale temporary files


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.urandom(16).hex()}.tmp")


@pytest.mark.integration
def test_a_create_killed_midway_leaves_a_temp_file_the_next_create_removes(tmp_path):
    path = tmp_path / "l.sqlite"
    # The child dies exactly where a crash would hurt: the file is built, not yet linked into place.
    code = (
        "import os, signal\n"
        "os.link = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from privdiff.accounting import Ledger\n"
        f"Ledger.create({str(path)!r}, epsilon=1.0, delta=1e-5)\n"
    )
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and not path.exists()
    old = time.time() - 2 * ledger_mod.STALE_TMP_S
    os.utime(leftovers[0], (old, old))
    Ledger.create(path, epsilon=1.0, delta=1e-5).close()
    assert not leftovers[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.sqlite"]


def test_only_stale_unowned_temp_files_of_this_ledger_are_removed(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    path = tmp_path / "l.sqlite"
    Ledger.create(path, epsilon=1.0, delta=1e-5).close()
    old = time.time() - 2 * ledger_mod.STALE_TMP_S
    stale, stale_journal, fresh, owned = (_temp_name(path) for _ in range(4))
    stale_journal = stale_journal.with_name(stale_journal.name + "-journal")
    others = [
        tmp_path / ".other.sqlite.0123456789abcdef0123456789abcdef.tmp",
        tmp_path / ".l.sqlite.notatemp.tmp",
        tmp_path / "l.sqlite.tmp",
    ]
    for p in [stale, stale_journal, fresh, owned, *others]:
        p.write_bytes(b"x")
        if p is not fresh:
            os.utime(p, (old, old))
    fd = os.open(owned, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a live creator (stopped for a long time) holds it
    try:
        Ledger.open(path).close()
    finally:
        os.close(fd)
    assert not stale.exists() and not stale_journal.exists()
    assert fresh.exists() and owned.exists() and all(p.exists() for p in others)


# ------------------------------------------------------------------ accounting outside the lock


def _budget_for(n: int) -> float:
    lo = compute_epsilon([(Q, n)], DELTA, "rdp").epsilon
    hi = compute_epsilon([(Q, n + 1)], DELTA, "rdp").epsilon
    return (lo + hi) / 2


def test_candidate_is_accounted_outside_the_write_lock(tmp_path, monkeypatch):
    led = Ledger.create(tmp_path / "l.sqlite", epsilon=50, delta=DELTA, accountant="rdp")
    in_txn = []
    real = Ledger._epsilon

    def spy(self, history):
        in_txn.append(self._conn.in_transaction)
        return real(self, history)

    monkeypatch.setattr(Ledger, "_epsilon", spy)
    led.charge(Q, count=2)
    assert in_txn == [False]  # one accounting, with no transaction (so no write lock) open
    led.close()


def test_a_charge_committed_meanwhile_forces_a_recheck_and_the_budget_holds(tmp_path, monkeypatch):
    path = tmp_path / "l.sqlite"
    led = Ledger.create(path, epsilon=_budget_for(1), delta=DELTA, accountant="rdp")  # room for ONE query
    other = Ledger.open(path)
    real = Ledger._epsilon
    interleaved = []

    def racing(self, history):
        eps = real(self, history)
        if self is led and not interleaved:
            interleaved.append(other.charge(Q, request_id="other"))  # commits between read and lock
        return eps

    monkeypatch.setattr(Ledger, "_epsilon", racing)
    with pytest.raises(PrivacyBudgetExceeded):
        led.charge(Q, request_id="mine")
    monkeypatch.setattr(Ledger, "_epsilon", real)
    assert [r.request_id for r in led.history()] == ["other"]
    assert led.status().queries == 1
    led.close()
    other.close()


def test_under_constant_interference_a_charge_falls_back_to_accounting_under_the_lock(tmp_path, monkeypatch):
    path = tmp_path / "l.sqlite"
    led = Ledger.create(path, epsilon=1e6, delta=DELTA, accountant="rdp")
    other = Ledger.open(path)
    real = Ledger._epsilon
    locked = []

    def racing(self, history):
        if self is led:
            locked.append(self._conn.in_transaction)
            if not self._conn.in_transaction:
                other.charge(Q, request_id="other")
        return real(self, history)

    monkeypatch.setattr(Ledger, "_epsilon", racing)
    charge = led.charge(Q, count=5, request_id="mine")
    monkeypatch.setattr(Ledger, "_epsilon", real)
    assert locked == [False] * ledger_mod.OPTIMISTIC_ATTEMPTS + [True]
    n_other = ledger_mod.OPTIMISTIC_ATTEMPTS
    assert charge.queries_total == n_other + 5 == led.status().queries
    assert charge.epsilon_spent == pytest.approx(compute_epsilon([(Q, n_other + 5)], DELTA, "rdp").epsilon)
    led.close()
    other.close()


# ------------------------------------------------------------------ binding to an index


def _index(tmp_path: Path, name: str, seed: int):
    from privdiff.retrieval import build_index

    rows = np.random.default_rng(seed).normal(size=(12, 8))
    return build_index(tmp_path / name, rows, space_id="test/v1", source=f"folder:/{name}")


def test_a_bound_ledger_accepts_its_index_by_any_path_and_refuses_another(tmp_path, monkeypatch):
    from privdiff.retrieval import DPRetriever, load_index

    a, b = _index(tmp_path, "a", 0), _index(tmp_path, "b", 1)
    expected = hashlib.sha256((tmp_path / "a" / "manifest.json").read_bytes()).hexdigest()
    assert a.fingerprint == expected
    path = tmp_path / "l.sqlite"
    Ledger.create(path, epsilon=5, delta=DELTA, index_fingerprint=a.fingerprint).close()
    monkeypatch.chdir(tmp_path)
    with Ledger.open(path) as led:
        assert led.index_fingerprint == a.fingerprint and led.status().index == a.short_fingerprint
        for spelling in ("a", "./a", str(tmp_path / "a"), str(tmp_path / "b" / ".." / "a")):
            assert DPRetriever(load_index(spelling), k=2, sigma=0.5, sample_rate=0.5, ledger=led).k == 2
        with pytest.raises(LedgerIndexMismatch, match=b.short_fingerprint):
            DPRetriever(b, k=2, sigma=0.5, sample_rate=0.5, ledger=led)
        assert led.status().queries == 0


def test_an_old_ledger_naming_its_index_by_a_relative_path_accepts_the_absolute_one(tmp_path, monkeypatch):
    from privdiff.retrieval import DPRetriever, load_index

    _index(tmp_path, "a", 0)
    b = _index(tmp_path, "b", 1)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "l.sqlite"
    Ledger.create(path, epsilon=5, delta=DELTA, dataset="a").close()
    _make_schema_1(path)
    with Ledger.open(path) as led:
        assert DPRetriever(load_index(tmp_path / "a"), k=2, sigma=0.5, sample_rate=0.5, ledger=led).k == 2
        with pytest.raises(LedgerError, match="budget init"):
            DPRetriever(b, k=2, sigma=0.5, sample_rate=0.5, ledger=led)


def test_bind_index_upgrades_an_old_ledger_and_refuses_to_rebind(tmp_path):
    a, b = _index(tmp_path, "a", 0), _index(tmp_path, "b", 1)
    path = tmp_path / "l.sqlite"
    _filled(path)
    _make_schema_1(path)
    with Ledger.open(path) as led:
        queries = led.status().queries
        led.bind_index(a.fingerprint)
        led.bind_index(a.fingerprint)  # idempotent
        with pytest.raises(LedgerIndexMismatch):
            led.bind_index(b.fingerprint)
        with pytest.raises(InvalidParameter):
            led.bind_index("not-a-fingerprint")
    with Ledger.open(path) as led:
        assert led.index_fingerprint == a.fingerprint and led.status().queries == queries
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == ledger_mod.SCHEMA_VERSION
    con.close()


def test_create_rejects_a_malformed_fingerprint(tmp_path):
    with pytest.raises(InvalidParameter, match="index_fingerprint"):
        Ledger.create(tmp_path / "l.sqlite", epsilon=1, delta=DELTA, index_fingerprint="abc")
    assert list(tmp_path.iterdir()) == []


def test_budget_init_with_index_binds_and_status_shows_the_short_fingerprint(tmp_path, capsys):
    from privdiff.cli import main

    a, b = _index(tmp_path, "a", 0), _index(tmp_path, "b", 1)
    path = tmp_path / "l.sqlite"
    assert (
        main(
            [
                "budget",
                "init",
                str(path),
                "--epsilon",
                "5",
                "--delta",
                "1e-5",
                "--index",
                str(tmp_path / "a"),
                "--json",
            ]
        )
        == 0
    )
    created = json.loads(capsys.readouterr().out)
    assert created["index"] == a.short_fingerprint
    assert main(["budget", "status", str(path)]) == 0
    out = capsys.readouterr().out
    assert a.short_fingerprint in out and a.fingerprint not in out
    with Ledger.open(path) as led:
        assert led.index_fingerprint == a.fingerprint
    # an old ledger is bound after the fact with `budget bind`; a bound one is not re-bound
    old = tmp_path / "old.sqlite"
    Ledger.create(old, epsilon=5, delta=DELTA).close()
    _make_schema_1(old)
    assert main(["budget", "bind", str(old), "--index", str(tmp_path / "b")]) == 0
    assert main(["budget", "bind", str(old), "--index", str(tmp_path / "a")]) != 0
    with Ledger.open(old) as led:
        assert led.index_fingerprint == b.fingerprint


def test_budget_status_on_a_corrupt_ledger_is_a_one_line_typed_error(tmp_path, capsys):
    from privdiff.cli import main

    path = tmp_path / "l.sqlite"
    _filled(path)
    _sql(path, "UPDATE query_groups SET count = 1")
    code = main(["budget", "status", str(path)])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "corrupt" in err
