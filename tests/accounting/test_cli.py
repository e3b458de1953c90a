"""CLI: `privdiff account …`, `privdiff budget …`, `privdiff demo` (exit codes, JSON, files)."""

from __future__ import annotations

import json

import pytest

from privdiff.accounting import DPRDMQuery, Ledger
from privdiff.cli import main

GOLDEN = [
    "--sigma",
    "0.2",
    "--sample-rate",
    "0.01",
    "--k",
    "18",
    "--queries",
    "1000",
    "--delta",
    "1e-7",
]


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_account_epsilon_json_reproduces_the_paper_test_vector(capsys):
    assert main(["account", "epsilon", *GOLDEN, "--accountant", "paper", "--json"]) == 0
    out = _json(capsys)
    assert out["epsilon"] == pytest.approx(0.99688, abs=1e-5) and out["order"] == 25.0
    assert out["noise_multiplier"] == pytest.approx(1.8) and out["accountant"] == "paper"
    assert out["delta"] == 1e-7 and out["queries"] == 1000


def test_account_epsilon_all_accountants_human_and_json(capsys):
    assert main(["account", "epsilon", *GOLDEN, "--accountant", "all"]) == 0
    text = capsys.readouterr().out
    assert "paper" in text and "pld" in text and "0.996879" in text
    assert main(["account", "epsilon", *GOLDEN, "--accountant", "all", "--json"]) == 0
    results = _json(capsys)["results"]
    assert [r["accountant"] for r in results] == ["paper", "rdp", "pld"]
    assert results[2]["epsilon"] < results[0]["epsilon"]


def test_account_epsilon_dataset_size_sets_delta_to_one_over_n(capsys):
    args = [
        "account",
        "epsilon",
        "--sigma",
        "0.05",
        "--sample-rate",
        "0.01",
        "--k",
        "23",
        "--queries",
        "1000",
        "--dataset-size",
        "50000",
        "--accountant",
        "paper",
        "--json",
    ]
    assert main(args) == 0
    out = _json(capsys)
    assert out["delta"] == pytest.approx(2e-5) and out["epsilon"] == pytest.approx(9.443, abs=6e-4)


@pytest.mark.parametrize(
    "flag,value,name",
    [
        ("--sigma", "0", "sigma"),
        ("--sigma", "nan", "sigma"),
        ("--sample-rate", "1.5", "sample_rate"),
        ("--sample-rate", "0", "sample_rate"),
        ("--k", "0", "k"),
        ("--queries", "-1", "queries"),
        ("--delta", "1", "delta"),
        ("--delta", "0", "delta"),
    ],
)
def test_account_epsilon_bad_parameters_exit_2_naming_them(capsys, flag, value, name):
    args = list(GOLDEN)
    args[args.index(flag) + 1] = value
    assert main(["account", "epsilon", *args]) == 2
    err = capsys.readouterr().err
    assert f"invalid {name}=" in err and "must be" in err


def test_account_calibrate_sample_rate_json(capsys):
    args = [
        "account",
        "calibrate",
        "--target-epsilon",
        "10",
        "--dataset-size",
        "82800",
        "--solve",
        "sample-rate",
        "--sigma",
        "0.05",
        "--k",
        "20",
        "--queries",
        "1000",
        "--accountant",
        "paper",
        "--json",
    ]
    assert main(args) == 0
    out = _json(capsys)
    assert out["parameter"] == "sample_rate" and out["value"] == pytest.approx(5.5e-3, rel=0.05)
    assert out["epsilon"] <= 10 and out["sample_rate"] == out["value"]


def test_account_calibrate_unreachable_and_malformed_requests_exit_2(capsys):
    unreachable = [
        "account",
        "calibrate",
        "--target-epsilon",
        "0.001",
        "--delta",
        "1e-5",
        "--solve",
        "k",
        "--sigma",
        "0.01",
        "--sample-rate",
        "1",
        "--queries",
        "100000",
        "--max",
        "50",
        "--accountant",
        "rdp",
    ]
    assert main(unreachable) == 2
    assert "target_epsilon" in capsys.readouterr().err
    missing = [
        "account",
        "calibrate",
        "--target-epsilon",
        "1",
        "--delta",
        "1e-5",
        "--solve",
        "k",
        "--sigma",
        "0.1",
    ]
    assert main(missing) == 2
    assert (
        main(
            [
                "account",
                "calibrate",
                "--target-epsilon",
                "1",
                "--delta",
                "1e-5",
                "--solve",
                "lambda",
            ]
        )
        == 2
    )


def test_account_curve_writes_png_and_json(tmp_path, capsys):
    args = [
        "account",
        "curve",
        "--sigma",
        "0.05",
        "--sample-rate",
        "0.01",
        "--k",
        "23",
        "--dataset-size",
        "50000",
        "--max-queries",
        "2000",
        "--points",
        "5",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    record = json.loads((tmp_path / "epsilon_vs_queries.json").read_text())
    assert set(record["curves"]) == {"paper", "rdp", "pld"}
    paper = record["curves"]["paper"]
    assert paper[-1]["queries"] == 2000 and [p["epsilon"] for p in paper] == sorted(p["epsilon"] for p in paper)
    assert (tmp_path / "epsilon_vs_queries.png").read_bytes()[:4] == b"\x89PNG"


def test_budget_init_status_history_preview(tmp_path, capsys):
    path = tmp_path / "ledger.sqlite"
    assert (
        main(
            [
                "budget",
                "init",
                str(path),
                "--epsilon",
                "10",
                "--delta",
                "1e-5",
                "--dataset",
                "cifar10",
                "--json",
            ]
        )
        == 0
    )
    assert _json(capsys)["epsilon_budget"] == 10.0
    with Ledger.open(path) as led:
        led.charge(DPRDMQuery(0.05, 0.01, 23), count=100, request_id="first")
        led.charge(DPRDMQuery(0.05, 0.01, 23), request_id="second")
        spent = led.status().epsilon_spent
    assert main(["budget", "status", str(path), "--json"]) == 0
    st = _json(capsys)
    assert st["queries"] == 101 and st["epsilon_spent"] == pytest.approx(spent) and st["dataset"] == "cifar10"
    assert main(["budget", "history", str(path), "--json", "--limit", "1"]) == 0
    assert [h["request_id"] for h in _json(capsys)] == ["second"]
    assert main(["budget", "history", str(path)]) == 0
    assert "first" in capsys.readouterr().out
    assert (
        main(
            [
                "budget",
                "preview",
                str(path),
                "--sigma",
                "0.05",
                "--sample-rate",
                "0.01",
                "--k",
                "23",
                "--queries",
                "10000",
                "--json",
            ]
        )
        == 0
    )
    prev = _json(capsys)
    assert prev["fits"] is False and prev["epsilon_after"] > 10
    assert main(["budget", "status", str(path), "--json"]) == 0
    assert _json(capsys)["queries"] == 101  # preview charged nothing


def test_budget_errors_exit_codes(tmp_path, capsys):
    path = tmp_path / "ledger.sqlite"
    assert main(["budget", "init", str(path), "--epsilon", "-1", "--delta", "1e-5"]) == 2
    assert not path.exists()
    assert main(["budget", "init", str(path), "--epsilon", "1", "--delta", "1e-5"]) == 0
    # LedgerError (exists, missing, not a ledger) has its own exit code, 4 (privdiff.cli docstring).
    assert main(["budget", "init", str(path), "--epsilon", "1", "--delta", "1e-5"]) == 4  # exists
    assert main(["budget", "status", str(tmp_path / "missing.sqlite")]) == 4
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a ledger" * 20)
    assert main(["budget", "history", str(garbage)]) == 4
    assert "not a privdiff ledger" in capsys.readouterr().err


@pytest.mark.integration
def test_demo_quick_writes_planner_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--out",
                str(out),
                "--quick",
                "--only",
                "planner",
                "--cache-dir",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    record = json.loads((out / "planner" / "planner.json").read_text())
    assert record["command"] == f"privdiff demo --out {out} --cache-dir {tmp_path / 'c'} --quick --only planner"
    names = [s["name"] for s in record["settings"]]
    assert names == ["Shutterstock", "MS-COCO FB", "CIFAR-10"]
    for s in record["settings"]:
        assert s["epsilon_at_figure_queries"]["paper"]["epsilon"] == pytest.approx(
            s["epsilon_paper_method_note"], abs=6e-4
        )
        ans = s["queries_at_target"]
        assert ans["pld"]["queries"] > ans["paper"]["queries"] >= 1
        assert all(a["epsilon"] <= 10 for a in ans.values())
    for png in record["figures"]:
        assert (out / "planner" / png).read_bytes()[:4] == b"\x89PNG"
    assert "CIFAR-10" in capsys.readouterr().out
