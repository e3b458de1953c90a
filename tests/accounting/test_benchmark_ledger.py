"""The ledger benchmark runs end to end at CI size and reports consistent numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_ledger_benchmark_quick_runs_and_writes_json_and_png(tmp_path):
    out = tmp_path / "ledger.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ledger.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in ("ratio charge / plain transaction", "ratio max/min charges per process", "ratio pld / paper"):
        assert line in proc.stdout
    assert out.with_suffix(".png").stat().st_size > 0
    result = json.loads(out.read_text())
    s = result["settings"]
    assert s["quick"] is True
    single = result["single_process"]
    plain = single["plain"]["median_ms"]
    for key in ("pld_one_setting", "pld_mixed", "rdp_mixed"):
        r = single[key]
        assert r["n"] == s["charges"]
        assert r["queries"] == s["history"] + s["charges"]
        assert r["latency_over_plain"] == r["median_ms"] / plain
        # The reported ε is an upper bound on the exact one (ceiling); the RDP ledger is exact.
        assert r["reported_over_exact"] >= 1 - 1e-9
    assert single["rdp_mixed"]["reported_over_exact"] == pytest.approx(1.0, rel=1e-9)
    assert single["pld_exact_every_charge"]["n"] == s["exact_charges"]
    for mode, tickets in (("with_tickets", True), ("without_tickets", False)):
        c = result["concurrent"][mode]
        assert c["tickets"] is tickets and len(c["per_process_counts"]) == s["chargers"]
        assert c["max_over_min"] == c["per_process_counts"][-1] / max(c["per_process_counts"][0], 1)
        assert c["wait_p50_ms"] <= c["wait_p99_ms"] <= c["wait_max_ms"]
    answered = result["queries_at_target"]
    assert answered["pld"]["value"] > answered["paper"]["value"] > 1000  # paper's figure used T = 1000
    assert all(a["epsilon"] <= 10 for a in answered.values())
    assert result["ratio_pld_over_paper_queries"] == answered["pld"]["value"] / answered["paper"]["value"]
