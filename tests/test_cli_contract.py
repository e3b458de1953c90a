"""The command line behaves like a well-made Unix tool (issue 12, "CLI conventions").

Every sub-command is found from the typer app itself, so a command added later is held to the
same contract without editing this file: a malformed option is one line on stderr and exit 2,
never a traceback. The exit codes are the ones the README's table documents.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import typer

from privdiff.cli import app, exit_code_for, main
from privdiff.errors import (
    CheckpointError,
    DataError,
    EncoderMismatch,
    IndexCorrupt,
    InvalidParameter,
    LedgerError,
    PrivacyBudgetExceeded,
    PrivdiffError,
)

ROOT = Path(__file__).resolve().parents[1]


def _leaf_commands() -> list[tuple[list[str], object]]:
    """(path, click command) of every runnable sub-command, walked from the app."""
    found: list[tuple[list[str], object]] = []

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, path + [name])
        else:
            found.append((path, cmd))

    walk(typer.main.get_command(app), [])
    return found


COMMANDS = _leaf_commands()
COMMAND_IDS = [" ".join(p) for p, _ in COMMANDS]


def _int_options(cmd) -> list[str]:
    """Options of ``cmd`` whose value must be an integer."""
    out = []
    for p in cmd.params:
        if getattr(p, "param_type_name", "") != "option" or getattr(p, "is_flag", False):
            continue
        bare = p.bare_type() if callable(getattr(p, "bare_type", None)) else getattr(p.type, "name", "")
        if str(getattr(bare, "__name__", bare)) == "int":
            out.append(p.opts[0])
    return out


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert "Traceback" not in err
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def test_the_walk_finds_every_command_and_its_int_options():
    # A guard for the enumeration itself: if it found nothing, every contract test below would pass.
    groups = {p[0] for p, _ in COMMANDS}
    assert {
        "account",
        "budget",
        "data",
        "eval",
        "index",
        "train",
        "protect",
        "sample",
        "generate",
        "demo",
        "serve",
        "keys",
    } <= groups
    assert len(COMMANDS) >= 20
    assert (["account", "epsilon"], "--k") in INT_CASES and (
        ["index", "build"],
        "--size",
    ) in INT_CASES


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=COMMAND_IDS)
def test_unknown_option_is_one_line_and_exit_2(path, capsys):
    code, _, err = _run([*path, "--no-such-option"], capsys)
    assert code == 2
    assert "--no-such-option" in _one_error_line(err)


INT_CASES = [(p, opt) for p, cmd in COMMANDS for opt in _int_options(cmd)]


@pytest.mark.parametrize("path,option", INT_CASES, ids=[f"{' '.join(p)} {o}" for p, o in INT_CASES])
def test_non_integer_value_is_one_line_naming_option_and_value(path, option, capsys):
    code, _, err = _run([*path, option, "2.5"], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert option in line and "2.5" in line


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["account", "epsilon", "--sigma", "abc"], "--sigma"),
        (["account", "epsilon", "--k", "2.5", "--sigma", "1"], "--k"),
        (["account", "epsilon", "--sigma", "1"], "--sample-rate"),  # missing required option
        (["no-such-command"], "no-such-command"),
        (["account", "no-such-command"], "no-such-command"),
        (["budget", "status"], "ledger"),  # missing argument
    ],
)
def test_usage_errors_are_one_line_and_exit_2(argv, needle, capsys):
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert needle in _one_error_line(err)


def test_version(capsys):
    from privdiff import __version__

    code, out, err = _run(["--version"], capsys)
    assert code == 0 and out.strip() == f"privdiff {__version__}" and err == ""


@pytest.mark.parametrize("path", [[]] + [p for p, _ in COMMANDS], ids=["privdiff"] + COMMAND_IDS)
def test_dash_h_is_help_on_every_command(path, capsys):
    code, out, err = _run([*path, "-h"], capsys)
    assert code == 0, err
    assert "Usage" in out and "--help" in out


def test_exit_codes_match_the_documented_table():
    over = PrivacyBudgetExceeded(epsilon_spent=1, epsilon_would_be=2, epsilon_budget=1.5, delta=1e-5)
    cases = {
        2: [InvalidParameter("k", 0, ">= 1"), DataError("x")],
        3: [over],
        4: [IndexCorrupt("x"), LedgerError("x"), EncoderMismatch("a", "b")],
        1: [CheckpointError("x"), PrivdiffError("x")],
    }
    for code, excs in cases.items():
        for exc in excs:
            assert exit_code_for(exc) == code, type(exc).__name__
    # The README's table names each error class under its code.
    readme = (ROOT / "README.md").read_text()
    table = {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| ([0-4]) \| (.*) \|$", readme, re.M)}
    assert set(table) == {0, 1, 2, 3, 4}
    for code, excs in cases.items():
        for exc in excs:
            if code != 1:
                assert type(exc).__name__ in table[code], (code, type(exc).__name__)


def test_errors_raised_inside_a_command_exit_with_their_code(tmp_path, capsys, monkeypatch):
    from privdiff.accounting import Ledger

    ledger = tmp_path / "l.sqlite"
    Ledger.create(ledger, epsilon=1.0, delta=1e-5).close()
    over = PrivacyBudgetExceeded(epsilon_spent=0.0, epsilon_would_be=9.0, epsilon_budget=1.0, delta=1e-5)
    for exc, code in (
        (over, 3),
        (LedgerError("ledger\nis corrupt"), 4),
        (IndexCorrupt("bad index"), 4),
        (EncoderMismatch("a/v1", "b/v1"), 4),
        (DataError("bad data"), 2),
    ):

        def refuse(self, query, count=1, _exc=exc):
            raise _exc

        monkeypatch.setattr(Ledger, "preview", refuse)
        got, _, err = _run(
            [
                "budget",
                "preview",
                str(ledger),
                "--sigma",
                "0.05",
                "--sample-rate",
                "0.01",
                "--k",
                "20",
            ],
            capsys,
        )
        assert got == code, (type(exc).__name__, got)
        assert _one_error_line(err)  # a multi-line message is folded into one line


def test_corrupt_ledger_is_exit_4(tmp_path, capsys):
    bad = tmp_path / "ledger.sqlite"
    bad.write_bytes(np.random.default_rng(0).bytes(8192))
    code, _, err = _run(["budget", "status", str(bad)], capsys)
    assert code == 4 and str(bad) in _one_error_line(err)


def test_ledger_of_a_foreign_database_is_exit_4(tmp_path, capsys):
    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as con:
        con.execute("CREATE TABLE t (x)")
    code, _, err = _run(["budget", "status", str(foreign)], capsys)
    assert code == 4
    _one_error_line(err)


def test_corrupt_index_is_exit_4(tmp_path, capsys):
    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / "manifest.json").write_text("{ truncated")
    code, _, err = _run(["index", "info", str(idx)], capsys)
    assert code == 4 and "manifest" in _one_error_line(err)


# --- datasets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    ["fashion-mnist:train[5:2]", "fashion-mnist:train[0:0]", "digits[-1:-5]", "digits[5000:]"],
)
def test_empty_slice_is_exit_2_and_writes_nothing(spec, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    code, out, err = _run(["data", "show", spec, "--out", str(grid)], capsys)
    assert code == 2 and "selects no images" in _one_error_line(err)
    assert not grid.exists() and out == ""


# Every command that reads a dataset, with its other required arguments (placeholders: --size is
# checked before anything is read, loaded or created).
SIZE_COMMANDS = {
    "index build": ["index", "build", "--data", "digits", "--out", "{tmp}/idx"],
    "train rdm": ["train", "rdm", "--public", "digits", "--out", "{tmp}/rdm"],
    "train diffusion": ["train", "diffusion", "--data", "digits", "--out", "{tmp}/dm"],
    "protect train": [
        "protect",
        "train",
        "--data",
        "digits",
        "--model",
        "{tmp}/m",
        "--out",
        "{tmp}/clf",
    ],
    "eval fid": ["eval", "fid", "digits", "digits"],
    "eval replication": ["eval", "replication", "digits", "digits"],
    "eval calibrate": ["eval", "calibrate", "digits", "digits"],
    "data show": ["data", "show", "digits", "--out", "{tmp}/g.png"],
}


@pytest.fixture
def nothing_heavy(monkeypatch):
    """Make loading a dataset, encoder or model a test failure (it must not happen)."""
    import privdiff.data
    import privdiff.diffusion.model
    import privdiff.encoders
    import privdiff.evaluation.io

    def forbidden(*args, **kwargs):
        raise AssertionError("loaded something before validating --size")

    monkeypatch.setattr(privdiff.data, "load_dataset", forbidden)
    monkeypatch.setattr(privdiff.evaluation.io, "load_source", forbidden)
    monkeypatch.setattr(privdiff.encoders, "load_image_encoder", forbidden)
    monkeypatch.setattr(privdiff.diffusion.model, "load_model", forbidden)


def test_every_dataset_command_has_size():
    have = {" ".join(p) for p, cmd in COMMANDS if any("--size" in p_.opts for p_ in cmd.params)}
    assert set(SIZE_COMMANDS) <= have


@pytest.mark.parametrize("name", list(SIZE_COMMANDS))
@pytest.mark.parametrize("size", ["0", "7", "5000"])
def test_size_is_checked_before_any_work(name, size, tmp_path, capsys, nothing_heavy):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in SIZE_COMMANDS[name]] + ["--size", size]
    code, _, err = _run(argv, capsys)
    assert code == 2
    line = _one_error_line(err)
    assert f"size={size}" in line and "1024" in line
    assert list(tmp_path.iterdir()) == []


def test_the_error_that_suggests_size_names_an_option_that_exists(tmp_path, capsys):
    from PIL import Image

    for name, shape in (("a", (8, 8)), ("b", (12, 10))):
        Image.fromarray(np.full(shape, 100, dtype=np.uint8)).save(tmp_path / f"{name}.png")
    code, _, err = _run(["eval", "replication", str(tmp_path), str(tmp_path), "--json"], capsys)
    assert code == 2 and "--size" in _one_error_line(err)
    code, out, err = _run(["eval", "replication", str(tmp_path), str(tmp_path), "--size", "8", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["n_generated"] == 2
    code, out, _ = _run(
        [
            "data",
            "show",
            f"folder:{tmp_path}",
            "--size",
            "16",
            "--json",
            "--out",
            str(tmp_path / "g" / "grid.png"),
        ],
        capsys,
    )
    assert code == 0 and json.loads(out)["shape"] == [2, 16, 16, 1]


# --- accounting ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_calibrate_with_no_query_fitting_says_so_and_exits_2(capsys):
    code, out, err = _run(
        [
            "account",
            "calibrate",
            "--target-epsilon",
            "0.01",
            "--solve",
            "queries",
            "--sigma",
            "0.05",
            "--sample-rate",
            "0.01",
            "--k",
            "20",
            "--delta",
            "1e-5",
        ],
        capsys,
    )
    assert code == 2 and out == ""
    assert "T = 0" in _one_error_line(err)
    # A target that fits queries is answered as before.
    code, out, _ = _run(
        [
            "account",
            "calibrate",
            "--target-epsilon",
            "10",
            "--solve",
            "queries",
            "--sigma",
            "0.05",
            "--sample-rate",
            "0.01",
            "--k",
            "20",
            "--delta",
            "1e-5",
            "--json",
        ],
        capsys,
    )
    assert code == 0 and json.loads(out)["queries"] > 0


@pytest.mark.integration
def test_dp_accounting_convergence_chatter_is_not_shown():
    # RDP orders dp-accounting cannot evaluate at (z = 0.5, q = 0.1) are logged through absl and
    # dropped. A subprocess, because pytest's own log capture would hide the chatter in-process.
    import os
    import subprocess
    import sys

    import privdiff

    env = dict(os.environ, PYTHONPATH=str(Path(privdiff.__file__).resolve().parents[1]))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "privdiff",
            "account",
            "epsilon",
            "--sigma",
            "1",
            "--sample-rate",
            "0.1",
            "--k",
            "1",
            "--queries",
            "10",
            "--delta",
            "1e-5",
            "--accountant",
            "rdp",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["epsilon"] > 0
    assert "converge" not in proc.stderr and proc.stderr.strip() == ""


@pytest.mark.integration
def test_budget_preview_defaults_to_the_models_generation_settings(tmp_path, capsys):
    from privdiff.accounting import Ledger
    from privdiff.rdm.pipeline import generation_defaults, resolve_model_dir

    ledger = tmp_path / "l.sqlite"
    Ledger.create(ledger, epsilon=10.0, delta=1e-5).close()
    code, out, err = _run(["budget", "preview", str(ledger), "--queries", "3", "--json"], capsys)
    assert code == 0, err
    shipped = generation_defaults(resolve_model_dir())
    got = json.loads(out)
    assert (got["sigma"], got["sample_rate"], got["k"]) == (
        shipped["sigma"],
        shipped["sample_rate"],
        shipped["k"],
    )

    # Another model's stored defaults are used for what is not given on the command line.
    other = tmp_path / "model"
    other.mkdir()
    from privdiff.rdm.model import read_model_info

    # Written in the v1 layout (config.json + model.safetensors), which still loads.
    config = read_model_info(resolve_model_dir()) | {"format_version": 1}
    config["generation_defaults"] = {"sigma": 0.07, "sample_rate": 0.02, "k": 11}
    (other / "config.json").write_text(json.dumps(config))
    (other / "model.safetensors").write_bytes(b"")  # only the config is read
    code, out, err = _run(["budget", "preview", str(ledger), "--model", str(other), "--k", "30", "--json"], capsys)
    assert code == 0, err
    got = json.loads(out)
    assert (got["sigma"], got["sample_rate"], got["k"]) == (0.07, 0.02, 30)


# --- demo ----------------------------------------------------------------------------------------


def test_demo_with_a_skipped_section_is_an_error(tmp_path, capsys):
    code, _, err = _run(
        [
            "demo",
            "--quick",
            "--out",
            str(tmp_path / "d"),
            "--cache-dir",
            str(tmp_path / "c"),
            "--rdm-model",
            str(tmp_path / "no-rdm"),
            "--only",
            "dprdm",
        ],
        capsys,
    )
    assert code == 1
    line = _one_error_line(err)
    assert "skipped" in line and "no-rdm" in line
    assert (tmp_path / "d" / "report.html").is_file()  # the report is still written


def test_cli_help_runs():
    assert main(["--help"]) == 0
