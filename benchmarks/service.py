"""``privdiff serve`` overhead: the same generation through HTTP and in process, in one run.

Starts a real uvicorn server on 127.0.0.1 (tiny model, the stand-in encoder of the tests, so nothing
heavy loads) and measures, sequentially with one client:

1. ``GET /v1/budget``: requests/s and p50/p95 latency;
2. ``POST /v1/generate`` (n images, ``--steps`` DDIM steps): requests/s and p50/p95, alternating with
   calls of the same kind of pipeline (same model, index, setting, ledger) in this process; the ratio HTTP / in-process
   of the medians is the service's overhead (HTTP, JSON, auth, the key's quota ledger charge, the
   idempotency-free path, PNG + base64 encoding). Aim: ≤ 1.1×.

Usage::

    python benchmarks/service.py            # 40 generate requests each way
    python benchmarks/service.py --quick    # 10

Writes ``--out`` (JSON) and a PNG of the latency distributions next to it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def _summary(times):
    return {
        "n": len(times),
        "requests_per_s": len(times) / sum(times),
        "p50_ms": 1000 * _pct(times, 50),
        "p95_ms": 1000 * _pct(times, 95),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--budget-requests", type=int, default=200)
    ap.add_argument("--n", type=int, default=4, help="images per request")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/service/benchmark.json")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.budget_requests = 10, 50

    import httpx
    import torch

    from privdiff.rdm.model import RDMConfig, RDMModel
    from privdiff.rdm.pipeline import make_pipeline
    from privdiff.service.keys import KeyStore
    from rdm.conftest import TINY_SPACE
    from service.tiny import Server, build_env, patch_encoders

    root = Path(tempfile.mkdtemp(prefix="privdiff-bench-service-"))
    torch.manual_seed(0)
    cfg = RDMConfig(
        space_id=TINY_SPACE, embedding_dim=16, k=4, sample_size=12, block_out_channels=(8, 8, 8), attention_head_dim=2
    )
    RDMModel(cfg).save(root / "model", extra={"generation_defaults": {"k": 4, "sigma": 1.0, "sample_rate": 0.5}})
    env = build_env(root, root / "model", queries=10 * (args.requests + 10))
    store = KeyStore(env["keys"])
    key = store.add("bench")[0]
    store.close()
    headers = {"Authorization": f"Bearer {key}"}
    body = {"prompt": "a sandal", "n": args.n, "steps": args.steps, "seed": 0}

    # In process: the same assembly the server does, on the same ledger.
    patch_encoders()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe, _ = make_pipeline(env["model"], mode="dp-rdm", index=env["index"], ledger=env["ledger"])
    server = Server(env, root / "server.log", rate=1e6, burst=10**6, workers=1).start()
    inproc, http, budget = [], [], []
    try:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            # Alternating in-process and HTTP calls, so both see the same machine load and the same
            # ledger history (each charge re-accounts the history); two warm-up rounds first.
            for i in range(args.requests + 2):
                t0 = time.perf_counter()
                pipe(["a sandal"], images_per_prompt=args.n, num_inference_steps=args.steps, seed=0)
                t1 = time.perf_counter()
                r = client.post("/v1/generate", json=body, headers=headers)
                t2 = time.perf_counter()
                assert r.status_code == 200, r.text
                if i >= 2:
                    inproc.append(t1 - t0)
                    http.append(t2 - t1)
            for _ in range(args.budget_requests):
                t0 = time.perf_counter()
                r = client.get("/v1/budget", headers=headers)
                budget.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
    finally:
        server.kill()

    result = {
        "settings": vars(args) | {"out": str(args.out)},
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "budget_http": _summary(budget),
        "generate_http": _summary(http),
        "generate_in_process": _summary(inproc),
        "overhead_ratio_p50": statistics.median(http) / statistics.median(inproc),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.boxplot(
        [[1000 * t for t in inproc], [1000 * t for t in http], [1000 * t for t in budget]],
        tick_labels=["generate\nin process", "generate\nHTTP", "budget\nHTTP"],
    )
    ax.set_ylabel("latency (ms)")
    ax.set_title(
        f"privdiff serve, tiny model, n={args.n}, steps={args.steps}: overhead ×{result['overhead_ratio_p50']:.3f}"
    )
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)
    g, b = result["generate_http"], result["budget_http"]
    print(f"/v1/budget:   {b['requests_per_s']:.1f} req/s, p50 {b['p50_ms']:.1f} ms, p95 {b['p95_ms']:.1f} ms")
    print(f"/v1/generate: {g['requests_per_s']:.2f} req/s, p50 {g['p50_ms']:.1f} ms, p95 {g['p95_ms']:.1f} ms")
    i = result["generate_in_process"]
    print(f"in process:   {i['requests_per_s']:.2f} req/s, p50 {i['p50_ms']:.1f} ms, p95 {i['p95_ms']:.1f} ms")
    print(f"overhead (HTTP / in-process, p50): {result['overhead_ratio_p50']:.3f}x  -> {args.out}")


if __name__ == "__main__":
    main()
