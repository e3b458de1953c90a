"""``privdiff account``: ε of a query plan, calibration, and the ε-vs-queries figure.

Thin over :mod:`privdiff.accounting` (numbers) and :mod:`privdiff.report.accounting_plots`
(figures); every number printed is also available as JSON (``--json``) and every figure is written
next to a JSON file holding its numbers and the command that made it.

Imports of privdiff and its dependencies stay inside the commands: dp-accounting, scipy and
matplotlib take seconds to import, and ``privdiff --help`` or another command must not pay that.
Accountant names are never spelled out here: the default and the choices come from the registry.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

_ACCOUNTANT_HELP = (
    "Accountant: a registered name (built in: pld, the default and tightest; "
    "rdp, dp-accounting RDP; paper, Opacus 1.4 RDP, the authors' numbers)."
)


def _delta(delta: float | None, dataset_size: int | None) -> float:
    """δ from --delta, or δ = 1/N from --dataset-size (the authors' default, methods note §4.5)."""
    from privdiff.accounting import check_delta, default_delta
    from privdiff.errors import InvalidParameter

    if delta is not None and dataset_size is not None:
        raise InvalidParameter("delta", delta, "given alone: use --delta or --dataset-size (δ = 1/N), not both")
    if delta is not None:
        return check_delta(delta)
    if dataset_size is not None:
        return default_delta(dataset_size)
    raise InvalidParameter("delta", None, "in (0, 1): pass --delta, or --dataset-size N for δ = 1/N")


def _accountant(accountant: str | None) -> str:
    """The named accountant, or the registry's default when the option was not given."""
    from privdiff.accounting import DEFAULT_ACCOUNTANT
    from privdiff.accounting.accountants import check_accountant

    return check_accountant(DEFAULT_ACCOUNTANT if accountant is None else accountant)


def _accountants(accountant: str | None) -> list[str]:
    from privdiff.accounting import accountant_names

    return list(accountant_names()) if accountant == "all" else [_accountant(accountant)]


def _command() -> str:
    return shlex.join(["privdiff", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("privdiff") else ""


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    account_app = typer.Typer(
        help="Privacy accounting of DP-RDM queries (ε, calibration, curves).", no_args_is_help=True
    )
    app.add_typer(account_app, name="account")

    @account_app.command("epsilon")
    def epsilon_cmd(
        sigma: float = typer.Option(..., "--sigma", help="σ: noise std added to the mean of k unit vectors."),
        sample_rate: float = typer.Option(..., "--sample-rate", help="q: Poisson subsampling rate, in (0, 1]."),
        k: int = typer.Option(..., "--k", help="k: neighbours averaged (sensitivity 2/k)."),
        queries: int = typer.Option(..., "--queries", help="T: number of queries composed."),
        delta: float | None = typer.Option(None, "--delta", help="δ in (0, 1)."),
        dataset_size: int | None = typer.Option(None, "--dataset-size", help="N: use δ = 1/N instead of --delta."),
        accountant: str | None = typer.Option(None, "--accountant", help=_ACCOUNTANT_HELP + " 'all' shows every one."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """ε(δ) of T queries of DP-RDM with (σ, q, k)."""
        import warnings

        from privdiff.accounting import DPRDMQuery, OrderOnEdgeWarning, compute_epsilon
        from privdiff.errors import check_int
        from privdiff.utils.jsonsafe import dumps

        query = DPRDMQuery(sigma, sample_rate, k)
        queries = check_int("queries", queries, minimum=0)
        d = _delta(delta, dataset_size)
        names = _accountants(accountant)
        reports = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", OrderOnEdgeWarning)
            for name in names:
                reports.append(compute_epsilon([(query, queries)], d, name))
        rows = [{**r.to_dict(), **query.as_dict()} for r in reports]
        if as_json:
            typer.echo(dumps(rows[0] if len(rows) == 1 else {"results": rows}))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(
            title=f"DP-RDM: σ={query.sigma:g}, q={query.sample_rate:g}, k={query.k} "
            f"(z=σk/2={query.noise_multiplier:g}), T={queries}, δ={d:.3g}"
        )
        for col in ("accountant", "ε", "optimal α", "note"):
            table.add_column(col, justify="right" if col != "note" else "left")
        for r in reports:
            note = (
                "α on grid edge: bound may be loose"
                if r.order_on_edge
                else ("RDP bound (loss too large for PLD)" if r.fallback else "")
            )
            table.add_row(r.accountant, f"{r.epsilon:.6g}", "-" if r.order is None else f"{r.order:g}", note)
        Console().print(table)
        if caught:
            typer.echo("note: the optimal RDP order is on the edge of the order grid", err=True)

    @account_app.command("calibrate")
    def calibrate_cmd(
        target_epsilon: float = typer.Option(..., "--target-epsilon", help="Target ε (the result never exceeds it)."),
        solve: str = typer.Option(..., "--solve", help="Parameter to solve: sigma, sample-rate, k or queries."),
        sigma: float | None = typer.Option(None, "--sigma"),
        sample_rate: float | None = typer.Option(None, "--sample-rate"),
        k: int | None = typer.Option(None, "--k"),
        queries: int | None = typer.Option(None, "--queries"),
        delta: float | None = typer.Option(None, "--delta", help="δ in (0, 1)."),
        dataset_size: int | None = typer.Option(None, "--dataset-size", help="N: use δ = 1/N instead of --delta."),
        low: float | None = typer.Option(None, "--min", help="Lower end of the search range."),
        high: float | None = typer.Option(None, "--max", help="Upper end of the search range."),
        accountant: str | None = typer.Option(None, "--accountant", help=_ACCOUNTANT_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Solve for σ, q, k or the number of queries that meets (ε, δ), on the safe side."""
        from privdiff.accounting import calibrate
        from privdiff.accounting.calibrate import (
            K_RANGE,
            QUERIES_RANGE,
            SAMPLE_RATE_RANGE,
            SIGMA_RANGE,
        )
        from privdiff.errors import InvalidParameter
        from privdiff.utils.jsonsafe import dumps

        name = {
            "sample-rate": "sample_rate",
            "sample_rate": "sample_rate",
            "q": "sample_rate",
            "T": "queries",
        }.get(solve, solve)
        defaults = {
            "sigma": SIGMA_RANGE,
            "sample_rate": SAMPLE_RATE_RANGE,
            "k": K_RANGE,
            "queries": QUERIES_RANGE,
        }
        if name not in defaults:
            raise InvalidParameter("solve", solve, "one of sigma, sample-rate, k, queries")
        bounds = None
        if low is not None or high is not None:
            bounds = (
                defaults[name][0] if low is None else low,
                defaults[name][1] if high is None else high,
            )
        cal = calibrate(
            name,
            target_epsilon=target_epsilon,
            delta=_delta(delta, dataset_size),
            sigma=sigma,
            sample_rate=sample_rate,
            k=k,
            queries=queries,
            accountant=_accountant(accountant),
            bounds=bounds,
        )
        if name == "queries" and cal.queries == 0:
            # T = 0 is the library's correct answer, but as a plan it is a refusal: say so (exit 2)
            # with the price of the first query, rather than print a table of zeros.
            from privdiff.accounting import compute_epsilon

            one = compute_epsilon([(cal.query, 1)], cal.delta, cal.accountant).epsilon
            raise InvalidParameter(
                "target_epsilon",
                target_epsilon,
                f"at least ε of one query ({one:.4g} with σ={cal.sigma:g}, q={cal.sample_rate:g}, k={cal.k}, "
                f"δ={cal.delta:.3g}, {cal.accountant})",
                hint="no query fits: T = 0; raise the target, σ or k, or lower q",
            )
        if as_json:
            typer.echo(dumps({**cal.to_dict(), "noise_multiplier": cal.query.noise_multiplier}))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"Calibrated {name} for ε ≤ {cal.target_epsilon:g}, δ={cal.delta:.3g} ({cal.accountant})")
        for col in ("σ", "q", "k", "T", "z = σk/2", "ε achieved"):
            table.add_column(col, justify="right")
        cell = {
            "sigma": f"{cal.sigma:.6g}",
            "sample_rate": f"{cal.sample_rate:.6g}",
            "k": str(cal.k),
            "queries": str(cal.queries),
        }
        cell[name] = f"[bold]{cell[name]}[/bold]"
        table.add_row(
            cell["sigma"],
            cell["sample_rate"],
            cell["k"],
            cell["queries"],
            f"{cal.query.noise_multiplier:.4g}",
            f"{cal.epsilon:.6g}",
        )
        Console().print(table)

    @account_app.command("curve")
    def curve_cmd(
        sigma: float = typer.Option(..., "--sigma"),
        sample_rate: float = typer.Option(..., "--sample-rate"),
        k: int = typer.Option(..., "--k"),
        delta: float | None = typer.Option(None, "--delta", help="δ in (0, 1)."),
        dataset_size: int | None = typer.Option(None, "--dataset-size", help="N: use δ = 1/N instead of --delta."),
        max_queries: int = typer.Option(100_000, "--max-queries", help="Largest T on the x axis."),
        points: int = typer.Option(25, "--points", help="Points on the log-spaced T grid."),
        target_epsilon: float = typer.Option(10.0, "--target-epsilon", help="Horizontal reference line."),
        out: Path = typer.Option(..., "--out", help="Directory for epsilon_vs_queries.png/.json."),
    ) -> None:
        """ε against the number of queries under every registered accountant (PNG + JSON)."""
        from tqdm import tqdm

        from privdiff.accounting import DPRDMQuery, accountant_names
        from privdiff.accounting.planner import epsilon_curve, query_grid
        from privdiff.report.accounting_plots import plot_epsilon_curves
        from privdiff.utils.atomic import atomic_write_json

        query = DPRDMQuery(sigma, sample_rate, k)
        d = _delta(delta, dataset_size)
        grid = query_grid(max_queries, points)
        out.mkdir(parents=True, exist_ok=True)
        names = accountant_names()
        with tqdm(total=len(grid) * len(names), desc="ε(T)", unit="eval") as bar:
            curves = epsilon_curve(query, d, grid, names, progress=bar.update)
        title = f"σ={query.sigma:g}, q={query.sample_rate:g}, k={query.k} (z={query.noise_multiplier:g})"
        png = plot_epsilon_curves([(title, curves, d)], out / "epsilon_vs_queries.png", target_epsilon=target_epsilon)
        record = {
            "command": _command() or None,
            **query.as_dict(),
            "delta": d,
            "max_queries": max_queries,
            "curves": curves,
        }
        atomic_write_json(out / "epsilon_vs_queries.json", record, indent=1)
        last = {acc: rows[-1]["epsilon"] for acc, rows in curves.items()}
        typer.echo(
            f"wrote {png} and {out / 'epsilon_vs_queries.json'}; ε at T={grid[-1]}: "
            + ", ".join(f"{a} {e:.4g}" for a, e in last.items())
        )

    @account_app.command("density")
    def density_cmd(
        out: Path = typer.Option(..., "--out", help="Directory for concept_density.png/.json."),
        sigma: float = typer.Option(0.2, "--sigma"),
        queries: int = typer.Option(1000, "--queries"),
        delta: float = typer.Option(1e-7, "--delta"),
        accountant: str | None = typer.Option(
            None,
            "--accountant",
            help=_ACCOUNTANT_HELP + " Default here: the note's own (paper), whose order grid makes its ≈0.18 floor.",
        ),
    ) -> None:
        """ε against concept density r for N ∈ {1M, 10M, 100M} (methods note §4.8)."""
        from tqdm import tqdm

        from privdiff.accounting.accountants import check_accountant
        from privdiff.accounting.planner import (
            DENSITY_DATASET_SIZES,
            DENSITY_SETTING,
            concept_density_curve,
        )
        from privdiff.report.accounting_plots import plot_concept_density
        from privdiff.utils.atomic import atomic_write_json

        accountant = check_accountant(DENSITY_SETTING["accountant"] if accountant is None else accountant)
        sizes = DENSITY_DATASET_SIZES
        out.mkdir(parents=True, exist_ok=True)
        with tqdm(total=len(sizes) * 9, desc="concept density", unit="r") as bar:
            curves = concept_density_curve(
                sizes,
                sigma=sigma,
                queries=queries,
                delta=delta,
                accountant=accountant,
                progress=bar.update,
            )
        png = plot_concept_density(
            curves,
            out / "concept_density.png",
            delta=delta,
            sigma=sigma,
            queries=queries,
            accountant=accountant,
        )
        record = {
            "command": _command() or None,
            "sigma": sigma,
            "queries": queries,
            "delta": delta,
            "accountant": accountant,
            "curves": {str(n): rows for n, rows in curves.items()},
        }
        atomic_write_json(out / "concept_density.json", record, indent=1)
        typer.echo(f"wrote {png} and {out / 'concept_density.json'}")
