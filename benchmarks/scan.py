"""Faster exact scan and index memory (issue 14, items 2 and 4): ratios, floors and peak memory.

**Speed** (default): on N random unit vectors (d = 512, q = 0.01, k = 20, a batch of 256 queries,
one thread for faiss, BLAS and torch), one run times

* **authors**: ``torch.rand(N) < q`` → ``IDSelectorBatch`` → ``IndexFlatIP.search`` per query;
* **privdiff before**: the previous sparse path (one (query × max|S|) grid per batch, cumsum /
  scatter / partition over all of it, at most 4 M pairs per pass), kept here verbatim;
* **privdiff float32**: ``search.subsampled_topk`` (streamed record-major pairs, O(k) survivors);
* **privdiff float16 scan**: the same with the float16 scan copy and exact float32 re-rank;
* **privdiff int8 scan**: the same with the int8 per-row-scaled scan copy, scored by the compiled
  numba kernel (``int8scan``), survivors within 2β re-ranked exactly in float32;

against three floors: the old *cache* floor (one GEMV per query over the same qN contiguous rows:
L3-resident, not a memory floor), the *fresh-rows* floor (one GEMV per query over its own qN
contiguous rows) and the *batched* limit (one sequential read of the rows a batch touches,
1 − (1 − q)^B of them, divided by B). It splits privdiff's time into pair sampling, scoring (and
how much of that is compute: the same pairs scored on cache-resident rows) and selection, and
checks that the float16 and int8 scans and the previous path return the float32 path's ids on the
same subsample. For the int8 scan it also splits the time (sampling / int8 scoring / survivors /
re-rank / selection), measures the kernel variants per pair on the same pairs, and the kernel's
first-call (JIT compile) cost in a fresh process, cold and from numba's on-disk cache.

**Memory** (``--memory``): peak resident memory of ``build_index`` and ``load_index(verify="full")``
(before and after this change), measured in fresh subprocesses as VmHWM minus the resident size
just before the call, over the index size; the resident index pages a search touches with the
float32 and the float16 scan; and the encoder batch size (time and peak memory per batch size on
Fashion-MNIST images with the default encoder).

Usage::

    python benchmarks/scan.py --out docs/results/scale/scan_n1e6_q0.01.json
    python benchmarks/scan.py --q 0.05 --out docs/results/scale/scan_n1e6_q0.05.json
    python benchmarks/scan.py --memory --out docs/results/scale/memory.json
    python benchmarks/scan.py --n 20000 --d 64 --queries 32      # smoke size
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _timed(fn, repeats):
    """Best (wall, CPU) seconds over ``repeats`` runs (CPU time is robust on a shared machine)."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = (min(best[0], time.perf_counter() - w0), min(best[1], time.process_time() - c0))
    return best


# --- the previous privdiff sparse path, verbatim (for the "before" column) --------------------
def _before_topk(vectors, queries, k, sample_rate, rng):
    import faiss

    from privdiff.retrieval.private.search import select_topk
    from privdiff.retrieval.private.subsample import poisson_pairs

    n, d = vectors.shape
    B = queries.shape[0]
    out = np.full((B, k), -1, dtype=np.int64)
    chunk = int(max(1, min(B, 65535, (4 * 1024 * 1024) // max(1.0, n * sample_rate))))
    for s in range(0, B, chunk):
        qc = np.ascontiguousarray(queries[s : s + chunk])
        nb = qc.shape[0]
        rows, qid = poisson_pairs(n, nb, sample_rate, rng)
        if rows.size == 0:
            continue
        scores = np.empty(rows.size, dtype=np.float32)
        faiss.pairwise_indexed_inner_product(
            int(d),
            int(rows.size),
            faiss.swig_ptr(qc),
            faiss.swig_ptr(qid),
            faiss.swig_ptr(vectors),
            faiss.swig_ptr(rows),
            faiss.swig_ptr(scores),
        )
        order = np.argsort(qid.astype(np.uint16), kind="stable")
        counts = np.bincount(qid, minlength=nb)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        q_sorted = qid[order]
        width = int(counts.max())
        flat = q_sorted * width + (np.arange(order.size) - starts[q_sorted])
        grid_scores = np.full(nb * width, -np.inf, dtype=np.float32)
        grid_ids = np.full(nb * width, -1, dtype=np.int64)
        grid_scores[flat] = scores[order]
        grid_ids[flat] = rows[order]
        out[s : s + nb], _ = select_topk(grid_scores.reshape(nb, width), grid_ids.reshape(nb, width), k)
    return out


def _floor_cache(vectors, queries, q):
    m = max(1, int(round(q * vectors.shape[0])))
    block = vectors[:m]
    for b in range(queries.shape[0]):
        float((block @ queries[b]).max())


def _floor_fresh(vectors, queries, q):
    n = vectors.shape[0]
    m = max(1, int(round(q * n)))
    for b in range(queries.shape[0]):
        s = (b * m) % max(1, n - m)  # a different block per query: it comes from memory, not cache
        float((vectors[s : s + m] @ queries[b]).max())


def _read_pass(array):
    """One sequential pass over all rows with negligible compute (the bandwidth floor)."""
    import faiss

    n, d = array.shape
    chunk = 16384
    if array.dtype == np.float32:
        out = np.empty(chunk, dtype=np.float32)
        for s in range(0, n, chunk):
            blk = array[s : s + chunk]
            faiss.fvec_norms_L2sqr(faiss.swig_ptr(out), faiss.swig_ptr(blk), d, blk.shape[0])
    else:
        v = array.view(np.uint64)
        for s in range(0, n, chunk):
            np.bitwise_or.reduce(v[s : s + chunk], axis=None)


_KERNEL_VARIANTS = r"""
import numpy as np
from numba import njit


@njit(boundscheck=False, nogil=True)
def row_buffer(codes, qw, rows, qid, out):  # reuse: widen a row once, for all its adjacent pairs
    d = codes.shape[1]
    buf = np.empty(d, dtype=np.int16)
    prev = -1
    for j in range(rows.size):
        r = rows[j]
        if r != prev:
            for t in range(d):
                buf[t] = codes[r, t]
            prev = r
        q = qid[j]
        acc = np.int32(0)
        for t in range(d):
            acc += np.int32(buf[t]) * np.int32(qw[q, t])
        out[j] = acc


@njit(boundscheck=False, nogil=True)
def two_queries_per_row(codes, qw, rows, qid, out):  # reuse: one row load serves two pairs
    d = codes.shape[1]
    n = rows.size
    j = 0
    while j < n:
        r = rows[j]
        if j + 1 < n and rows[j + 1] == r:
            q0 = qid[j]
            q1 = qid[j + 1]
            a0 = np.int32(0)
            a1 = np.int32(0)
            for t in range(d):
                e = np.int32(codes[r, t])
                a0 += e * np.int32(qw[q0, t])
                a1 += e * np.int32(qw[q1, t])
            out[j] = a0
            out[j + 1] = a1
            j += 2
        else:
            q = qid[j]
            acc = np.int32(0)
            for t in range(d):
                acc += np.int32(codes[r, t]) * np.int32(qw[q, t])
            out[j] = acc
            j += 1
"""

_COMPILE_CHILD = r"""
import json, sys, time
import numpy as np
t0 = time.perf_counter()
from privdiff.retrieval.private import int8scan
t1 = time.perf_counter()
int8scan.compile_kernel()  # what ExactTopK(scan="int8") pays at construction: every argument type
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_call_s": t2 - t1, "cache": int8scan._cache_ok()}))
"""


def _kernel_variants(copy, queries, qcodes, blocks, repeats) -> dict:
    """ns per pair of each int8 kernel variant on the benchmark's own pairs (record-major).

    ``int8_x_int16`` is the library's own gather-dot; ``int8_x_int8`` is the same compiled
    function given int8 query codes (numba specialises it per dtype); the two row-reuse variants
    are defined above.
    """
    import types

    from privdiff.retrieval.private import int8scan

    mod = types.ModuleType("int8_variants")
    exec(compile(_KERNEL_VARIANTS, "int8_variants", "exec"), mod.__dict__)
    gather_dot = int8scan._compile()[0]
    codes = np.asarray(copy.codes)
    q8 = int8scan.quantise_rows(queries)[0]  # int8 query codes for the int8 × int8 variant
    npairs = sum(r.size for r, _ in blocks)
    res = {}
    variants = {"int8_x_int8": gather_dot, "int8_x_int16": gather_dot}
    variants.update(row_buffer=mod.row_buffer, two_queries_per_row=mod.two_queries_per_row)
    for name, fn in variants.items():
        qq = q8 if name == "int8_x_int8" else qcodes
        out = np.empty(max(r.size for r, _ in blocks), dtype=np.int32)
        fn(codes, qq, blocks[0][0][:4], blocks[0][1][:4], out)  # compile outside the timing

        def go(fn=fn, qq=qq, out=out):
            for r, c in blocks:
                fn(codes, qq, r, c, out)

        res[name] = _timed(go, repeats)[1] / npairs * 1e9
    return res


def _compile_cost() -> dict:
    """First-call cost of the int8 kernel in fresh processes: cold (empty cache), then cached."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        runs = []
        for _ in range(2):
            p = subprocess.run([sys.executable, "-c", _COMPILE_CHILD], capture_output=True, text=True, env=env)
            runs.append(
                json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {"error": p.stderr[-500:]}
            )
    return {"cold": runs[0], "cached": runs[1]}


def _int8_split(vectors, copy, queries, k, blocks, repeats) -> dict:
    """The int8 path's CPU time by stage on pre-drawn pairs (the steps of ``search._sparse_topk``)."""
    from privdiff.retrieval.private import int8scan, search

    nb = queries.shape[0]
    t_slack = _timed(lambda: int8scan.int8_scan_slack(queries, copy), repeats)
    qcodes, qscales, slack = int8scan.int8_scan_slack(queries, copy)
    scored = []

    def score():
        scored.clear()
        scored.extend(int8scan.score_pairs_int8(copy, qcodes, qscales, r, c) for r, c in blocks)

    t_score = _timed(score, repeats)
    state = {}

    def survive():  # as search._sparse_topk does it: scoring fused with the survivors' filter
        acc = search._Survivors(nb, k, slack)
        work = {}
        for r, c in blocks:
            acc.add(*int8scan.score_pairs_int8_kept(copy, qcodes, qscales, r, c, acc.thr, work))
        gs, gi = acc.grid()
        cand = (gi >= 0) & ~(gs < acc.threshold(gs)[:, None])
        state.update(gi=gi, cand=cand)

    t_surv = _timed(survive, repeats)
    gi, cand = state["gi"], state["cand"]

    def rerank():
        g, gi2 = search._rerank_exact(vectors, queries, gi, cand)
        state.update(g=g, gi2=gi2)

    t_rerank = _timed(rerank, repeats)
    t_select = _timed(lambda: search.select_topk(state["g"], state["gi2"], k), repeats)
    return {
        "query_quantisation_and_bound_cpu_s": t_slack[1],
        "int8_scoring_cpu_s": t_score[1],
        "survivors_cpu_s": max(0.0, t_surv[1] - t_score[1]),
        "rerank_float32_cpu_s": t_rerank[1],
        "selection_cpu_s": t_select[1],
        "rerank_candidates": int(cand.sum()),
        "rerank_candidates_per_query": float(cand.sum()) / nb,
        "slack_2beta_mean": float(slack.mean()),
    }


def run_speed(args) -> dict:
    sys.path.insert(0, str(HERE))
    import faiss

    import retrieval as rb  # benchmarks/retrieval.py: the authors' path and the index builder
    from privdiff.retrieval.private import search
    from privdiff.retrieval.private.subsample import poisson_pair_blocks

    t0 = time.perf_counter()
    index, vectors = rb._make_index(args.n, args.d, args.seed)
    scan = np.empty(vectors.shape, dtype=np.float16)
    for s in range(0, args.n, 65536):
        scan[s : s + 65536] = vectors[s : s + 65536]
    build_s = time.perf_counter() - t0
    from privdiff.retrieval.private.index import _int8_copy_of

    t0 = time.perf_counter()
    copy8 = _int8_copy_of(vectors)  # what build_index / add_scan_copy(dtype="int8") store
    build8_s = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed + 1)
    queries = rng.standard_normal((args.queries, args.d), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    B, k, q, n = args.queries, args.k, args.q, args.n

    # Exactness on the same subsample (same seed → same pairs in every privdiff variant).
    ids32 = search.subsampled_topk(vectors, queries, k, q, np.random.default_rng(7), method="sparse")
    ids16 = search.subsampled_topk(vectors, queries, k, q, np.random.default_rng(7), method="sparse", scan=scan)
    ids8 = search.subsampled_topk(vectors, queries, k, q, np.random.default_rng(7), method="sparse", scan=copy8)
    checks = {
        "float16_scan_ids_equal_float32": bool((ids32 == ids16).all()),
        "int8_scan_ids_equal_float32": bool((ids32 == ids8).all()),
        "authors_topk_equal_on_shared_subsample": bool(rb._agreement(index, vectors, queries, k, q, args.seed + 2)),
    }
    # The previous path draws the same pairs from the same seed when it needs a single pass
    # (at most 4 M pairs per batch); with several passes its draws differ, so nothing to compare.
    if B * n * q <= 4 * 1024 * 1024:
        before = _before_topk(vectors, queries, k, q, np.random.default_rng(7))
        checks["previous_path_ids_equal_float32"] = bool((ids32 == before).all())
    # Warm every path once (page faults, thread pools).
    rb._authors(index, queries[:2], k, q)
    search.subsampled_topk(vectors, queries[:4], k, q, np.random.default_rng(), scan=scan)
    search.subsampled_topk(vectors, queries[:4], k, q, np.random.default_rng(), scan=copy8)

    R = args.repeats
    t = {
        "authors": _timed(lambda: rb._authors(index, queries, k, q), 1),
        "before": _timed(lambda: _before_topk(vectors, queries, k, q, np.random.default_rng()), R),
        "float32": _timed(lambda: search.subsampled_topk(vectors, queries, k, q, np.random.default_rng()), R),
        "float16": _timed(
            lambda: search.subsampled_topk(vectors, queries, k, q, np.random.default_rng(), scan=scan), R
        ),
        "int8": _timed(lambda: search.subsampled_topk(vectors, queries, k, q, np.random.default_rng(), scan=copy8), R),
        "floor_cache": _timed(lambda: _floor_cache(vectors, queries, q), R),
        "floor_fresh": _timed(lambda: _floor_fresh(vectors, queries, q), R),
    }
    touched = 1.0 - (1.0 - q) ** min(B, search._QUERY_CHUNK)
    read32 = _timed(lambda: _read_pass(vectors), R)
    read16 = _timed(lambda: _read_pass(scan), R)
    read8 = _timed(lambda: _read_pass(np.asarray(copy8.codes)), R)
    t["batched_limit_float32"] = (read32[0] * touched, read32[1] * touched)
    t["batched_limit_float16"] = (read16[0] * touched, read16[1] * touched)
    t["batched_limit_int8"] = (read8[0] * touched, read8[1] * touched)

    # Where privdiff's float32 time goes.
    blocks = []

    def draw():
        blocks.clear()
        blocks.extend(poisson_pair_blocks(n, B, q, np.random.default_rng(3), max_pairs=search._PAIR_BLOCK))

    t_pairs = _timed(draw, R)
    npairs = sum(r.size for r, _ in blocks)

    def score_dram():
        for r, c in blocks:
            search._score_pairs(vectors, None, queries, r, c, None)

    small = np.ascontiguousarray(vectors[:1024])

    def score_cache():  # same pairs, rows folded onto 1,024 cache-resident ones: pure compute
        for r, c in blocks:
            search._score_pairs(small, None, queries, r & 1023, c, None)

    t_dram = _timed(score_dram, R)
    t_cache = _timed(score_cache, R)
    total = t["float32"][1]
    breakdown = {
        "pairs": npairs,
        "pair_sampling_cpu_s": t_pairs[1],
        "scoring_cpu_s": t_dram[1],
        "scoring_compute_cpu_s": t_cache[1],
        "scoring_memory_stall_cpu_s": max(0.0, t_dram[1] - t_cache[1]),
        "survivors_and_selection_cpu_s": max(0.0, total - t_pairs[1] - t_dram[1]),
        "total_cpu_s": total,
    }
    int8_split = {
        "pairs": npairs,
        "pair_sampling_cpu_s": t_pairs[1],
        **_int8_split(vectors, copy8, queries, k, blocks, R),
        "total_cpu_s": t["int8"][1],
    }
    qcodes8 = search.int8_scan_slack(queries, copy8)[0]
    kernels = {
        "ns_per_pair": {
            **_kernel_variants(copy8, queries, qcodes8, blocks, R),
            "faiss_float32": t_dram[1] / max(npairs, 1) * 1e9,
        },
        "chosen": "int8_x_int16",
        "first_call": _compile_cost(),
    }

    def row(name, key):
        w, c = t[key]
        return {"method": name, "key": key, "seconds": w, "cpu_seconds": c, "qps": B / w, "qps_cpu": B / c}

    rows = [
        row("authors (torch mask + IDSelectorBatch + IndexFlatIP, per query)", "authors"),
        row("privdiff before (full grid, 4M-pair passes)", "before"),
        row("privdiff float32 (streamed pairs, O(k) survivors)", "float32"),
        row("privdiff float16 scan + exact float32 re-rank", "float16"),
        row("privdiff int8 scan (numba kernel) + exact float32 re-rank", "int8"),
        row("floor: GEMV over the same qN contiguous rows per query (cache)", "floor_cache"),
        row("floor: GEMV over fresh qN contiguous rows per query (memory)", "floor_fresh"),
        row("batched limit float32: one read of the touched rows / B", "batched_limit_float32"),
        row("batched limit float16: one read of the touched rows / B", "batched_limit_float16"),
        row("batched limit int8: one read of the touched rows / B", "batched_limit_int8"),
    ]
    c = {key: t[key][1] for key in t}
    ratios = {
        "float32_vs_authors": c["authors"] / c["float32"],
        "float32_vs_before": c["before"] / c["float32"],
        "float16_vs_authors": c["authors"] / c["float16"],
        "float16_vs_before": c["before"] / c["float16"],
        "float16_vs_float32": c["float32"] / c["float16"],
        "int8_vs_authors": c["authors"] / c["int8"],
        "int8_vs_before": c["before"] / c["int8"],
        "int8_vs_float32": c["float32"] / c["int8"],
        "int8_fraction_of_batched_limit": c["batched_limit_int8"] / c["int8"],
        "before_vs_authors": c["authors"] / c["before"],
        "float32_fraction_of_fresh_floor": c["floor_fresh"] / c["float32"],
        "float32_fraction_of_batched_limit": c["batched_limit_float32"] / c["float32"],
    }
    return {
        "settings": {
            "n": n,
            "d": args.d,
            "sample_rate": q,
            "k": k,
            "queries": B,
            "repeats": R,
            "seed": args.seed,
            "threads": args.threads,
            "rows_touched_per_batch": touched,
        },
        "machine": _machine(faiss),
        "build_seconds": build_s,
        "int8_copy_build_seconds": build8_s,
        "index_bytes": {
            "float32": int(vectors.nbytes),
            "float16_scan_copy": int(scan.nbytes),
            "int8_scan_copy": copy8.nbytes,
        },
        "checks": checks,
        "results": rows,
        "ratios_cpu": ratios,
        "float32_breakdown": breakdown,
        "int8_breakdown": int8_split,
        "int8_kernel": kernels,
    }


def _machine(faiss=None) -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "faiss_threads": faiss.omp_get_max_threads() if faiss else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average_1min": os.getloadavg()[0],
    }


# --- memory ----------------------------------------------------------------------------------
_MEM_CHILD = r"""
import json, sys, time, tracemalloc, importlib.util
import numpy as np
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0
op, path, extra = sys.argv[1], sys.argv[2], sys.argv[3]
if extra.endswith(".py"):  # the module as it was before this change
    spec = importlib.util.spec_from_file_location("old_index", extra)
    mod = importlib.util.module_from_spec(spec); sys.modules["old_index"] = mod; spec.loader.exec_module(mod)
else:
    import privdiff.retrieval.private.index as mod
out = {}
if op == "build":
    emb = np.load(path + ".emb.npy")  # the caller's embeddings, in memory (not counted)
    rss0 = status("VmRSS"); tracemalloc.start(); t = time.perf_counter()
    mod.build_index(path, emb, space_id="bench/v1")
elif op == "load":
    rss0 = status("VmRSS"); tracemalloc.start(); t = time.perf_counter()
    mod.load_index(path, verify="full")
elif op in ("search32", "search16", "search8"):
    import faiss, torch  # imported (their libraries mapped) before measuring: only index pages count
    torch.set_num_threads(1)
    import os
    import privdiff.retrieval.private as P
    for name in ("embeddings.npy", "embeddings_f16.npy", "embeddings_i8.npy", "scales_i8.npy"):
        if not os.path.exists(os.path.join(path, name)):
            continue
        # start cold: evict this index's pages
        fd = os.open(os.path.join(path, name), os.O_RDONLY)
        os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
    idx = P.load_index(path, verify="size")
    rng = np.random.default_rng(0)
    qs = rng.standard_normal((256, idx.dim)).astype(np.float32); qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    # The backend is made (numba imported, the int8 kernel compiled) before measuring: only the
    # search's own memory counts.
    be = P.ExactTopK(idx, scan={"search16": "float16", "search8": "int8"}.get(op, "float32"))
    rss0 = status("VmRSS"); tracemalloc.start(); t = time.perf_counter()
    be.topk_sums(qs, 20, float(extra), rng)
out.update(seconds=time.perf_counter() - t, rss_before=rss0, vm_hwm=status("VmHWM"), rss_after=status("VmRSS"),
           heap_peak=tracemalloc.get_traced_memory()[1])
rss_of, cur = {}, None  # resident bytes of each index file's mapping (/proc/self/smaps)
for line in open("/proc/self/smaps"):
    parts = line.split()
    if len(parts) >= 5 and "-" in parts[0] and ":" in parts[3]:
        cur = parts[-1].rsplit("/", 1)[-1] if parts[-1].endswith(".npy") else None
    elif cur and line.startswith("Rss:"):
        rss_of[cur] = rss_of.get(cur, 0) + int(parts[1]) * 1024
out["mapped_rss"] = rss_of
print(json.dumps(out))
"""

_ENC_CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads(int(sys.argv[3]))
from privdiff.data.fashion_mnist import read_idx, resolve_dir, _find
from privdiff.encoders import load_image_encoder
imgs = np.ascontiguousarray(read_idx(_find(resolve_dir(), "train-images-idx3-ubyte"))[: int(sys.argv[2])][..., None])
enc = load_image_encoder("effnet-lite0-64px-c/v1")  # pinned: the stored numbers measure this encoder
enc.encode_images(imgs[:8], batch_size=8)
r0 = resource.getrusage(resource.RUSAGE_SELF); t = time.perf_counter()
emb = enc.encode_images(imgs, batch_size=int(sys.argv[1]))
r1 = resource.getrusage(resource.RUSAGE_SELF)
np.save(sys.argv[4], emb)
print(json.dumps({"wall_s": time.perf_counter() - t, "user_s": r1.ru_utime - r0.ru_utime,
                  "sys_s": r1.ru_stime - r0.ru_stime, "minor_faults": r1.ru_minflt - r0.ru_minflt,
                  "peak_rss": r1.ru_maxrss * 1024, "space_id": enc.space_id, "dim": enc.dim}))
"""


def _child(code: str, *argv: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_memory(args) -> dict:
    n, d = args.mem_n, args.d
    out: dict = {"settings": {"n": n, "d": d, "encode_images": args.encode_n}, "machine": _machine()}
    old_index = None
    if args.before_commit:
        old_index = Path(tempfile.mkdtemp()) / "index_before.py"
        src = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{args.before_commit}:src/privdiff/retrieval/private/index.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        old_index.write_text(src)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        base = Path(tmp)
        rng = np.random.default_rng(0)
        emb_path = base / "idx.emb.npy"
        emb = np.lib.format.open_memmap(emb_path, mode="w+", dtype=np.float32, shape=(n, d))
        for s in range(0, n, 65536):
            emb[s : s + 65536] = rng.standard_normal((min(65536, n - s), d), dtype=np.float32)
        emb.flush()
        del emb
        size = n * d * 4
        rows = {}
        variants = [("after", "-")] + ([("before", str(old_index))] if old_index else [])
        for name, extra in variants:
            path = str(base / f"idx-{name}")
            os.symlink(emb_path, path + ".emb.npy")
            b = _child(_MEM_CHILD, "build", path, extra)
            ld = _child(_MEM_CHILD, "load", path, extra)
            rows[name] = {
                "build_peak_over_index": (b["vm_hwm"] - b["rss_before"]) / size,
                "build_heap_peak_over_index": b["heap_peak"] / size,
                "build_seconds": b["seconds"],
                "load_full_peak_over_index": (ld["vm_hwm"] - ld["rss_before"]) / size,
                "load_full_heap_peak_over_index": ld["heap_peak"] / size,
                "load_full_seconds": ld["seconds"],
            }
            print(f"  {name:6s} {rows[name]}", flush=True)
        out["index_bytes"] = size
        out["build_and_load"] = rows
        # Resident index pages a search touches: float32 scan vs float16 scan copy.
        path = str(base / "idx-after")
        sys.path.insert(0, str(REPO / "src"))
        from privdiff.retrieval.private import add_scan_copy

        add_scan_copy(path)
        add_scan_copy(path, dtype="int8")
        s32 = _child(_MEM_CHILD, "search32", path, str(args.mem_q))
        s16 = _child(_MEM_CHILD, "search16", path, str(args.mem_q))
        s8 = _child(_MEM_CHILD, "search8", path, str(args.mem_q))
        m32, m16, m8 = s32.get("mapped_rss", {}), s16.get("mapped_rss", {}), s8.get("mapped_rss", {})
        out["search_resident"] = {
            "sample_rate": args.mem_q,
            "queries": 256,
            "note": "index files evicted from the page cache first (posix_fadvise DONTNEED on them only)",
            "float32_scan_resident_float32_file_over_index": m32.get("embeddings.npy", 0) / size,
            "float16_scan_resident_float32_file_over_index": m16.get("embeddings.npy", 0) / size,
            "float16_scan_resident_float16_file_over_index": m16.get("embeddings_f16.npy", 0) / size,
            "int8_scan_resident_float32_file_over_index": m8.get("embeddings.npy", 0) / size,
            "int8_scan_resident_int8_files_over_index": (m8.get("embeddings_i8.npy", 0) + m8.get("scales_i8.npy", 0))
            / size,
            "float32_scan_rss_growth_over_index": (s32["rss_after"] - s32["rss_before"]) / size,
            "float16_scan_rss_growth_over_index": (s16["rss_after"] - s16["rss_before"]) / size,
            "int8_scan_rss_growth_over_index": (s8["rss_after"] - s8["rss_before"]) / size,
            "float32_scan_seconds": s32["seconds"],
            "float16_scan_seconds": s16["seconds"],
            "int8_scan_seconds": s8["seconds"],
        }
        print(f"  search {out['search_resident']}", flush=True)
        if args.encode_n:
            enc = {}
            ref = None
            for bs in args.encode_batches:
                f = base / f"emb{bs}.npy"
                r = _child(_ENC_CHILD, str(bs), str(args.encode_n), str(args.threads), str(f))
                e = np.load(f)
                ref = e if ref is None else ref
                r["max_abs_diff_vs_first"] = float(np.abs(e - ref).max())
                enc[str(bs)] = r
                print(f"  encode batch {bs}: {r}", flush=True)
            out["encode_batch"] = enc
    return out


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.2))
    label = {
        "authors": ("authors", "#b0b0b0"),
        "before": ("privdiff\nbefore", "#9bbbd9"),
        "float32": ("privdiff\nfloat32", "#2a7ab9"),
        "float16": ("privdiff\nfloat16 scan", "#1b4f7a"),
        "int8": ("privdiff\nint8 scan", "#0b2f4a"),
        "floor_cache": ("floor\n(cache)", "#bfe0bf"),
        "floor_fresh": ("floor\n(fresh rows)", "#7fbf7f"),
        "batched_limit_float32": ("batched\nlimit f32", "#4f9f4f"),
        "batched_limit_float16": ("batched\nlimit f16", "#2f7f2f"),
        "batched_limit_int8": ("batched\nlimit i8", "#1f5f1f"),
    }
    names = [label[r["key"]][0] for r in res["results"]]
    colors = [label[r["key"]][1] for r in res["results"]]
    qps = [r["qps_cpu"] for r in res["results"]]
    bars = ax.bar(names, qps, color=colors)
    for b, v in zip(bars, qps):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    st, r = res["settings"], res["ratios_cpu"]
    ax.set(
        yscale="log",
        ylabel="queries per CPU-second",
        title=f"N={st['n']:,} d={st['d']} q={st['sample_rate']:g} k={st['k']} B={st['queries']}: float32 "
        f"{r['float32_vs_authors']:.1f}x authors, {r['float32_vs_before']:.2f}x before; int8 "
        f"{r['int8_vs_authors']:.1f}x, {r['int8_vs_before']:.2f}x",
    )
    fig.text(
        0.01,
        0.01,
        f"{res['machine']['cpu_count']} shared cores, 1 thread, 1-min load {res['machine']['load_average_1min']:.1f}",
        fontsize=7,
        color="grey",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_memory(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    bl = res["build_and_load"]
    labels = [k for k in ("before", "after") if k in bl]
    x = np.arange(2)
    for i, name in enumerate(labels):
        vals = [bl[name]["build_peak_over_index"], bl[name]["load_full_peak_over_index"]]
        axes[0].bar(x + 0.38 * i, vals, 0.38, label=name)
    axes[0].axhline(1.3, color="red", ls="--", lw=1, label="aim 1.3x")
    axes[0].set_xticks(x + 0.19, ["build_index", "load_index(full)"])
    axes[0].set(ylabel="peak RSS growth / index size", title=f"N={res['settings']['n']:,} d={res['settings']['d']}")
    axes[0].legend()
    sr = res["search_resident"]
    names = ["float32 scan", "float16 scan", "int8 scan"]
    f32 = [sr[f"{m}_scan_resident_float32_file_over_index"] for m in ("float32", "float16", "int8")]
    low = [0.0, sr["float16_scan_resident_float16_file_over_index"], sr["int8_scan_resident_int8_files_over_index"]]
    axes[1].bar(names, f32, color="#2a7ab9", label="float32 rows resident")
    axes[1].bar(names, low, bottom=f32, color="#9bbbd9", label="scan copy resident")
    axes[1].set(ylabel="resident index pages / float32 index size", title=f"search, q={sr['sample_rate']:g}, B=256")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--q", type=float, default=0.01)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--queries", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--memory", action="store_true", help="measure build/load/search memory and the encode batch")
    p.add_argument("--mem-n", type=int, default=200_000, help="records of the memory benchmark's index")
    p.add_argument("--mem-q", type=float, default=0.05, help="sample rate of the resident-memory search")
    p.add_argument("--encode-n", type=int, default=2048, help="images encoded per batch size (0: skip)")
    p.add_argument("--encode-batches", type=int, nargs="+", default=[256, 128, 64, 32])
    p.add_argument("--before-commit", default="", help="git commit whose index.py is measured as 'before'")
    p.add_argument("--tmp", default=None, help="directory for the memory benchmark's temporary index")
    p.add_argument("--out", type=Path, default=Path("out/benchmarks/scan.json"))
    args = p.parse_args(argv)
    if args.n < 1 or args.d < 1 or args.k < 1 or args.queries < 1 or not (0 < args.q <= 1):
        p.error("need n, d, k, queries >= 1 and 0 < q <= 1")
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(args.threads)
    threadpool_limits(args.threads)
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.memory:
        res = run_memory(args)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        _plot_memory(res, args.out.with_suffix(".png"))
        print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
        return 0
    print(f"N={args.n:,} d={args.d} q={args.q:g} k={args.k} queries={args.queries} (load {os.getloadavg()[0]:.1f})")
    res = run_speed(args)
    width = max(len(r["method"]) for r in res["results"])
    print(f"{'method':<{width}}  {'CPU s':>8}  {'q/CPU-s':>9}")
    for r in res["results"]:
        print(f"{r['method']:<{width}}  {r['cpu_seconds']:8.3f}  {r['qps_cpu']:9.1f}")
    for key, v in res["ratios_cpu"].items():
        print(f"  {key}: {v:.2f}")
    print(f"  breakdown (CPU s): {json.dumps(res['float32_breakdown'])}")
    print(f"  checks: {res['checks']}")
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    _plot(res, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0 if all(res["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
