"""CPSample's privacy/quality trade-off: replication rate against FID cost over (α, s).

The paper reports CPSample at a few α with one guidance scale s. How far replication falls and
what it costs in FID depends on both knobs and on how confident the classifier became, so this
script gathers every ``replication*.json`` written by ``experiments/cpsample_replication.py``
(each run: plain DDIM plus CPSample at several α for one s, all from the same x_T) and plots
replication rate (y) against the relative FID change to plain DDIM (x), one point per (α, s).
No sampling happens here; every number comes from the runs' JSON, whose commands are listed.

    python experiments/cpsample_tradeoff.py --results docs/results/cpsample

Writes ``tradeoff.png`` and ``tradeoff.json`` next to the inputs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def collect(results_dir: Path) -> dict:
    runs, points, ddim = [], [], None
    for path in sorted(results_dir.glob("replication*.json")):
        rec = json.loads(path.read_text())
        if rec.get("experiment") != "cpsample_replication":
            continue
        rows = rec["results"]
        base = next(r for r in rows if r["alpha"] is None)
        if "fid" not in base:
            continue  # a --no-fid run has no quality axis
        runs.append(
            {
                "file": path.name,
                "command": rec["command"],
                "n": base["n"],
                "seed": rec["settings"]["seed"],
            }
        )
        if ddim is None:
            ddim = {
                "replication_rate": base["replication_rate"],
                "fid": base["fid"],
                "n": base["n"],
            }
        elif abs(ddim["fid"] - base["fid"]) > 1e-6 or ddim["replication_rate"] != base["replication_rate"]:
            # Every run must share the plain-DDIM baseline (same model, seed, x_T), else the
            # relative costs are not comparable.
            raise SystemExit(f"{path.name}: plain DDIM differs from the other runs; use the same model and seed")
        for r in rows:
            if r["alpha"] is None:
                continue
            points.append(
                {
                    "alpha": r["alpha"],
                    "scale": r["scale"],
                    "replication_rate": r["replication_rate"],
                    "n_replicated": r["n_replicated"],
                    "n": r["n"],
                    "fid": r["fid"],
                    "fid_relative_change": r["fid_relative_change"],
                    "gate_firing_rate": r["gate_firing_rate"],
                    "file": path.name,
                }
            )
    if ddim is None:
        raise SystemExit(f"no replication*.json with FID under {results_dir}")
    points.sort(key=lambda p: (p["scale"], -p["alpha"]))
    return {"ddim": ddim, "points": points, "runs": runs}


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ddim = summary["ddim"]
    ax.axhline(
        100 * ddim["replication_rate"],
        color="k",
        ls="--",
        lw=1,
        label=f"plain DDIM: {ddim['replication_rate']:.0%} replicated, FID {ddim['fid']:.0f}",
    )
    scales = sorted({p["scale"] for p in summary["points"]})
    markers = "osD^v"
    for i, s in enumerate(scales):
        pts = [p for p in summary["points"] if p["scale"] == s]
        xs = [100 * p["fid_relative_change"] for p in pts]
        ys = [100 * p["replication_rate"] for p in pts]
        ax.plot(xs, ys, marker=markers[i % len(markers)], lw=1, label=f"CPSample, s = {s:g}")
        for p, x, y in zip(pts, xs, ys):
            ax.annotate(f"α={p['alpha']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axvspan(-5, 10, color="tab:green", alpha=0.07, label="≤ 10 % FID cost")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("FID change relative to plain DDIM (%)")
    ax.set_ylabel(f"replication rate (% of {ddim['n']} samples)")
    ax.set_title("CPSample on a model that memorised 64 Fashion-MNIST images", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7.5)
    fig.tight_layout()
    fig.savefig(path, dpi=140)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="docs/results/cpsample", help="folder with replication*.json")
    args = ap.parse_args(argv)
    results = Path(args.results)
    summary = collect(results)
    plot(summary, results / "tradeoff.png")
    (results / "tradeoff.json").write_text(json.dumps(summary, indent=2) + "\n")
    for p in summary["points"]:
        print(
            f"s={p['scale']:>6g} α={p['alpha']:<6g} replication {p['replication_rate']:6.1%} "
            f"FID {p['fid']:7.1f} ({p['fid_relative_change']:+.0%}) gate {p['gate_firing_rate']:.2%}"
        )
    print(f"wrote {results / 'tradeoff.png'} and {results / 'tradeoff.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
