"""Queries from the Kandinsky 2.2 prior (predicted image embeddings) instead of the text tower."""

from __future__ import annotations

import numpy as np
import pytest

from privdiff.decoders import make_decoder_pipeline
from privdiff.errors import CheckpointError, EncoderMismatch

from .conftest import PROMPTS
from .test_pipeline import FAST, RetrieverSpy


def test_prior_queries_are_unit_reproducible_and_in_the_clip_space(stacks):
    from privdiff.decoders.prior import load_prior

    enc = load_prior(stacks["prior_dir"], stacks["clip"], num_inference_steps=3)
    assert enc.space_id == stacks["clip"].space_id and enc.dim == stacks["clip"].dim
    both = enc.encode_text(PROMPTS)
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(enc.encode_text(PROMPTS[1:])[0], both[1])  # a prompt's query ignores its batch
    # An image-space query, not the text tower's embedding of the prompt.
    assert not np.allclose(both, stacks["clip"].encode_text(PROMPTS), atol=1e-3)


def test_prior_of_another_clip_space_is_refused(stacks, tmp_path):
    import torch

    from privdiff.decoders import synthetic
    from privdiff.decoders.prior import load_prior

    torch.manual_seed(7)
    synthetic.save_kandinsky22_prior(tmp_path / "other-prior")
    with pytest.raises(EncoderMismatch):
        load_prior(tmp_path / "other-prior", stacks["clip"])
    with pytest.raises(CheckpointError, match="kandinsky-2-2-prior"):
        load_prior(tmp_path / "nowhere", stacks["clip"])


def test_generation_with_prior_queries_charges_once(stacks, decoders, ledger_path, monkeypatch):
    from privdiff.accounting.ledger import Ledger

    pipe, _ = make_decoder_pipeline(
        stacks["dirs"]["kandinsky22"],
        pipeline_type="kandinsky22",
        encoder=stacks["clip"],
        index=stacks["index_dir"],
        ledger=ledger_path,
        k=4,
        sigma=1.0,
        sample_rate=0.5,
        embed_norm=7.5,
        prior=stacks["prior_dir"],
        decoder=decoders["kandinsky22"],
    )
    spy = RetrieverSpy(pipe.source.retriever)
    seen = []
    real_query = spy.query
    monkeypatch.setattr(spy, "query", lambda q, **kw: (seen.append(np.array(q)), real_query(q, **kw))[1])
    monkeypatch.setattr(pipe.source, "retriever", spy)
    out = pipe(PROMPTS, **FAST)
    assert out.settings["query_encoder"] == "prior" and out.images.shape[:2] == (2, 1)
    np.testing.assert_allclose(seen[0], pipe.text_encoder.encode_text(PROMPTS), rtol=1e-5, atol=1e-6)
    book = Ledger.open(ledger_path)
    assert book.status().queries == 2 and len(book.history()) == 1
    book.close()
