"""The ledger at service speed: charges admitted under a cached ceiling, FIFO admission of writers.

What must hold whatever the cache holds: the ledger's ε (``status``) equals a from-scratch
recomputation of its durable history, no history ever exceeds the budget, a charge is refused
exactly when the exact ε of history + charge exceeds the budget, and a charge's reported ε is
never below the exact ε after it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privdiff.accounting import DPRDMQuery, Ledger, compute_epsilon
from privdiff.accounting import accountants as acc_mod
from privdiff.accounting import ledger as ledger_mod
from privdiff.errors import PrivacyBudgetExceeded

from ._ledger_workers import QUERY

DELTA = 1e-5
ROOT = Path(__file__).resolve().parents[2]
SETTINGS = [DPRDMQuery(*QUERY), DPRDMQuery(0.5, 0.01, 4), DPRDMQuery(0.3, 0.2, 2), DPRDMQuery(0.05, 0.01, 23)]

needs_ofd = pytest.mark.skipif(not ledger_mod._TicketLock.available(), reason="no OFD byte-range locks")


def _from_scratch(counts: dict[DPRDMQuery, int], accountant: str) -> float:
    """ε of the grouped history with every composed result recomputed (no cache carried over)."""
    acc_mod._cached_epsilon.cache_clear()
    acc_mod._composed_pld.cache_clear()
    return compute_epsilon([(q, c) for q, c in counts.items() if c], DELTA, accountant).epsilon


def _counts(led: Ledger) -> dict[DPRDMQuery, int]:
    out: dict[DPRDMQuery, int] = {}
    for r in led.history():
        out[r.query] = out.get(r.query, 0) + r.count
    return out


# ------------------------------------------------------------------ the ceiling never lies


@pytest.mark.integration
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    accountant=st.sampled_from(["pld", "rdp"]),
    divisor=st.sampled_from([2, 4, 16]),
    budget_frac=st.floats(0.2, 1.2),
    steps=st.lists(
        st.tuples(st.integers(0, 1), st.integers(0, len(SETTINGS) - 1), st.integers(1, 12)),
        min_size=2,
        max_size=7,
    ),
)
def test_random_histories_match_a_from_scratch_recomputation(
    tmp_path_factory, monkeypatch, accountant, divisor, budget_frac, steps
):
    # A small divisor puts a reserve on tiny histories, so the ceiling path runs (and for the
    # RDP accountant too, which is exact by default): the machinery must not depend on which.
    monkeypatch.setattr(ledger_mod, "CEILING_RESERVE_DIVISOR", {accountant: divisor})
    path = tmp_path_factory.mktemp("hyp") / "l.sqlite"
    total = {}
    for _, i, c in steps:
        total[SETTINGS[i]] = total.get(SETTINGS[i], 0) + c
    budget = budget_frac * _from_scratch(total, accountant)  # some charges fit, some do not
    ledgers = [Ledger.create(path, epsilon=budget, delta=DELTA, accountant=accountant), None]
    ledgers[1] = Ledger.open(path)  # a second object on the same file: its cache goes stale
    try:
        for who, i, count in steps:
            led, q = ledgers[who], SETTINGS[i]
            before = _counts(led)
            after = dict(before)
            after[q] = after.get(q, 0) + count
            exact_after = _from_scratch(after, accountant)
            try:
                charge = led.charge(q, count=count)
            except PrivacyBudgetExceeded:
                assert exact_after > budget  # refused exactly when it does not fit
                assert _counts(led) == before
            else:
                assert exact_after <= budget
                assert _counts(led) == after
                assert charge.epsilon_spent >= exact_after * (1 - 1e-9)  # an upper bound ...
                assert charge.epsilon_spent <= budget  # ... that was checked against the budget
                assert charge.queries_total == sum(after.values())
            for reader in ledgers:
                st_ = reader.status()
                assert st_.epsilon_spent == pytest.approx(_from_scratch(_counts(reader), accountant), rel=1e-9)
                assert st_.epsilon_spent <= budget
    finally:
        for led in ledgers:
            led.close()


@pytest.mark.integration
def test_epsilon_is_monotone_in_the_counts_across_grid_changes_and_the_rdp_fallback():
    # The ceiling relies on it; this setting changes the PLD grid (0.016 → 0.128) and then falls
    # back to RDP as the count grows.
    q = DPRDMQuery(0.02, 0.5, 2)
    reports = [compute_epsilon([(q, n), (SETTINGS[0], 3)], DELTA, "pld") for n in range(1, 14)]
    assert len({r.pld_discretization for r in reports}) >= 4 and reports[-1].fallback == "rdp"
    eps = [r.epsilon for r in reports]
    assert all(a < b for a, b in zip(eps, eps[1:]))


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_repeat_charges_inside_the_ceiling_do_no_accounting(tmp_path, monkeypatch, accountant):
    monkeypatch.setattr(ledger_mod, "CEILING_RESERVE_DIVISOR", {accountant: 4})
    # No early refresh here (the refresh's own accounting is tested below): the reserve alone.
    monkeypatch.setattr(ledger_mod, "REFRESH_FRACTION", 0.0)
    led = Ledger.create(tmp_path / "l.sqlite", epsilon=1e4, delta=DELTA, accountant=accountant)
    first = led.charge(SETTINGS[0], count=40)  # T = 40: the ceiling reserves 40 // 4 = 10 more
    assert first.epsilon_spent == pytest.approx(_from_scratch({SETTINGS[0]: 50}, accountant), rel=1e-12)
    calls = []
    real = Ledger._epsilon
    monkeypatch.setattr(Ledger, "_epsilon", lambda self, h: calls.append(1) or real(self, h))
    charges = [led.charge(SETTINGS[0]) for _ in range(10)]  # 41 … 50: inside the ceiling
    assert not calls
    assert {c.epsilon_spent for c in charges} == {first.epsilon_spent}
    assert [c.queries_total for c in charges] == list(range(41, 51))
    led.charge(SETTINGS[0])  # 51: outside, a new ceiling
    assert len(calls) == 1
    assert led.status().epsilon_spent == pytest.approx(_from_scratch({SETTINGS[0]: 51}, accountant), rel=1e-12)
    led.close()


def test_rdp_ledgers_stay_exact_on_every_charge(tmp_path):
    led = Ledger.create(tmp_path / "l.sqlite", epsilon=1e4, delta=DELTA, accountant="rdp")
    for n in range(1, 6):
        c = led.charge(SETTINGS[1], count=200)
        assert c.epsilon_spent == pytest.approx(_from_scratch({SETTINGS[1]: 200 * n}, "rdp"), rel=1e-12)
    led.close()


@pytest.mark.integration
def test_the_ceiling_is_rebuilt_after_another_process_charges(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_mod, "CEILING_RESERVE_DIVISOR", {"pld": 4})
    path = tmp_path / "l.sqlite"
    led = Ledger.create(path, epsilon=1e4, delta=DELTA, accountant="pld")
    led.charge(SETTINGS[0], count=41)  # ceiling: 41 + 10
    calls = []
    real = Ledger._epsilon
    monkeypatch.setattr(Ledger, "_epsilon", lambda self, h: calls.append(1) or real(self, h))
    # Another process charges 30 queries of the same setting: far past this object's reserve.
    code = (
        "import sys\nfrom privdiff.accounting import DPRDMQuery, Ledger\n"
        f"led = Ledger.open({str(path)!r})\n"
        f"led.charge(DPRDMQuery(*{QUERY!r}), count=30, request_id='other')\n"
    )
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    charge = led.charge(SETTINGS[0], request_id="mine")
    assert calls  # the stale ceiling missed and a new one was computed from the durable counts
    exact = _from_scratch({SETTINGS[0]: 72}, "pld")
    assert charge.queries_total == 72 and charge.epsilon_spent >= exact * (1 - 1e-9)
    assert led.status().epsilon_spent == pytest.approx(exact, rel=1e-9)
    led.close()


@needs_ofd
@pytest.mark.parametrize("corrupt", [False, True])
def test_a_published_ceiling_serves_other_ledger_objects_unless_corrupt(tmp_path, monkeypatch, corrupt):
    monkeypatch.setattr(ledger_mod, "CEILING_RESERVE_DIVISOR", {"pld": 4})
    path = tmp_path / "l.sqlite"
    a = Ledger.create(path, epsilon=1e4, delta=DELTA, accountant="pld")
    b = Ledger.open(path)
    a.charge(SETTINGS[0], count=40)  # computes and publishes the ceiling 40 + 10
    lock = path.with_name(path.name + "-lock")
    if corrupt:
        data = bytearray(lock.read_bytes())
        blob = ledger_mod._TicketLock._BLOB + 4
        at = data.index(b'"epsilon"', blob) + 12  # a digit of the published ε
        data[at] = ord("1") if data[at] != ord("1") else ord("2")
        lock.write_bytes(bytes(data))
    calls = []
    real = Ledger._epsilon
    monkeypatch.setattr(Ledger, "_epsilon", lambda self, h: calls.append(1) or real(self, h))
    charge = b.charge(SETTINGS[0])
    exact = _from_scratch({SETTINGS[0]: 41}, "pld")
    if corrupt:
        assert calls  # the tampered ceiling fails its checksum: b computes its own
    else:
        assert not calls  # b charged under a's published ceiling, no accounting of its own
        assert charge.epsilon_spent == pytest.approx(_from_scratch({SETTINGS[0]: 50}, "pld"), rel=1e-12)
    assert charge.epsilon_spent >= exact * (1 - 1e-9) and charge.queries_total == 41
    a.close()
    b.close()


# ------------------------------------------------------------------ the early refresh


def _spy_epsilon(monkeypatch) -> list[str]:
    """Record the thread of every ε computation: the charge path runs on the main thread."""
    calls: list[str] = []
    real = Ledger._epsilon
    monkeypatch.setattr(
        Ledger, "_epsilon", lambda self, h: calls.append(threading.current_thread().name) or real(self, h)
    )
    return calls


def _join_refresh(led: Ledger) -> None:
    thread = led._refresh_thread
    if thread is not None:
        thread.join(timeout=120)
        assert not thread.is_alive()


@needs_ofd
def test_a_charge_in_the_refresh_window_never_waits_for_the_recompute(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_mod, "CEILING_RESERVE_DIVISOR", {"pld": 4})
    path = tmp_path / "l.sqlite"
    led = Ledger.create(path, epsilon=1e4, delta=DELTA, accountant="pld")
    first = led.charge(SETTINGS[0], count=40)  # ceiling 40 + 10; refresh once fewer than 5 are left
    # Another Ledger object holds the lease: it is "computing the next ceiling" and never finishes.
    holder = ledger_mod._TicketLock(path.with_name(path.name + "-lock"))
    assert holder.try_lease()
    waited = []
    monkeypatch.setattr(ledger_mod._TicketLock, "wait_lease", lambda self, deadline: waited.append(1))
    calls = _spy_epsilon(monkeypatch)
    charges = [led.charge(SETTINGS[0]) for _ in range(10)]  # 41 … 50: 46 … 50 are inside the window
    _join_refresh(led)
    assert not waited and not calls  # nobody waited for the lease, nobody accounted
    assert led._refresh_thread is not None  # the window was entered: a refresh was tried, found the lease taken
    assert {c.epsilon_spent for c in charges} == {first.epsilon_spent}
    assert [c.queries_total for c in charges] == list(range(41, 51))
    # Truly exhausted: now (and only now) a charge waits for the lease, then computes itself.
    holder.release_lease()
    holder.close()
    charge = led.charge(SETTINGS[0])
    assert waited and calls
    assert charge.epsilon_spent >= _from_scratch({SETTINGS[0]: 51}, "pld") * (1 - 1e-9)
    led.close()


@needs_ofd
def test_the_next_ceiling_is_published_before_the_old_one_runs_out(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_mod, "CEILING_RESERVE_DIVISOR", {"pld": 4})
    path = tmp_path / "l.sqlite"
    a = Ledger.create(path, epsilon=1e4, delta=DELTA, accountant="pld")
    b = Ledger.open(path)
    first = a.charge(SETTINGS[0], count=40)  # ceiling 50
    calls: list[str] = []
    real = Ledger._epsilon
    go = threading.Event()

    def slow(self, history):  # the refresh's recompute does not finish until we say so
        calls.append(threading.current_thread().name)
        if threading.current_thread() is not threading.main_thread():
            assert go.wait(timeout=120)
        return real(self, history)

    monkeypatch.setattr(Ledger, "_epsilon", slow)
    waited = []
    real_wait = ledger_mod._TicketLock.wait_lease
    monkeypatch.setattr(
        ledger_mod._TicketLock, "wait_lease", lambda self, deadline: waited.append(1) or real_wait(self, deadline)
    )
    for _ in range(6):  # 41 … 46: the 46th leaves 4 < 5, and a background thread computes ahead
        a.charge(SETTINGS[0])
    # While the recompute is stuck, both objects keep charging against the old ceiling.
    stuck = [(a, b)[i % 2].charge(SETTINGS[0]) for i in range(4)]  # 47 … 50
    assert {c.epsilon_spent for c in stuck} == {first.epsilon_spent}
    assert calls == ["privdiff-ledger-refresh"] and not waited
    go.set()
    _join_refresh(a)
    published = a._published()
    assert published is not None and published.counts[SETTINGS[0]] >= 46 + 46 // 4
    assert published.epsilon == pytest.approx(_from_scratch(published.counts, "pld"), rel=1e-9)
    calls.clear()
    # Both objects charge past the old ceiling (50) under the new one without any accounting.
    for i in range(6):
        charge = (a, b)[i % 2].charge(SETTINGS[0])
        assert charge.epsilon_spent == published.epsilon
    assert "MainThread" not in calls
    assert a.status().queries == 56
    assert a.status().epsilon_spent == pytest.approx(_from_scratch({SETTINGS[0]: 56}, "pld"), rel=1e-9)
    a.close()
    b.close()


@needs_ofd
def test_the_refresh_reserve_grows_with_the_charge_rate_up_to_its_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_mod, "CEILING_RESERVE_DIVISOR", {"pld": 4})
    led = Ledger.create(tmp_path / "l.sqlite", epsilon=1e4, delta=DELTA, accountant="pld")
    led.charge(SETTINGS[0], count=40)
    for _ in range(5):
        led.charge(SETTINGS[0])
    _join_refresh(led)  # nothing started yet: 45 leaves 5, not below 5
    assert led._refresh_thread is None
    led._recompute_s = 1e6  # a recompute "takes forever" at a nonzero rate: the reserve hits its cap
    led.charge(SETTINGS[0])  # 46
    _join_refresh(led)
    assert led._ceiling.counts[SETTINGS[0]] == 46 + ledger_mod.MAX_RESERVE_SCALE * (46 // 4)
    led.close()


@needs_ofd
def test_near_the_budget_the_refresh_gives_up_and_refusal_stays_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_mod, "CEILING_RESERVE_DIVISOR", {"pld": 4})
    budget = _from_scratch({SETTINGS[0]: 52}, "pld") * (1 + 1e-4)  # room for 52, never for a reserve past it
    led = Ledger.create(tmp_path / "l.sqlite", epsilon=budget, delta=DELTA, accountant="pld")
    led.charge(SETTINGS[0], count=40)  # ceiling 50 fits
    for _ in range(10):
        led.charge(SETTINGS[0])
        _join_refresh(led)
    assert led._ceiling.counts[SETTINGS[0]] == 50  # the refresh found no successor that fits
    led.charge(SETTINGS[0], count=2)  # 52: exact
    with pytest.raises(PrivacyBudgetExceeded):
        led.charge(SETTINGS[0])
    assert led.status().queries == 52 and led.status().epsilon_spent <= budget
    led.close()


_HOLD_LEASE = """
import sys, time
from privdiff.accounting import ledger as m
lock = m._TicketLock(__import__("pathlib").Path(sys.argv[1]))
assert lock.try_lease()
print("held", flush=True)
time.sleep(600)
"""


@needs_ofd
@pytest.mark.integration
def test_a_killed_lease_holder_never_blocks_the_refresh(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_mod, "CEILING_RESERVE_DIVISOR", {"pld": 4})
    path = tmp_path / "l.sqlite"
    led = Ledger.create(path, epsilon=1e4, delta=DELTA, accountant="pld")
    led.charge(SETTINGS[0], count=40)
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LEASE, str(path) + "-lock"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "held"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    calls = _spy_epsilon(monkeypatch)
    for _ in range(6):
        led.charge(SETTINGS[0])
    _join_refresh(led)
    assert calls and "MainThread" not in calls  # the kernel dropped the dead holder's lease
    assert led._ceiling.counts[SETTINGS[0]] > 50
    led.close()


# ------------------------------------------------------------------ first come, first served


def _ticket_counter(lock_path: Path) -> int:
    raw = lock_path.read_bytes()[:8]
    return int.from_bytes(raw, "little") if len(raw) == 8 else 0


@needs_ofd
def test_tickets_are_served_in_the_order_they_were_taken(tmp_path):
    lock_path = tmp_path / "l.sqlite-lock"
    holder = ledger_mod._TicketLock(lock_path)
    first = holder.acquire(time.monotonic() + 30)
    assert first == 0
    order: list[int] = []
    threads = []
    for i in range(1, 5):
        tl = ledger_mod._TicketLock(lock_path)  # its own open file: queues like another process

        def run(tl=tl, i=i):
            t = tl.acquire(time.monotonic() + 60)
            order.append(i)
            tl.release(t)
            tl.close()

        th = threading.Thread(target=run)
        th.start()
        threads.append(th)
        deadline = time.monotonic() + 30
        while _ticket_counter(lock_path) < i + 1:  # wait until thread i holds ticket i
            assert time.monotonic() < deadline
            time.sleep(0.001)
    assert order == []  # all queued behind the holder
    holder.release(first)
    for th in threads:
        th.join(timeout=60)
    assert order == [1, 2, 3, 4]
    holder.close()


_HOLD_TICKET = """
import sys, time
from pathlib import Path
from privdiff.accounting.ledger import _TicketLock
tl = _TicketLock(Path(sys.argv[1]))
print(tl.acquire(time.monotonic() + 60), flush=True)
time.sleep(600)
"""


@needs_ofd
@pytest.mark.integration
@pytest.mark.parametrize("role", ["holder", "waiter"])
def test_a_killed_process_never_blocks_the_queue(tmp_path, role):
    lock_path = tmp_path / "l.sqlite-lock"
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    me = ledger_mod._TicketLock(lock_path)
    mine = me.acquire(time.monotonic() + 30) if role == "waiter" else None  # the child queues behind us
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_TICKET, str(lock_path)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        if role == "holder":
            assert child.stdout.readline().strip() == "0"  # the child holds ticket 0
        else:
            deadline = time.monotonic() + 60
            while _ticket_counter(lock_path) < 2:  # the child holds ticket 1, waiting for ours
                assert time.monotonic() < deadline and child.poll() is None
                time.sleep(0.01)
        got: list[int | None] = []
        other = ledger_mod._TicketLock(lock_path)
        th = threading.Thread(target=lambda: got.append(other.acquire(time.monotonic() + 120)))
        th.start()
        time.sleep(0.2)
        assert not got  # queued behind the child
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        if mine is not None:
            time.sleep(0.2)
            assert not got  # the dead waiter's turn comes after ours: we still hold ticket 0
            me.release(mine)
        th.join(timeout=120)
        assert got and got[0] == 1 + (role == "waiter")
        other.release(got[0])
        other.close()
    finally:
        if child.poll() is None:
            child.kill()
        me.close()


def _charge_until_stopped(path: str, start, stop, counts, slot: int) -> None:
    led = Ledger.open(path)
    led.charge(DPRDMQuery(*QUERY), request_id=f"warm-{slot}")
    counts[slot] += 1
    start.wait()
    while not stop.is_set():
        led.charge(DPRDMQuery(*QUERY), request_id=f"p{slot}")
        counts[slot] += 1
    led.close()


@needs_ofd
@pytest.mark.integration
def test_concurrent_chargers_each_get_their_turn(tmp_path):
    path = tmp_path / "fair.sqlite"
    Ledger.create(path, epsilon=1e6, delta=DELTA, accountant="rdp").close()
    n = 4
    ctx = mp.get_context("spawn")
    start, stop = ctx.Event(), ctx.Event()
    counts = ctx.Array("i", n)
    procs = [ctx.Process(target=_charge_until_stopped, args=(str(path), start, stop, counts, i)) for i in range(n)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 120
    while sum(counts) < n:  # every process has opened the ledger and charged once
        assert time.monotonic() < deadline
        time.sleep(0.01)
    base = list(counts)
    start.set()
    while sum(counts) - sum(base) < 15 * n:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    stop.set()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    got = [c - b for c, b in zip(counts, base)]
    assert min(got) >= 1, got  # nobody starved while the others charged 15 each on average
    with Ledger.open(path) as led:
        assert led.status().queries == sum(counts)
