import json

import numpy as np
import pytest
import torch

from privdiff.errors import CheckpointError, InvalidParameter
from privdiff.rdm.model import RDMModel, read_model_info
from privdiff.rdm.train import (
    TrainConfig,
    adapt_context,
    batch_indices,
    cached_embeddings,
    class_rows_of,
    drop_context,
    inference_like_means,
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
def test_a_state_written_before_the_shared_training_loop_still_resumes_exactly(tmp_path, tiny_data):
    # Old state.pt files held the LambdaLR state and no global-RNG state or wall time.
    images, emb, enc = tiny_data
    train_rdm(images, emb, space_id=enc.space_id, out_dir=tmp_path / "full", config=_cfg(), progress=False)
    train_rdm(images, emb, space_id=enc.space_id, out_dir=tmp_path / "part", config=_cfg(steps=2), progress=False)
    path = tmp_path / "part" / "training" / "state.pt"
    state = torch.load(path, map_location="cpu", weights_only=False)
    del state["torch_rng"], state["wall_seconds"]
    state["lr_scheduler"] = {"last_epoch": 2, "base_lrs": [1e-3], "_step_count": 3}
    torch.save(state, path)
    train_rdm(images, emb, space_id=enc.space_id, out_dir=tmp_path / "part", config=_cfg(), progress=False, resume=True)
    a = RDMModel.load(tmp_path / "full").state_dict()
    b = RDMModel.load(tmp_path / "part").state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)


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
    with pytest.raises(InvalidParameter, match="balance"):
        TrainConfig(balance="labels").validate()
    with pytest.raises(InvalidParameter, match="context"):
        TrainConfig(context="global").validate()
    with pytest.raises(InvalidParameter, match="context_rate"):
        TrainConfig(context_rate=0.0).validate()
    with pytest.raises(InvalidParameter, match="context_k"):
        TrainConfig(context_k=0).validate()
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


def test_class_balanced_batches_draw_every_class_equally_often():
    # 900 rows of class 0 and 100 of class 7 (the footwear situation of dprdm-public, exaggerated).
    labels = np.array([0] * 900 + [7] * 100)
    g = torch.Generator().manual_seed(0)
    uniform = torch.cat([batch_indices(1000, 64, g) for _ in range(50)])
    balanced = torch.cat([batch_indices(1000, 64, g, class_rows_of(labels, 1000)) for _ in range(50)])
    share_uniform = float((torch.from_numpy(labels)[uniform] == 7).float().mean())
    share_balanced = float((torch.from_numpy(labels)[balanced] == 7).float().mean())
    # 3,200 draws: binomial sd of a share is <= 0.009
    assert abs(share_uniform - 0.1) < 0.03 and abs(share_balanced - 0.5) < 0.03
    # within a class the draw is uniform over its rows: all 100 rare rows show up
    assert len(set(balanced[torch.from_numpy(labels)[balanced] == 7].tolist())) == 100


def test_class_rows_refuse_labels_of_the_wrong_shape():
    with pytest.raises(InvalidParameter, match="labels"):
        class_rows_of(np.zeros(5, dtype=np.int64), 6)


def test_inference_like_means_at_rate_one_are_the_global_neighbour_means():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 8)).astype(np.float32)
    unit = torch.from_numpy(emb / np.linalg.norm(emb, axis=1, keepdims=True))
    idx = torch.arange(40)
    got = inference_like_means(unit, idx, k=3, rate=1.0, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(got.numpy(), public_neighbour_means(emb, k=3), atol=1e-5)


def test_inference_like_means_use_a_subsample_and_never_the_row_itself():
    # Rows 0..9 are near-copies of one direction; everything else is random. With the full set the
    # top-3 of row 0 are its copies; from a 5 % subsample they are mostly not, as at inference.
    rng = np.random.default_rng(1)
    base = rng.normal(size=16)
    emb = np.concatenate([base + 0.01 * rng.normal(size=(10, 16)), rng.normal(size=(990, 16))]).astype(np.float32)
    unit = torch.from_numpy(emb / np.linalg.norm(emb, axis=1, keepdims=True))
    g = torch.Generator().manual_seed(0)
    idx = torch.zeros(200, dtype=torch.long)
    sub = inference_like_means(unit, idx, k=3, rate=0.05, generator=g)
    full = inference_like_means(unit, idx, k=3, rate=1.0, generator=g)
    cos_sub = (sub @ unit[0]) / sub.norm(dim=1)
    cos_full = (full @ unit[0]) / full.norm(dim=1)
    assert float(cos_full.min()) > 0.99 and float(cos_sub.mean()) < 0.9
    # a pool that is empty falls back to one other row (never the row itself)
    tiny = inference_like_means(unit[:2], torch.tensor([0, 1]), k=3, rate=1e-9, generator=g)
    np.testing.assert_allclose(tiny.numpy(), unit[[1, 0]].numpy(), atol=1e-6)


@pytest.mark.integration
def test_balanced_inference_context_training_runs_resumes_exactly_and_records_its_settings(tmp_path, tiny_data):
    images, emb, enc = tiny_data
    labels = np.arange(len(images)) % 3
    cfg = dict(balance="classes", context="inference", context_k=3, context_rate=0.5)
    train_rdm(
        images, emb, space_id=enc.space_id, out_dir=tmp_path / "full", config=_cfg(**cfg), labels=labels, progress=False
    )
    train_rdm(
        images,
        emb,
        space_id=enc.space_id,
        out_dir=tmp_path / "part",
        config=_cfg(steps=2, **cfg),
        labels=labels,
        progress=False,
    )
    train_rdm(
        images,
        emb,
        space_id=enc.space_id,
        out_dir=tmp_path / "part",
        config=_cfg(**cfg),
        labels=labels,
        progress=False,
        resume=True,
    )
    a = RDMModel.load(tmp_path / "full").state_dict()
    b = RDMModel.load(tmp_path / "part").state_dict()
    assert all(torch.allclose(a[key], b[key], atol=1e-6) for key in a)
    training = read_model_info(tmp_path / "full")["training"]
    assert {key: training[key] for key in cfg} == cfg


def test_balanced_training_without_labels_is_refused_before_anything_is_written(tmp_path, tiny_data):
    images, emb, enc = tiny_data
    with pytest.raises(InvalidParameter, match="labels"):
        train_rdm(
            images, emb, space_id=enc.space_id, out_dir=tmp_path / "m", config=_cfg(balance="classes"), progress=False
        )
    assert not (tmp_path / "m").exists()


def test_training_on_a_device_this_machine_lacks_is_refused_before_anything_is_written(tmp_path, tiny_data):
    images, emb, enc = tiny_data
    missing = f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"
    with pytest.raises(InvalidParameter, match="device"):
        train_rdm(
            images, emb, space_id=enc.space_id, out_dir=tmp_path / "m", config=_cfg(), progress=False, device=missing
        )
    assert not (tmp_path / "m").exists()


@pytest.mark.integration
def test_training_with_an_explicit_device_resumes_exactly(tmp_path, tiny_data):
    # The device path moves each batch and, on resume, the EMA's shadow weights to the model's
    # device; on the CPU it must give exactly the default path's weights.
    images, emb, enc = tiny_data
    train_rdm(images, emb, space_id=enc.space_id, out_dir=tmp_path / "full", config=_cfg(), progress=False)
    kw = dict(space_id=enc.space_id, out_dir=tmp_path / "part", progress=False, device="cpu")
    train_rdm(images, emb, config=_cfg(steps=2), **kw)
    train_rdm(images, emb, config=_cfg(), resume=True, **kw)
    a = RDMModel.load(tmp_path / "full").state_dict()
    b = RDMModel.load(tmp_path / "part").state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert read_model_info(tmp_path / "part")["training"]["steps_done"] == 4
