"""scripts/install_rdm_checkpoint.py: a training snapshot becomes a shipped-model folder (pipeline
layout, domain reference, loss curve cut at the snapshot, metadata) that samples like the snapshot;
a loss curve of another run is refused and nothing changes at the destination."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Trains tiny RDMs and reads the shipped checkpoint: more than ~2 s.
pytestmark = pytest.mark.integration


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _train(images, emb, space_id, out, steps, *, resume=False, command="privdiff train rdm --out /runs/x --steps 4"):
    from privdiff.rdm.train import TrainConfig, train_rdm

    cfg = TrainConfig(steps=steps, batch_size=8, block_out_channels=(8, 8, 8), attention_head_dim=2, checkpoint_every=2)
    extra = {"data": "test-data", "command": command, "generation_defaults": {"k": 3}}
    train_rdm(images, emb, space_id=space_id, out_dir=out, config=cfg, resume=resume, progress=False, extra_info=extra)


@pytest.fixture(scope="module")
def public_npz(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "public.npz"
    np.savez(path, images=rng.integers(0, 256, size=(40, 12, 12, 1), dtype=np.uint8))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, public_npz):
    """A 4-step run and its snapshot at step 2 (the run's loss curve goes past the snapshot)."""
    from privdiff.data import load_dataset
    from rdm.conftest import PixelProjectionEncoder

    enc = PixelProjectionEncoder()
    images = load_dataset(f"npz:{public_npz}").images
    emb = enc.encode_images(images)
    root = tmp_path_factory.mktemp("run")
    _train(images, emb, enc.space_id, root / "run", steps=2)
    snap = root / "snap-2"
    snap.mkdir()
    for name in ("model_index.json", "unet", "scheduler"):
        src = root / "run" / name
        shutil.copytree(src, snap / name) if src.is_dir() else shutil.copy(src, snap / name)
    _train(images, emb, enc.space_id, root / "run", steps=4, resume=True)
    return root, snap, enc


def test_install_ships_the_snapshot_with_its_domain_reference_loss_curve_and_metadata(run, public_npz, tmp_path):
    from privdiff.rdm.model import RDMModel, read_model_info
    from privdiff.rdm.pipeline import DEFAULT_GENERATION

    root, snap, enc = run
    ins, cc = _script("install_rdm_checkpoint"), _script("convert_checkpoints")
    before = _digest(snap)
    dest = tmp_path / "assets" / "rdm"
    dest.mkdir(parents=True)
    (dest / "stale.txt").write_text("from the model installed before")
    ins.install(
        snap,
        dest,
        loss_curve=root / "run" / "training" / "loss.json",
        image_encoder=enc,
        public_data=f"npz:{public_npz}",
    )

    assert _digest(snap) == before  # the snapshot is only read
    assert sorted(p.name for p in dest.iterdir()) == [
        "domain_reference.npz",
        "model_index.json",
        "scheduler",
        "training",
        "unet",
    ]
    assert sorted(p.name for p in (dest / "training").iterdir()) == ["loss.json", "loss.png"]  # no state.pt
    run_losses = json.loads((root / "run" / "training" / "loss.json").read_text())["loss"]
    assert len(run_losses) == 4
    assert json.loads((dest / "training" / "loss.json").read_text())["loss"] == run_losses[:2]

    info = read_model_info(dest)
    assert info["format_version"] == 2 and info["training"]["steps_done"] == 2
    assert info["command"] == f"privdiff train rdm --out {dest.resolve()} --steps 4"
    assert info["generation_defaults"] == DEFAULT_GENERATION
    assert info["installed_from"] == {"path": str(snap.resolve()), "steps_done": 2}
    with np.load(dest / "domain_reference.npz") as z:
        assert str(z["space_id"]) == enc.space_id and z["reference"].shape == (20, enc.dim)
    np.testing.assert_array_equal(
        cc._rdm_sample(RDMModel.from_pretrained(dest)), cc._rdm_sample(RDMModel.from_pretrained(snap))
    )
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in dest.rglob("*"))  # readable package data


def test_a_loss_curve_of_another_run_is_refused_and_the_destination_is_untouched(run, public_npz, tmp_path):
    root, snap, enc = run
    ins = _script("install_rdm_checkpoint")
    dest = tmp_path / "rdm"
    dest.mkdir()
    (dest / "model_index.json").write_text("the installed model")
    losses = json.loads((root / "run" / "training" / "loss.json").read_text())["loss"]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"loss": [v * 1.5 for v in losses]}))
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"loss": losses[:1]}))
    kw = dict(image_encoder=enc, public_data=f"npz:{public_npz}")
    with pytest.raises(SystemExit, match="not this run's curve"):
        ins.install(snap, dest, loss_curve=other, **kw)
    with pytest.raises(SystemExit, match="1 steps, the snapshot 2"):
        ins.install(snap, dest, loss_curve=short, **kw)
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(".install-")] == []
    assert sorted(p.name for p in dest.iterdir()) == ["model_index.json"]
    assert (dest / "model_index.json").read_text() == "the installed model"


def test_a_v1_snapshot_is_converted_and_the_command_gets_the_shipped_out_path(run, public_npz, tmp_path):
    from safetensors.torch import save_file

    from privdiff.rdm.model import RDMModel, read_model_info

    root, snap, enc = run
    ins, cc = _script("install_rdm_checkpoint"), _script("convert_checkpoints")
    model = RDMModel.from_pretrained(snap)
    info = read_model_info(snap)
    v1 = tmp_path / "v1"
    v1.mkdir()
    save_file({k: v.contiguous() for k, v in model.unet.state_dict().items()}, str(v1 / "model.safetensors"))
    meta = {k: v for k, v in info.items() if k not in ("format_version",)} | {"format_version": 1}
    meta["command"] = "privdiff train rdm --public 'a b' --out /elsewhere/run --seed 0"
    (v1 / "config.json").write_text(json.dumps(meta))
    # Inside the repository, --out is recorded relative to its root (as a checkout names it); the
    # root is pointed at tmp_path so the test writes nothing into the source tree.
    ins.ROOT = tmp_path
    dest = tmp_path / "src" / "privdiff" / "assets" / "checkpoints" / "rdm" / "fashion-mnist"
    ins.install(
        v1, dest, loss_curve=root / "run" / "training" / "loss.json", image_encoder=enc, public_data=f"npz:{public_npz}"
    )
    out = read_model_info(dest)
    assert out["format_version"] == 2 and not (dest / "config.json").exists()
    assert (
        out["command"]
        == "privdiff train rdm --public 'a b' --out src/privdiff/assets/checkpoints/rdm/fashion-mnist --seed 0"
    )
    np.testing.assert_array_equal(cc._rdm_sample(RDMModel.from_pretrained(dest)), cc._rdm_sample(model))


def test_the_shipped_rdm_was_installed_by_the_script():
    # The shipped folder carries what the script writes: rerunning it on another snapshot is the
    # way to replace the model (the README of assets/checkpoints gives the command).
    from privdiff.rdm.model import read_model_info
    from privdiff.rdm.pipeline import DEFAULT_GENERATION, resolve_model_dir

    shipped = resolve_model_dir()
    info = read_model_info(shipped)
    assert info["installed_from"]["steps_done"] == info["training"]["steps_done"]
    assert " --out src/privdiff/assets/checkpoints/rdm/fashion-mnist " in info["command"]
    assert info["generation_defaults"] == DEFAULT_GENERATION
    losses = json.loads((shipped / "training" / "loss.json").read_text())["loss"]
    assert len(losses) == info["training"]["steps_done"]
    with np.load(shipped / "domain_reference.npz") as z:
        assert str(z["space_id"]) == info["model"]["space_id"]
