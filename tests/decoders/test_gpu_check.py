"""scripts/gpu_check.py: its CPU dry run exercises the GPU code path; the full-size configs are the
published shapes (parameter counts) and run forward at 768 px (on the meta device: no memory, no GPU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_dry_run_writes_the_report(tmp_path):
    out = tmp_path / "report.json"
    _script().main(["--cpu-dry-run", "--prompts", "2", "--images-per-prompt", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu-dry-run"
    assert [r["family"] for r in report["results"]] == ["kandinsky22", "stable-unclip"]
    for r in report["results"]:
        assert r["images_shape"] == [2, 1, 32, 32, 3] and r["queries_charged"] == 2
        assert r["images_per_second"] > 0
        shares = r["share_retrieval_and_ledger"] + r["share_text_encoding"] + r["share_denoising_and_decoding"]
        assert 0 < r["share_retrieval_and_ledger"] < 1 and shares == pytest.approx(1.0, abs=1e-3)


def test_cpu_dry_run_trains_the_rdm_through_the_device_option(tmp_path):
    out = tmp_path / "report.json"
    report = _script().main(["--cpu-dry-run", "--families", "", "--train-rdm", "--out", str(out)])
    step = report["train_rdm"]
    assert step["returncode"] == 0, step.get("tail")
    assert step["steps"] == 3 and step["final_loss"] > 0
    assert step["command"][step["command"].index("--device") + 1] == "cpu"


def test_gpu_check_shell_wrapper_is_offline_and_executable():
    sh = ROOT / "scripts" / "gpu-check.sh"
    text = sh.read_text()
    assert sh.stat().st_mode & 0o111 and "HF_HUB_OFFLINE=1" in text and "gpu_check.py" in text


def test_full_size_configs_have_the_published_shapes():
    import torch

    from privdiff.decoders import synthetic

    def millions(m):
        return sum(p.numel() for p in m.parameters()) / 1e6

    with torch.device("meta"):
        k22 = synthetic.kandinsky22_components("full")
        unclip = synthetic.stable_unclip_components("full")
        x = torch.empty(1, 4, 96, 96)  # 768 px latents
        out = k22["unet"](x, torch.tensor([1]), None, added_cond_kwargs={"image_embeds": torch.empty(1, 1280)})
        assert out.sample.shape == (1, 8, 96, 96)  # ε and the learned variance
        assert k22["movq"].decode(x, force_not_quantize=True).sample.shape == (1, 3, 768, 768)
        out = unclip["unet"](x, torch.tensor([1]), torch.empty(1, 77, 1024), class_labels=torch.empty(1, 2048)).sample
        assert out.shape == (1, 4, 96, 96)
    # Published sizes: Kandinsky 2.2 decoder U-Net 1.22 B, MoVQ 67 M; SD 2.1 U-Net 865 M (+ the unCLIP
    # class projection), VAE 84 M, OpenCLIP-H image tower 632 M.
    assert 1200 < millions(k22["unet"]) < 1300 and 60 < millions(k22["movq"]) < 75
    assert 860 < millions(unclip["unet"]) < 880 and 80 < millions(unclip["vae"]) < 90
    assert 625 < millions(unclip["image_encoder"]) < 640
