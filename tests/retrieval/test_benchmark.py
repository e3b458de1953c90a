"""The retrieval benchmark runs end to end at a CI size and agrees with the authors' search."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_benchmark_smoke_run_prints_ratio_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "retrieval.py"),
            "--n",
            "5000",
            "--d",
            "32",
            "--queries",
            "8",
            "--k",
            "5",
            "--q",
            "0.05",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "speed-up privdiff / authors" in proc.stdout
    res = json.loads(out.read_text())
    assert res["same_topk_on_shared_subsample"] is True
    assert res["settings"] == {
        "n": 5000,
        "d": 32,
        "sample_rate": 0.05,
        "k": 5,
        "queries": 8,
        "repeats": 1,
        "seed": 0,
        "threads": 1,
    }
    assert [r["qps"] > 0 for r in res["results"]] == [True, True, True]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.integration
def test_sharded_benchmark_smoke_run_writes_json_plot_and_model_check(tmp_path):
    out = tmp_path / "sharded.json"
    args = ["--n", "8000", "--d", "32", "--batch", "8", "--repeats", "1", "--shards", "1,2"]
    args += ["--check-n", "16000", "--check-shards", "2", "--no-ray", "--workdir", str(tmp_path), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sharded.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert [r["shards"] for r in res["shard_count"]["rows"]] == [1, 2]
    assert res["check"]["in_process_model_s_per_query"] > 0 and res["check"]["in_process_measured_s_per_query"] > 0
    assert set(res["predictions"]) == {"N = 1e+08", "N = 2.39e+08"}
    assert all(p["memory_per_node_GB"] > 0 and p["latency_s"] > 0 for ps in res["predictions"].values() for p in ps)
    assert out.with_suffix(".png").stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("privdiff-sharded-")]  # shard files removed


@pytest.mark.integration
def test_scan_benchmark_smoke_run_checks_exactness_and_writes_ratios(tmp_path):
    out = tmp_path / "scan.json"
    args = ["--n", "5000", "--d", "32", "--queries", "8", "--k", "5", "--q", "0.05", "--repeats", "1"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scan.py"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert all(res["checks"].values()), res["checks"]
    assert {"float32_vs_authors", "float32_vs_before", "float16_vs_float32", "int8_vs_float32"} <= set(
        res["ratios_cpu"]
    )
    assert res["index_bytes"]["float16_scan_copy"] * 2 == res["index_bytes"]["float32"]
    # int8 codes (a quarter of the float32 bytes) plus one float32 scale per row
    assert res["index_bytes"]["int8_scan_copy"] == res["index_bytes"]["float32"] // 4 + 4 * 5000
    assert res["int8_breakdown"]["rerank_candidates"] >= 5 * 8  # at least the k winners of every query
    assert set(res["int8_kernel"]["ns_per_pair"]) >= {"int8_x_int16", "row_buffer", "two_queries_per_row"}
    assert out.with_suffix(".png").is_file()
