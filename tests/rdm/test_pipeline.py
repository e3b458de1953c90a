"""The generation pipeline: one charge per prompt, free baselines, refusal before any output."""

import json
import math

import numpy as np
import pytest

from privdiff.errors import EncoderMismatch, InvalidParameter, PrivacyBudgetExceeded
from privdiff.evaluation.baselines import NonPrivateRetrievalContext
from privdiff.rdm.conditioning import DPRetrievalContext, PublicRetrievalContext, QueryOnlyContext
from privdiff.rdm.model import RDMModel
from privdiff.rdm.pipeline import DPRDMPipeline, generate_to_directory

from .conftest import TINY_DIM, TINY_SPACE, PixelProjectionEncoder

PROMPTS = ["a photo of a sandal", "a photo of a bag", "a photo of a coat"]
FAST = dict(num_inference_steps=2, guidance_scale=2.0, seed=0)


@pytest.fixture()
def ledger(tmp_path):
    from privdiff.accounting.ledger import Ledger

    return Ledger.create(tmp_path / "budget.db", epsilon=50.0, delta=1e-5)


@pytest.fixture()
def private_index(tiny_data):
    from privdiff.retrieval import EmbeddingIndex

    images, emb, enc = tiny_data
    return EmbeddingIndex.from_embeddings(emb, space_id=enc.space_id, visibility="private")


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return RDMModel.load(tiny_model_dir)


def _dp_pipeline(model, index, ledger, *, sigma=1.0, sample_rate=0.5, k=4, lam=1.0):
    from privdiff.retrieval import DPRetriever

    retriever = DPRetriever(index, k, sigma, sample_rate, ledger)
    return DPRDMPipeline(model, DPRetrievalContext(retriever, lam=lam), PixelProjectionEncoder())


def test_dp_generation_shapes_and_one_charge_per_prompt(model, private_index, ledger):
    pipe = _dp_pipeline(model, private_index, ledger)
    out = pipe(PROMPTS, images_per_prompt=2, **FAST)
    assert out.images.shape == (3, 2, 12, 12, 1) and out.images.dtype == np.uint8
    assert out.mode == "dp-rdm" and out.private
    status = ledger.status()
    assert status.queries == 3
    assert out.privacy["queries_charged"] == 3
    assert out.privacy["epsilon_spent"] == pytest.approx(status.epsilon_spent)
    assert len(ledger.history()) == 1  # the three prompts went in ONE ledger call


def test_many_images_per_context_cost_one_charge(model, private_index, ledger):
    pipe = _dp_pipeline(model, private_index, ledger)
    pipe(PROMPTS[:1], images_per_prompt=1, **FAST)
    eps_one = ledger.status().epsilon_spent
    pipe(PROMPTS[:1], images_per_prompt=6, **FAST)
    assert ledger.status().queries == 2
    # the second call (6 images) costs what a second 1-image query costs, not six
    from privdiff.accounting import DPRDMQuery, compute_epsilon

    q = DPRDMQuery(sigma=1.0, sample_rate=0.5, k=4)
    expected = compute_epsilon([(q, 2)], delta=1e-5, accountant=ledger.status().accountant).epsilon
    assert ledger.status().epsilon_spent == pytest.approx(expected, rel=1e-6)
    assert ledger.status().epsilon_spent > eps_one


def test_over_budget_request_produces_nothing_and_charges_nothing(model, private_index, tmp_path):
    from privdiff.accounting.ledger import Ledger

    tight = Ledger.create(tmp_path / "tight.db", epsilon=0.5, delta=1e-5)
    pipe = _dp_pipeline(model, private_index, tight, sigma=0.05, sample_rate=1.0)
    out_dir = tmp_path / "gen"
    with pytest.raises(PrivacyBudgetExceeded) as err:
        generate_to_directory(pipe, PROMPTS, out_dir, images_per_prompt=2, **FAST)
    assert err.value.epsilon_budget == pytest.approx(0.5)
    assert tight.status().queries == 0 and tight.status().epsilon_spent == 0
    assert not out_dir.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".gen")] == []


def test_bad_request_is_refused_before_any_charge(model, private_index, ledger):
    pipe = _dp_pipeline(model, private_index, ledger)
    with pytest.raises(InvalidParameter, match="images_per_prompt"):
        pipe(PROMPTS, images_per_prompt=0, **FAST)
    with pytest.raises(InvalidParameter, match="prompts"):
        pipe([""], **FAST)
    with pytest.raises(InvalidParameter, match="num_inference_steps"):
        pipe(PROMPTS, num_inference_steps=0)
    assert ledger.status().queries == 0


def test_public_baselines_never_touch_the_ledger(model, tiny_data, ledger):
    from privdiff.retrieval import PublicEmbeddings, PublicRetriever

    _, emb, enc = tiny_data
    public = PublicRetriever(PublicEmbeddings(emb[:16], space_id=enc.space_id), k=4)
    for source in (PublicRetrievalContext(public), QueryOnlyContext(4, TINY_DIM, TINY_SPACE)):
        out = DPRDMPipeline(model, source, enc)(PROMPTS, **FAST)
        assert out.privacy["epsilon"] == 0.0 and out.privacy["queries_charged"] == 0 and out.private
    assert ledger.status().queries == 0


def test_non_private_baseline_is_flagged_and_uses_exact_neighbour_mean(model, tiny_data):
    _, emb, enc = tiny_data
    source = NonPrivateRetrievalContext(emb, k=3, space_id=enc.space_id)
    q = enc.encode_text(PROMPTS)
    cond = source.condition(q)
    top = np.argsort(-(emb @ q.T), axis=0)[:3].T
    np.testing.assert_allclose(cond.contexts[:, 0], emb[top].mean(axis=1), atol=1e-5)
    assert not cond.private and math.isinf(cond.privacy["epsilon"])
    out = DPRDMPipeline(model, source, enc)(PROMPTS[:1], **FAST)
    assert out.mode == "non-private" and not out.private
    assert out.record()["privacy"]["epsilon"] == "inf"
    assert "NOT PRIVATE" in repr(source)


def test_non_private_baseline_over_an_index_reads_it_through_the_escape_hatch(private_index, tiny_data, monkeypatch):
    import privdiff.evaluation.baselines as baselines

    _, emb, enc = tiny_data
    reasons = []
    real = baselines.unsafe_nonprivate_rows
    monkeypatch.setattr(
        baselines,
        "unsafe_nonprivate_rows",
        lambda idx, reason: reasons.append(reason) or real(idx, reason=reason),
    )
    q = enc.encode_text(PROMPTS)
    from_index = NonPrivateRetrievalContext(private_index, k=3).condition(q)
    from_array = NonPrivateRetrievalContext(emb, k=3, space_id=enc.space_id).condition(q)
    np.testing.assert_allclose(from_index.contexts, from_array.contexts, atol=1e-6)
    assert len(reasons) == 2 and all("non-private" in r for r in reasons)
    with pytest.raises(InvalidParameter, match="space_id"):
        NonPrivateRetrievalContext(private_index, k=3, space_id="other/v1")
    with pytest.raises(InvalidParameter, match="space_id"):
        NonPrivateRetrievalContext(emb, k=3)


def test_query_only_context_is_the_query_replicated():
    src = QueryOnlyContext(5, 4, "s")
    q = np.array([[3.0, 0, 0, 4.0]], dtype=np.float32)
    cond = src.condition(q)
    assert cond.contexts.shape == (1, 5, 4)
    np.testing.assert_allclose(cond.contexts[0, 4], [0.6, 0, 0, 0.8], atol=1e-6)


def test_dp_context_with_lambda_mixes_query_after_release(model, private_index, ledger):
    pipe = _dp_pipeline(model, private_index, ledger, lam=0.25)
    q = PixelProjectionEncoder().encode_text(PROMPTS[:1])
    cond = pipe.source.condition(q)
    # C = λ·r̃ + (1−λ)·q̂: subtracting the query part leaves a replicated private vector
    private_part = (cond.contexts - 0.75 * q[:, None, :]) / 0.25
    np.testing.assert_allclose(private_part[:, 0], private_part[:, 3], atol=1e-5)
    assert cond.privacy["lam"] == 0.25 and ledger.status().queries == 1


def test_public_seed_reproduces_images_with_a_fixed_context(model, tiny_data):
    _, emb, enc = tiny_data
    pipe = DPRDMPipeline(model, QueryOnlyContext(4, TINY_DIM, TINY_SPACE), enc)
    a = pipe(PROMPTS, images_per_prompt=2, **FAST).images
    b = pipe(PROMPTS, images_per_prompt=2, batch_size=1, **FAST).images
    c = pipe(PROMPTS, images_per_prompt=2, num_inference_steps=2, seed=1).images
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_pipeline_refuses_components_from_another_space(model):
    with pytest.raises(EncoderMismatch):
        DPRDMPipeline(model, QueryOnlyContext(4, TINY_DIM, "other/v1"), PixelProjectionEncoder())
    with pytest.raises(EncoderMismatch):
        DPRDMPipeline(
            model,
            QueryOnlyContext(4, TINY_DIM, TINY_SPACE),
            PixelProjectionEncoder(space_id="other/v1"),
        )


def test_generate_to_directory_writes_pngs_grid_and_record(model, private_index, ledger, tmp_path):
    pipe = _dp_pipeline(model, private_index, ledger)
    rec = generate_to_directory(pipe, PROMPTS[:2], tmp_path / "g", images_per_prompt=3, **FAST)
    files = sorted(p.name for p in (tmp_path / "g").iterdir())
    assert files == ["generation.json", "grid.png", "images", "images.npz"]
    assert (tmp_path / "g" / "images" / "p01_002.png").is_file()
    saved = json.loads((tmp_path / "g" / "generation.json").read_text())
    assert saved == rec and saved["privacy"]["epsilon_spent"] == pytest.approx(ledger.status().epsilon_spent)
    assert saved["settings"]["images_per_prompt"] == 3
