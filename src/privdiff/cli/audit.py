"""``privdiff audit retrieval``: empirical lower bound on ε of the DP retrieval mechanism."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    audit_app = typer.Typer(
        help="Empirical privacy audits (canary tests with confidence bounds).", no_args_is_help=True
    )
    app.add_typer(audit_app, name="audit")

    @audit_app.command("retrieval")
    def retrieval(
        sigma: float = typer.Option(0.3, "--sigma", help="σ: noise std per coordinate."),
        sample_rate: float = typer.Option(1.0, "--sample-rate", help="q: Poisson subsampling rate."),
        k: int = typer.Option(10, "--k", help="Neighbours averaged."),
        runs: int = typer.Option(20000, "--runs", help="Releases per dataset (D and D ∪ {canary})."),
        delta: float = typer.Option(1e-5, "--delta", help="δ of the audited guarantee."),
        dim: int = typer.Option(16, "--dim", help="Embedding dimension of the canary set-up."),
        n_records: int = typer.Option(None, "--n-records", help="Base records (default k)."),
        confidence: float = typer.Option(0.95, "--confidence", help="Confidence of the lower bound."),
        accountant: str = typer.Option("pld", "--accountant", help="Accountant for ε of one query: pld, rdp, paper."),
        mechanism: str = typer.Option(
            "dp",
            "--mechanism",
            help="dp (the real mechanism), or a deliberately broken control: broken-pad-last-record, "
            "broken-half-noise (to see the audit catch a bug).",
        ),
        suite: bool = typer.Option(
            False,
            "--suite",
            help="Run the documented suite instead (real mechanism in 3 settings + both broken controls); "
            "--runs then scales each audit's runs relative to 20000.",
        ),
        out: Path = typer.Option(Path("out/audit/retrieval"), "--out", help="Directory for audit.json and audit.png."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Canary audit of DPRetriever; exits 1 if ε̂ exceeds the accountant's ε (a violation)."""
        import json

        from privdiff.errors import PrivdiffError
        from privdiff.evaluation.audit import audit_retrieval, run_suite, write_audit_report

        if suite:
            results, ok = run_suite(delta=delta, scale=runs / 20000, progress=not as_json)
            json_path, png_path = write_audit_report(results, out)
            rows = [r.to_dict() for r in results]
            if as_json:
                typer.echo(
                    json.dumps(
                        {"audits": rows, "ok": ok, "json": str(json_path), "png": str(png_path)},
                        indent=2,
                    )
                )
            else:
                typer.echo(f"{'mechanism':<24} {'σ':>5} {'q':>6} {'k':>3} {'runs':>7} {'ε̂':>7} {'ε acc':>7}  verdict")
                for r in results:
                    verdict = "ok (ε̂ ≤ ε)" if r.passed else "FLAGGED (ε̂ > ε)"
                    typer.echo(
                        f"{r.mechanism:<24} {r.sigma:>5g} {r.sample_rate:>6g} {r.k:>3} {r.runs:>7} "
                        f"{r.epsilon_hat:>7.3f} {r.epsilon_accountant:>7.3f}  {verdict}"
                    )
                typer.echo(f"wrote {json_path} and {png_path}")
            if not ok:
                raise PrivdiffError("audit suite: a real-mechanism audit failed or a broken control was not flagged")
            return

        res = audit_retrieval(
            sigma,
            sample_rate,
            k,
            runs=runs,
            delta=delta,
            dim=dim,
            n_records=n_records,
            mechanism=mechanism,
            confidence=confidence,
            accountant=accountant,
            progress=not as_json,
        )
        json_path, png_path = write_audit_report([res], out)
        summary = res.to_dict() | {"json": str(json_path), "png": str(png_path)}
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
        else:
            typer.echo(
                f"{res.mechanism}: σ={res.sigma:g} q={res.sample_rate:g} k={res.k} (z={res.noise_multiplier:g}), "
                f"{res.runs} runs per dataset, δ={res.delta:g}"
            )
            typer.echo(
                f"  ε̂ ({res.confidence:.0%} lower bound) = {res.epsilon_hat:.3f}   "
                f"accountant ε ({res.accountant}) = {res.epsilon_accountant:.3f}   "
                f"(paper RDP: {res.epsilon_accountant_paper:.3f})"
            )
            verdict = "consistent with the accountant" if res.passed else "VIOLATION: ε̂ exceeds the accountant's ε"
            typer.echo(f"  {verdict}")
            typer.echo(f"  wrote {json_path} and {png_path}")
        if not res.passed:
            # A PrivdiffError (not typer.Exit) so privdiff.cli.main maps it to exit code 1.
            raise PrivdiffError(
                f"audit violation: ε̂ = {res.epsilon_hat:.3f} > accountant ε = {res.epsilon_accountant:.3f} "
                f"({res.confidence:.0%} confidence); see {json_path}"
            )
