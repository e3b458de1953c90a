"""DP-RDM on tiny random unCLIP-class decoders, end to end through a real ledger and index."""

from __future__ import annotations

import numpy as np
import pytest

from privdiff.decoders import DecoderOutput, make_decoder_pipeline, public_embed_norm, rescale_to_norm
from privdiff.errors import CheckpointError, EncoderMismatch, InvalidParameter, PrivacyBudgetExceeded

from .conftest import PROMPTS

FAMILIES = ["kandinsky22", "stable-unclip", "ip-adapter"]
FAST = dict(num_inference_steps=2, seed=0, height=32, width=32)
NU = 7.5  # the embedding norm handed to the decoders in these tests


class PipeSpy:
    """Stands in for a diffusers pipeline: records every call's keyword arguments, then delegates."""

    def __init__(self, pipe):
        self.__dict__.update(_pipe=pipe, calls=[])

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self._pipe(**kwargs)


class RetrieverSpy:
    """Delegates to the real DPRetriever and keeps the releases it returned."""

    def __init__(self, retriever):
        self._r = retriever
        self.releases = []

    def __getattr__(self, name):
        return getattr(self._r, name)

    def query(self, *args, **kwargs):
        release = self._r.query(*args, **kwargs)
        self.releases.append(release)
        return release


def _pipeline(stacks, decoders, family, ledger_path, **kw):
    args = dict(
        pipeline_type=family,
        encoder=stacks["clip"],
        index=stacks["index_dir"],
        ledger=ledger_path,
        k=4,
        sigma=1.0,
        sample_rate=0.5,
        embed_norm=NU,
        decoder=decoders[family],
    )
    args.update(kw)
    return make_decoder_pipeline(stacks["dirs"][family], **args)[0]


def _status(ledger_path):
    from privdiff.accounting.ledger import Ledger

    book = Ledger.open(ledger_path)
    try:
        return book.status(), len(book.history())
    finally:
        book.close()


def _embeds_seen(family, call):
    """The image embedding rows the decoder was conditioned on, (B, d) float32."""
    if family == "ip-adapter":
        e = call["ip_adapter_image_embeds"][0][:, 0, :]
        half = e.shape[0] // 2
        assert np.count_nonzero(e[:half].numpy()) == 0  # the negative half is zeros (IP-Adapter's convention)
        return e[half:].float().numpy()
    return call["image_embeds"].float().numpy()


# --- the rescaling --------------------------------------------------------------------------


def test_rescale_keeps_direction_and_sets_norm():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(5, 16)).astype(np.float32) * 0.3
    out = rescale_to_norm(v, 12.5, fallback=np.ones((5, 16)))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 12.5, rtol=1e-5)
    cos = (out * v).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(v, axis=1)
    np.testing.assert_allclose(cos, 1.0, rtol=1e-5)


def test_rescale_zero_row_takes_the_query_direction():
    v = np.zeros((1, 4), dtype=np.float32)
    q = np.array([[0.0, 1.0, 0.0, 0.0]])
    np.testing.assert_allclose(rescale_to_norm(v, 3.0, fallback=q), [[0.0, 3.0, 0.0, 0.0]])


def test_public_embed_norm_is_the_mean_raw_norm_on_public_images(stacks):
    clip = stacks["clip"]
    public = np.random.default_rng(5).integers(0, 256, size=(10, 24, 24, 3), dtype=np.uint8)
    nu = public_embed_norm(clip, public, count=10)
    assert nu == pytest.approx(float(np.linalg.norm(clip.raw_image_embeds(public), axis=1).mean()), rel=1e-6)
    # Raw CLIP embeddings are not unit vectors: that is why the unit release must be rescaled.
    assert abs(nu - 1.0) > 0.05


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_charges_once_and_decoder_sees_only_the_rescaled_release(
    stacks, decoders, family, ledger_path, monkeypatch
):
    pipe = _pipeline(stacks, decoders, family, ledger_path)
    spy = RetrieverSpy(pipe.source.retriever)
    monkeypatch.setattr(pipe.source, "retriever", spy)
    decoder_spy = PipeSpy(pipe.decoder.pipe)
    monkeypatch.setattr(pipe.decoder, "pipe", decoder_spy)

    out = pipe(PROMPTS, images_per_prompt=2, batch_size=4, **FAST)

    assert isinstance(out, DecoderOutput)
    assert out.images.shape == (2, 2, 32, 32, 3) and out.images.dtype == np.uint8
    pil = out.pil_images()
    assert len(pil) == 2 and pil[0][0].size == (32, 32) and pil[0][0].mode == "RGB"
    status, groups = _status(ledger_path)
    assert status.queries == len(PROMPTS) and groups == 1  # one charge, one query per prompt
    assert out.privacy["queries_charged"] == len(PROMPTS)
    assert out.privacy["epsilon_spent"] == pytest.approx(status.epsilon_spent)

    assert len(spy.releases) == 1 and len(decoder_spy.calls) == 1
    call = decoder_spy.calls[0]
    seen = _embeds_seen(family, call)
    release = spy.releases[0].vectors.astype(np.float64)
    expected = np.repeat(release / np.linalg.norm(release, axis=1, keepdims=True) * NU, 2, axis=0)
    np.testing.assert_allclose(seen, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(seen, axis=1), NU, rtol=1e-5)  # the documented norm
    # Nothing else reaches the decoder: the public prompts, the public latents and the sampler settings.
    allowed = {
        "kandinsky22": {"image_embeds", "negative_image_embeds"},
        "stable-unclip": {"image_embeds", "prompt", "noise_level"},
        "ip-adapter": {"ip_adapter_image_embeds", "prompt"},
    }[family] | {"height", "width", "num_inference_steps", "guidance_scale", "generator", "latents", "output_type"}
    assert set(call) == allowed
    if "prompt" in call:
        assert call["prompt"] == [p for p in PROMPTS for _ in range(2)]
    if family == "kandinsky22":
        neg = call["negative_image_embeds"].float().numpy()
        np.testing.assert_allclose(neg, np.broadcast_to(stacks["clip"].zero_image_embed(), neg.shape), rtol=1e-5)


@pytest.mark.parametrize(
    "bad",
    [
        dict(height=30),  # not a multiple of the decoder's size step
        dict(images_per_prompt=0),
        dict(seed=-1),
        dict(num_inference_steps=0),
        dict(guidance_scale=-1.0),
    ],
)
def test_bad_input_charges_nothing(stacks, decoders, ledger_path, bad):
    pipe = _pipeline(stacks, decoders, "kandinsky22", ledger_path)
    kwargs = FAST | bad
    with pytest.raises(InvalidParameter):
        pipe(PROMPTS, **kwargs)
    assert _status(ledger_path)[0].queries == 0


def test_empty_prompt_charges_nothing(stacks, decoders, ledger_path):
    pipe = _pipeline(stacks, decoders, "ip-adapter", ledger_path)
    with pytest.raises(InvalidParameter):
        pipe(["a bag", "  "], **FAST)
    assert _status(ledger_path)[0].queries == 0


def test_over_budget_produces_nothing(stacks, decoders, tmp_path, monkeypatch):
    from privdiff.accounting.ledger import Ledger

    path = tmp_path / "small.db"
    Ledger.create(path, epsilon=0.5, delta=1e-5).close()
    pipe = _pipeline(stacks, decoders, "kandinsky22", path, sigma=0.5)
    decoder_spy = PipeSpy(pipe.decoder.pipe)
    monkeypatch.setattr(pipe.decoder, "pipe", decoder_spy)
    with pytest.raises(PrivacyBudgetExceeded):
        pipe(PROMPTS, **FAST)
    assert decoder_spy.calls == [] and _status(path)[0].queries == 0


def test_no_retrieval_baseline_charges_nothing_and_is_batch_independent(stacks, decoders, ledger_path):
    # IP-Adapter's SD pipeline samples with DDIM (η = 0): deterministic given the initial latents, which
    # are drawn up front for all images, so the batch size cannot change the images.
    pipe = _pipeline(stacks, decoders, "ip-adapter", ledger_path, mode="no-retrieval", index=None, ledger=None)
    a = pipe(PROMPTS, images_per_prompt=2, batch_size=4, **FAST)
    b = pipe(PROMPTS, images_per_prompt=2, batch_size=1, **FAST)
    assert a.mode == "no-retrieval" and a.privacy["queries_charged"] == 0
    diff = np.abs(a.images.astype(int) - b.images.astype(int))
    # Equal up to float rounding of batched vs single kernels (per-batch latents would differ everywhere).
    assert diff.mean() < 0.5 and np.quantile(diff, 0.99) <= 2
    assert _status(ledger_path)[0].queries == 0


def test_lambda_mixes_release_with_the_prompt_embedding(stacks, decoders, ledger_path, monkeypatch):
    pipe = _pipeline(stacks, decoders, "stable-unclip", ledger_path, lam=0.5)
    spy = RetrieverSpy(pipe.source.retriever)
    monkeypatch.setattr(pipe.source, "retriever", spy)
    decoder_spy = PipeSpy(pipe.decoder.pipe)
    monkeypatch.setattr(pipe.decoder, "pipe", decoder_spy)
    pipe(PROMPTS, **FAST)
    q = stacks["clip"].encode_text(PROMPTS).astype(np.float64)
    mixed = 0.5 * spy.releases[0].vectors + 0.5 * q
    expected = mixed / np.linalg.norm(mixed, axis=1, keepdims=True) * NU
    np.testing.assert_allclose(_embeds_seen("stable-unclip", decoder_spy.calls[0]), expected, rtol=1e-4, atol=1e-5)


# --- assembly refusals (all before any charge) ------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_each_family_from_its_folder(stacks, family, ledger_path):
    pipe, defaults = make_decoder_pipeline(
        stacks["dirs"][family],
        pipeline_type=family,
        encoder=stacks["clip"],
        index=stacks["index_dir"],
        ledger=ledger_path,
        k=4,
        sigma=1.0,
        sample_rate=0.5,
        embed_norm=NU,
        ip_adapter=stacks["ip_adapter"] if family == "ip-adapter" else None,
    )
    assert pipe.decoder.family == family and pipe.decoder.embed_dim == stacks["clip"].dim
    assert defaults["guidance_scale"] == pipe.decoder.default_guidance


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_folder_is_a_clear_error(stacks, family, ledger_path, tmp_path):
    with pytest.raises(CheckpointError, match="download"):
        make_decoder_pipeline(
            tmp_path / "nowhere",
            pipeline_type=family,
            encoder=stacks["clip"],
            index=stacks["index_dir"],
            ledger=ledger_path,
            embed_norm=NU,
            ip_adapter=stacks["ip_adapter"],
        )


def test_missing_ip_adapter_weights_is_a_clear_error(stacks, ledger_path, tmp_path):
    with pytest.raises(CheckpointError, match="h94/IP-Adapter"):
        make_decoder_pipeline(
            stacks["dirs"]["ip-adapter"],
            pipeline_type="ip-adapter",
            encoder=stacks["clip"],
            index=stacks["index_dir"],
            ledger=ledger_path,
            embed_norm=NU,
            ip_adapter=tmp_path / "missing.safetensors",
        )


def test_index_of_another_space_is_refused(stacks, decoders, ledger_path, tmp_path):
    from privdiff.retrieval import build_index

    rng = np.random.default_rng(1)
    build_index(tmp_path / "other", rng.normal(size=(8, stacks["clip"].dim)), space_id="some-other/v1")
    with pytest.raises(EncoderMismatch):
        _pipeline(stacks, decoders, "kandinsky22", ledger_path, index=tmp_path / "other")


def test_decoder_of_another_dimension_is_refused(stacks, ledger_path, tmp_path):
    from privdiff.decoders import synthetic

    synthetic.save_kandinsky22(tmp_path / "k64", image_embed_dim=64)
    with pytest.raises(InvalidParameter, match="64-d"):
        make_decoder_pipeline(
            tmp_path / "k64",
            pipeline_type="kandinsky22",
            encoder=stacks["clip"],
            index=stacks["index_dir"],
            ledger=ledger_path,
            k=4,
            sigma=1.0,
            sample_rate=0.5,
            embed_norm=NU,
        )
    assert _status(ledger_path)[0].queries == 0


def test_unknown_family_is_refused(stacks, ledger_path):
    with pytest.raises(InvalidParameter, match="kandinsky22"):
        make_decoder_pipeline(stacks["root"], pipeline_type="dalle2", encoder=stacks["clip"], embed_norm=NU)
