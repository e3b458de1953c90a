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

Usage::

    python benchmarks/ledger.py              # 10^5 queries of history
    python benchmarks/ledger.py --quick      # CI smoke: 10^3 queries, 3 repeats

Writes everything, settings included, to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

# (σ, q, k) groups mixed in the long history: the settings of the paper's figures and sweeps.
GROUPS = [
    (0.05, 0.01, 23), (0.04, 0.0013218, 20), (0.07, 0.01, 17), (0.05, 0.0055, 20),
    (0.05, 0.0019, 20), (0.2, 0.01, 18), (0.1, 0.005, 10), (0.05, 0.002, 30),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--history", type=int, default=100_000, help="queries recorded before timing")
    p.add_argument("--batch", type=int, default=1000, help="queries per charge_many while filling")
    p.add_argument("--repeats", type=int, default=15, help="timed charges per ledger (median)")
    p.add_argument("--accountant", default="pld", choices=["pld", "rdp", "paper"])
    p.add_argument("--target-epsilon", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="CI size: 1,000 queries of history, 3 repeats")
    p.add_argument("--out", default="out/benchmarks/ledger.json")
    args = p.parse_args(argv)
    if args.quick:
        args.history, args.batch, args.repeats = 1000, 250, 3
    return args


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
        big = Ledger.create(Path(tmp) / "full.sqlite", epsilon=1e9, delta=1e-6, accountant=args.accountant,
                            dataset="benchmark")
        fill_s = _fill(big, args.history, args.batch, args.seed)
        empty = Ledger.create(Path(tmp) / "empty.sqlite", epsilon=1e9, delta=1e-6, accountant=args.accountant,
                              dataset="benchmark")
        # Interleave the two so machine load affects both alike.
        full_t, empty_t = [], []
        for _ in range(args.repeats):
            full_t += _time_charges(big, 1)
            empty_t += _time_charges(empty, 1)
        status = big.status()
        rows = len(big.history())
        big.close()
        empty.close()

    full_ms, empty_ms = 1e3 * statistics.median(full_t), 1e3 * statistics.median(empty_t)
    cifar = dict(sigma=0.05, sample_rate=0.01, k=23)
    delta = 1 / 50_000
    answerable = {acc: solve_queries(args.target_epsilon, delta, accountant=acc, **cifar) for acc in ("paper", "rdp", "pld")}
    ratio_q = answerable["pld"].value / answerable["paper"].value

    console = Console()
    t1 = Table(title=f"Ledger charge latency ({args.accountant} accountant)")
    for col in ("ledger", "queries recorded", "groups", "charge rows", "median charge (ms)"):
        t1.add_column(col, justify="right")
    t1.add_row("empty", "0 → %d" % args.repeats, "1", str(args.repeats), f"{empty_ms:.2f}")
    t1.add_row("long history", f"{status.queries:,}", str(status.groups), f"{rows:,}", f"{full_ms:.2f}")
    console.print(t1)
    console.print(f"ratio long-history / empty: [bold]{full_ms / empty_ms:.2f}×[/bold] "
                  f"(filled {args.history:,} queries in {fill_s:.1f} s)")
    t2 = Table(title=f"Queries answerable at ε ≤ {args.target_epsilon:g}, CIFAR-10 setting "
                     f"(σ=0.05, q=0.01, k=23, δ=1/50,000)")
    for col in ("accountant", "queries", "ε at that T"):
        t2.add_column(col, justify="right")
    for acc, cal in answerable.items():
        t2.add_row(acc, f"{cal.value:,}", f"{cal.epsilon:.4f}")
    console.print(t2)
    console.print(f"ratio pld / paper: [bold]{ratio_q:.2f}×[/bold]")

    result = {
        "settings": {k: v for k, v in vars(args).items()},
        "groups": GROUPS,
        "charge_latency_ms": {"empty_median": empty_ms, "full_median": full_ms, "empty_all": [1e3 * t for t in empty_t],
                              "full_all": [1e3 * t for t in full_t]},
        "ratio_full_over_empty": full_ms / empty_ms,
        "history": {"queries": status.queries, "groups": status.groups, "charge_rows": rows,
                    "epsilon_spent": status.epsilon_spent, "fill_seconds": fill_s},
        "queries_at_target": {acc: cal.to_dict() for acc, cal in answerable.items()},
        "ratio_pld_over_paper_queries": ratio_q,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    console.print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
