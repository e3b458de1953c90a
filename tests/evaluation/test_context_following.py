"""Context following: contexts built like inference contexts, per-class accuracy with intervals."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from privdiff.errors import InvalidParameter
from privdiff.evaluation.domain import class_contexts, context_following, save_confusion_png
from privdiff.rdm.model import RDMConfig, RDMModel


def _two_class_embeddings(n=30, d=8):
    """Class 0 points along −e0, class 1 along +e0 (plus small spread); labels alternate."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    emb = 0.1 * rng.normal(size=(n, d)).astype(np.float32)
    emb[:, 0] += np.where(labels == 1, 1.0, -1.0)
    return emb, labels


def test_class_contexts_are_noisy_means_of_k_unit_vectors_of_the_class():
    emb, labels = _two_class_embeddings()
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    ctx, intended = class_contexts(emb, labels, classes=[0, 1], per_class=5, k=3, sigma=0.0, tokens=4, seed=0)
    assert ctx.shape == (10, 4, 8) and ctx.dtype == np.float32
    assert intended.tolist() == [0] * 5 + [1] * 5
    assert np.array_equal(ctx[:, 0], ctx[:, 3])  # replicated tokens, as mix_context at λ = 1
    for row, c in zip(ctx[:, 0], intended, strict=True):
        # some triple of distinct class-c unit vectors has exactly this mean (brute force)
        members = unit[labels == c]
        triples = itertools.combinations(range(len(members)), 3)
        assert min(np.abs(members[list(t)].mean(axis=0) - row).max() for t in triples) < 1e-5
    noisy, _ = class_contexts(emb, labels, classes=[0, 1], per_class=5, k=3, sigma=0.5, tokens=1, seed=0)
    resid = noisy[:, 0] - ctx[:, 0]
    assert 0.35 < float(resid.std()) < 0.65  # N(0, σ²) per coordinate on top of the same means


def test_class_contexts_draw_the_same_images_in_any_embedding_space():
    emb, labels = _two_class_embeddings()
    other = np.random.default_rng(5).normal(size=emb.shape).astype(np.float32)
    a, _ = class_contexts(emb, labels, classes=[1], per_class=4, k=2, sigma=0.0, tokens=1, seed=3)
    b, _ = class_contexts(other, labels, classes=[1], per_class=4, k=2, sigma=0.0, tokens=1, seed=3)
    unit_o = other / np.linalg.norm(other, axis=1, keepdims=True)
    unit_e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    # recover which rows built each context in space A, then check space B used the same rows
    ones = np.flatnonzero(labels == 1)
    for ra, rb in zip(a[:, 0], b[:, 0], strict=True):
        pairs = [(i, j) for i in ones for j in ones if i < j]
        i, j = min(pairs, key=lambda p: np.abs(unit_e[list(p)].mean(0) - ra).sum())
        np.testing.assert_allclose(unit_o[[i, j]].mean(0), rb, atol=1e-5)


def test_class_contexts_refuse_k_above_the_class_size_and_no_classes():
    emb, labels = _two_class_embeddings(n=6)
    with pytest.raises(InvalidParameter, match="k"):
        class_contexts(emb, labels, classes=[0], per_class=1, k=4, sigma=0.0, tokens=1)
    with pytest.raises(InvalidParameter, match="classes"):
        class_contexts(emb, labels, classes=[], per_class=1, k=1, sigma=0.0, tokens=1)


class _ContextPainter(RDMModel):
    """An "RDM" whose x̂0 is a flat image, bright when the context's first coordinate is positive,
    dark when negative, grey for the null context; with ``follow=False`` it ignores the context."""

    def __init__(self, follow: bool):
        super().__init__(
            RDMConfig(
                space_id="toy/v1",
                embedding_dim=8,
                k=1,
                sample_size=8,
                block_out_channels=(8, 8, 8),
                attention_head_dim=2,
            )
        )
        self.follow = follow
        self.abar = self.ddpm_scheduler().alphas_cumprod

    def forward(self, x_t, t, context):
        level = torch.tanh(10 * context[:, 0, 0]) * 0.4 if self.follow else torch.full((x_t.shape[0],), 0.4)
        x0 = level[:, None, None, None].expand_as(x_t)
        a = self.abar[t].to(x_t.dtype)[:, None, None, None]
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


class _BrightnessJudge:
    config = SimpleNamespace(class_names=("dark", "bright"))

    def predict(self, images):
        return (images.reshape(len(images), -1).mean(axis=1) > 127).astype(np.int64)


def test_context_following_scores_a_model_that_follows_its_context_and_one_that_does_not(tmp_path):
    emb, labels = _two_class_embeddings()
    kw = dict(per_class=6, k=3, sigma=0.05, guidance_scale=2.0, num_inference_steps=4, seed=0, batch_size=5)
    good, images = context_following(_ContextPainter(True), emb, labels, _BrightnessJudge(), **kw)
    bad, _ = context_following(_ContextPainter(False), emb, labels, _BrightnessJudge(), **kw)
    assert images.shape == (12, 8, 8, 1) and images.dtype == np.uint8
    assert good.overall.value == 1.0 and [e.value for e in good.per_class] == [1.0, 1.0]
    assert bad.overall.value == 0.5 and [e.value for e in bad.per_class] == [0.0, 1.0]
    assert good.confusion.tolist() == [[6, 0], [0, 6]] and bad.confusion.tolist() == [[0, 6], [0, 6]]
    assert good.overall.low < 1.0 and good.overall.n == 12  # Wilson interval, not a point
    d = good.to_dict()
    assert set(d["per_class"]) == {"dark", "bright"} and d["settings"]["k"] == 3
    assert save_confusion_png(good, tmp_path / "c.png").stat().st_size > 0


def test_context_following_refuses_embeddings_of_another_dimension():
    emb, labels = _two_class_embeddings(d=5)
    with pytest.raises(InvalidParameter, match="embeddings"):
        context_following(_ContextPainter(True), emb, labels, _BrightnessJudge(), per_class=1, k=1)


def test_cli_refuses_bad_options_before_loading_a_model(tmp_path, capsys):
    from privdiff.cli import main

    assert main(["eval", "context-following", "--per-class", "0", "--model", str(tmp_path / "none")]) == 2
    assert "per_class" in capsys.readouterr().err
    assert main(["eval", "context-following", "--classes", "hat", "--model", str(tmp_path / "none")]) != 0


class _NoiseKeeper(_ContextPainter):
    """Predicts ε = 0, so each image is a function of its x_T only."""

    def forward(self, x_t, t, context):
        return torch.zeros_like(x_t)


def test_contexts_and_noise_of_a_class_do_not_depend_on_per_class_or_the_other_classes():
    emb, labels = _two_class_embeddings()
    a, _ = class_contexts(emb, labels, classes=[0, 1], per_class=2, k=3, sigma=0.1, tokens=1, seed=4)
    b, _ = class_contexts(emb, labels, classes=[1], per_class=5, k=3, sigma=0.1, tokens=1, seed=4)
    np.testing.assert_array_equal(a[2:], b[:2])
    kw = dict(k=3, sigma=0.1, num_inference_steps=3, seed=4)
    _, imgs_a = context_following(_NoiseKeeper(True), emb, labels, _BrightnessJudge(), per_class=2, **kw)
    _, imgs_b = context_following(_NoiseKeeper(True), emb, labels, _BrightnessJudge(), classes=[1], per_class=3, **kw)
    np.testing.assert_array_equal(imgs_a[2:], imgs_b[:2])
    assert not np.array_equal(imgs_a[0], imgs_a[2])  # classes start from different noise
