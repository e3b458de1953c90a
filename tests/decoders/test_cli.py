"""`privdiff index build --encoder clip:DIR` and `privdiff generate --pipeline DIR --pipeline-type ...`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from privdiff.cli import main

pytestmark = pytest.mark.integration  # tiny models, but several loads per test (> ~2 s)


@pytest.fixture(scope="module")
def cli_setup(stacks, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(3)
    np.savez(root / "private.npz", images=rng.integers(0, 256, size=(40, 16, 16, 3), dtype=np.uint8))
    np.savez(root / "public.npz", images=rng.integers(0, 256, size=(12, 16, 16, 3), dtype=np.uint8))
    return root


def _ledger(tmp_path, epsilon=50.0):
    from privdiff.accounting.ledger import Ledger

    Ledger.create(tmp_path / "budget.db", epsilon=epsilon, delta=1e-5).close()
    return tmp_path / "budget.db"


def _queries(path):
    from privdiff.accounting.ledger import Ledger

    book = Ledger.open(path)
    try:
        return book.status().queries
    finally:
        book.close()


def _generate(stacks, family, index, ledger, out, *extra):
    args = [
        "generate",
        "--pipeline",
        str(stacks["dirs"][family]),
        "--pipeline-type",
        family,
        "--encoder",
        f"clip:{stacks['clip_dir']}",
        "--index",
        str(index),
        "--ledger",
        str(ledger),
        "--prompt",
        "a photo of a bag",
        "--prompt",
        "a photo of a coat",
        "-n",
        "2",
        "--steps",
        "2",
        "--image-size",
        "32",
        "--k",
        "4",
        "--sigma",
        "1.0",
        "--sample-rate",
        "0.5",
        "--out",
        str(out),
        "--quiet",
        "--json",
    ]
    if family == "ip-adapter":
        args += ["--ip-adapter", str(stacks["ip_adapter"])]
    return main(args + list(extra))


def test_index_build_then_generate_with_kandinsky(stacks, cli_setup, tmp_path, capsys):
    index = tmp_path / "index"
    code = main(
        [
            "index",
            "build",
            "--encoder",
            f"clip:{stacks['clip_dir']}",
            "--data",
            f"npz:{cli_setup / 'private.npz'}",
            "--out",
            str(index),
            "--json",
        ]
    )
    assert code == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["space_id"] == stacks["clip"].space_id and manifest["count"] == 40
    ledger = _ledger(tmp_path)
    out = tmp_path / "gen"
    # No --embed-norm: ν is measured on the public set given with --public-data.
    code = _generate(stacks, "kandinsky22", index, ledger, out, "--public-data", f"npz:{cli_setup / 'public.npz'}")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    record = json.loads(captured.out)
    assert record["images_shape"] == [2, 2, 32, 32, 3] and record["mode"] == "dp-rdm"
    assert record["settings"]["decoder"] == "kandinsky22"
    assert "public.npz" in record["settings"]["embed_norm_source"]
    assert len(list((out / "images").glob("*.png"))) == 4 and (out / "grid.png").is_file()
    assert _queries(ledger) == 2


@pytest.mark.parametrize("family", ["stable-unclip", "ip-adapter"])
def test_generate_with_other_families(stacks, family, tmp_path, capsys):
    ledger = _ledger(tmp_path)
    code = _generate(stacks, family, stacks["index_dir"], ledger, tmp_path / "gen", "--embed-norm", "6.0")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["settings"]["embed_norm"] == 6.0
    assert _queries(ledger) == 2


def test_missing_pipeline_folder_is_one_line_and_charges_nothing(stacks, tmp_path, capsys):
    ledger = _ledger(tmp_path)
    stacks = dict(stacks, dirs={"kandinsky22": tmp_path / "no-such-decoder"})
    code = _generate(stacks, "kandinsky22", stacks["index_dir"], ledger, tmp_path / "gen", "--embed-norm", "6")
    err = capsys.readouterr().err
    assert code == 1 and "download" in err and err.count("\n") == 1
    assert _queries(ledger) == 0 and not (tmp_path / "gen").exists()


def test_over_budget_exits_3_before_loading(stacks, tmp_path, capsys):
    ledger = _ledger(tmp_path, epsilon=0.01)
    stacks = dict(stacks, dirs={"kandinsky22": tmp_path / "not-even-loaded"})
    code = _generate(stacks, "kandinsky22", stacks["index_dir"], ledger, tmp_path / "gen", "--embed-norm", "6")
    assert code == 3 and _queries(ledger) == 0


@pytest.mark.parametrize(
    "extra",
    [
        ["--pipeline-type", "dalle2"],
        ["--encoder", "default"],
        ["--mode", "public-retrieval"],
        ["--model", "somewhere"],
    ],
)
def test_usage_errors_exit_2(stacks, tmp_path, capsys, extra):
    ledger = _ledger(tmp_path)
    code = _generate(stacks, "kandinsky22", stacks["index_dir"], ledger, tmp_path / "gen", *extra)
    assert code == 2 and capsys.readouterr().err.startswith("error:")
    assert _queries(ledger) == 0


def test_generate_with_the_kandinsky_prior_folder_as_clip_space_and_query_prior(stacks, tmp_path, capsys):
    # The kandinsky-2-2-prior layout is both the CLIP folder and the prior; the index built with
    # clip:<clip folder> is in the same space (same image tower), so it is accepted.
    ledger = _ledger(tmp_path)
    prior = str(stacks["prior_dir"])
    code = _generate(
        stacks,
        "kandinsky22",
        stacks["index_dir"],
        ledger,
        tmp_path / "gen",
        "--encoder",
        f"clip:{prior}",
        "--prior",
        prior,
        "--embed-norm",
        "6",
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["settings"]["query_encoder"] == "prior" and _queries(ledger) == 2
