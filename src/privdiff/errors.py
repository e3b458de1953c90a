"""Typed errors for privdiff.

Every error a user can trigger with bad input derives from :class:`PrivdiffError`. Errors about a
parameter name the parameter, the bad value and the allowed range, so a CLI can print them as is
and a caller can branch on the type. Raising one of these must leave no partial state behind
(nothing written, nothing charged): validate first, act second.
"""

from __future__ import annotations

import math
from typing import Any


class PrivdiffError(Exception):
    """Base class of every error privdiff raises on purpose."""


class InvalidParameter(PrivdiffError, ValueError):
    """A parameter is outside its allowed range (or of the wrong kind).

    Attributes:
        name: the parameter's name as the user spells it (``sigma``, ``sample_rate``, ``k``...).
        value: the offending value.
        allowed: a human-readable description of the allowed range, e.g. ``"(0, 1]"``.
    """

    def __init__(self, name: str, value: Any, allowed: str, hint: str | None = None):
        self.name = name
        self.value = value
        self.allowed = allowed
        msg = f"invalid {name}={value!r}: must be {allowed}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class PrivacyBudgetExceeded(PrivdiffError):
    """A query (or batch of queries) would take the ledger past its (ε, δ) budget.

    Nothing was charged and nothing was released. The attributes describe the budget state so a
    caller (or the CLI) can show how much is left.
    """

    def __init__(
        self,
        *,
        epsilon_spent: float,
        epsilon_would_be: float,
        epsilon_budget: float,
        delta: float,
        queries_requested: int = 1,
        queries_remaining: int | None = None,
    ):
        self.epsilon_spent = epsilon_spent
        self.epsilon_would_be = epsilon_would_be
        self.epsilon_budget = epsilon_budget
        self.delta = delta
        self.queries_requested = queries_requested
        #: How many queries of the same setting would still fit (None when not computed).
        self.queries_remaining = queries_remaining
        fit = ""
        if queries_remaining is not None:
            fit = (
                f" {queries_remaining} quer{'y' if queries_remaining == 1 else 'ies'} of this setting "
                f"still fit{'s' if queries_remaining == 1 else ''}."
            )
        super().__init__(
            f"privacy budget exceeded: answering {queries_requested} more quer"
            f"{'y' if queries_requested == 1 else 'ies'} would bring ε to {epsilon_would_be:.4g} "
            f"> budget {epsilon_budget:.4g} (δ={delta:.3g}); ε spent so far {epsilon_spent:.4g}."
            f"{fit} Nothing was charged or released."
        )


class PrivdiffWarning(UserWarning):
    """A request privdiff will carry out although its output is likely meaningless (context mostly
    padding, δ ≥ 1/N, private data far outside the model's domain). Emitted before any charge."""


class LedgerError(PrivdiffError):
    """The ledger file cannot be used (corrupt, foreign, wrong schema, missing)."""


class LedgerCorrupt(LedgerError):
    """The ledger's contents contradict themselves (e.g. its grouped history disagrees with its
    per-charge records, or its metadata fails its checksum): its ε cannot be trusted."""


class LedgerIndexMismatch(LedgerError):
    """A ledger is bound to one private index and was used with another (budgets would mix)."""


class DataError(PrivdiffError):
    """A dataset cannot be loaded: unknown spec, missing files, corrupt or unreadable images."""


class EncoderMismatch(PrivdiffError):
    """Two artefacts live in different embedding spaces (e.g. an index and a model)."""

    def __init__(self, expected: str, found: str, what: str = "artefact"):
        self.expected = expected
        self.found = found
        super().__init__(f"embedding-space mismatch: {what} uses encoder {found!r} but {expected!r} is required")


class IndexCorrupt(PrivdiffError):
    """An on-disk index is truncated, corrupt or inconsistent with its manifest."""


class CheckpointError(PrivdiffError):
    """A model checkpoint is missing, corrupt or of the wrong kind."""


class ShardFailure(PrivdiffError):
    """A shard of a sharded private index (e.g. its Ray actor) failed while a query was in flight.

    The mechanism charges the ledger before any shard is asked, so the query was already charged;
    nothing was released. The shard is restarted; a retried request is a new (charged) query."""


# ---------------------------------------------------------------------------------------------
# Small validators shared by every package, so messages are uniform.
# ---------------------------------------------------------------------------------------------


def _is_real(x: Any) -> bool:
    try:
        return not isinstance(x, bool) and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def check_positive(name: str, value: Any) -> float:
    """Return ``float(value)`` if it is finite and > 0, else raise :class:`InvalidParameter`."""
    if not _is_real(value) or float(value) <= 0:
        raise InvalidParameter(name, value, "a finite number > 0")
    return float(value)


def check_nonnegative(name: str, value: Any) -> float:
    if not _is_real(value) or float(value) < 0:
        raise InvalidParameter(name, value, "a finite number >= 0")
    return float(value)


def check_in_range(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_inclusive: bool = False,
    high_inclusive: bool = True,
) -> float:
    """Check ``value`` lies in an interval; the message shows the interval in maths notation."""
    lo_b = "[" if low_inclusive else "("
    hi_b = "]" if high_inclusive else ")"
    allowed = f"in {lo_b}{low:g}, {high:g}{hi_b}"
    if not _is_real(value):
        raise InvalidParameter(name, value, allowed)
    v = float(value)
    ok_lo = v >= low if low_inclusive else v > low
    ok_hi = v <= high if high_inclusive else v < high
    if not (ok_lo and ok_hi):
        raise InvalidParameter(name, value, allowed)
    return v


def check_int(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    """Check ``value`` is an integer (not a bool, not a non-integral float) within bounds."""
    allowed = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
    if isinstance(value, bool):
        raise InvalidParameter(name, value, allowed)
    try:
        iv = int(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidParameter(name, value, allowed) from None
    if isinstance(value, float) and (not math.isfinite(value) or iv != value):
        raise InvalidParameter(name, value, allowed)
    if iv < minimum or (maximum is not None and iv > maximum):
        raise InvalidParameter(name, value, allowed)
    return iv


class MissingDependency(PrivdiffError, ImportError):
    """An optional library (e.g. ``open_clip``) is needed for this feature but is not installed."""

    def __init__(self, package: str, feature: str, install: str | None = None):
        self.package = package
        self.feature = feature
        hint = install or f"pip install {package}"
        super().__init__(f"{feature} needs the optional package {package!r}, which is not installed ({hint})")
