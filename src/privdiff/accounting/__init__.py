"""Privacy accounting for DP-RDM: the query model, accountants, calibration and the ledger.

Public API (others call exactly these):

* :class:`DPRDMQuery` (σ, q, k) with ``.noise_multiplier`` z = σk/2 and ``.sensitivity`` 2/k.
* :func:`compute_epsilon` (history, δ, accountant) → :class:`EpsilonReport`; :func:`compute_delta`.
* :class:`Accountant` (``epsilon(history, δ)``, ``delta(history, ε)``), :func:`register_accountant`,
  :func:`get_accountant`, :func:`accountant_names`; :func:`to_dp_event` (history → dp-accounting
  ``DpEvent``; also ``Ledger.dp_event()``).
* :func:`calibrate` (solve="sigma"|"sample_rate"|"k"|"queries", target_epsilon=, delta=, ...)
  → :class:`Calibration` (value and the ε it achieves, never above the target); shortcuts
  :func:`solve_sigma`, :func:`solve_sample_rate`, :func:`solve_k`, :func:`solve_queries`.
* :class:`Ledger` — ``Ledger.create(path, *, epsilon, delta, accountant="pld", dataset="")``,
  ``Ledger.open(path)``, ``.charge(query, count=1, request_id=None) -> Charge``,
  ``.charge_many(queries, request_id=None)``, ``.preview(query, count=1)``, ``.status()``,
  ``.history()``.
"""

from privdiff.accounting.accountants import (
    ACCOUNTANTS,
    DEFAULT_ACCOUNTANT,
    PAPER_ORDERS,
    PLD_DISCRETIZATION,
    RDP_ORDERS,
    Accountant,
    EpsilonReport,
    OrderOnEdgeWarning,
    accountant_names,
    compute_delta,
    compute_epsilon,
    epsilon_for,
    get_accountant,
    group_history,
    register_accountant,
    to_dp_event,
)
from privdiff.accounting.calibrate import (
    Calibration,
    calibrate,
    solve_k,
    solve_queries,
    solve_sample_rate,
    solve_sigma,
)
from privdiff.accounting.ledger import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    Charge,
    ChargeRecord,
    Ledger,
    LedgerStatus,
)
from privdiff.accounting.query import DPRDMQuery, check_delta, default_delta

__all__ = [
    "Calibration",
    "calibrate",
    "solve_k",
    "solve_queries",
    "solve_sample_rate",
    "solve_sigma",
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "Charge",
    "ChargeRecord",
    "Ledger",
    "LedgerStatus",
    "ACCOUNTANTS",
    "DEFAULT_ACCOUNTANT",
    "PAPER_ORDERS",
    "PLD_DISCRETIZATION",
    "RDP_ORDERS",
    "DPRDMQuery",
    "EpsilonReport",
    "OrderOnEdgeWarning",
    "check_delta",
    "compute_delta",
    "compute_epsilon",
    "default_delta",
    "epsilon_for",
    "group_history",
    "Accountant",
    "accountant_names",
    "get_accountant",
    "register_accountant",
    "to_dp_event",
]
