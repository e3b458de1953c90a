"""The ledger benchmark runs end to end at CI size and reports consistent numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_ledger_benchmark_quick_runs_and_writes_json(tmp_path):
    out = tmp_path / "ledger.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ledger.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ratio long-history / empty" in proc.stdout and "ratio pld / paper" in proc.stdout
    result = json.loads(out.read_text())
    assert result["settings"]["quick"] is True
    hist = result["history"]
    assert hist["queries"] == 1000 + result["settings"]["repeats"] and hist["groups"] == 8
    lat = result["charge_latency_ms"]
    assert len(lat["full_all"]) == len(lat["empty_all"]) == result["settings"]["repeats"]
    assert result["ratio_full_over_empty"] == lat["full_median"] / lat["empty_median"]
    answered = result["queries_at_target"]
    assert answered["pld"]["value"] > answered["paper"]["value"] > 1000  # paper's figure used T = 1000
    assert all(a["epsilon"] <= 10 for a in answered.values())
    assert result["ratio_pld_over_paper_queries"] == answered["pld"]["value"] / answered["paper"]["value"]


@pytest.mark.integration
def test_ledger_benchmark_compares_concurrent_charging_old_and_new(tmp_path):
    out = tmp_path / "ledger.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ledger.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ratio longest charge old / new" in proc.stdout
    conc = json.loads(out.read_text())["concurrent_chargers"]
    n = 4 * 3 + 8  # 4 chargers × 3 charges on top of one query per group
    assert conc["old"]["queries"] == conc["new"]["queries"] == n
    assert conc["ratio_max_old_over_new"] == conc["old"]["max_s"] / conc["new"]["max_s"]
