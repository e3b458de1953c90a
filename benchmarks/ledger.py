"""Privacy ledger at service speed: charges against a plain SQLite transaction, fairness, queries per budget.

Everything is measured in one run and reported as ratios against a baseline from the same run,
because absolute times on a shared machine say little (this one's disk takes ~5 ms per fsync).

1. **Single process.** One ledger is filled with ``--history`` queries over the 10 (σ, q, k)
   settings below (through the public ``charge_many``), then ``--charges`` single charges are
   timed on it, blocks of them interleaved with blocks of a *plain SQLite transaction* (WAL,
   ``synchronous=FULL``, ``BEGIN IMMEDIATE``, one insert, commit: the least a durable charge can
   cost) so machine load hits both alike. Charges of one setting and of random settings, under
   the ``pld`` ledger (admitted under a cached ceiling) and the ``rdp`` ledger (exact ε on every
   charge), plus a few charges with the ceiling switched off (exact PLD on every charge: what a
   charge cost before). Reports charges/s and the ratio of the median charge latency to the
   median plain transaction; and how far the reported ε of the last charge sits above the exact
   ε of the ledger (``status``).
2. **Concurrent chargers.** ``--chargers`` processes charge a copy of the filled ledger for
   ``--duration`` s after a common start, with the FIFO ticket lock and without it (SQLite's lock
   alone, as before). Per-process charge counts, max/min, and p50/p99/max of the time a charge
   call takes (queueing included).
3. **Queries per budget.** The largest number of queries with ε ≤ ``--target-epsilon`` for the
   CIFAR-10 setting of the paper's figure (σ = 0.05, q = 0.01, k = 23, δ = 1/50,000) under the
   ``paper`` accountant (Opacus 1.4 RDP, what the authors used), ``rdp`` and ``pld``.

Usage::

    python benchmarks/ledger.py              # 10^5 queries of history, 8 chargers × 10 s
    python benchmarks/ledger.py --quick      # CI smoke: 10^3 queries, 4 chargers × 2 s

Writes ``--out`` (JSON, settings included) and a PNG beside it (same name, ``.png``).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (σ, q, k) settings mixed in the long history: the settings of the paper's figures and sweeps.
GROUPS = [
    (0.05, 0.01, 23),
    (0.04, 0.0013218, 20),
    (0.07, 0.01, 17),
    (0.05, 0.0055, 20),
    (0.05, 0.0019, 20),
    (0.2, 0.01, 18),
    (0.1, 0.005, 10),
    (0.05, 0.002, 30),
    (0.06, 0.01, 20),
    (0.08, 0.003, 15),
]
DELTA = 1e-6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--history", type=int, default=100_000, help="queries recorded before timing")
    p.add_argument("--batch", type=int, default=10_000, help="queries per charge_many while filling")
    p.add_argument("--charges", type=int, default=2000, help="timed single charges per scenario")
    p.add_argument("--block", type=int, default=100, help="charges (and plain transactions) per interleaved block")
    p.add_argument("--exact-charges", type=int, default=10, help="timed charges with the ceiling switched off")
    p.add_argument("--target-epsilon", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chargers", type=int, default=8, help="concurrent charging processes")
    p.add_argument("--duration", type=float, default=10.0, help="seconds the concurrent chargers run")
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI size: 1,000 queries of history, 200 charges, 4 chargers × 2 s",
    )
    p.add_argument("--out", default=str(ROOT / "docs/results/scale/ledger.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.history, args.batch, args.charges, args.block, args.exact_charges = 1000, 250, 200, 50, 3
        args.chargers, args.duration = 4, 2.0
    return args


# ------------------------------------------------------------------ single process


class Plain:
    """The baseline: one durable SQLite write transaction with the ledger's settings."""

    def __init__(self, path: Path):
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute(
            "CREATE TABLE charges (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL, request_id TEXT,"
            " sigma REAL, sample_rate REAL, k INTEGER, count INTEGER, epsilon_after REAL)"
        )

    def __call__(self, i: int) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(
            "INSERT INTO charges(time, request_id, sigma, sample_rate, k, count, epsilon_after)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (time.time(), f"plain-{i}", 0.05, 0.01, 23, 1, 1.0),
        )
        self.conn.execute("COMMIT")


def _fill(path: Path, accountant: str, history: int, batch: int, seed: int) -> float:
    from privdiff.accounting import DPRDMQuery, Ledger

    rng = random.Random(seed)
    queries = [DPRDMQuery(*g) for g in GROUPS]
    started = time.perf_counter()
    with Ledger.create(path, epsilon=1e9, delta=DELTA, accountant=accountant, dataset="benchmark") as led:
        done = 0
        while done < history:
            n = min(batch, history - done)
            led.charge_many(rng.choices(queries, k=n), request_id=f"fill-{done}")
            done += n
    return time.perf_counter() - started


def _summary(times: list[float]) -> dict:
    t = sorted(times)
    return {
        "n": len(t),
        "median_ms": 1e3 * statistics.median(t),
        "p99_ms": 1e3 * t[min(len(t) - 1, int(0.99 * len(t)))],
        "max_ms": 1e3 * t[-1],
        "per_s": len(t) / sum(t),
    }


def _single(path: Path, plain: Plain, args: argparse.Namespace, mixed: bool) -> tuple[dict, dict]:
    """Time args.charges single charges on `path`, in blocks interleaved with plain transactions."""
    from privdiff.accounting import DPRDMQuery, Ledger

    rng = random.Random(args.seed + mixed)
    queries = [DPRDMQuery(*g) for g in GROUPS]
    charge_t, plain_t = [], []
    with Ledger.open(path) as led:
        done = 0
        while done < args.charges:
            n = min(args.block, args.charges - done)
            for i in range(n):
                q = rng.choice(queries) if mixed else queries[0]
                t0 = time.perf_counter()
                last = led.charge(q, request_id=f"timed-{done + i}")
                charge_t.append(time.perf_counter() - t0)
            for _ in range(n):
                t0 = time.perf_counter()
                plain(len(plain_t))
                plain_t.append(time.perf_counter() - t0)
            done += n
        st = led.status()
    out = _summary(charge_t)
    out["epsilon_reported_last"] = last.epsilon_spent
    out["epsilon_exact"] = st.epsilon_spent
    out["reported_over_exact"] = last.epsilon_spent / st.epsilon_spent
    out["queries"] = st.queries
    return out, _summary(plain_t)


def _exact_pld(path: Path, n: int) -> dict:
    """Charges with the ceiling switched off: the exact PLD on every charge (the cost before)."""
    from privdiff.accounting import DPRDMQuery, Ledger
    from privdiff.accounting import ledger as ledger_mod

    saved = dict(ledger_mod.CEILING_RESERVE_DIVISOR)
    ledger_mod.CEILING_RESERVE_DIVISOR.clear()
    try:
        times = []
        with Ledger.open(path) as led:
            for i in range(n):
                t0 = time.perf_counter()
                led.charge(DPRDMQuery(*GROUPS[0]), request_id=f"exact-{i}")
                times.append(time.perf_counter() - t0)
    finally:
        ledger_mod.CEILING_RESERVE_DIVISOR.update(saved)
    return _summary(times)


# ------------------------------------------------------------------ concurrent chargers


def _charger(path: str, tickets: bool, duration: float, ready, start, out) -> None:
    """Child process: warm up (one charge of each setting it uses builds the ceiling: the first charge
    of a setting no ceiling reserves must wait for an exact PLD), then charge until `duration` ends."""
    from privdiff.accounting import DPRDMQuery, Ledger
    from privdiff.accounting import ledger as ledger_mod

    if not tickets:  # SQLite's lock alone, as before the ticket lock
        ledger_mod._TicketLock.available = staticmethod(lambda: False)
    rng = random.Random()
    queries = [DPRDMQuery(*g) for g in GROUPS]
    led = Ledger.open(path)
    led.charge_many(queries[:2], request_id="warm")
    ready.put(1)
    start.wait()
    end = time.perf_counter() + duration
    times = []
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        led.charge(rng.choice(queries[:2]))
        times.append(time.perf_counter() - t0)
    led.close()
    out.put(times)


def _concurrent(path: Path, args: argparse.Namespace, tickets: bool) -> dict:
    import multiprocessing as mp

    # spawn, not fork: a forked child would inherit (and on exit finalise) the parent's SQLite connections.
    ctx = mp.get_context("spawn")
    ready, start, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_charger, args=(str(path), tickets, args.duration, ready, start, out))
        for _ in range(args.chargers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=900)
    start.set()
    per_proc = [out.get(timeout=900 + args.duration) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a charger exited with {p.exitcode}")
    counts = sorted(len(t) for t in per_proc)
    summary = _summary([t for ts in per_proc for t in ts])
    return {
        "tickets": tickets,
        "per_process_counts": counts,
        "max_over_min": counts[-1] / max(counts[0], 1),
        "min_count": counts[0],
        "total_per_s": sum(counts) / args.duration,
        "wait_p50_ms": summary["median_ms"],
        "wait_p99_ms": summary["p99_ms"],
        "wait_max_ms": summary["max_ms"],
    }


# ------------------------------------------------------------------ report


def _plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    single = result["single_process"]
    labels = [
        "plain SQLite\ntransaction",
        "pld, one\nsetting",
        "pld, mixed\nsettings",
        "rdp, mixed",
        "pld exact\n(before)",
    ]
    vals = [
        single["plain"]["median_ms"],
        single["pld_one_setting"]["median_ms"],
        single["pld_mixed"]["median_ms"],
        single["rdp_mixed"]["median_ms"],
        single["pld_exact_every_charge"]["median_ms"],
    ]
    ax1.bar(labels, vals, color=["grey", "C0", "C0", "C2", "C3"])
    ax1.set_yscale("log")
    ax1.set_ylabel("median latency per charge (ms, log)")
    ax1.set_title(f"one process, {result['history']['queries']:,} queries over {len(GROUPS)} settings")
    for mode, colour in (("without_tickets", "C3"), ("with_tickets", "C0")):
        c = result["concurrent"][mode]
        ax2.plot(
            range(1, len(c["per_process_counts"]) + 1),
            c["per_process_counts"],
            "o-",
            color=colour,
            label=f"{mode.replace('_', ' ')}: max/min {c['max_over_min']:.2g}, p99 {c['wait_p99_ms']:.0f} ms",
        )
    ax2.set_xlabel("process (sorted by charges)")
    ax2.set_ylabel(f"charges in {result['settings']['duration']:g} s")
    ax2.set_ylim(bottom=0)
    ax2.set_title(f"{result['settings']['chargers']} concurrent chargers (pld)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from privdiff.accounting import solve_queries

    console = Console()
    with tempfile.TemporaryDirectory(prefix="privdiff-bench-ledger-") as tmp_s:
        tmp = Path(tmp_s)
        fill_s = {acc: _fill(tmp / f"{acc}.sqlite", acc, args.history, args.batch, args.seed) for acc in ("pld", "rdp")}
        console.print(f"filled {args.history:,} queries: " + ", ".join(f"{a} {s:.1f} s" for a, s in fill_s.items()))

        def fresh(acc: str, name: str) -> Path:
            dst = tmp / f"{name}.sqlite"
            shutil.copyfile(tmp / f"{acc}.sqlite", dst)
            return dst

        plain = Plain(tmp / "plain.sqlite")
        single, plains = {}, []
        for key, acc, mixed in (
            ("pld_one_setting", "pld", False),
            ("pld_mixed", "pld", True),
            ("rdp_mixed", "rdp", True),
        ):
            single[key], p = _single(fresh(acc, key), plain, args, mixed)
            plains.append(p)
        single["pld_exact_every_charge"] = _exact_pld(fresh("pld", "exact"), args.exact_charges)
        plain_ms = statistics.median(p["median_ms"] for p in plains)
        # Mean-based like the charges' own rate: every transaction of every block counts.
        plain_per_s = sum(p["n"] for p in plains) / sum(p["n"] / p["per_s"] for p in plains)
        single["plain"] = {"median_ms": plain_ms, "per_s": plain_per_s, "blocks": plains}
        for key in ("pld_one_setting", "pld_mixed", "rdp_mixed", "pld_exact_every_charge"):
            single[key]["latency_over_plain"] = single[key]["median_ms"] / plain_ms
            single[key]["plain_rate_over_charge_rate"] = plain_per_s / single[key]["per_s"]
        concurrent = {
            "with_tickets": _concurrent(fresh("pld", "conc-t"), args, tickets=True),
            "without_tickets": _concurrent(fresh("pld", "conc-n"), args, tickets=False),
        }

    cifar = dict(sigma=0.05, sample_rate=0.01, k=23)
    delta = 1 / 50_000
    answerable = {
        acc: solve_queries(args.target_epsilon, delta, accountant=acc, **cifar) for acc in ("paper", "rdp", "pld")
    }
    ratio_q = answerable["pld"].value / answerable["paper"].value

    t1 = Table(title=f"One process, {args.history:,} queries recorded over {len(GROUPS)} settings")
    for col in (
        "charges",
        "per s",
        "plain/s ÷ this",
        "median (ms)",
        "p99 (ms)",
        "median ÷ plain",
        "reported ε ÷ exact",
    ):
        t1.add_column(col, justify="right")
    t1.add_row("plain SQLite transaction", f"{single['plain']['per_s']:.0f}", "1.00", f"{plain_ms:.2f}", "", "1.00", "")
    for key, label in (
        ("pld_one_setting", "pld, one setting"),
        ("pld_mixed", "pld, random settings"),
        ("rdp_mixed", "rdp, random settings"),
        ("pld_exact_every_charge", "pld, exact every charge (before)"),
    ):
        s = single[key]
        t1.add_row(
            label,
            f"{s['per_s']:.0f}",
            f"{s['plain_rate_over_charge_rate']:.2f}",
            f"{s['median_ms']:.2f}",
            f"{s['p99_ms']:.1f}",
            f"{s['latency_over_plain']:.2f}",
            f"{s['reported_over_exact']:.4f}" if "reported_over_exact" in s else "",
        )
    console.print(t1)
    speedup = single["pld_exact_every_charge"]["median_ms"] / single["pld_mixed"]["median_ms"]
    console.print(
        f"ratio charge / plain transaction (median latency): pld one setting "
        f"[bold]{single['pld_one_setting']['latency_over_plain']:.2f}×[/bold], pld mixed "
        f"[bold]{single['pld_mixed']['latency_over_plain']:.2f}×[/bold], rdp "
        f"[bold]{single['rdp_mixed']['latency_over_plain']:.2f}×[/bold]; "
        f"exact PLD / ceiling: [bold]{speedup:.0f}×[/bold]"
    )
    console.print(
        "ratio plain transactions/s ÷ charges/s (means, recomputed ceilings included): "
        + ", ".join(
            f"{k} [bold]{single[k]['plain_rate_over_charge_rate']:.2f}×[/bold]"
            for k in ("pld_one_setting", "pld_mixed", "rdp_mixed")
        )
    )
    t2 = Table(title=f"{args.chargers} concurrent chargers × {args.duration:g} s (pld)")
    for col in ("admission", "charges per process", "max/min", "total/s", "p50 (ms)", "p99 (ms)", "max (ms)"):
        t2.add_column(col, justify="right")
    for key, label in (("with_tickets", "FIFO tickets"), ("without_tickets", "SQLite lock alone")):
        c = concurrent[key]
        t2.add_row(
            label,
            " ".join(map(str, c["per_process_counts"])),
            f"{c['max_over_min']:.2f}",
            f"{c['total_per_s']:.0f}",
            f"{c['wait_p50_ms']:.1f}",
            f"{c['wait_p99_ms']:.1f}",
            f"{c['wait_max_ms']:.0f}",
        )
    console.print(t2)
    console.print(
        f"ratio max/min charges per process: tickets [bold]{concurrent['with_tickets']['max_over_min']:.2f}[/bold], "
        f"SQLite lock alone [bold]{concurrent['without_tickets']['max_over_min']:.2f}[/bold]"
    )
    t3 = Table(
        title=f"Queries answerable at ε ≤ {args.target_epsilon:g}, CIFAR-10 setting (σ=0.05, q=0.01, k=23, δ=1/50,000)"
    )
    for col in ("accountant", "queries", "ε at that T"):
        t3.add_column(col, justify="right")
    for acc, cal in answerable.items():
        t3.add_row(acc, f"{cal.value:,}", f"{cal.epsilon:.4f}")
    console.print(t3)
    console.print(f"ratio pld / paper: [bold]{ratio_q:.2f}×[/bold]")

    result = {
        "settings": dict(vars(args)),
        "groups": GROUPS,
        "history": {"queries": args.history, "settings": len(GROUPS), "fill_seconds": fill_s},
        "single_process": single,
        "ratio_exact_pld_over_ceiling": speedup,
        "concurrent": concurrent,
        "queries_at_target": {acc: cal.to_dict() for acc, cal in answerable.items()},
        "ratio_pld_over_paper_queries": ratio_q,
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "sqlite": sqlite3.sqlite_version,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    _plot(result, out.with_suffix(".png"))
    console.print(f"wrote {out} and {out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
