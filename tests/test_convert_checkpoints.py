"""scripts/convert_checkpoints.py: v1 checkpoints become diffusers pipeline folders that sample
bit-identically, and the shipped checkpoints are already converted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from privdiff.checkpoints import CPSAMPLE_MODEL, RDM_MODEL, package_checkpoints

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("convert_checkpoints", ROOT / "scripts" / "convert_checkpoints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _v1_rdm(directory: Path):
    from safetensors.torch import save_file

    from privdiff.rdm.model import RDMConfig, RDMModel

    torch.manual_seed(0)
    model = RDMModel(
        RDMConfig(
            space_id="tiny/v1", embedding_dim=6, sample_size=12, block_out_channels=(8, 8, 8), attention_head_dim=2
        )
    ).eval()
    directory.mkdir()
    save_file({k: v.contiguous() for k, v in model.unet.state_dict().items()}, str(directory / "model.safetensors"))
    info = {"format": "privdiff-rdm", "format_version": 1, "model": model.config.to_dict(), "command": "c"}
    (directory / "config.json").write_text(json.dumps(info | {"generation_defaults": {"k": 2}}))
    (directory / "domain_reference.npz").write_bytes(b"kept")
    return model


def test_v1_rdm_converts_in_place_and_samples_identically(tmp_path):
    cc = _script()
    from privdiff.rdm.model import RDMModel, read_model_info

    d = tmp_path / "rdm"
    original = _v1_rdm(d)
    before = cc._rdm_sample(original)
    assert cc.convert(d) == "converted RDM"
    assert not (d / "config.json").exists() and not (d / "model.safetensors").exists()
    assert (d / "model_index.json").is_file() and (d / "domain_reference.npz").read_bytes() == b"kept"
    info = read_model_info(d)
    assert info["format_version"] == 2 and info["command"] == "c" and info["generation_defaults"] == {"k": 2}
    np.testing.assert_array_equal(cc._rdm_sample(RDMModel.from_pretrained(d)), before)
    assert cc.convert(d) == "already converted"


def test_v1_pixel_model_converts_in_place_and_samples_identically(tmp_path):
    cc = _script()
    from privdiff.diffusion import build_unet, load_model, unet_config
    from privdiff.diffusion.model import DDIM_SCHEDULE, detect_format

    d = tmp_path / "pix"
    torch.manual_seed(0)
    unet = build_unet(unet_config("tiny")).eval()
    unet.save_pretrained(d / "unet")
    (d / "model.json").write_text(
        json.dumps({"kind": "privdiff.diffusion.pixel", "schedule": DDIM_SCHEDULE, "data_spec": "x"})
    )
    before = cc._pixel_sample(load_model(d))
    assert cc.convert(d) == "converted pixel model"
    assert detect_format(d) == "privdiff" and not (d / "model.json").exists()
    after = load_model(d)
    assert after.meta["data_spec"] == "x"
    np.testing.assert_array_equal(cc._pixel_sample(after), before)


def test_shipped_checkpoints_are_in_the_pipeline_layout():
    from privdiff.diffusion.model import detect_format
    from privdiff.rdm.model import read_model_info

    root = package_checkpoints()
    assert root is not None
    rdm, pix = root / RDM_MODEL.name, root / CPSAMPLE_MODEL.name
    assert read_model_info(rdm)["format_version"] == 2 and not (rdm / "model.safetensors").exists()
    assert json.loads((rdm / "model_index.json").read_text())["_class_name"] == "DPRDMPipeline"
    assert detect_format(pix) == "privdiff" and not (pix / "model.json").exists()
    assert (pix / "classifier" / "classifier.json").is_file()
