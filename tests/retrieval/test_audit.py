"""The canary audit: a valid lower bound for the real mechanism, and it catches broken ones.

The DP randomness is OS-seeded by design, so these tests are randomised. Settings are chosen with
wide margins (checked by simulating the audit on the exact Gaussian model: the half-noise audit at
150k runs stayed above the accountant's ε in 150/150 trials, minimum margin 0.6).
"""

import json

import numpy as np
import pytest

from privdiff.errors import InvalidParameter
from privdiff.evaluation.audit import (
    MECHANISMS,
    HalfNoise,
    audit_retrieval,
    clopper_pearson_upper,
    epsilon_lower_bound,
    write_audit_report,
)
from privdiff.retrieval import DPRetriever, ExactTopK
from privdiff.retrieval.private import PadWithLastRecord


def test_clopper_pearson_upper_bound_matches_closed_forms():
    n, alpha = 200, 0.05
    # x = 0: the bound solves (1 - p)^n = alpha.
    assert clopper_pearson_upper(0, n, alpha) == pytest.approx(1 - alpha ** (1 / n), rel=1e-9)
    # In general the one-sided upper bound solves P(X <= x; p_hi) = alpha.
    from scipy import stats

    for x in (1, 17, 150):
        p_hi = float(clopper_pearson_upper(x, n, alpha))
        assert stats.binom.cdf(x, n, p_hi) == pytest.approx(alpha, rel=1e-6)
    assert clopper_pearson_upper(n, n, alpha) == 1.0


def test_epsilon_lower_bound_for_perfect_separation_follows_the_formula():
    n, delta, alpha = 1000, 1e-5, 0.05
    null = np.zeros(n)
    alt = np.ones(n)
    eps, fpr, fnr = epsilon_lower_bound(null, alt, np.array([0.5]), delta, alpha)
    hi = 1 - (alpha / 2) ** (1 / n)  # CP upper bound for 0 errors at level alpha/2
    assert (fpr[0], fnr[0]) == (0.0, 0.0)
    assert eps[0] == pytest.approx(np.log((1 - delta - hi) / hi), rel=1e-9)


def test_epsilon_lower_bound_is_zero_for_identical_distributions():
    rng = np.random.default_rng(0)
    s = rng.standard_normal(4000)
    eps, _, _ = epsilon_lower_bound(s[:2000], s[2000:], np.quantile(s, [0.1, 0.5, 0.9]), 1e-5)
    assert (eps < 0.3).all()


@pytest.mark.integration
def test_real_mechanism_without_subsampling_stays_below_the_accountant():
    res = audit_retrieval(sigma=0.3, sample_rate=1.0, k=10, runs=40000, delta=1e-5)
    assert res.noise_multiplier == pytest.approx(1.5)
    assert 0.0 < res.epsilon_hat <= res.epsilon_accountant
    assert res.epsilon_hat <= res.epsilon_accountant_paper
    assert res.passed
    assert res.queries_charged == 2 * 40000  # every release went through the real ledger


@pytest.mark.integration
def test_real_mechanism_with_subsampling_stays_below_the_accountant():
    res = audit_retrieval(sigma=0.2, sample_rate=0.2, k=5, runs=10000, n_records=200, delta=1e-5)
    assert res.epsilon_hat <= res.epsilon_accountant
    assert res.passed


def test_audit_flags_padding_with_the_last_private_record():
    # q·N = 0.5 << k: almost every subsample is padded, and the broken pad is the canary.
    res = audit_retrieval(
        sigma=0.2,
        sample_rate=0.05,
        k=10,
        runs=5000,
        n_records=10,
        mechanism="broken-pad-last-record",
    )
    assert res.epsilon_hat > 2 * res.epsilon_accountant
    assert not res.passed
    # The same setting with the real (zero-padding) mechanism passes.
    ok = audit_retrieval(sigma=0.2, sample_rate=0.05, k=10, runs=5000, n_records=10)
    assert ok.passed


@pytest.mark.integration
def test_audit_flags_a_mechanism_that_adds_half_the_noise():
    res = audit_retrieval(sigma=0.3, sample_rate=1.0, k=10, runs=150000, mechanism="broken-half-noise")
    assert res.epsilon_hat > res.epsilon_accountant
    assert not res.passed


def test_broken_variants_are_composed_from_the_real_retriever_not_subclasses_of_it():
    assert set(MECHANISMS) == {"dp", "broken-pad-last-record", "broken-half-noise"}
    assert MECHANISMS["dp"] == {}  # the real mechanism: DPRetriever with its default strategies
    assert isinstance(MECHANISMS["broken-half-noise"]["noise"], HalfNoise)
    assert isinstance(MECHANISMS["broken-pad-last-record"]["padding"], PadWithLastRecord)
    import inspect

    # No seed, no mechanism-name switch: the steps are objects, and the defaults are the real ones.
    params = inspect.signature(DPRetriever.__init__).parameters
    assert set(params) == {
        "self",
        "backend",
        "k",
        "sigma",
        "sample_rate",
        "ledger",
        "query_space",
        "noise",
        "padding",
    }
    assert params["noise"].default is None and params["padding"].default is None


def test_broken_strategies_do_what_their_names_say(recording_ledger):
    from privdiff.retrieval import EmbeddingIndex

    assert np.allclose(np.std(HalfNoise().sample((200000,), 0.3, np.random.default_rng(0))), 0.15, rtol=0.01)
    # N = 3 records, q = 1, k = 5: 2 empty slots, filled with the last record by the broken padding.
    rows = np.eye(4, dtype=np.float32)[:3]
    index = EmbeddingIndex.from_embeddings(rows, space_id="s/v1")
    sums = np.tile(rows.sum(axis=0, dtype=np.float64), (2, 1))
    padded = PadWithLastRecord().complete(sums, np.array([3, 3]), 5, ExactTopK(index))
    np.testing.assert_allclose(padded, np.tile(rows.sum(axis=0) + 2 * rows[-1], (2, 1)))
    r = DPRetriever(
        index,
        k=5,
        sigma=0.1,
        sample_rate=1.0,
        ledger=recording_ledger,
        **MECHANISMS["broken-pad-last-record"],
    )
    assert "PadWithLastRecord(BROKEN)" in repr(r)


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"mechanism": "nope"}, "mechanism"),
        ({"runs": 10}, "runs"),
        ({"sigma": 0.0}, "sigma"),
        ({"sample_rate": 2.0}, "sample_rate"),
        ({"delta": 1.0}, "delta"),
        ({"confidence": 1.0}, "confidence"),
    ],
)
def test_invalid_audit_settings_are_refused(kw, name):
    args = {"sigma": 0.3, "sample_rate": 1.0, "k": 10, "runs": 1000} | kw
    with pytest.raises(InvalidParameter, match=name):
        audit_retrieval(**args)


def test_report_writes_json_with_settings_and_a_png(tmp_path):
    res = audit_retrieval(sigma=0.3, sample_rate=1.0, k=10, runs=2000)
    jp, pp = write_audit_report([res], tmp_path)
    data = json.loads(jp.read_text())
    (a,) = data["audits"]
    assert a["sigma"] == 0.3 and a["runs"] == 2000 and a["mechanism"] == "dp"
    assert len(a["curves"]["epsilon_hat"]) == len(a["curves"]["threshold"]) > 10
    assert pp.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_suite_is_ok_when_real_mechanism_passes_and_broken_control_is_flagged():
    from privdiff.evaluation.audit import run_suite

    suite = (
        {
            "mechanism": "dp",
            "sigma": 0.2,
            "sample_rate": 0.05,
            "k": 10,
            "n_records": 10,
            "runs": 3000,
            "expect_pass": True,
        },
        {
            "mechanism": "broken-pad-last-record",
            "sigma": 0.2,
            "sample_rate": 0.05,
            "k": 10,
            "n_records": 10,
            "runs": 3000,
            "expect_pass": False,
        },
    )
    results, ok = run_suite(suite)
    assert ok and [r.passed for r in results] == [True, False]
    # A suite whose expectation is not met is reported as not ok.
    _, ok_wrong = run_suite(({**suite[0], "expect_pass": False},))
    assert not ok_wrong


@pytest.mark.slow
def test_standard_suite_passes_at_full_size(tmp_path):
    from privdiff.cli import main

    assert main(["audit", "retrieval", "--suite", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "audit.json").read_text())
    assert len(data["audits"]) == 5
