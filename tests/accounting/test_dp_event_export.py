"""The ledger history exported as dp-accounting DpEvents, bounded by dp-accounting itself."""

from __future__ import annotations

import dp_accounting
import pytest

from privdiff.accounting import DPRDMQuery, Ledger, compute_epsilon, to_dp_event

A = DPRDMQuery(0.05, 0.01, 23)
B = DPRDMQuery(0.07, 0.02, 17)
HISTORY = [(A, 300), (B, 40), (A, 200)]
DELTA = 2e-5
ADD_REMOVE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


def _library_epsilon(event: dp_accounting.DpEvent, which: str) -> float:
    if which == "rdp":
        acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=ADD_REMOVE)
    else:
        acc = dp_accounting.pld.PLDAccountant(neighboring_relation=ADD_REMOVE, value_discretization_interval=1e-3)
    assert acc.supports(event)
    return acc.compose(event).get_epsilon(DELTA)


def test_export_is_a_composition_of_self_composed_poisson_gaussians():
    event = to_dp_event(HISTORY)
    assert isinstance(event, dp_accounting.ComposedDpEvent)
    by_z = {e.event.event.noise_multiplier: (e.event.sampling_probability, e.count) for e in event.events}
    # Equal queries are merged into one self-composed event.
    assert by_z == {A.noise_multiplier: (0.01, 500), B.noise_multiplier: (0.02, 40)}
    assert to_dp_event([]).events == []


@pytest.mark.parametrize("which", ["rdp", "pld"])
def test_dp_accounting_bounds_the_exported_history_to_privdiffs_epsilon(which):
    ours = compute_epsilon(HISTORY, DELTA, which).epsilon
    theirs = _library_epsilon(to_dp_event(HISTORY), which)
    if which == "rdp":
        # Same orders, same RDP of the sampled Gaussian, same conversion: equal to rounding.
        assert ours == pytest.approx(theirs, rel=1e-10)
    else:
        # Both pessimistic PLDs with the same grid; privdiff composes a balanced tree of merged
        # groups, the library folds event by event, so they differ by a few grid steps at most
        # (the tolerance of tests/accounting/test_accountants.py's library cross-checks).
        assert ours == pytest.approx(theirs, rel=2e-3, abs=2e-3)


def test_ledger_exports_its_history(tmp_path):
    with Ledger.create(tmp_path / "l.db", epsilon=50, delta=DELTA) as led:
        assert _library_epsilon(led.dp_event(), "rdp") == 0.0
        for query, count in HISTORY:
            led.charge(query, count)
        event = led.dp_event()
        spent = led.status().epsilon_spent
    assert event == to_dp_event(HISTORY)
    # The ledger's own accountant (pld) and dp-accounting's PLD on the export agree.
    assert _library_epsilon(event, "pld") == pytest.approx(spent, rel=2e-3, abs=2e-3)
