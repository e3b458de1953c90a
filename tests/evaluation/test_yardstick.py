"""The domain yardstick: training on toy data, round trip, typed errors, and the shipped checkpoint."""

import json

import numpy as np
import pytest
import torch

from privdiff.errors import CheckpointError, InvalidParameter
from privdiff.evaluation.yardstick import Yardstick, load_yardstick, train_yardstick


def _toy(n, rng):
    """Two classes a CNN separates at once: a bright square top-left vs bottom-right."""
    x = rng.integers(0, 40, size=(n, 12, 12, 1)).astype(np.uint8)
    y = rng.integers(0, 2, size=n)
    x[y == 0, 1:5, 1:5] = 250
    x[y == 1, 7:11, 7:11] = 250
    return x, y


def test_trains_saves_and_loads_bit_for_bit(tmp_path):
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x, y = _toy(512, rng)
    xt, yt = _toy(200, rng)
    yard = train_yardstick(x, y, ["tl", "br"], test_images=xt, test_labels=yt, epochs=2, batch_size=64, seed=0)
    assert yard.config.report["test_accuracy"] >= 0.95
    feats = yard.features(xt)
    assert feats.shape == (200, yard.config.feature_dim) and feats.dtype == np.float32
    yard.save_pretrained(tmp_path / "y")
    back = Yardstick.from_pretrained(tmp_path / "y")
    for k, v in yard.net.state_dict().items():
        assert torch.equal(v, back.net.state_dict()[k]), k
    assert np.array_equal(back.predict(xt), yard.predict(xt))
    assert json.loads((tmp_path / "y" / "config.json").read_text())["class_names"] == ["tl", "br"]


def test_typed_errors(tmp_path):
    rng = np.random.default_rng(0)
    x, y = _toy(16, rng)
    with pytest.raises(InvalidParameter, match="labels"):
        train_yardstick(x, y + 5, ["a", "b"], epochs=1)
    with pytest.raises(InvalidParameter, match="image_size"):
        train_yardstick(x[:, :10, :10], y, ["a", "b"], epochs=1)
    with pytest.raises(CheckpointError):
        Yardstick.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="corrupt"):
        Yardstick.from_pretrained(tmp_path)
    with pytest.raises(InvalidParameter, match="yardstick"):
        load_yardstick("no-such-yardstick")


@pytest.mark.integration
def test_shipped_yardstick_is_accurate_on_real_test_images():
    from privdiff.data import load_dataset
    from privdiff.errors import DataError

    try:
        test = load_dataset("fashion-mnist:test")
    except DataError as exc:
        pytest.skip(f"Fashion-MNIST not available ({exc})")
    yard = load_yardstick("fashion-mnist")
    acc, per = yard.accuracy(test.images, test.labels)
    # The stored report is what this recomputation gives (no hard-coded claim in the README).
    assert acc == pytest.approx(yard.config.report["test_accuracy"], abs=1e-4)
    assert acc >= 0.90
    assert per.min() >= 0.6  # Shirt is the hardest class; the centroid judge scored 0.24 on it
    with pytest.raises(InvalidParameter, match="images"):
        yard.predict(test.images[:, :20, :20])


def test_cli_trains_and_records_its_command(tmp_path, capsys):
    from privdiff.cli import main

    rng = np.random.default_rng(1)
    for name, n in (("tr", 256), ("te", 64)):
        x, y = _toy(n, rng)
        np.savez(tmp_path / f"{name}.npz", images=x, labels=y, class_names=np.array(["tl", "br"]))
    out = tmp_path / "yard"
    rc = main(
        [
            "train",
            "yardstick",
            "--data",
            f"npz:{tmp_path / 'tr.npz'}",
            "--test",
            f"npz:{tmp_path / 'te.npz'}",
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "32",
        ]
    )
    assert rc == 0
    report = json.loads((out / "config.json").read_text())["report"]
    assert report["command"].startswith("privdiff train yardstick --data npz:")
    te = np.load(tmp_path / "te.npz")
    assert report["test_images"] == 64
    assert report["test_accuracy"] == pytest.approx(
        Yardstick.from_pretrained(out).accuracy(te["images"], te["labels"])[0], abs=1e-4
    )
    assert "test accuracy" in capsys.readouterr().out
    # Unlabelled data cannot train a classifier: a typed error, nothing written.
    np.savez(tmp_path / "nolab.npz", images=_toy(8, rng)[0])
    rc = main(
        [
            "train",
            "yardstick",
            "--data",
            f"npz:{tmp_path / 'nolab.npz'}",
            "--test",
            f"npz:{tmp_path / 'te.npz'}",
            "--out",
            str(tmp_path / "nope"),
        ]
    )
    assert rc == 2 and not (tmp_path / "nope").exists()
