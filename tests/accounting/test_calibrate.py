"""Calibration: §4.7 cells, one-sidedness (never above target), tightness, unreachable targets."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privdiff.accounting import DPRDMQuery, OrderOnEdgeWarning, compute_epsilon
from privdiff.accounting.calibrate import (
    calibrate,
    solve_k,
    solve_queries,
    solve_sample_rate,
    solve_sigma,
)
from privdiff.errors import InvalidParameter


@pytest.mark.parametrize(
    "sigma,k,T,N,q_expected",
    [
        pytest.param(0.05, 20, 1000, 82_800, 5.5e-3, id="mscoco-s0.05-T1e3"),
        pytest.param(0.05, 20, 10_000, 82_800, 1.9e-3, id="mscoco-s0.05-T1e4"),
        pytest.param(0.04, 20, 1000, 82_800, 1.4e-3, id="mscoco-s0.04-T1e3"),
        pytest.param(0.05, 20, 1000, 239_000_000, 2.2e-3, id="shutterstock-s0.05-T1e3"),
    ],
)
def test_largest_sample_rate_reproduces_method_note_table(sigma, k, T, N, q_expected):
    cal = solve_sample_rate(10, 1 / N, sigma=sigma, k=k, queries=T, accountant="paper")
    assert cal.value == pytest.approx(q_expected, rel=0.05)  # the table shows 2 significant digits
    assert cal.epsilon <= 10 and cal.epsilon == pytest.approx(10, abs=1e-3)
    assert cal.parameter == "sample_rate" and cal.sample_rate == cal.value


def test_pld_answers_more_queries_than_the_paper_accountant_on_cifar10():
    kw = dict(sigma=0.05, sample_rate=0.01, k=23)
    paper = solve_queries(10, 1 / 50_000, accountant="paper", **kw)
    pld = solve_queries(10, 1 / 50_000, accountant="pld", **kw)
    # §4.6: the CIFAR-10 figure (T=1000) is at ε=9.443 under the paper's accountant.
    assert 1000 < paper.value < pld.value
    assert compute_epsilon([(DPRDMQuery(**kw), paper.value + 1)], 1 / 50_000, "paper").epsilon > 10
    assert compute_epsilon([(DPRDMQuery(**kw), pld.value + 1)], 1 / 50_000, "pld").epsilon > 10


def test_solved_sigma_is_smallest_safe_value():
    cal = solve_sigma(5, 1e-5, sample_rate=0.02, k=10, queries=500, accountant="rdp")
    assert cal.epsilon <= 5
    slightly_less = compute_epsilon([(DPRDMQuery(cal.value * (1 - 1e-5), 0.02, 10), 500)], 1e-5, "rdp")
    assert slightly_less.epsilon > 5


def test_solved_k_is_smallest_safe_integer():
    cal = solve_k(3, 1e-5, sigma=0.1, sample_rate=0.05, queries=300, accountant="pld")
    assert isinstance(cal.value, int) and cal.epsilon <= 3
    assert compute_epsilon([(DPRDMQuery(0.1, 0.05, cal.value - 1), 300)], 1e-5, "pld").epsilon > 3


def test_whole_range_safe_returns_the_extreme():
    # One very noisy query: even q = 1 is within the target.
    cal = solve_sample_rate(10, 1e-5, sigma=5.0, k=20, queries=1, accountant="rdp")
    assert cal.value == 1.0 and cal.epsilon <= 10


def test_unreachable_target_is_a_typed_error_naming_the_best_epsilon():
    with pytest.raises(InvalidParameter) as ei:
        solve_sigma(1e-3, 1e-5, sample_rate=1.0, k=1, queries=10**6, accountant="rdp", bounds=(1e-3, 1.0))
    assert ei.value.name == "target_epsilon" and "best there is" in str(ei.value)
    # For T the safe end is T = 0 (ε = 0), so "not even one query" is an answer, not an error.
    none = solve_queries(1e-3, 1e-5, sigma=0.01, sample_rate=1.0, k=1, accountant="rdp")
    assert none.value == 0 and none.epsilon == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(solve="tau", target_epsilon=1, delta=1e-5, sigma=1, sample_rate=0.1, k=1),
        dict(solve="k", target_epsilon=1, delta=1e-5, sigma=1, sample_rate=0.1, k=3, queries=10),
        dict(solve="k", target_epsilon=1, delta=1e-5, sigma=1, sample_rate=0.1),
        dict(solve="k", target_epsilon=-1, delta=1e-5, sigma=1, sample_rate=0.1, queries=10),
        dict(solve="sigma", target_epsilon=1, delta=1e-5, sample_rate=1.5, k=2, queries=10),
        dict(
            solve="queries",
            target_epsilon=1,
            delta=1e-5,
            sigma=1,
            sample_rate=0.1,
            k=2,
            bounds=(5, 1),
        ),
    ],
)
def test_bad_calibration_requests_are_rejected(kwargs):
    with pytest.raises(InvalidParameter):
        calibrate(**kwargs)


@pytest.mark.integration
@settings(max_examples=10, deadline=None)
@given(
    solve=st.sampled_from(["sigma", "sample_rate", "k", "queries"]),
    target=st.floats(0.5, 20),
    sigma=st.floats(0.03, 0.5),
    q=st.floats(1e-3, 0.2),
    k=st.integers(2, 40),
    T=st.integers(1, 2000),
    accountant=st.sampled_from(["rdp", "pld"]),
)
def test_calibration_never_exceeds_the_target(solve, target, sigma, q, k, T, accountant):
    params = {"sigma": sigma, "sample_rate": q, "k": k, "queries": T}
    params.pop(solve)
    try:
        cal = calibrate(solve, target_epsilon=target, delta=1e-6, accountant=accountant, **params)
    except InvalidParameter as exc:
        assert exc.name == "target_epsilon"  # unreachable in range is the only allowed refusal
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OrderOnEdgeWarning)
        rechecked = compute_epsilon([(cal.query, cal.queries)], 1e-6, accountant).epsilon
    assert rechecked == cal.epsilon <= target
