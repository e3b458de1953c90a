"""`privdiff generate --backend exact|ivf|ray` and make_pipeline(backend=...): which top-k backend
serves dp-rdm, and every wrong combination refused before the ledger is charged.

Fast: the tiny random RDM and the pixel-projection stand-in encoders of conftest.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from privdiff.cli import main
from privdiff.errors import InvalidParameter
from privdiff.rdm.pipeline import make_pipeline

from .conftest import TINY_SPACE, PixelProjectionEncoder


@pytest.fixture()
def env(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    """(model dir, index dir, sharded index dir, ledger path, public npz spec)."""
    import privdiff.encoders as encoders
    from privdiff.accounting import Ledger
    from privdiff.retrieval import build_index, shard_index

    monkeypatch.setattr(encoders, "load_text_encoder", lambda name="default": PixelProjectionEncoder())
    monkeypatch.setattr(encoders, "load_image_encoder", lambda name="default": PixelProjectionEncoder())
    monkeypatch.setenv("PRIVDIFF_CACHE_DIR", str(tmp_path / "cache"))
    images, emb, _ = tiny_data
    index = build_index(tmp_path / "index", emb, space_id=TINY_SPACE, source="tiny")
    sharded = shard_index(index, tmp_path / "sharded", 3)
    ledger = tmp_path / "budget.db"
    Ledger.create(ledger, epsilon=50.0, delta=1e-3, index_fingerprint=index.fingerprint)
    public = np.random.default_rng(1).integers(0, 256, size=(24, 12, 12, 1), dtype=np.uint8)
    np.savez(tmp_path / "public.npz", images=public, labels=np.zeros(24, dtype=np.int64))
    return tiny_model_dir, index.path, sharded.path, ledger, f"npz:{tmp_path / 'public.npz'}"


def _queries(ledger):
    from privdiff.accounting import Ledger

    with Ledger.open(ledger) as book:
        return book.status().queries


def _gen(model, index, ledger, out, *extra):
    args = ["generate", "--model", str(model), "--index", str(index), "--ledger", str(ledger)]
    args += ["-n", "1", "--steps", "2", "--out", str(out), "--quiet", "--prompt", "a bag", "--json"]
    return main(args + list(extra))


@pytest.mark.parametrize(
    "which, kwargs, expected",
    [
        ("index", {}, "ExactTopK"),
        ("sharded", {}, "ShardedTopK"),
        ("index", {"backend": "ivf", "ivf_nlist": 4, "nprobe": 2}, "IVFTopK"),
    ],
)
def test_make_pipeline_serves_dp_rdm_with_the_chosen_backend(env, which, kwargs, expected):
    model, index, sharded, ledger, public = env
    pipe, _ = make_pipeline(
        model, index=index if which == "index" else sharded, ledger=ledger, public_data=public, **kwargs
    )
    out = pipe(["a sandal"], images_per_prompt=1, num_inference_steps=2, seed=0)
    assert out.images.shape[:2] == (1, 1) and _queries(ledger) == 1
    shown = repr(pipe.source.retriever)  # DPRetriever's repr names a non-default backend
    assert (f"backend={expected}(" in shown) if expected != "ExactTopK" else ("backend=" not in shown)


@pytest.mark.parametrize(
    "which, extra, match",
    [
        ("index", ["--backend", "ray"], "index shard"),
        ("sharded", ["--backend", "ivf"], "unsharded"),
        ("index", ["--backend", "gpu"], "backend"),
        ("sharded", ["--backend", "ray", "--ray-address", "10.0.0.1:6379"], "ray-address"),
    ],
)
def test_wrong_backend_combinations_exit_2_before_the_charge(env, tmp_path, capsys, which, extra, match):
    model, index, sharded, ledger, _ = env
    target = index if which == "index" else sharded
    assert _gen(model, target, ledger, tmp_path / "g", *extra) == 2
    assert match in capsys.readouterr().err
    assert _queries(ledger) == 0 and not (tmp_path / "g").exists()


def test_generate_on_a_sharded_index_charges_the_parent_indexs_ledger(env, tmp_path, capsys):
    model, _, sharded, ledger, _ = env
    assert _gen(model, sharded, ledger, tmp_path / "g") == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["mode"] == "dp-rdm" and _queries(ledger) == 1


def test_make_pipeline_refuses_unknown_backends_by_name(env):
    model, index, _, ledger, _ = env
    with pytest.raises(InvalidParameter, match="backend"):
        make_pipeline(model, index=index, ledger=ledger, backend="faiss-gpu")
    assert _queries(ledger) == 0


@pytest.mark.integration
def test_generate_with_the_ray_backend(env, tmp_path, capsys, ray_session):
    model, _, sharded, ledger, _ = env
    assert _gen(model, sharded, ledger, tmp_path / "g", "--backend", "ray", "--ray-address", "local") == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["mode"] == "dp-rdm" and _queries(ledger) == 1
