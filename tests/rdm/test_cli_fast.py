"""Fast CLI checks that need no model or encoder: bad options exit 2 before anything loads."""

import pytest

from privdiff.cli import main


def test_generate_rejects_unknown_mode_before_loading_anything(tmp_path, capsys):
    code = main(
        [
            "generate",
            "--model",
            str(tmp_path / "nowhere"),
            "--mode",
            "magic",
            "--prompt",
            "x",
            "--out",
            str(tmp_path / "g"),
        ]
    )
    assert code == 2 and "mode" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_generate_rejects_zero_images_per_prompt(tmp_path, capsys):
    code = main(
        [
            "generate",
            "--model",
            str(tmp_path / "nowhere"),
            "--prompt",
            "x",
            "-n",
            "0",
            "--out",
            str(tmp_path / "g"),
        ]
    )
    assert code == 2 and "n" in capsys.readouterr().err


def test_generate_with_a_missing_model_directory_fails_cleanly(tmp_path, capsys):
    code = main(
        [
            "generate",
            "--model",
            str(tmp_path / "nowhere"),
            "--mode",
            "no-retrieval",
            "--prompt",
            "x",
            "--out",
            str(tmp_path / "g"),
        ]
    )
    err = capsys.readouterr().err
    # The resolver's CheckpointError names the directory it was given (and nothing else is tried).
    assert code == 1 and "no RDM model" in err and "nowhere" in err


def test_train_rdm_rejects_bad_channels(tmp_path, capsys):
    code = main(["train", "rdm", "--out", str(tmp_path / "m"), "--channels", "a,b"])
    assert code == 2 and "channels" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "args, name",
    [
        (["--balance", "labels"], "balance"),
        (["--context", "global"], "context"),
        (["--context-rate", "2"], "context_rate"),
        (["--device", "tpu"], "device"),
    ],
)
def test_train_rdm_rejects_bad_data_options_before_loading_anything(tmp_path, capsys, args, name):
    code = main(["train", "rdm", "--out", str(tmp_path / "m"), *args])
    assert code == 2 and name in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_train_rdm_on_a_missing_gpu_is_refused_before_anything_is_written(tmp_path, capsys):
    code = main(["train", "rdm", "--out", str(tmp_path / "m"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and "device" in err and "0 CUDA device" in err
    assert not (tmp_path / "m").exists()
