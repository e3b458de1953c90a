"""Helpers shared by the retrieval tests (imported relatively: `from ._helpers import ...`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privdiff.errors import PrivacyBudgetExceeded


@dataclass(frozen=True)
class _FakeCharge:
    epsilon_spent: float
    epsilon_remaining: float
    delta: float


class RecordingLedger:
    """Stand-in with the Ledger.charge contract, recording calls (budget in number of queries)."""

    def __init__(self, max_queries: int = 10**9, delta: float = 1e-5):
        self.max_queries = max_queries
        self.delta = delta
        self.calls: list[tuple[object, int, object]] = []
        self.charged = 0

    def charge(self, query, count=1, request_id=None):
        if self.charged + count > self.max_queries:
            raise PrivacyBudgetExceeded(
                epsilon_spent=float(self.charged),
                epsilon_would_be=float(self.charged + count),
                epsilon_budget=float(self.max_queries),
                delta=self.delta,
                queries_requested=count,
            )
        self.calls.append((query, count, request_id))
        self.charged += count
        return _FakeCharge(float(self.charged), float(self.max_queries - self.charged), self.delta)


def unit_rows(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
