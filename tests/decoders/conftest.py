"""Tiny random decoder stacks saved to folders (built from configs the way diffusers' tests do)."""

from __future__ import annotations

import numpy as np
import pytest

PROMPTS = ["a photo of a sandal", "a photo of a bag"]


@pytest.fixture(scope="session")
def stacks(tmp_path_factory):
    """Folders: a CLIP prior-layout folder, a Kandinsky 2.2 decoder, a Stable unCLIP pipeline (with the
    same image tower), a Stable Diffusion pipeline + IP-Adapter weights file; plus a private index."""
    import torch

    from privdiff.decoders import synthetic
    from privdiff.encoders.hfclip import CLIPEncoder
    from privdiff.retrieval import build_index

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("decoders")
    towers = synthetic.clip_towers("tiny")
    synthetic.save_clip_folder(root / "clip", towers=towers)
    synthetic.save_kandinsky22_prior(root / "prior", towers=towers)  # same image tower: same space
    clip = CLIPEncoder(root / "clip")
    synthetic.save_kandinsky22(root / "kandinsky22")
    synthetic.save_stable_unclip(root / "stable-unclip", image_encoder=towers["image_encoder"])
    sd, weights = synthetic.save_sd_with_ip_adapter(root / "ip", clip.dim)
    rng = np.random.default_rng(0)
    private = rng.integers(0, 256, size=(48, 20, 20, 3), dtype=np.uint8)
    index = build_index(root / "index", clip.encode_images(private), space_id=clip.space_id, source="test:private")
    return {
        "root": root,
        "clip": clip,
        "clip_dir": root / "clip",
        "prior_dir": root / "prior",
        "index": index,
        "index_dir": root / "index",
        "dirs": {"kandinsky22": root / "kandinsky22", "stable-unclip": root / "stable-unclip", "ip-adapter": sd},
        "ip_adapter": weights,
    }


@pytest.fixture(scope="session")
def decoders(stacks):
    """Each family's adapter, loaded once from its folder (local_files_only)."""
    from privdiff.decoders import load_decoder

    return {
        fam: load_decoder(fam, path, clip_encoder=stacks["clip"], ip_adapter=stacks["ip_adapter"])
        for fam, path in stacks["dirs"].items()
    }


@pytest.fixture()
def ledger_path(tmp_path):
    from privdiff.accounting.ledger import Ledger

    path = tmp_path / "budget.db"
    Ledger.create(path, epsilon=50.0, delta=1e-5).close()
    return path
