"""Ledger tests: atomic check-and-charge, persistence, refusal of bad files, concurrency, crashes."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from privdiff.accounting import DPRDMQuery, Ledger, compute_epsilon
from privdiff.errors import InvalidParameter, LedgerError, PrivacyBudgetExceeded

from ._ledger_workers import QUERY

Q = DPRDMQuery(*QUERY)
DELTA = 1e-5


def _budget_for(n: int, accountant: str = "pld") -> float:
    """A budget that admits exactly n copies of Q: halfway between ε(n) and ε(n+1)."""
    lo = compute_epsilon([(Q, n)], DELTA, accountant).epsilon
    hi = compute_epsilon([(Q, n + 1)], DELTA, accountant).epsilon
    assert lo < hi
    return (lo + hi) / 2


def test_create_then_open_round_trips_budget(tmp_path):
    path = tmp_path / "l.sqlite"
    with Ledger.create(path, epsilon=10, delta=DELTA, accountant="rdp", dataset="cifar10") as led:
        assert led.status().queries == 0 and led.status().epsilon_spent == 0.0
    with Ledger.open(path) as led:
        st = led.status()
        assert (st.epsilon_budget, st.delta, st.accountant, st.dataset) == (
            10.0,
            DELTA,
            "rdp",
            "cifar10",
        )
        assert st.epsilon_remaining == 10.0
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_create_refuses_to_overwrite(tmp_path):
    path = tmp_path / "l.sqlite"
    path.write_bytes(b"precious")
    with pytest.raises(LedgerError):
        Ledger.create(path, epsilon=1, delta=DELTA)
    assert path.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["l.sqlite"]  # no temp file left behind


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(epsilon=0, delta=1e-5), "epsilon"),
        (dict(epsilon=1, delta=1.0), "delta"),
        (dict(epsilon=float("nan"), delta=1e-5), "epsilon"),
        (dict(epsilon=1, delta=1e-5, accountant="x"), "accountant"),
    ],
)
def test_create_rejects_bad_budget_without_writing(tmp_path, kwargs, name):
    with pytest.raises(InvalidParameter) as ei:
        Ledger.create(tmp_path / "l.sqlite", **kwargs)
    assert ei.value.name == name
    assert not any(tmp_path.iterdir())


def test_charges_accumulate_and_match_the_accountant(tmp_path):
    led = Ledger.create(tmp_path / "l.sqlite", epsilon=50, delta=DELTA)
    other = DPRDMQuery(0.05, 0.01, 23)
    c1 = led.charge(Q, count=3, request_id="a")
    c2 = led.charge(other, request_id="b")
    c3 = led.charge_many([Q, other, Q], request_id="c")
    expected = compute_epsilon([(Q, 5), (other, 2)], DELTA, "pld").epsilon
    assert c3.epsilon_spent == pytest.approx(expected, rel=1e-12)
    assert c1.epsilon_spent < c2.epsilon_spent < c3.epsilon_spent
    assert (c1.queries_total, c2.queries_total, c3.queries_total) == (3, 4, 7)
    assert c3.queries_charged == 3 and c3.request_id == "c"
    assert c3.epsilon_remaining == pytest.approx(50 - expected)
    hist = led.history()
    assert [(h.request_id, h.count) for h in hist] == [("a", 3), ("b", 1), ("c", 1), ("c", 2)]
    assert hist[-1].query in (Q, other) and hist[-1].epsilon_after == c3.epsilon_spent
    assert [h.request_id for h in led.history(limit=2)] == ["c", "c"]
    st = led.status()
    assert st.queries == 7 and st.groups == 2 and st.epsilon_spent == pytest.approx(expected, rel=1e-12)


def test_preview_charges_nothing(tmp_path):
    led = Ledger.create(tmp_path / "l.sqlite", epsilon=50, delta=DELTA)
    led.charge(Q, count=2)
    before = led.status()
    eps = led.preview(Q, count=5)
    assert eps == pytest.approx(compute_epsilon([(Q, 7)], DELTA).epsilon)
    assert led.status() == before and len(led.history()) == 1


def test_over_budget_charge_records_nothing(tmp_path):
    led = Ledger.create(tmp_path / "l.sqlite", epsilon=_budget_for(4), delta=DELTA)
    led.charge(Q, count=3)
    with pytest.raises(PrivacyBudgetExceeded) as ei:
        led.charge(Q, count=2)
    assert ei.value.queries_requested == 2 and ei.value.epsilon_would_be > ei.value.epsilon_budget
    with pytest.raises(PrivacyBudgetExceeded):
        led.charge_many([Q, Q])
    assert led.status().queries == 3 and len(led.history()) == 1
    led.charge(Q)  # exactly the 4th fits
    with pytest.raises(PrivacyBudgetExceeded):
        led.charge(Q)
    with Ledger.open(led.path) as again:
        assert again.status().queries == 4


@pytest.mark.parametrize(
    "call",
    [
        lambda led: led.charge(Q, count=0),
        lambda led: led.charge(Q, count=1.5),
        lambda led: led.charge((0.2, 0.05, 10)),
        lambda led: led.charge(Q, request_id=""),
        lambda led: led.charge_many([]),
        lambda led: led.charge_many([Q, "x"]),
    ],
)
def test_bad_charge_parameters_are_rejected_before_anything_is_recorded(tmp_path, call):
    led = Ledger.create(tmp_path / "l.sqlite", epsilon=50, delta=DELTA)
    with pytest.raises(InvalidParameter):
        call(led)
    assert led.status().queries == 0


def test_open_missing_file(tmp_path):
    with pytest.raises(LedgerError, match="does not exist"):
        Ledger.open(tmp_path / "nope.sqlite")
    assert not any(tmp_path.iterdir())


def _assert_refused_unchanged(path: Path):
    before = path.read_bytes()
    with pytest.raises(LedgerError):
        Ledger.open(path)
    assert path.read_bytes() == before


def test_open_refuses_garbage_bytes(tmp_path):
    path = tmp_path / "g.sqlite"
    path.write_bytes(os.urandom(4096))
    _assert_refused_unchanged(path)


def test_open_refuses_foreign_sqlite_database(tmp_path):
    path = tmp_path / "f.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    con.execute("INSERT INTO meta VALUES ('epsilon', '10')")
    con.commit()
    con.close()
    _assert_refused_unchanged(path)


def test_open_refuses_truncated_and_corrupted_ledger(tmp_path):
    path = tmp_path / "l.sqlite"
    led = Ledger.create(path, epsilon=50, delta=DELTA, accountant="rdp")
    for i in range(30):  # long request ids spread the history over several pages
        led.charge(Q, request_id=f"padding-request-{i:05d}-" * 60)
    led.close()  # checkpoints the WAL into the main file
    data = path.read_bytes()
    assert len(data) > 3 * 4096
    truncated = tmp_path / "t.sqlite"
    truncated.write_bytes(data[: len(data) // 2])
    _assert_refused_unchanged(truncated)
    corrupt = tmp_path / "c.sqlite"
    middle = len(data) // 2
    corrupt.write_bytes(data[:middle] + os.urandom(4096) + data[middle + 4096 :])
    _assert_refused_unchanged(corrupt)


def test_open_refuses_other_schema_version(tmp_path):
    path = tmp_path / "l.sqlite"
    Ledger.create(path, epsilon=5, delta=DELTA).close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version=99")
    con.commit()
    con.close()
    with pytest.raises(LedgerError, match="schema version 99"):
        Ledger.open(path)


@pytest.mark.integration
def test_processes_racing_never_overrun_the_budget(tmp_path):
    allowed = 10
    path = tmp_path / "race.sqlite"
    Ledger.create(path, epsilon=_budget_for(allowed), delta=DELTA).close()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    from ._ledger_workers import race

    procs = [ctx.Process(target=race, args=(str(path), 8, f"p{i}", results)) for i in range(3)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    successes = sum(ok for _, ok, _ in outcomes)
    assert successes == allowed  # 24 attempts, 10 fit: exactly 10 succeed
    with Ledger.open(path) as led:
        st = led.status()
        assert st.queries == successes and len(led.history()) == successes
        assert st.epsilon_spent <= st.epsilon_budget


@pytest.mark.integration
def test_sigkilled_charger_leaves_an_intact_ledger_with_every_reported_charge(tmp_path):
    path = tmp_path / "kill.sqlite"
    report = tmp_path / "returned.txt"
    Ledger.create(path, epsilon=1e6, delta=DELTA, accountant="rdp").close()
    worker = Path(__file__).with_name("_ledger_workers.py")
    child = subprocess.Popen([sys.executable, str(worker), str(path), str(report)])
    try:
        deadline = time.monotonic() + 120
        target = random.randint(5, 30)
        while time.monotonic() < deadline:
            if report.exists() and len(report.read_text().split()) >= target:
                break
            assert child.poll() is None, "worker died on its own"
            time.sleep(0.01)
        time.sleep(random.uniform(0, 0.05))  # land somewhere inside a charge
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    returned = report.read_text().split()
    assert len(returned) >= 5
    with Ledger.open(path) as led:
        recorded = [h.request_id for h in led.history()]
        assert set(returned) <= set(recorded)
        # At most the one charge in flight may be recorded without having been reported.
        assert len(recorded) - len(returned) in (0, 1)
        assert led.status().queries == len(recorded)
        led.charge(Q, request_id="after-crash")


def test_a_second_open_in_one_process_keeps_the_first_connections_locks(tmp_path):
    """Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's
    included (sqlite.org/howtocorrupt.html §2.2). Ledger.open's raw header read used to do exactly
    that while another Ledger of the same process was open: another process could then take the
    file as unused, checkpoint and delete the WAL, and the first Ledger's next charge went into the
    deleted WAL (found by the service, which opened the dataset ledger twice)."""
    path = tmp_path / "l.sqlite"
    Ledger.create(path, epsilon=50, delta=DELTA).close()
    first = Ledger.open(path)
    first.charge(Q)  # the WAL exists and this process holds its shared lock on the database
    second = Ledger.open(path)  # same process, same file
    # Another process opens and closes the file: with our locks intact it is not the last user,
    # so it must not checkpoint and delete the WAL under us.
    peek = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('select 1 from meta').fetchall(); c.close()"
    )
    subprocess.run([sys.executable, "-c", peek, str(path)], check=True, timeout=60)
    first.charge(Q)
    second.close()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from privdiff.accounting import Ledger; print(Ledger.open(sys.argv[1]).status().queries)",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    first.close()
    assert out.stdout.strip() == "2", "a charge made after the second open is missing for other processes"
