"""Child-process entry points for the ledger concurrency and crash tests (importable by spawn)."""

from __future__ import annotations

import os
import sys

from privdiff.accounting import DPRDMQuery, Ledger
from privdiff.errors import PrivacyBudgetExceeded

QUERY = (0.2, 0.05, 10)  # σ, q, k: z = 1


def race(path: str, attempts: int, tag: str, result_queue) -> None:
    """Try to charge `attempts` single queries; report how many succeeded."""
    ledger = Ledger.open(path)
    ok = refused = 0
    for i in range(attempts):
        try:
            ledger.charge(DPRDMQuery(*QUERY), request_id=f"{tag}-{i}")
            ok += 1
        except PrivacyBudgetExceeded:
            refused += 1
    ledger.close()
    result_queue.put((tag, ok, refused))


def charge_forever(path: str, report_path: str) -> None:
    """Charge in a loop; after each charge returns, durably note its request id."""
    ledger = Ledger.open(path)
    with open(report_path, "a", buffering=1) as report:
        i = 0
        while True:
            rid = f"kill-{i}"
            ledger.charge(DPRDMQuery(*QUERY), request_id=rid)
            report.write(rid + "\n")
            report.flush()
            os.fsync(report.fileno())
            i += 1


if __name__ == "__main__":  # pragma: no cover - used via subprocess
    charge_forever(sys.argv[1], sys.argv[2])
