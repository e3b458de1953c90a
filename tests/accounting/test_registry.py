"""The accountant registry: one protocol, one registration per accountant, no name switches."""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import pytest

from privdiff.accounting import (
    ACCOUNTANTS,
    DEFAULT_ACCOUNTANT,
    Accountant,
    DPRDMQuery,
    EpsilonReport,
    Ledger,
    accountant_names,
    calibrate,
    compute_delta,
    compute_epsilon,
    get_accountant,
    group_history,
    register_accountant,
)
from privdiff.accounting import accountants as accountants_module
from privdiff.errors import InvalidParameter

SRC = Path(__file__).resolve().parents[2] / "src" / "privdiff"
QUERY = DPRDMQuery(0.05, 0.01, 23)


@dataclasses.dataclass(frozen=True)
class ScaledPaper:
    """A toy accountant for the tests: twice the paper bound (valid, just loose)."""

    name: str = "twice-paper"
    label: str = "2 × paper"

    def epsilon(self, history, delta):
        rep = get_accountant("paper").epsilon(history, delta)
        return dataclasses.replace(rep, epsilon=2 * rep.epsilon, accountant=self.name)

    def delta(self, history, epsilon):
        return get_accountant("paper").delta(history, epsilon / 2)

    def configured(self, *, pld_discretization):
        return self


@pytest.fixture
def toy():
    register_accountant(ScaledPaper())
    try:
        yield "twice-paper"
    finally:
        # The registry has no public remove on purpose (ledgers store names).
        accountants_module._REGISTRY.pop("twice-paper", None)


def test_builtin_accountants_are_registered_in_order_and_satisfy_the_protocol():
    assert ACCOUNTANTS == ("paper", "rdp", "pld") == accountant_names()[:3]
    assert DEFAULT_ACCOUNTANT in ACCOUNTANTS
    for name in ACCOUNTANTS:
        acc = get_accountant(name)
        assert isinstance(acc, Accountant) and acc.name == name and acc.label.startswith(name)
        rep = acc.epsilon([(QUERY, 1000)], 2e-5)
        assert isinstance(rep, EpsilonReport) and rep.accountant == name
        assert rep == compute_epsilon([(QUERY, 1000)], 2e-5, name)
        assert acc.delta([(QUERY, 1000)], rep.epsilon) == compute_delta([(QUERY, 1000)], rep.epsilon, name)


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(InvalidParameter, match="paper, rdp, pld"):
        get_accountant("opacus")


def test_a_name_cannot_be_rebound_silently(toy):
    with pytest.raises(InvalidParameter, match="already|not yet registered"):
        register_accountant(ScaledPaper())
    with pytest.raises(InvalidParameter, match="accountant"):
        register_accountant(object())  # not an Accountant
    with pytest.raises(InvalidParameter, match="all"):
        register_accountant(ScaledPaper(name="all"))


def test_a_registered_accountant_reaches_every_entry_point(toy, tmp_path):
    paper = compute_epsilon([(QUERY, 1000)], 2e-5, "paper").epsilon
    assert compute_epsilon([(QUERY, 1000)], 2e-5, toy).epsilon == pytest.approx(2 * paper, rel=1e-12)
    assert toy in accountant_names()
    # The calibrator answers fewer queries under the looser bound.
    loose = calibrate("queries", target_epsilon=10, delta=2e-5, sigma=0.05, sample_rate=0.01, k=23, accountant=toy)
    tight = calibrate(
        "queries",
        target_epsilon=10,
        delta=2e-5,
        sigma=0.05,
        sample_rate=0.01,
        k=23,
        accountant="paper",
    )
    assert 0 < loose.value < tight.value and loose.epsilon <= 10
    # A ledger created with it charges under it.
    with Ledger.create(tmp_path / "l.db", epsilon=100, delta=2e-5, accountant=toy) as led:
        led.charge(QUERY, 1000)
        assert led.status().epsilon_spent == pytest.approx(2 * paper, rel=1e-9)


def test_pld_discretisation_is_an_option_of_the_pld_accountant_only():
    coarse = compute_epsilon([(QUERY, 1000)], 2e-5, "pld", pld_discretization=4e-3)
    fine = compute_epsilon([(QUERY, 1000)], 2e-5, "pld")
    assert coarse.pld_discretization == 4e-3 and fine.pld_discretization == 1e-3
    assert coarse.epsilon >= fine.epsilon  # coarser is only more pessimistic
    paper = compute_epsilon([(QUERY, 1000)], 2e-5, "paper", pld_discretization=4e-3)
    assert paper.pld_discretization is None and paper == compute_epsilon([(QUERY, 1000)], 2e-5, "paper")


def test_empty_history_is_free_under_every_accountant():
    for name in ACCOUNTANTS:
        assert get_accountant(name).epsilon([], 1e-5).epsilon == 0.0
        assert get_accountant(name).delta([(QUERY, 0)], 1.0) == 0.0
    assert group_history([]) == ()
    assert math.isfinite(compute_delta([(QUERY, 10)], 0.0, "pld"))


def _name_comparisons(path: Path) -> list[str]:
    """``x == "pld"``-style comparisons and ``if name in ("paper", ...)`` on accountant names."""
    tree = ast.parse(path.read_text())
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            consts = [c for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
            for c in node.comparators + [node.left]:
                if isinstance(c, (ast.Tuple, ast.List, ast.Set)):
                    consts += [e for e in c.elts if isinstance(e, ast.Constant)]
            if any(c.value in ACCOUNTANTS for c in consts):
                hits.append(f"{path.relative_to(SRC)}:{node.lineno}")
    return hits


def test_no_module_switches_on_accountant_names():
    """Dispatch goes through the registry; a comparison with "paper"/"rdp"/"pld" anywhere in src
    is an if/elif chain that a new accountant would have to be added to."""
    hits = [h for p in sorted(SRC.rglob("*.py")) for h in _name_comparisons(p)]
    assert hits == []


def test_accounting_holds_no_plotting():
    """accounting/ is pure maths and the ledger; figures live in privdiff.report."""
    for path in sorted((SRC / "accounting").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert not name.startswith(("matplotlib", "privdiff.report")), f"{path.name} imports {name}"
