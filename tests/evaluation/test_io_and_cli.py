import json

import numpy as np
import pytest

from privdiff.cli import main
from privdiff.errors import DataError
from privdiff.evaluation import fid as fidmod
from privdiff.evaluation.io import load_images, load_source, source_to_spec


def _npz(path, images):
    np.savez(path, images=images)
    return str(path)


def _folder(path, images):
    from PIL import Image

    path.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img[..., 0]).save(path / f"{i:03d}.png")
    return str(path)


# ----------------------------------------------------------------------------- io


def test_sources_map_folders_npz_and_specs_to_dataset_specs(tmp_path, rng):
    images = rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    npz = _npz(tmp_path / "gen.npz", images)
    folder = _folder(tmp_path / "imgs", images)
    assert source_to_spec(npz) == f"npz:{tmp_path.resolve() / 'gen.npz'}"
    assert source_to_spec(npz + "[:2]").endswith("gen.npz[:2]")
    assert source_to_spec(folder) == f"folder:{(tmp_path / 'imgs').resolve()}"
    assert source_to_spec("fashion-mnist:test[:10]") == "fashion-mnist:test[:10]"


def test_load_images_reads_npz_and_folders_identically(tmp_path, rng):
    images = rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    np.testing.assert_array_equal(load_images(_npz(tmp_path / "a.npz", images)), images)
    from_folder = load_source(_folder(tmp_path / "imgs", images))
    np.testing.assert_array_equal(from_folder.images, images)
    assert from_folder.spec.startswith("folder:")
    assert load_images(_npz(tmp_path / "b.npz", images) + "[1:3]").shape == (2, 8, 8, 1)


@pytest.mark.parametrize("source", ["", "   ", "missing.npz", "no-such-dataset:foo"])
def test_unusable_sources_raise_data_error(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError):
        load_images(source)


# ----------------------------------------------------------------------------- CLI


@pytest.mark.integration
def test_cli_fid_prints_json_with_settings_and_warnings(tmp_path, rng, capsys, monkeypatch):
    a = _npz(tmp_path / "a.npz", rng.integers(0, 256, (4, 12, 12, 1), dtype=np.uint8))
    b = _npz(tmp_path / "b.npz", rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8))
    out = tmp_path / "fid.json"
    assert main(["eval", "fid", a, b, "--json", "--batch-size", "3", "--out", str(out)]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["metric"] == "fid" and payload["fid"] > 0
    assert (payload["n_a"], payload["n_b"]) == (4, 5)
    assert payload["settings"]["batch_size"] == 3
    assert payload["settings"]["source_a"].startswith("npz:")
    assert any("unequal sample counts" in w for w in payload["warnings"])
    assert json.loads(out.read_text())["fid"] == payload["fid"]
    # Both sets are now cached: a second run must not touch the network.
    calls = []
    real = fidmod.inception_features
    monkeypatch.setattr(fidmod, "inception_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["eval", "fid", a, b, "--json"]) == 0
    assert calls == []
    assert json.loads(capsys.readouterr().out)["fid"] == pytest.approx(payload["fid"])


def test_cli_replication_writes_json_grid_and_histogram(tmp_path, rng, capsys):
    ref = rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)
    gen = np.concatenate([ref[:2], rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)])
    out = tmp_path / "rep"
    code = main(
        [
            "eval",
            "replication",
            _npz(tmp_path / "g.npz", gen),
            _npz(tmp_path / "r.npz", ref),
            "--threshold",
            "0.95",
            "--out",
            str(out),
            "--json",
            "--top-n",
            "3",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rate"] == pytest.approx(2 / 8)
    assert "similarities" not in summary
    full = json.loads((out / "replication.json").read_text())
    assert len(full["similarities"]) == 8 and full["settings"]["reference"].startswith("npz:")
    for name in ("top_pairs.png", "histogram.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_cli_replication_default_threshold_is_the_calibrated_one(tmp_path, rng, capsys):
    from privdiff.evaluation.replication import recommended_threshold

    ref = rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    path = _npz(tmp_path / "r.npz", ref)
    assert main(["eval", "replication", path, path, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["threshold"] == recommended_threshold("pixel") and summary["rate"] == 1.0


def test_cli_calibrate_writes_threshold_and_plot(tmp_path, rng, capsys):
    ref = rng.integers(0, 256, (30, 8, 8, 1), dtype=np.uint8)
    neg = rng.integers(0, 256, (30, 8, 8, 1), dtype=np.uint8)
    out = tmp_path / "cal"
    code = main(
        [
            "eval",
            "calibrate",
            _npz(tmp_path / "r.npz", ref),
            _npz(tmp_path / "n.npz", neg),
            "--max-fpr",
            "0.1",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["fpr"] <= 0.1 and payload["tpr"] > 0.9
    assert (out / "calibration.png").is_file() and json.loads((out / "calibration.json").read_text())[
        "threshold"
    ] == payload["threshold"]


@pytest.mark.parametrize(
    "extra",
    [["--feature-space", "sift"], ["--threshold", "2"], ["--top-n", "0"]],
    ids=["feature-space", "threshold", "top-n"],
)
def test_cli_replication_bad_options_exit_2_and_write_nothing(extra, tmp_path, rng, capsys):
    path = _npz(tmp_path / "r.npz", rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8))
    out = tmp_path / "rep"
    assert main(["eval", "replication", path, path, "--out", str(out), *extra]) == 2
    assert "error: invalid" in capsys.readouterr().err
    assert not out.exists()


def test_cli_missing_source_exits_2(tmp_path, capsys):
    assert main(["eval", "fid", str(tmp_path / "nope.npz"), "fashion-mnist:test[:4]"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_fid_single_image_set_exits_2(tmp_path, rng, capsys):
    one = _npz(tmp_path / "one.npz", rng.integers(0, 256, (1, 8, 8, 1), dtype=np.uint8))
    assert main(["eval", "fid", one, one]) == 2
    assert "at least 2 images" in capsys.readouterr().err


def test_cli_replication_validates_options_before_loading_any_images(tmp_path, capsys):
    missing = str(tmp_path / "never-read.npz")
    assert main(["eval", "replication", missing, missing, "--threshold", "3"]) == 2
    err = capsys.readouterr().err
    assert "threshold" in err and "does not exist" not in err


def test_an_output_folder_of_generate_or_sample_is_read_through_its_npz_or_images_dir(tmp_path, rng):
    """OUT/images.npz (else OUT/images/) is the sample set; grid.png and the JSON are never read."""
    images = rng.integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    out = tmp_path / "out"
    out.mkdir()
    _folder(out / "images", images)
    from PIL import Image

    Image.fromarray(np.zeros((40, 90), dtype=np.uint8)).save(out / "grid.png")
    (out / "sample.json").write_text("{}")
    assert source_to_spec(out) == f"folder:{(out / 'images').resolve()}"
    assert load_images(out).shape == (5, 8, 8, 1)
    _npz(out / "images.npz", images)
    assert source_to_spec(out) == f"npz:{(out / 'images.npz').resolve()}"
    assert np.array_equal(load_images(out), images)
