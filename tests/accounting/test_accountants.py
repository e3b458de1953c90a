"""Accountant tests: golden values from the paper's code, cross-library agreement, properties."""

from __future__ import annotations

import math
import warnings

import dp_accounting
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from privdiff.accounting import (
    ACCOUNTANTS,
    PAPER_ORDERS,
    DPRDMQuery,
    OrderOnEdgeWarning,
    compute_delta,
    compute_epsilon,
)
from privdiff.errors import InvalidParameter

# Methods note §4.6: (sigma, q, k, T, delta) -> (epsilon, optimal order) under the authors' code.
PAPER_GOLDEN = [
    pytest.param(0.2, 0.01, 18, 1000, 1e-7, 0.99688, 25.0, id="notebook-test-vector"),
    pytest.param(0.07, 0.01, 17, 100, 1 / 239_000_000, 8.209, 3.4, id="shutterstock-figure"),
    pytest.param(0.04, 0.0013218, 20, 100, 1 / 82_800, 6.939, 2.6, id="mscoco-figure-T100"),
    pytest.param(0.04, 0.0013218, 20, 1000, 1 / 82_800, 9.784, None, id="mscoco-figure-T1000"),
    pytest.param(0.05, 0.01, 23, 1000, 1 / 50_000, 9.443, 2.5, id="cifar10-figure"),
]


@pytest.mark.parametrize("sigma,q,k,T,delta,eps,order", PAPER_GOLDEN)
def test_paper_accountant_reproduces_method_note_values(sigma, q, k, T, delta, eps, order):
    rep = compute_epsilon([(DPRDMQuery(sigma, q, k), T)], delta, "paper")
    assert rep.epsilon == pytest.approx(eps, abs=6e-4)
    if order is not None:
        assert rep.order == order
    assert rep.accountant == "paper" and rep.queries == T and not rep.order_on_edge


def test_query_noise_multiplier_and_sensitivity_follow_the_paper():
    q = DPRDMQuery(0.05, 0.01, 20)
    assert q.sensitivity == pytest.approx(2 / 20)
    assert q.noise_multiplier == pytest.approx(0.05 / (2 / 20))


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(sigma=0, sample_rate=0.1, k=3), "sigma"),
        (dict(sigma=-1, sample_rate=0.1, k=3), "sigma"),
        (dict(sigma=float("nan"), sample_rate=0.1, k=3), "sigma"),
        (dict(sigma=0.1, sample_rate=0, k=3), "sample_rate"),
        (dict(sigma=0.1, sample_rate=1.01, k=3), "sample_rate"),
        (dict(sigma=0.1, sample_rate=0.1, k=0), "k"),
        (dict(sigma=0.1, sample_rate=0.1, k=2.5), "k"),
    ],
)
def test_query_rejects_bad_parameters_naming_them(kwargs, name):
    with pytest.raises(InvalidParameter) as ei:
        DPRDMQuery(**kwargs)
    assert ei.value.name == name and name in str(ei.value)


def test_empty_history_costs_nothing():
    for acc in ACCOUNTANTS:
        assert compute_epsilon([], 1e-5, acc).epsilon == 0.0
        assert compute_epsilon([(DPRDMQuery(0.1, 0.1, 5), 0)], 1e-5, acc).epsilon == 0.0


@pytest.mark.parametrize("delta", [0, 1, -0.1, float("nan"), 1.5])
def test_bad_delta_is_rejected(delta):
    with pytest.raises(InvalidParameter) as ei:
        compute_epsilon([(DPRDMQuery(0.1, 0.1, 5), 3)], delta)
    assert ei.value.name == "delta"


def test_unknown_accountant_is_rejected():
    with pytest.raises(InvalidParameter) as ei:
        compute_epsilon([(DPRDMQuery(0.1, 0.1, 5), 3)], 1e-5, "moments")
    assert "pld" in str(ei.value)


def test_opacus_conversion_is_the_opacus_1_4_formula():
    """Opacus 1.6 get_privacy_spent must equal the 1.4 formula the paper's numbers come from."""
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = np.asarray(PAPER_ORDERS)
    rdp = np.asarray(compute_rdp(q=0.02, noise_multiplier=1.3, steps=700, orders=list(orders)))
    formula = rdp - (math.log(1e-6) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps, order = get_privacy_spent(orders=list(orders), rdp=rdp, delta=1e-6)
    assert eps == pytest.approx(formula.min(), rel=1e-12)
    assert order == orders[formula.argmin()]
    ours = compute_epsilon([(DPRDMQuery(1.3 * 2 / 4, 0.02, 4), 700)], 1e-6, "paper")
    assert ours.epsilon == pytest.approx(formula.min(), rel=1e-12)


def test_paper_accountant_agrees_with_opacus_rdp_accountant():
    from opacus.accountants import RDPAccountant

    query = DPRDMQuery(0.3, 0.05, 6)  # z = 0.9
    acc = RDPAccountant()
    for _ in range(200):
        acc.step(noise_multiplier=query.noise_multiplier, sample_rate=query.sample_rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps, order = acc.get_privacy_spent(delta=1e-5, alphas=list(PAPER_ORDERS))
    rep = compute_epsilon([(query, 200)], 1e-5, "paper")
    assert rep.epsilon == pytest.approx(eps, rel=1e-10) and rep.order == order


def test_heterogeneous_paper_history_sums_rdp_curves():
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    a, b = DPRDMQuery(0.2, 0.01, 18), DPRDMQuery(0.1, 0.03, 25)
    rdp = sum(
        np.asarray(
            compute_rdp(
                q=q.sample_rate,
                noise_multiplier=q.noise_multiplier,
                steps=n,
                orders=list(PAPER_ORDERS),
            )
        )
        for q, n in [(a, 300), (b, 50)]
    )
    eps, _ = get_privacy_spent(orders=list(PAPER_ORDERS), rdp=rdp, delta=1e-6)
    assert compute_epsilon([(a, 100), (b, 50), (a, 200)], 1e-6, "paper").epsilon == pytest.approx(eps, rel=1e-12)


def test_resources_cross_check_rdp_and_pld():
    """RESOURCES.md: z=1, q=0.01, 10k steps, δ=1e-5 → RDP 6.7127/6.7128, PLD 6.1877."""
    query = DPRDMQuery(2.0, 0.01, 1)  # z = σ·k/2 = 1
    assert query.noise_multiplier == 1.0
    assert compute_epsilon([(query, 10_000)], 1e-5, "paper").epsilon == pytest.approx(6.7127, abs=1e-4)
    assert compute_epsilon([(query, 10_000)], 1e-5, "rdp").epsilon == pytest.approx(6.7128, abs=1e-4)
    fine = compute_epsilon([(query, 10_000)], 1e-5, "pld", pld_discretization=1e-4).epsilon
    assert fine == pytest.approx(6.1877, abs=2e-4)
    # The default, coarser discretisation stays pessimistic (never below the fine value) and close.
    default = compute_epsilon([(query, 10_000)], 1e-5, "pld").epsilon
    assert fine <= default <= fine * 1.002


@pytest.mark.integration
def test_pld_agrees_with_prv_accountant():
    from prv_accountant import PRVAccountant
    from prv_accountant.privacy_random_variables import PoissonSubsampledGaussianMechanism

    query = DPRDMQuery(2.0, 0.01, 1)
    prv = PRVAccountant(
        prvs=[PoissonSubsampledGaussianMechanism(noise_multiplier=1.0, sampling_probability=0.01)],
        max_self_compositions=[10_000],
        eps_error=0.01,
        delta_error=1e-10,
    )
    lower, estimate, upper = prv.compute_epsilon(delta=1e-5, num_self_compositions=[10_000])
    ours = compute_epsilon([(query, 10_000)], 1e-5, "pld", pld_discretization=1e-4).epsilon
    assert lower - 1e-3 <= ours <= upper + 1e-3
    assert ours == pytest.approx(estimate, abs=2e-3)


def test_rdp_accountant_matches_dp_accounting_directly():
    query = DPRDMQuery(0.05, 0.01, 23)
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(0.575)), 1000
        )
    )
    eps, order = acc.get_epsilon_and_optimal_order(2e-5)
    rep = compute_epsilon([(query, 1000)], 2e-5, "rdp")
    assert rep.epsilon == pytest.approx(eps, rel=1e-12) and rep.order == order


def test_order_on_edge_warns_and_is_reported():
    # A single cheap query at tiny δ pushes the optimal order past α = 63 in the paper grid.
    query = DPRDMQuery(1.0, 0.001, 20)
    with pytest.warns(OrderOnEdgeWarning):
        rep = compute_epsilon([(query, 1)], 1e-12, "paper")
    assert rep.order_on_edge and rep.order == PAPER_ORDERS[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("error", OrderOnEdgeWarning)
        assert compute_epsilon([(query, 1)], 1e-12, "paper", warn_on_edge=False).order_on_edge


def test_compute_delta_inverts_compute_epsilon():
    history = [(DPRDMQuery(0.2, 0.01, 18), 1000)]
    for acc in ACCOUNTANTS:
        eps = compute_epsilon(history, 1e-7, acc).epsilon
        # δ(ε(δ)) is at most δ (the RDP grid can only certify a δ at least as good).
        assert compute_delta(history, eps, acc) <= 1e-7 * 1.01
        assert compute_delta(history, eps * 0.8, acc) > 1e-7
    assert compute_delta([], 1.0) == 0.0


# --------------------------------------------------------------------------- property tests

_sigmas = st.floats(0.02, 0.5)
_rates = st.floats(1e-4, 0.2)
_ks = st.integers(1, 40)
_counts = st.integers(1, 3000)
_fast = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _eps(sigma, q, k, T, acc, delta=1e-6):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OrderOnEdgeWarning)
        return compute_epsilon([(DPRDMQuery(sigma, q, k), T)], delta, acc).epsilon


@pytest.mark.integration
@_fast
@given(sigma=_sigmas, q=_rates, k=_ks, T=_counts, acc=st.sampled_from(["rdp", "pld"]))
def test_epsilon_grows_with_queries_and_rate(sigma, q, k, T, acc):
    base = _eps(sigma, q, k, T, acc)
    assert _eps(sigma, q, k, 2 * T, acc) >= base - 1e-9
    assert _eps(sigma, min(1.0, 1.5 * q), k, T, acc) >= base - 1e-9


@pytest.mark.integration
@_fast
@given(sigma=_sigmas, q=_rates, k=_ks, T=_counts, acc=st.sampled_from(["rdp", "pld"]))
def test_epsilon_falls_with_sigma_and_k(sigma, q, k, T, acc):
    base = _eps(sigma, q, k, T, acc)
    assert _eps(1.5 * sigma, q, k, T, acc) <= base + 1e-9
    assert _eps(sigma, q, k + 3, T, acc) <= base + 1e-9


@pytest.mark.integration
@settings(max_examples=8, deadline=None)
@given(sigma=st.floats(0.05, 0.5), q=_rates, k=st.integers(4, 40), T=st.integers(1, 1000))
@example(sigma=0.0625, q=0.0001, k=32, T=314)  # tiny ε ≈ 0.016: 4.1 grid steps above the 2× finer grid
@example(sigma=0.5, q=0.001, k=12, T=230)  # 6.2 grid steps
def test_pld_default_discretisation_is_pessimistic_but_close(sigma, q, k, T):
    """The default PLD grid never reports less than a 2× finer grid, and stays within ~1 %."""
    query = DPRDMQuery(sigma, q, k)
    rep = compute_epsilon([(query, T)], 1e-6, "pld")
    fine = dp_accounting.pld.PLDAccountant(value_discretization_interval=rep.pld_discretization / 2)
    fine.compose(query.dp_event(T))
    fine_eps = fine.get_epsilon(1e-6)
    assert rep.epsilon >= fine_eps - 1e-9 or rep.epsilon == _eps(sigma, q, k, T, "rdp")
    # Sound: rounding each loss of the base PLD up by < Δ shifts the T-fold composition by < T·Δ.
    assert rep.epsilon <= fine_eps + T * rep.pld_discretization
    # In practice the excess over 1 % grows like √T grid steps (rounding errors of the T-fold
    # composition partly cancel; matters only for tiny ε): over 40 random settings the largest
    # excess was 0.43·√T·Δ (13.5 steps at T = 998, ε = 0.05). √T·Δ leaves room without hiding a
    # grid that is too coarse.
    assert rep.epsilon <= fine_eps * 1.01 + math.sqrt(T) * rep.pld_discretization


def test_pld_stays_bounded_when_the_loss_is_huge():
    """z = 0.01 would need a 36 GiB PLD grid at the default interval; the report stays valid."""
    query = DPRDMQuery(0.02, 0.2, 1)
    rdp = compute_epsilon([(query, 3000)], 1e-6, "rdp", warn_on_edge=False).epsilon
    rep = compute_epsilon([(query, 3000)], 1e-6, "pld")
    assert rep.fallback == "rdp" and rep.epsilon == rdp
    moderate = compute_epsilon([(DPRDMQuery(0.02, 0.2, 40), 3000)], 1e-6, "pld")
    assert moderate.fallback is None and moderate.pld_discretization > 1e-3
    assert moderate.epsilon < compute_epsilon([(DPRDMQuery(0.02, 0.2, 40), 3000)], 1e-6, "rdp").epsilon


_realistic = st.tuples(st.floats(0.05, 0.5), _rates, st.integers(4, 40))  # z = σk/2 ∈ [0.1, 10]


@settings(max_examples=8, deadline=None)
@given(a=_realistic, b=_realistic, na=st.integers(1, 500), nb=st.integers(1, 500))
def test_heterogeneous_pld_composition_is_bounded_by_its_parts(a, b, na, nb):
    """PLD is near-exact, so it must respect what the true ε does: ε(A∘B) ≥ max(ε(A), ε(B)), and
    basic composition (ε_A at δ/2) + (ε_B at δ/2) bounds ε(A∘B) at δ. (RDP bounds need not obey
    the second relation, so it is not asserted for them.)"""
    qa, qb = DPRDMQuery(*a), DPRDMQuery(*b)
    both = compute_epsilon([(qa, na), (qb, nb)], 1e-6, "pld")
    only_a = compute_epsilon([(qa, na)], 1e-6, "pld").epsilon
    only_b = compute_epsilon([(qb, nb)], 1e-6, "pld").epsilon
    half_a = compute_epsilon([(qa, na)], 5e-7, "pld").epsilon
    half_b = compute_epsilon([(qb, nb)], 5e-7, "pld").epsilon
    slack = 4 * both.pld_discretization
    assert both.epsilon >= max(only_a, only_b) - slack
    assert both.epsilon <= half_a + half_b + slack


def test_heterogeneous_rdp_composition_adds_rdp_curves():
    """dp-accounting composing two groups as separate events equals our grouped computation."""
    qa, qb = DPRDMQuery(0.3, 0.02, 8), DPRDMQuery(0.06, 0.1, 30)
    lib = dp_accounting.rdp.RdpAccountant()
    lib.compose(qa.dp_event(120))
    lib.compose(qb.dp_event(45))
    lib.compose(qa.dp_event(80))
    eps, order = lib.get_epsilon_and_optimal_order(1e-6)
    rep = compute_epsilon([(qa, 200), (qb, 45)], 1e-6, "rdp")
    assert rep.epsilon == pytest.approx(eps, rel=1e-10) and rep.order == order and rep.groups == 2


@pytest.mark.integration
@_fast
@given(
    q=st.tuples(_sigmas, _rates, _ks),
    na=st.integers(1, 800),
    nb=st.integers(1, 800),
    acc=st.sampled_from(["rdp", "pld"]),
)
@example(q=(0.5, 0.001953125, 26), na=1, nb=129, acc="pld")  # tiny ε: library rounds twice
@example(q=(0.033012320472807784, 0.19789044901959063, 1), na=183, nb=183, acc="pld")  # PLD → RDP fallback
@example(q=(0.212, 0.0447, 1), na=1, nb=794, acc="pld")  # PLD → RDP fallback
def test_split_homogeneous_history_equals_library_composition(q, na, nb, acc):
    """Equal queries charged in two batches cost the same as dp-accounting composing them apart."""
    query = DPRDMQuery(*q)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OrderOnEdgeWarning)
        rep = compute_epsilon([(query, na), (query, nb)], 1e-6, acc)
    if rep.fallback == "rdp":
        # At tiny z = σk/2 the PLD grid would not fit in memory (test_pld_stays_bounded_...), so
        # the documented fallback reports the RDP bound: valid, looser. The library's PLD at 1e-3
        # is no comparison there (a random draw, z = 0.017 with 183 + 183 queries, ran 193 s for
        # ε = 2.0e5 vs our RDP 7.3e5), so check the fallback is exactly the RDP accountant's value.
        assert rep.epsilon == pytest.approx(compute_epsilon([(query, na + nb)], 1e-6, "rdp").epsilon, rel=1e-12)
        return
    lib = (
        dp_accounting.rdp.RdpAccountant()
        if acc == "rdp"
        else dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)
    )
    lib.compose(dp_accounting.ComposedDpEvent([query.dp_event(na), query.dp_event(nb)]))
    ours, expected = rep.epsilon, lib.get_epsilon(1e-6)
    if acc == "rdp":
        assert ours == pytest.approx(expected, rel=2e-3, abs=2e-3)
        return
    # Both are pessimistic PLD bounds. We merge equal queries into one group and self-compose it
    # once; the library rounds each of the two events separately, so at tiny ε its bound can sit
    # a few grid steps higher (seen: 0.0160 vs 0.0180 at q=0.002, z=6.5, 1+129 queries, while a
    # 1e-4 grid gives 0.0110). Ours may be lower by that rounding, never higher than the library.
    assert ours <= expected * (1 + 2e-3) + 2e-3
    assert ours >= expected * (1 - 2e-3) - 4 * rep.pld_discretization
