"""`privdiff train rdm` and `privdiff generate` end to end on a few Fashion-MNIST images with the
real default encoders (tiny model, two sampling steps). Loading the encoders and training make
this module slow-tier; the library-level behaviour is covered in the default tier by
test_pipeline.py."""

import json

import numpy as np
import pytest

from privdiff.cli import main

SPEC = "fashion-mnist:train[:40]"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from privdiff.data.fashion_mnist import INSTALL_HINT, resolve_dir

    d = resolve_dir()
    if not any((d / f).exists() for f in ("train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte")):
        pytest.skip(f"Fashion-MNIST not found in {d}: {INSTALL_HINT}")
    from privdiff.data import load_dataset
    from privdiff.encoders import load_image_encoder
    from privdiff.retrieval import build_index

    root = tmp_path_factory.mktemp("cli")
    mp = pytest.MonkeyPatch()
    mp.setenv("PRIVDIFF_CACHE_DIR", str(root / "cache"))
    model = root / "model"
    assert (
        main(
            [
                "train",
                "rdm",
                "--public",
                SPEC,
                "--out",
                str(model),
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--channels",
                "8,8,8",
                "--checkpoint-every",
                "2",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    enc = load_image_encoder("default")
    emb = enc.encode_images(load_dataset("fashion-mnist:train[40:100]").images)
    index = build_index(root / "index", emb, space_id=enc.space_id, source="fashion-mnist:train[40:100]")
    yield root, model, index.path
    mp.undo()


def _ledger(path, epsilon):
    from privdiff.accounting import Ledger

    Ledger.create(path, epsilon=epsilon, delta=1e-5)
    return path


def _generate(model, index, ledger, out, *extra):
    return main(
        [
            "generate",
            "--model",
            str(model),
            "--index",
            str(index),
            "--ledger",
            str(ledger),
            "--prompt",
            "a photo of a sneaker",
            "--prompt",
            "a photo of a bag",
            "-n",
            "2",
            "--steps",
            "2",
            "--k",
            "4",
            "--sigma",
            "0.5",
            "--sample-rate",
            "0.5",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_train_command_records_the_exact_command_and_space(setup):
    _, model, _ = setup
    from privdiff.rdm.model import read_model_info

    cfg = read_model_info(model)
    assert cfg["command"].startswith("privdiff train rdm --public 'fashion-mnist:train[:40]'")
    # No --encoder: "default", the shipped RDM's space.
    assert cfg["model"]["space_id"] == "fmnist-public-cnn/v1" and cfg["training"]["steps_done"] == 2


def test_generate_dp_writes_images_record_and_charges_one_query_per_prompt(setup, tmp_path):
    from privdiff.accounting import Ledger

    _, model, index = setup
    ledger = _ledger(tmp_path / "b.db", 1000.0)
    assert _generate(model, index, ledger, tmp_path / "g") == 0
    rec = json.loads((tmp_path / "g" / "generation.json").read_text())
    assert rec["mode"] == "dp-rdm" and rec["images_shape"] == [2, 2, 28, 28, 1]
    assert (tmp_path / "g" / "grid.png").exists() and (tmp_path / "g" / "images" / "p01_001.png").exists()
    assert Ledger.open(ledger).status().queries == 2
    assert rec["privacy"]["epsilon_remaining"] == pytest.approx(Ledger.open(ledger).status().epsilon_remaining)


def test_generate_over_budget_exits_3_and_writes_nothing(setup, tmp_path, capsys):
    from privdiff.accounting import Ledger

    _, model, index = setup
    ledger = _ledger(tmp_path / "b.db", 0.01)
    assert _generate(model, index, ledger, tmp_path / "g") == 3
    assert "budget" in capsys.readouterr().err
    assert not (tmp_path / "g").exists() and Ledger.open(ledger).status().queries == 0


def test_generate_needs_an_existing_ledger(setup, tmp_path):
    _, model, index = setup
    assert _generate(model, index, tmp_path / "missing.db", tmp_path / "g") == 4  # LedgerError: exit 4
    assert not (tmp_path / "g").exists()


def test_generate_public_baseline_needs_no_ledger_and_reports_zero_epsilon(setup, tmp_path):
    _, model, _ = setup
    code = main(
        [
            "generate",
            "--model",
            str(model),
            "--mode",
            "public-retrieval",
            "--public-data",
            SPEC,
            "--prompt",
            "a photo of a coat",
            "-n",
            "1",
            "--steps",
            "2",
            "--k",
            "3",
            "--out",
            str(tmp_path / "g"),
        ]
    )
    assert code == 0
    rec = json.loads((tmp_path / "g" / "generation.json").read_text())
    assert rec["mode"] == "public-retrieval" and rec["privacy"]["epsilon"] == 0.0


def test_generate_refuses_an_index_of_another_space(setup, tmp_path):
    from privdiff.retrieval import build_index

    _, model, _ = setup
    rng = np.random.default_rng(0)
    other = build_index(tmp_path / "idx", rng.normal(size=(10, 1280)), space_id="effnet-lite0-64px/v1")
    assert _generate(model, other.path, _ledger(tmp_path / "b.db", 100.0), tmp_path / "g") == 4  # EncoderMismatch
    assert not (tmp_path / "g").exists()


def test_generate_rejects_unknown_mode_with_exit_2(setup, tmp_path):
    _, model, _ = setup
    assert (
        main(
            [
                "generate",
                "--model",
                str(model),
                "--mode",
                "magic",
                "--prompt",
                "x",
                "--out",
                str(tmp_path / "g"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "g").exists()
