"""``privdiff demo``: the privacy planner for the paper's three figure settings (§4.6)."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        out: Path = typer.Option(Path("out/demo"), "--out", help="Output directory (PNGs + planner.json)."),
        quick: bool = typer.Option(False, "--quick", help="Coarser grids, T up to 10⁴ (CI-size)."),
    ) -> None:
        """Plan DP-RDM privacy: ε vs queries, queries at ε=10 (paper vs pld), concept density."""
        from rich.console import Console
        from rich.table import Table

        from privdiff.accounting.planner import run_planner

        command = shlex.join(["privdiff", "demo", "--out", str(out)] + (["--quick"] if quick else []))
        result = run_planner(out, quick=quick, command=command)
        table = Table(title=f"DP-RDM privacy planner (δ = 1/N; budget ε = {result['target_epsilon']:g})")
        for col in ("setting", "T", "ε paper", "ε pld", "T@ε≤10 paper", "T@ε≤10 pld", "pld/paper"):
            table.add_column(col, justify="left" if col == "setting" else "right", no_wrap=col == "setting")
        for s in result["settings"]:
            at = s["epsilon_at_figure_queries"]
            ans = s["queries_at_target"]
            table.add_row(s["name"], str(s["figure_queries"]),
                          f"{at['paper']['epsilon']:.4f}", f"{at['pld']['epsilon']:.4f}",
                          f"{ans['paper']['queries']:,}", f"{ans['pld']['queries']:,}",
                          f"{s['pld_over_paper_queries']:.2f}×")
        Console().print(table)
        for s in result["settings"]:
            typer.echo(f"  {s['name']}: σ={s['sigma']:g}, q={s['sample_rate']:g}, k={s['k']}, N={s['dataset_size']:,}")
        typer.echo(f"wrote {', '.join(result['figures'])} and planner.json to {out} ({result['seconds']:.1f} s)")
