"""``privdiff demo``: both methods end to end on the embedded data (thin over :mod:`privdiff.demo`)."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        out: Path = typer.Option(Path("out/demo"), "--out", help="Output directory (report.html, summary.json...)."),
        quick: bool = typer.Option(False, "--quick", help="CI size: small private slice, few images (~1 minute)."),
        full: bool = typer.Option(False, "--full", help="More prompts, images and modes (several minutes)."),
        cache_dir: Path = typer.Option(
            Path("out/cache"),
            "--cache-dir",
            help="Private index cache (image embeddings use privdiff's shared cache, $PRIVDIFF_CACHE_DIR).",
        ),
        rdm_model: Path | None = typer.Option(None, "--rdm-model", help="RDM directory (default: the shipped one)."),
        cpsample_model: Path | None = typer.Option(
            None,
            "--cpsample-model",
            help="Memorising diffusion model (default: $PRIVDIFF_CPSAMPLE_MODEL, else the shipped one; "
            "see privdiff.checkpoints).",
        ),
        cpsample_classifier: Path | None = typer.Option(
            None,
            "--cpsample-classifier",
            help="CPSample classifier (default: <cpsample-model>/classifier).",
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the public sampler noise x_T (never of the DP noise)."),
        only: str | None = typer.Option(
            None,
            "--only",
            help="Comma-separated sections to run: dprdm, cpsample, planner (default: all).",
        ),
    ) -> None:
        """Run DP-RDM on a private domain (winter tops; coarse prompts answered by DP-RDM, public-only
        and non-private retrieval, with in-domain rates, and a refused over-budget request), CPSample
        and the privacy planner; write out/demo/report.html and summary.json. The first run also
        builds the private index; later runs reuse it (default size: a few minutes)."""
        from privdiff.demo import SECTIONS, check_complete, demo_config, run_demo
        from privdiff.errors import InvalidParameter

        if quick and full:
            raise InvalidParameter("--quick/--full", "both", "at most one of them")
        size = "quick" if quick else "full" if full else "default"
        args = ["privdiff", "demo", "--out", str(out), "--cache-dir", str(cache_dir)]
        args += [f"--{size}"] if size != "default" else []
        for flag, value in (
            ("--rdm-model", rdm_model),
            ("--cpsample-model", cpsample_model),
            ("--cpsample-classifier", cpsample_classifier),
        ):
            args += [flag, str(value)] if value is not None else []
        args += ["--seed", str(seed)] if seed else []
        sections = SECTIONS if only is None else tuple(s.strip() for s in only.split(",") if s.strip())
        args += ["--only", ",".join(sections)] if only is not None else []
        config = demo_config(
            size,
            out=out,
            cache_dir=cache_dir,
            rdm_model=rdm_model,
            cpsample_model=cpsample_model,
            cpsample_classifier=cpsample_classifier,
            seed=seed,
            sections=sections,
        )
        result = run_demo(config, command=shlex.join(args))
        # The report is written either way; a skipped or failed section still makes the command an
        # error (exit 1, one line), so CI and scripts cannot mistake a partial demo for a full one.
        check_complete(result)
