"""Privacy accounting for DP-RDM: the query model, accountants, calibration and the ledger.

Public API (others call exactly these):

* :class:`DPRDMQuery` (σ, q, k) with ``.noise_multiplier`` z = σk/2 and ``.sensitivity`` 2/k.
* :func:`compute_epsilon` (history, δ, accountant) → :class:`EpsilonReport`; :func:`compute_delta`.
"""

from privdiff.accounting.accountants import (
    ACCOUNTANTS,
    DEFAULT_ACCOUNTANT,
    PAPER_ORDERS,
    PLD_DISCRETIZATION,
    RDP_ORDERS,
    EpsilonReport,
    OrderOnEdgeWarning,
    compute_delta,
    compute_epsilon,
    epsilon_for,
    group_history,
    history_event,
)
from privdiff.accounting.query import DPRDMQuery, check_delta, default_delta

__all__ = [
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
    "history_event",
]
