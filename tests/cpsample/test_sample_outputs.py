"""`privdiff sample` output folder (issue #12): checked before sampling, chains into `privdiff eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from privdiff.cli import main
from privdiff.diffusion import TrainConfig, train_diffusion, unet_config


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


def test_sample_folder_has_images_npz_and_a_labelled_grid_and_eval_reads_only_the_images(
    tmp_path, tiny_model_dir, capsys
):
    from privdiff.evaluation.io import load_source

    out = tmp_path / "s"
    assert (
        main(
            [
                "sample",
                "--model",
                str(tiny_model_dir),
                "-n",
                "12",
                "--steps",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "grid.png",
        "images",
        "images.npz",
        "sample.json",
    ]
    with np.load(out / "images.npz") as z:
        npz = z["images"]
    assert npz.shape == (12, 8, 8, 1) and len(list((out / "images").glob("*.png"))) == 12
    record = json.loads((out / "sample.json").read_text())
    assert record["files"]["npz"].startswith("images.npz")
    src = load_source(out)
    assert np.array_equal(src.images, npz)
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "replication",
                str(out),
                str(out),
                "--feature-space",
                "pixel",
                "--threshold",
                "0.99",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["n_generated"] == 12


@pytest.mark.parametrize("extra,needle", [(["--seed", str(2**63)], "seed"), (["-n", str(10**12)], "n=")])
def test_sample_rejects_bad_seed_and_huge_n_before_writing(tmp_path, tiny_model_dir, capsys, extra, needle):
    out = tmp_path / "s"
    assert main(["sample", "--model", str(tiny_model_dir), "--steps", "2", "--out", str(out), *extra]) == 2
    assert needle in capsys.readouterr().err and not out.exists()


def test_sample_refuses_a_file_as_out_and_a_folder_with_earlier_output(tmp_path, tiny_model_dir, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["sample", "--model", str(tiny_model_dir), "-n", "1", "--steps", "1", "--out", str(f)]) == 2
    assert f.read_text() == "x"
    out = tmp_path / "s"
    assert (
        main(
            [
                "sample",
                "--model",
                str(tiny_model_dir),
                "-n",
                "1",
                "--steps",
                "1",
                "--out",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    before = sorted(p.name for p in out.rglob("*"))
    assert (
        main(
            [
                "sample",
                "--model",
                str(tiny_model_dir),
                "-n",
                "1",
                "--steps",
                "1",
                "--out",
                str(out),
                "-q",
            ]
        )
        == 2
    )
    assert "earlier outputs" in capsys.readouterr().err and sorted(p.name for p in out.rglob("*")) == before


def test_sample_progress_ticks_once_per_ddim_step(tmp_path, tiny_model_dir, monkeypatch):
    import tqdm.auto

    from privdiff.diffusion.generate import generate
    from privdiff.diffusion.model import load_model

    bars = []

    class FakeBar:
        def __init__(self, *a, total=None, **k):
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, k=1):
            self.n += k

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    generate(load_model(tiny_model_dir), 5, num_inference_steps=3, batch_size=2, progress=True)
    assert [(b.total, b.n) for b in bars] == [(9, 9)]  # 3 batches × 3 steps, one bar
