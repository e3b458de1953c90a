"""`privdiff protect train`, `privdiff sample`, `privdiff train diffusion` and the benchmark's --quick mode."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from privdiff.cli import main
from privdiff.cpsample import ProtectionClassifier
from privdiff.diffusion import TrainConfig, train_diffusion, unet_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    images = np.random.default_rng(0).integers(0, 256, size=(4, 8, 8, 1), dtype=np.uint8)
    train_diffusion(
        images,
        out,
        unet_config=unet_config("tiny"),
        progress=False,
        config=TrainConfig(steps=2, batch_size=4, checkpoint_every=2),
    )
    return out


@pytest.fixture(scope="module")
def tiny_classifier_dir(tmp_path_factory, memorised):
    out = tmp_path_factory.mktemp("clf")
    clf, labels = memorised
    ProtectionClassifier(classifier=clf, labels=labels, meta={"data_spec": "tiny"}).save(out)
    return out


def test_sample_with_protection_writes_pngs_grid_and_json(tmp_path, tiny_model_dir, tiny_classifier_dir, capsys):
    out = tmp_path / "s"
    code = main(
        [
            "sample",
            "--model",
            str(tiny_model_dir),
            "--protect",
            str(tiny_classifier_dir),
            "--alpha",
            "0.5",
            "--scale",
            "10",
            "-n",
            "3",
            "--steps",
            "4",
            "--out",
            str(out),
            "--seed",
            "1",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in (out / "images").glob("0*.png")) == [
        "00000.png",
        "00001.png",
        "00002.png",
    ]
    assert (out / "grid.png").stat().st_size > 0
    record = json.loads((out / "sample.json").read_text())
    assert record["cpsample"] == {
        "alpha": 0.5,
        "scale": 10.0,
        "mode": "toward_opposite",
        "gate_on": "x0",
        "step": "unit",
        "t_max": None,  # this classifier has no report to read a t-window from
        "classifier_t": 0,
    }
    assert record["gate"]["evaluations"] == 3 * 4
    # α = 1/2 fires wherever the classifier leans either way: at every evaluation.
    assert record["gate"]["fired"] == record["gate"]["evaluations"] and record["gate"]["firing_rate"] == 1.0
    assert "gate fired" in capsys.readouterr().out


def test_sample_without_protection_is_plain_ddim_and_seeded(tmp_path, tiny_model_dir):
    from PIL import Image

    for name in ("a", "b"):
        assert (
            main(
                [
                    "sample",
                    "--model",
                    str(tiny_model_dir),
                    "-n",
                    "2",
                    "--steps",
                    "3",
                    "--out",
                    str(tmp_path / name),
                    "--seed",
                    "4",
                ]
            )
            == 0
        )
    a = np.asarray(Image.open(tmp_path / "a" / "images" / "00001.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "images" / "00001.png"))
    assert np.array_equal(a, b)
    assert json.loads((tmp_path / "a" / "sample.json").read_text())["gate"] is None


@pytest.mark.parametrize("flag,value", [("--alpha", "0.7"), ("--alpha", "0"), ("--scale", "-1")])
def test_sample_rejects_bad_cpsample_settings_before_writing(
    tmp_path, tiny_model_dir, tiny_classifier_dir, capsys, flag, value
):
    out = tmp_path / "bad"
    code = main(
        [
            "sample",
            "--model",
            str(tiny_model_dir),
            "--protect",
            str(tiny_classifier_dir),
            flag,
            value,
            "-n",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 2
    assert flag.lstrip("-") in capsys.readouterr().err
    assert not out.exists()


def test_sample_from_a_missing_model_is_a_clean_error(tmp_path, capsys):
    assert main(["sample", "--model", str(tmp_path / "nope"), "-n", "1", "--out", str(tmp_path / "o")]) == 1
    assert "model.json" in capsys.readouterr().err


@pytest.mark.integration
def test_protect_train_reports_bands_for_train_and_holdout(tmp_path, tiny_model_dir, capsys):
    from privdiff.data import load_dataset

    try:
        load_dataset("fashion-mnist:train[:2]")
    except Exception:  # noqa: BLE001
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    out = tmp_path / "clf"
    code = main(
        [
            "protect",
            "train",
            "--data",
            "fashion-mnist:train[:8]",
            "--model",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--holdout",
            "fashion-mnist:test[:8]",
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--json",
        ]
    )
    assert code == 0
    saved = json.loads((out / "report.json").read_text())
    assert [row["band"] for row in saved["report"]["train"]][0] == [0, 50]
    assert set(saved["report"]) == {"train", "holdout"}
    assert set(saved["report"]["train"][0]["fraction_above_1_minus_alpha"]) == {
        "0.5",
        "0.25",
        "0.001",
    }
    assert saved["settings"]["command"].startswith("privdiff protect train --data 'fashion-mnist:train[:8]'")
    assert len(json.loads((out / "classifier.json").read_text())["labels"]) == 8


@pytest.mark.integration
def test_train_diffusion_command_trains_and_resumes(tmp_path, capsys):
    from privdiff.data import load_dataset

    try:
        load_dataset("fashion-mnist:train[:2]")
    except Exception:  # noqa: BLE001
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    out = tmp_path / "m"
    args = [
        "train",
        "diffusion",
        "--data",
        "fashion-mnist:train[:4]",
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--checkpoint-every",
        "1",
        "--json",
    ]
    assert main(args + ["--steps", "1"]) == 0
    assert main(args + ["--steps", "2", "--resume"]) == 0
    manifest = json.loads((out / "privdiff.json").read_text())
    assert manifest["steps_done"] == 2 and len(manifest["commands"]) == 2
    assert manifest["commands"][1].endswith("--resume")


@pytest.mark.integration
def test_benchmark_quick_runs_and_reports_a_ratio(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_cpsample", ROOT / "benchmarks" / "cpsample.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "b.json"
    assert bench.main(["--quick", "--alpha", "0.001", "--scale", "1000", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ratio_cpsample_over_ddim"] > 0
    # The paper's α = 0.001: an untrained classifier is never 99.9 % sure, so the gate never fires
    # and the quick run times the gate's forward pass alone (no gradient steps).
    assert result["settings"]["alpha"] == 0.001 and result["gate_firing_rate"] == 0.0
    assert len(result["ddim_seconds"]) == result["settings"]["repeats"] == 2


SHIPPED_CLASSIFIER = ROOT / "src" / "privdiff" / "assets" / "checkpoints" / "cpsample" / "fmnist64" / "classifier"


def _with_shipped_report(tmp_path, memorised):
    """The tiny memorised classifier carrying the shipped fmnist64 classifier's report."""
    clf, labels = memorised
    meta = json.loads((SHIPPED_CLASSIFIER / "classifier.json").read_text())
    meta.pop("kind"), meta.pop("labels")
    out = tmp_path / "clf"
    ProtectionClassifier(classifier=clf, labels=labels, meta=meta).save(out)
    return out


def test_sample_defaults_read_alpha_and_window_from_the_shipped_report(tmp_path, tiny_model_dir, memorised, capsys):
    """Issue 15 item 6: no --alpha → the report's suggestion for the x̂_0 gate (α = 0.25: all members
    exceed 0.75 at t < 50) and the t-window where members can reach 1 − α (t < 500)."""
    clf_dir = _with_shipped_report(tmp_path, memorised)
    out = tmp_path / "s"
    args = ["sample", "--model", str(tiny_model_dir), "--protect", str(clf_dir), "-n", "2", "--steps", "4"]
    assert main([*args, "--out", str(out)]) == 0
    record = json.loads((out / "sample.json").read_text())
    assert record["cpsample"]["alpha"] == 0.25 and record["cpsample"]["t_max"] == 500
    assert (record["cpsample"]["mode"], record["cpsample"]["gate_on"]) == ("toward_opposite", "x0")
    err = capsys.readouterr().err
    assert "suggested by the classifier's report" in err and "warning" not in err
    # DDIM 4 steps: t = 750, 500, 250, 0: the classifier runs at the two below 500 only.
    assert record["gate"]["classifier_calls"] == 2 and record["gate"]["calls"] == 4
    assert main([*args, "--out", str(tmp_path / "s0"), "--t-max", "0"]) == 0
    assert json.loads((tmp_path / "s0" / "sample.json").read_text())["gate"]["classifier_calls"] == 4


def test_sample_warns_that_the_papers_alpha_almost_never_fires_on_the_shipped_classifier(
    tmp_path, tiny_model_dir, memorised, capsys
):
    clf_dir = _with_shipped_report(tmp_path, memorised)
    args = ["sample", "--model", str(tiny_model_dir), "--protect", str(clf_dir), "-n", "1", "--steps", "2"]
    assert main([*args, "--alpha", "0.001", "--out", str(tmp_path / "s")]) == 0
    err = capsys.readouterr().err
    assert "warning: CPSample: at α = 0.001" in err and "almost never" in err and "α = 0.25" in err


def test_cli_defaults_repeat_the_guidance_defaults():
    from privdiff.cli import cpsample as cli
    from privdiff.cpsample import guidance

    for name in ("DEFAULT_ALPHA", "DEFAULT_SCALE", "DEFAULT_MODE", "DEFAULT_GATE_ON", "DEFAULT_STEP"):
        assert getattr(cli, name) == getattr(guidance, name), name


@pytest.mark.integration
def test_benchmark_t_window_skips_the_classifier_and_times_the_unwindowed_run(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_cpsample_w", ROOT / "benchmarks" / "cpsample.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "w.json"
    # --quick: 5 DDIM steps, t = 800, 600, 400, 200, 0; a window t < 500 keeps 3 of them.
    assert bench.main(["--quick", "--t-max", "500", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["t_max"] == 500 and result["classifier_calls_per_run"] == 3
    assert len(result["no_window_seconds"]) == 2 and result["ratio_no_window_over_ddim"] > 0
