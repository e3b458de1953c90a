"""Sharded private retrieval: queries/s against shard count, the driver's merge cost, a cost model.

Measured on this machine, in one run (``privdiff.retrieval.private.sharded``):

1. **Shard count** (N = ``--n``, float32): queries/s of the single-node ``ExactTopK`` and of the
   sharded backends for S shards: ``ShardedTopK`` (one process, shards in turn: the price of
   sharding itself) and ``RayShardedTopK`` (one actor per shard on a local Ray with ``--ray-cpus``
   CPUs: the parallel speed-up this machine allows).
2. **Merge cost**: the driver's ``merge_candidates`` for S = 1 … 256 shards (per query).
3. **Per-shard scan**: ``shard_candidates`` on shards of n rows (float32 and float16): CPU time per
   query against q·n (the sampled rows each query scores), fitted as t = a + b·q·n.
4. **Cost model** (below) fitted from 2 and 3, predicting per-query latency and memory at
   N = 10⁸ and 2.39·10⁸ on M nodes, then **checked** on the largest N this machine holds
   (``--check-n``, float16 shards, ≤ ~4 GB) by running it.

Cost model (one query; a batch of B divides the per-query terms that are not fixed costs):

    node_time  = b · q · (N / M) / min(cores, bandwidth_cores)   (each node scans its shards in parallel)
    transfer   = S · k · (4d + 12) bytes / network bandwidth      (every shard returns k rows + scores + ids)
    latency    = a + node_time + RTT + ray_call + transfer + merge(S)   (ray_call: measured here)
    memory/node = (N / M) · d · bytes_per_value                    (memory-mapped shards in page cache)

``bandwidth_cores`` caps the parallel speed-up at the node's memory bandwidth: one core scoring
sampled rows streams b⁻¹·d·bytes per second, so a node with bandwidth W saturates at
W / (b⁻¹·d·bytes) cores. Assumptions (stated in the JSON): W = 20 GB/s per node, 16 cores per
node, a 10 Gbit/s network with 0.2 ms RTT, S = 16·M shards (one per core), d = 512 float16.

Usage::

    python benchmarks/sharded.py                      # the full run (several minutes, ~4 GB disk)
    python benchmarks/sharded.py --n 20000 --d 64 --check-n 40000 --no-ray --out /tmp/s.json   # smoke
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ASSUMPTIONS = {
    "node_memory_bandwidth_GBps": 20.0,
    "cores_per_node": 16,
    "network_Gbps": 10.0,
    "rtt_ms": 0.2,
    "shards_per_node": 16,
    "d": 512,
    "dtype": "float16",
    "k": 20,
    "q": 0.01,
}


def _write_sharded(out: Path, n: int, d: int, shards: int, dtype: str, seed: int) -> None:
    """A sharded index of N random unit rows, streamed (never held whole), in privdiff's format.

    The parent manifest describes the float32 index these rows would form (its sha256 is computed
    over that stream), so the result is exactly what ``shard_index`` writes for such an index.
    """
    from privdiff.retrieval.private import sharded as sh
    from privdiff.retrieval.private.index import FORMAT_NAME, FORMAT_VERSION, VECTORS_FILE, IndexManifest

    out.mkdir(parents=True)
    header32 = sh._npy_header(n, d, np.dtype(np.float32))
    parent_hash = hashlib.sha256(header32)
    bounds = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(n), shards)])
    rng = np.random.default_rng(seed)
    infos = []
    for i in range(shards):
        start, stop = int(bounds[i]), int(bounds[i + 1])
        path = out / sh._shard_name(i)
        head = sh._npy_header(stop - start, d, np.dtype(dtype))
        h = hashlib.sha256(head)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(head)
            for s in range(start, stop, 65536):
                x = rng.standard_normal((min(65536, stop - s), d), dtype=np.float32)
                x /= np.linalg.norm(x, axis=1, keepdims=True)
                parent_hash.update(x.tobytes())
                block = x.astype(dtype).tobytes()
                f.write(block)
                h.update(block)
        infos.append(
            sh.ShardInfo(
                file=path.name, start=start, count=stop - start, bytes=path.stat().st_size, sha256=h.hexdigest()
            )
        )
    parent = IndexManifest(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        space_id="bench-random/v1",
        dim=d,
        count=n,
        dtype="float32",
        vectors_file=VECTORS_FILE,
        vectors_bytes=len(header32) + n * d * 4,
        sha256=parent_hash.hexdigest(),
        created_utc=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        source=f"random:{n}x{d}:seed{seed}",
        visibility="private",
    )
    record = {
        "format": sh.SHARDED_FORMAT,
        "format_version": sh.SHARDED_FORMAT_VERSION,
        "dtype": dtype,
        "parent": parent.to_dict(),
        "shards": [vars(s) for s in infos],
    }
    (out / sh.SHARDED_MANIFEST_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _queries(b: int, d: int, seed: int = 99) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((b, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _rate(backend, queries, k, q, repeats) -> dict:
    """Queries/s (wall and driver CPU) of ``backend.topk_sums`` over ``repeats`` batches."""
    rng = np.random.default_rng(0)
    backend.topk_sums(queries[:2], k, q, rng)  # warm: page cache, actor start, faiss threads
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        backend.topk_sums(queries, k, q, rng)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    total = repeats * queries.shape[0]
    return {"queries_per_s": total / wall, "queries_per_driver_cpu_s": total / max(cpu, 1e-9), "wall_s": wall}


def shard_count_sweep(root: Path, n, d, k, q, batch, repeats, shard_counts, ray_cpus, use_ray) -> dict:
    from privdiff.retrieval.private import EmbeddingIndex, ExactTopK, RayShardedTopK, ShardedIndex, ShardedTopK

    queries = _queries(batch, d)
    out = {"n": n, "d": d, "k": k, "q": q, "batch": batch, "repeats": repeats, "rows": []}
    # Single node: the same rows as one memory-mapped float32 array (a 1-shard index's only shard).
    one = root / "s1"
    _write_sharded(one, n, d, 1, "float32", seed=1)
    sharded1 = ShardedIndex.open(one)
    rows1 = np.load(one / "shard-0000.npy", mmap_mode="r")
    exact = ExactTopK(EmbeddingIndex(rows1, sharded1.manifest, None))
    out["single_node"] = _rate(exact, queries, k, q, repeats)
    print(f"single node ExactTopK: {out['single_node']['queries_per_s']:.0f} q/s", flush=True)
    for s in shard_counts:
        path = root / f"s{s}"
        if not path.exists():
            _write_sharded(path, n, d, s, "float32", seed=1)  # same rows (same seed), split S ways
        row = {"shards": s, "in_process": _rate(ShardedTopK(path, verify="size"), queries, k, q, repeats)}
        if use_ray:
            backend = RayShardedTopK(path, verify="size")
            try:
                row["ray"] = _rate(backend, queries, k, q, repeats)
            finally:
                backend.close()
        out["rows"].append(row)
        ray_s = f", Ray {row['ray']['queries_per_s']:.0f} q/s" if use_ray else ""
        print(f"S={s}: in-process {row['in_process']['queries_per_s']:.0f} q/s{ray_s}", flush=True)
        if s != 1:
            shutil.rmtree(path)
    return out


def merge_sweep(d, k, batch, shard_counts) -> dict:
    from privdiff.retrieval.private.sharded import merge_candidates

    rng = np.random.default_rng(0)
    rows = []
    for s in shard_counts:
        parts = []
        for i in range(s):
            scores = np.sort(rng.random((batch, k), dtype=np.float32), axis=1)
            ids = np.tile(np.arange(i * k, (i + 1) * k, dtype=np.int64), (batch, 1))
            vec = rng.standard_normal((batch, k, d), dtype=np.float32) / np.sqrt(d)
            parts.append((scores, ids, vec))
        reps = max(1, 200 // s)
        c0 = time.process_time()
        for _ in range(reps):
            merge_candidates(parts, k)
        per_query = (time.process_time() - c0) / (reps * batch)
        rows.append({"shards": s, "merge_s_per_query": per_query})
        print(f"merge S={s}: {per_query * 1e6:.1f} µs/query", flush=True)
    x = np.array([r["shards"] for r in rows], dtype=np.float64)
    y = np.array([r["merge_s_per_query"] for r in rows])
    slope, intercept = np.polyfit(x, y, 1)
    return {"d": d, "k": k, "batch": batch, "rows": rows, "fit": {"per_shard_s": slope, "fixed_s": intercept}}


def scan_sweep(root: Path, d, k, q, batch, sizes) -> dict:
    """CPU time per query of one shard's ``shard_candidates`` against q·n; fit t = a + b·q·n."""
    from privdiff.retrieval.private.sharded import open_shard, shard_candidates

    queries = _queries(batch, d)
    fits = {}
    for dtype in ("float32", "float16"):
        rows = []
        for n in sizes:
            path = root / f"scan-{dtype}-{n}"
            _write_sharded(path, n, d, 1, dtype, seed=2)
            vec, start = open_shard(path, 0, verify="size")
            shard_candidates(vec, start, queries[:4], k, q, np.random.default_rng(0))  # warm the page cache
            reps = 3
            c0 = time.process_time()
            for r in range(reps):
                shard_candidates(vec, start, queries, k, q, np.random.default_rng(r))
            per_query = (time.process_time() - c0) / (reps * batch)
            rows.append({"n": n, "sampled_rows": q * n, "cpu_s_per_query": per_query})
            print(f"scan {dtype} n={n}: {per_query * 1e3:.3f} ms CPU/query", flush=True)
            del vec
            shutil.rmtree(path)
        x = np.array([r["sampled_rows"] for r in rows])
        y = np.array([r["cpu_s_per_query"] for r in rows])
        b, a = np.polyfit(x, y, 1)
        fits[dtype] = {"rows": rows, "fit": {"fixed_s": float(a), "per_sampled_row_s": float(b)}}
    return {"d": d, "k": k, "q": q, "batch": batch, "by_dtype": fits}


def predict(
    n, m, scan_fit, merge_fit, d, k, q, dtype_bytes, a=ASSUMPTIONS, shards_per_node=None, ray_call_s=0.0
) -> dict:
    """The cost model (module docstring) for N records on M nodes; per query, batch of one."""
    spn = shards_per_node or a["shards_per_node"]
    s = spn * m
    b = scan_fit["per_sampled_row_s"]
    per_core_bytes = d * dtype_bytes / b  # bytes/s one core streams while scoring sampled rows
    bandwidth_cores = a["node_memory_bandwidth_GBps"] * 1e9 / per_core_bytes
    cores = min(a["cores_per_node"], spn, bandwidth_cores)
    node = b * q * (n / m) / cores
    transfer = s * k * (4 * d + 12) / (a["network_Gbps"] * 1e9 / 8)
    merge = merge_fit["fixed_s"] + merge_fit["per_shard_s"] * s
    latency = scan_fit["fixed_s"] + node + a["rtt_ms"] / 1e3 + ray_call_s + transfer + merge
    return {
        "n": n,
        "nodes": m,
        "shards": s,
        "effective_cores_per_node": cores,
        "node_scan_s": node,
        "transfer_s": transfer,
        "merge_s": merge,
        "latency_s": latency,
        "memory_per_node_GB": n / m * d * dtype_bytes / 1e9,
        "driver_memory_per_query_MB": s * k * (4 * d + 12) / 1e6,
    }


def check_model(root: Path, n, d, k, q, batch, repeats, shards, scan_fit, merge_fit, ray_cpus, use_ray) -> dict:
    """Run the largest N this machine holds (float16 shards) and compare with the model (M = 1)."""
    from privdiff.retrieval.private import RayShardedTopK, ShardedTopK

    path = root / "check"
    t0 = time.perf_counter()
    _write_sharded(path, n, d, shards, "float16", seed=3)
    write_s = time.perf_counter() - t0
    queries = _queries(batch, d)
    out = {
        "n": n,
        "d": d,
        "shards": shards,
        "dtype": "float16",
        "bytes_on_disk": sum(p.stat().st_size for p in path.glob("shard-*.npy")),
        "write_s": write_s,
    }
    local = _rate(ShardedTopK(path, verify="size"), queries, k, q, repeats)
    out["in_process"] = local
    here = dict(ASSUMPTIONS, cores_per_node=1, node_memory_bandwidth_GBps=1e9)  # measure compute, not bandwidth
    pred1 = predict(n, 1, scan_fit, merge_fit, d, k, q, 2, here, shards_per_node=shards)
    # In one process the shards run in turn and there is no network: model = fixed + scan + merge.
    model_local = scan_fit["fixed_s"] * shards + pred1["node_scan_s"] + pred1["merge_s"]
    out["in_process_model_s_per_query"] = model_local
    out["in_process_measured_s_per_query"] = 1.0 / local["queries_per_driver_cpu_s"]
    print(
        f"check N={n}: in-process {local['queries_per_s']:.0f} q/s, {1e3 / local['queries_per_driver_cpu_s']:.2f} "
        f"ms CPU/query measured vs {model_local * 1e3:.2f} ms model",
        flush=True,
    )
    if use_ray:
        backend = RayShardedTopK(path, verify="size")
        try:
            out["ray"] = _rate(backend, queries, k, q, repeats)
            import ray

            t0 = time.perf_counter()
            for _ in range(20):  # Ray's own cost of one call to every actor (no work): the model's RTT here
                ray.get([a.ping.remote() for a in backend._actors])
            out["ray_call_s"] = (time.perf_counter() - t0) / 20
        finally:
            backend.close()
        cores = min(ray_cpus, shards)
        model_ray = (
            out["ray_call_s"] / batch
            + scan_fit["fixed_s"] * shards / cores
            + pred1["node_scan_s"] / cores
            + pred1["merge_s"]
        )
        out["ray_model_s_per_query"] = model_ray
        out["ray_measured_s_per_query"] = 1.0 / out["ray"]["queries_per_s"]
        print(f"check N={n}: Ray {out['ray']['queries_per_s']:.0f} q/s vs model {1 / model_ray:.0f} q/s", flush=True)
    shutil.rmtree(path)
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    sweep = result["shard_count"]
    s = [r["shards"] for r in sweep["rows"]]
    ax = axes[0]
    ax.plot(s, [r["in_process"]["queries_per_s"] for r in sweep["rows"]], "o-", label="ShardedTopK (one process)")
    if "ray" in sweep["rows"][0]:
        ax.plot(s, [r["ray"]["queries_per_s"] for r in sweep["rows"]], "s-", label=f"Ray ({result['ray_cpus']} CPUs)")
    ax.axhline(sweep["single_node"]["queries_per_s"], color="k", ls="--", label="ExactTopK (single node)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("shards S")
    ax.set_ylabel("queries / s (wall)")
    ax.set_title(f"N = {sweep['n']:,}, d = {sweep['d']}, q = {sweep['q']}, k = {sweep['k']}")
    ax.legend(fontsize=8)
    ax = axes[1]
    m = result["merge"]
    ax.plot([r["shards"] for r in m["rows"]], [r["merge_s_per_query"] * 1e6 for r in m["rows"]], "o-")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("shards S")
    ax.set_ylabel("driver merge, µs / query (CPU)")
    ax.set_title("merge of S·k candidates")
    ax = axes[2]
    for name, preds in result["predictions"].items():
        ms = [p["nodes"] for p in preds]
        ax.plot(ms, [p["latency_s"] * 1e3 for p in preds], "o-", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("nodes M (16 shards each)")
    ax.set_ylabel("predicted latency, ms / query")
    ax.set_title("cost model (assumptions in sharded.json)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=500_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--q", type=float, default=0.01)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--shards", default="1,2,4,8", help="shard counts of the sweep")
    p.add_argument("--check-n", type=int, default=3_900_000, help="largest N run to check the model (float16, ~4 GB)")
    p.add_argument("--check-shards", type=int, default=4)
    p.add_argument("--ray-cpus", type=int, default=2)
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--workdir", default=None, help="where the shard files go (default: a temp dir)")
    p.add_argument("--out", default="docs/results/scale/sharded.json")
    args = p.parse_args(argv)
    use_ray = not args.no_ray
    if use_ray:
        import ray

        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    root = Path(tempfile.mkdtemp(prefix="privdiff-sharded-", dir=args.workdir))
    try:
        shard_counts = [int(x) for x in args.shards.split(",")]
        sweep = shard_count_sweep(
            root, args.n, args.d, args.k, args.q, args.batch, args.repeats, shard_counts, args.ray_cpus, use_ray
        )
        merge = merge_sweep(args.d, args.k, args.batch, [1, 2, 4, 8, 16, 32, 64, 128, 256])
        sizes = [max(1000, args.n // 8), max(2000, args.n // 4), max(4000, args.n // 2), args.n]
        scan = scan_sweep(root, args.d, args.k, args.q, args.batch, sizes)
        fit16 = scan["by_dtype"]["float16"]["fit"]
        check = check_model(
            root,
            args.check_n,
            args.d,
            args.k,
            args.q,
            args.batch,
            args.repeats,
            args.check_shards,
            fit16,
            merge["fit"],
            args.ray_cpus,
            use_ray,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if use_ray:
            ray.shutdown()
    a = ASSUMPTIONS
    predictions = {
        f"N = {n:.3g}": [
            predict(n, m, fit16, merge["fit"], a["d"], a["k"], a["q"], 2, ray_call_s=check.get("ray_call_s", 0.0))
            for m in (1, 2, 4, 8, 16, 32, 64)
        ]
        for n in (1e8, 2.39e8)
    }
    result = {
        "benchmark": "sharded private retrieval",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "assumptions": ASSUMPTIONS,
        "ray_cpus": args.ray_cpus,
        "shard_count": sweep,
        "merge": merge,
        "scan": scan,
        "check": check,
        "predictions": predictions,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    for name, preds in predictions.items():
        for pr in preds:
            print(
                f"{name} on M={pr['nodes']:>2}: {pr['latency_s'] * 1e3:8.2f} ms/query "
                f"(scan {pr['node_scan_s'] * 1e3:.2f}, transfer {pr['transfer_s'] * 1e3:.2f}, merge "
                f"{pr['merge_s'] * 1e3:.3f}), {pr['memory_per_node_GB']:.1f} GB/node"
            )
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
