import json

import numpy as np
import pytest
import torch

from privdiff.errors import CheckpointError, InvalidParameter
from privdiff.rdm.model import RDMModel, read_model_info
from privdiff.rdm.train import (
    TrainConfig,
    adapt_context,
    cached_embeddings,
    drop_context,
    public_neighbour_means,
    train_rdm,
)

from .conftest import PixelProjectionEncoder


def test_neighbour_means_average_other_rows_only():
    # Two tight clusters of 3 points; with k=2 each point's context is the mean of the other two.
    rng = np.random.default_rng(0)
    a, b = np.eye(8, dtype=np.float32)[0], np.eye(8, dtype=np.float32)[1]
    pts = np.stack([a, a, a, b, b, b]) + 0.01 * rng.normal(size=(6, 8)).astype(np.float32)
    unit = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    means = public_neighbour_means(pts, k=2)
    for i in range(6):
        group = [j for j in (range(3) if i < 3 else range(3, 6)) if j != i]
        np.testing.assert_allclose(means[i], unit[group].mean(axis=0), atol=1e-6)


def test_neighbour_means_refuse_k_not_below_set_size():
    with pytest.raises(InvalidParameter, match="k"):
        public_neighbour_means(np.eye(3, dtype=np.float32), k=3)


def test_adapt_context_replicates_one_noisy_mean_with_one_level_per_batch():
    g = torch.Generator().manual_seed(0)
    r_bar = torch.zeros(64, 4096)
    ctx = adapt_context(r_bar, k=4, s_max=0.05, generator=g)
    assert ctx.shape == (64, 4, 4096)
    assert torch.equal(ctx[:, 0], ctx[:, 3])  # identical tokens, identical noise
    per_row_std = ctx[:, 0].std(dim=1)
    # one s for the whole batch: every row has (nearly) the same noise std, and s <= s_max
    assert float(per_row_std.max() / per_row_std.min()) < 1.15
    assert float(per_row_std.mean()) <= 0.05 * 1.05
    # and the level changes between batches
    levels = {round(float(adapt_context(r_bar[:2], 4, 0.05, g)[:, 0].std()), 3) for _ in range(5)}
    assert len(levels) > 1


def test_adapt_context_without_noise_is_the_mean():
    r_bar = torch.randn(5, 16)
    assert torch.equal(adapt_context(r_bar, k=3, s_max=0.0)[:, 2], r_bar)


def test_drop_context_zeroes_whole_rows_at_the_requested_rate():
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(4000, 2, 3) + 5.0
    out = drop_context(ctx, 0.1, g)
    dropped = (out == 0).all(dim=(1, 2))
    kept = ~dropped
    assert torch.equal(out[kept], ctx[kept])
    # binomial(4000, 0.1): mean 400, sd 19
    assert 320 < int(dropped.sum()) < 480


def _cfg(**kw):
    base = dict(
        steps=4,
        batch_size=8,
        block_out_channels=(8, 8, 8),
        attention_head_dim=2,
        checkpoint_every=2,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.integration
def test_training_writes_loadable_model_loss_curve_and_config(tmp_path, tiny_data):
    images, emb, enc = tiny_data
    res = train_rdm(
        images,
        emb,
        space_id=enc.space_id,
        out_dir=tmp_path / "m",
        config=_cfg(),
        progress=False,
        extra_info={"command": "cmd"},
    )
    assert res.steps_done == 4 and np.isfinite(res.final_loss)
    model = RDMModel.load(tmp_path / "m", space_id=enc.space_id)
    assert model.config.k == 4 and model.config.embedding_dim == emb.shape[1]
    assert (tmp_path / "m" / "training" / "loss.png").stat().st_size > 0
    losses = json.loads((tmp_path / "m" / "training" / "loss.json").read_text())["loss"]
    assert len(losses) == 4
    cfg = read_model_info(tmp_path / "m")
    assert cfg["command"] == "cmd" and cfg["training"]["s_max"] == 0.05 and cfg["training"]["steps_done"] == 4


@pytest.mark.integration
def test_resumed_training_matches_uninterrupted_training(tmp_path, tiny_data):
    images, emb, enc = tiny_data
    train_rdm(images, emb, space_id=enc.space_id, out_dir=tmp_path / "full", config=_cfg(), progress=False)
    train_rdm(
        images,
        emb,
        space_id=enc.space_id,
        out_dir=tmp_path / "part",
        config=_cfg(steps=2),
        progress=False,
    )
    train_rdm(
        images,
        emb,
        space_id=enc.space_id,
        out_dir=tmp_path / "part",
        config=_cfg(),
        progress=False,
        resume=True,
    )
    a = RDMModel.load(tmp_path / "full").state_dict()
    b = RDMModel.load(tmp_path / "part").state_dict()
    assert all(torch.allclose(a[key], b[key], atol=1e-6) for key in a)


@pytest.mark.integration
def test_training_refuses_to_overwrite_a_run_without_resume(tmp_path, tiny_data):
    images, emb, enc = tiny_data
    train_rdm(
        images,
        emb,
        space_id=enc.space_id,
        out_dir=tmp_path / "m",
        config=_cfg(steps=2),
        progress=False,
    )
    with pytest.raises(CheckpointError, match="resume"):
        train_rdm(
            images,
            emb,
            space_id=enc.space_id,
            out_dir=tmp_path / "m",
            config=_cfg(steps=2),
            progress=False,
        )


@pytest.mark.integration
def test_resume_refuses_a_different_embedding_space(tmp_path, tiny_data):
    images, emb, enc = tiny_data
    train_rdm(
        images,
        emb,
        space_id=enc.space_id,
        out_dir=tmp_path / "m",
        config=_cfg(steps=2),
        progress=False,
    )
    with pytest.raises(CheckpointError, match="different"):
        train_rdm(
            images,
            emb,
            space_id="another/v1",
            out_dir=tmp_path / "m",
            config=_cfg(),
            progress=False,
            resume=True,
        )


def test_train_config_rejects_bad_values_by_name():
    with pytest.raises(InvalidParameter, match="s_max"):
        TrainConfig(s_max=-0.1).validate()
    with pytest.raises(InvalidParameter, match="p_uncond"):
        TrainConfig(p_uncond=1.0).validate()


def test_cached_embeddings_encode_once(tmp_path, tiny_data):
    from privdiff.data import ImageDataset

    images, _, _ = tiny_data
    calls = []

    class Counting(PixelProjectionEncoder):
        def encode_images(self, images, **kw):
            calls.append(len(images))
            return super().encode_images(images)

    ds = ImageDataset(images=images, name="tiny")
    a = cached_embeddings(ds, Counting(), private=False, cache_dir=tmp_path, progress=False)
    b = cached_embeddings(ds, Counting(), private=False, cache_dir=tmp_path, progress=False)
    assert calls == [32] and np.array_equal(a, b)
