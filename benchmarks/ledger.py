"""Privacy ledger: charge latency with a long history, and queries per budget (paper vs PLD).

1. **Charge latency.** A DP-RDM server charges the ledger before every release, so a charge must
   stay cheap as the history grows. This fills one ledger with ``--history`` queries spread over
   several (σ, q, k) groups (through the public ``charge_many``, in batches), then times
   ``Ledger.charge`` on it and on an empty ledger in the same run (median of ``--repeats``), and
   prints the ratio full / empty. Each timed charge is a real one: SQLite write lock, grouped
   history read, re-accounting under the ledger's accountant, insert, durable commit.
2. **Queries per budget.** The largest number of queries with ε ≤ ``--target-epsilon`` for the
   CIFAR-10 setting of the paper's figure (σ = 0.05, q = 0.01, k = 23, δ = 1/50,000) under the
   ``paper`` accountant (Opacus 1.4 RDP, what the authors used) and under ``pld``; the ratio
   pld / paper is how many more queries the tighter accountant answers for the same guarantee.
3. **Concurrent chargers.** ``--chargers`` processes each charge ``--charges-each`` single queries
   on one ledger at once, twice in the same run: the way ``Ledger.charge`` works now (ε of the
   candidate computed outside the write lock, the history version re-checked under it) and the
   old way (ε computed while holding the lock: ``optimistic=0``). Reports the longest and the
   95th-percentile duration of a charge (lock wait + accounting) per mode and the ratio old / new
   of the longest; the lock timeout is 60 s. Both modes end with the same ε (checked). On a
   machine with fewer cores than chargers the accounting cannot overlap, so the gain shrinks.

Usage::

    python benchmarks/ledger.py              # 10^5 queries of history
    python benchmarks/ledger.py --quick      # CI smoke: 10^3 queries, 3 repeats

Writes everything, settings included, to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

# (σ, q, k) groups mixed in the long history: the settings of the paper's figures and sweeps.
GROUPS = [
    (0.05, 0.01, 23),
    (0.04, 0.0013218, 20),
    (0.07, 0.01, 17),
    (0.05, 0.0055, 20),
    (0.05, 0.0019, 20),
    (0.2, 0.01, 18),
    (0.1, 0.005, 10),
    (0.05, 0.002, 30),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--history", type=int, default=100_000, help="queries recorded before timing")
    p.add_argument("--batch", type=int, default=1000, help="queries per charge_many while filling")
    p.add_argument("--repeats", type=int, default=15, help="timed charges per ledger (median)")
    p.add_argument("--accountant", default="pld", choices=["pld", "rdp", "paper"])
    p.add_argument("--target-epsilon", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chargers", type=int, default=32, help="concurrent charging processes")
    p.add_argument("--charges-each", type=int, default=5, help="charges per process")
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI size: 1,000 queries of history, 3 repeats, 4 chargers × 3 charges",
    )
    p.add_argument("--out", default="out/benchmarks/ledger.json")
    args = p.parse_args(argv)
    if args.quick:
        args.history, args.batch, args.repeats = 1000, 250, 3
        args.chargers, args.charges_each = 4, 3
    return args


def _charger(path: str, n: int, optimistic: bool, start, out) -> None:
    """Child process: wait for the common start, then time each of n single-query charges."""
    from privdiff.accounting import DPRDMQuery, Ledger

    query = DPRDMQuery(*GROUPS[0])
    ledger = Ledger.open(path)
    start.wait()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        if optimistic:
            ledger.charge(query)
        else:  # the old critical section: accounting while holding the write lock
            ledger._charge_groups({query: 1}, None, optimistic=0)
        times.append(time.perf_counter() - t0)
    ledger.close()
    out.put(times)


def _concurrent(tmp: Path, args: argparse.Namespace) -> dict:
    import multiprocessing as mp

    from privdiff.accounting import DPRDMQuery, Ledger

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    result = {}
    for mode in ("old", "new"):
        path = tmp / f"concurrent-{mode}.sqlite"
        led = Ledger.create(path, epsilon=1e9, delta=1e-6, accountant=args.accountant, dataset="benchmark")
        led.charge_many([DPRDMQuery(*g) for g in GROUPS])  # a history of several groups
        led.close()
        start, out = ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=_charger, args=(str(path), args.charges_each, mode == "new", start, out))
            for _ in range(args.chargers)
        ]
        for p in procs:
            p.start()
        time.sleep(0.5)  # let every child open the ledger
        t0 = time.perf_counter()
        start.set()
        times = [t for _ in procs for t in out.get(timeout=600)]
        wall = time.perf_counter() - t0
        for p in procs:
            p.join()
            if p.exitcode != 0:
                raise SystemExit(f"a charger exited with {p.exitcode}")
        with Ledger.open(path) as led:
            st = led.status()
        times.sort()
        result[mode] = {
            "max_s": times[-1],
            "p95_s": times[int(0.95 * (len(times) - 1))],
            "median_s": statistics.median(times),
            "wall_s": wall,
            "queries": st.queries,
            "epsilon_spent": st.epsilon_spent,
        }
    if result["old"]["queries"] != result["new"]["queries"] or not math.isclose(
        result["old"]["epsilon_spent"], result["new"]["epsilon_spent"], rel_tol=1e-9
    ):
        raise SystemExit(f"old and new charging disagree: {result}")
    result["ratio_max_old_over_new"] = result["old"]["max_s"] / result["new"]["max_s"]
    return result


def _fill(ledger, history: int, batch: int, seed: int) -> float:
    from tqdm import tqdm

    from privdiff.accounting import DPRDMQuery

    rng = random.Random(seed)
    queries = [DPRDMQuery(*g) for g in GROUPS]
    started = time.perf_counter()
    with tqdm(total=history, desc="filling ledger", unit="query") as bar:
        done = 0
        while done < history:
            n = min(batch, history - done)
            ledger.charge_many(rng.choices(queries, k=n), request_id=f"fill-{done}")
            done += n
            bar.update(n)
    return time.perf_counter() - started


def _time_charges(ledger, repeats: int) -> list[float]:
    from privdiff.accounting import DPRDMQuery

    probe = DPRDMQuery(*GROUPS[0])
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        ledger.charge(probe, request_id=f"timed-{i}")
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from privdiff.accounting import Ledger, solve_queries

    with tempfile.TemporaryDirectory(prefix="privdiff-bench-ledger-") as tmp:
        big = Ledger.create(
            Path(tmp) / "full.sqlite",
            epsilon=1e9,
            delta=1e-6,
            accountant=args.accountant,
            dataset="benchmark",
        )
        fill_s = _fill(big, args.history, args.batch, args.seed)
        empty = Ledger.create(
            Path(tmp) / "empty.sqlite",
            epsilon=1e9,
            delta=1e-6,
            accountant=args.accountant,
            dataset="benchmark",
        )
        # Interleave the two so machine load affects both alike.
        full_t, empty_t = [], []
        for _ in range(args.repeats):
            full_t += _time_charges(big, 1)
            empty_t += _time_charges(empty, 1)
        status = big.status()
        rows = len(big.history())
        big.close()
        empty.close()
        concurrent = _concurrent(Path(tmp), args)

    full_ms, empty_ms = 1e3 * statistics.median(full_t), 1e3 * statistics.median(empty_t)
    cifar = dict(sigma=0.05, sample_rate=0.01, k=23)
    delta = 1 / 50_000
    answerable = {
        acc: solve_queries(args.target_epsilon, delta, accountant=acc, **cifar) for acc in ("paper", "rdp", "pld")
    }
    ratio_q = answerable["pld"].value / answerable["paper"].value

    console = Console()
    t1 = Table(title=f"Ledger charge latency ({args.accountant} accountant)")
    for col in ("ledger", "queries recorded", "groups", "charge rows", "median charge (ms)"):
        t1.add_column(col, justify="right")
    t1.add_row("empty", f"0 → {args.repeats}", "1", str(args.repeats), f"{empty_ms:.2f}")
    t1.add_row("long history", f"{status.queries:,}", str(status.groups), f"{rows:,}", f"{full_ms:.2f}")
    console.print(t1)
    console.print(
        f"ratio long-history / empty: [bold]{full_ms / empty_ms:.2f}×[/bold] "
        f"(filled {args.history:,} queries in {fill_s:.1f} s)"
    )
    t2 = Table(
        title=f"Queries answerable at ε ≤ {args.target_epsilon:g}, CIFAR-10 setting (σ=0.05, q=0.01, k=23, δ=1/50,000)"
    )
    for col in ("accountant", "queries", "ε at that T"):
        t2.add_column(col, justify="right")
    for acc, cal in answerable.items():
        t2.add_row(acc, f"{cal.value:,}", f"{cal.epsilon:.4f}")
    console.print(t2)
    console.print(f"ratio pld / paper: [bold]{ratio_q:.2f}×[/bold]")
    t3 = Table(title=f"{args.chargers} concurrent chargers × {args.charges_each} charges ({args.accountant})")
    for col in ("accounting", "longest charge (s)", "p95 (s)", "median (s)", "wall (s)"):
        t3.add_column(col, justify="right")
    for mode, label in (
        ("old", "under the write lock (old)"),
        ("new", "outside, version re-checked"),
    ):
        c = concurrent[mode]
        t3.add_row(
            label,
            f"{c['max_s']:.3f}",
            f"{c['p95_s']:.3f}",
            f"{c['median_s']:.3f}",
            f"{c['wall_s']:.2f}",
        )
    console.print(t3)
    console.print(f"ratio longest charge old / new: [bold]{concurrent['ratio_max_old_over_new']:.2f}×[/bold]")

    result = {
        "settings": {k: v for k, v in vars(args).items()},
        "groups": GROUPS,
        "charge_latency_ms": {
            "empty_median": empty_ms,
            "full_median": full_ms,
            "empty_all": [1e3 * t for t in empty_t],
            "full_all": [1e3 * t for t in full_t],
        },
        "ratio_full_over_empty": full_ms / empty_ms,
        "history": {
            "queries": status.queries,
            "groups": status.groups,
            "charge_rows": rows,
            "epsilon_spent": status.epsilon_spent,
            "fill_seconds": fill_s,
        },
        "queries_at_target": {acc: cal.to_dict() for acc, cal in answerable.items()},
        "ratio_pld_over_paper_queries": ratio_q,
        "concurrent_chargers": concurrent,
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    console.print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
