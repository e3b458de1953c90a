"""`privdiff generate` hardening (issue #12): every failure before the charge, a cheap over-budget
refusal, warnings, --prompts FILE, progress, labelled grids and an output folder eval can read.

Fast: a tiny random RDM, a 32-row index and a pixel-projection stand-in for the encoders (the
real encoders are monkeypatched out, so nothing heavy loads)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from privdiff.cli import main
from privdiff.errors import InvalidParameter, PrivacyBudgetExceeded, PrivdiffWarning
from privdiff.rdm.pipeline import (
    MAX_SEED,
    check_budget,
    domain_warning,
    generate_to_directory,
    make_pipeline,
    queries_that_fit,
    setting_warnings,
    write_domain_reference,
)

from .conftest import TINY_SPACE, PixelProjectionEncoder


@pytest.fixture()
def env(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    """(model dir, index dir, ledger path); the encoders are the stand-in."""
    import privdiff.encoders as encoders
    from privdiff.accounting import Ledger
    from privdiff.retrieval import build_index

    monkeypatch.setattr(encoders, "load_text_encoder", lambda name="default": PixelProjectionEncoder())
    monkeypatch.setattr(encoders, "load_image_encoder", lambda name="default": PixelProjectionEncoder())
    _, emb, _ = tiny_data
    index = build_index(tmp_path / "index", emb, space_id=TINY_SPACE, source="tiny")
    ledger = tmp_path / "budget.db"
    Ledger.create(ledger, epsilon=50.0, delta=1e-3)
    return tiny_model_dir, index.path, ledger


def _state(ledger):
    from privdiff.accounting import Ledger

    with Ledger.open(ledger) as book:
        st = book.status()
        return st.epsilon_spent, st.queries, len(book.history())


def _gen(env, out, *extra, prompts=("a sandal", "a bag")):
    model, index, ledger = env
    args = [
        "generate",
        "--model",
        str(model),
        "--index",
        str(index),
        "--ledger",
        str(ledger),
        "-n",
        "2",
        "--steps",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    for p in prompts:
        args += ["--prompt", p]
    return main(args + list(extra))


def _files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else None


# ------------------------------------------------------------------ 1. checked before the charge


def test_generate_writes_the_chainable_layout_and_charges_once_per_prompt(env, tmp_path):
    out = tmp_path / "g"
    assert _gen(env, out) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "generation.json",
        "grid.png",
        "images",
        "images.npz",
    ]
    with np.load(out / "images.npz") as z:
        assert z["images"].shape == (4, 12, 12, 1) and z["images"].dtype == np.uint8
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "p00_000.png",
        "p00_001.png",
        "p01_000.png",
        "p01_001.png",
    ]
    assert _state(env[2])[1] == 2


@pytest.mark.parametrize("seed", [str(2**63), str(2**64), "-1"])
def test_cli_seed_out_of_range_is_refused_before_the_charge(env, tmp_path, capsys, seed):
    before = _state(env[2])
    assert _gen(env, tmp_path / "g", "--seed", seed) == 2
    assert "seed" in capsys.readouterr().err
    assert _state(env[2]) == before and not (tmp_path / "g").exists()


def test_api_seed_out_of_range_is_refused_before_the_charge(env, tmp_path):
    pipe, _ = make_pipeline(env[0], index=env[1], ledger=env[2])
    before = _state(env[2])
    with pytest.raises(InvalidParameter, match=str(MAX_SEED)):
        generate_to_directory(pipe, ["a bag"], tmp_path / "g", seed=MAX_SEED + 1, num_inference_steps=2)
    assert _state(env[2]) == before and not (tmp_path / "g").exists()
    pipe(["a bag"], seed=MAX_SEED, num_inference_steps=1)  # the largest seed works


def test_unbounded_images_per_prompt_is_refused_with_the_maximum_before_the_charge(env, tmp_path):
    pipe, _ = make_pipeline(env[0], index=env[1], ledger=env[2])
    before = _state(env[2])
    with pytest.raises(InvalidParameter, match=r"images_per_prompt=1000000000000: must be an integer in \[1, \d+\]"):
        pipe(["a bag", "a coat"], images_per_prompt=10**12, num_inference_steps=1)
    with pytest.raises(InvalidParameter, match="images_per_prompt"):
        generate_to_directory(pipe, ["a bag"], tmp_path / "g", images_per_prompt=10**12, num_inference_steps=1)
    assert _state(env[2]) == before and not (tmp_path / "g").exists()


def test_cli_images_per_prompt_above_the_limit_exits_2(env, tmp_path, capsys):
    before = _state(env[2])
    assert _gen(env, tmp_path / "g", "-n", "100000") == 2
    assert "n=100000" in capsys.readouterr().err and _state(env[2]) == before


def test_out_that_is_an_existing_file_is_refused_before_the_charge(env, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("keep me")
    before = _state(env[2])
    assert _gen(env, target) == 2
    assert "existing file" in capsys.readouterr().err
    assert target.read_text() == "keep me" and _state(env[2]) == before


def test_out_below_a_file_is_refused_and_leaves_nothing(env, tmp_path, capsys):
    (tmp_path / "f").write_text("")
    before = _state(env[2])
    assert _gen(env, tmp_path / "f" / "sub" / "g") == 2
    assert "is a file" in capsys.readouterr().err and _state(env[2]) == before


def test_unwritable_out_is_refused_before_the_charge_and_created_folders_are_removed(
    env, tmp_path, monkeypatch, capsys
):
    import tempfile

    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", deny)  # what a read-only mount does to the write test
    before = _state(env[2])
    assert _gen(env, tmp_path / "new" / "g") == 2
    assert "writable" in capsys.readouterr().err
    assert _state(env[2]) == before and not (tmp_path / "new").exists()


def test_out_holding_an_earlier_output_is_refused_before_the_charge(env, tmp_path, capsys):
    assert _gen(env, tmp_path / "g") == 0
    listing, before = _files_under(tmp_path / "g"), _state(env[2])
    assert _gen(env, tmp_path / "g") == 2
    assert "earlier outputs" in capsys.readouterr().err
    assert _files_under(tmp_path / "g") == listing and _state(env[2]) == before


@pytest.mark.integration
def test_failure_after_the_charge_leaves_no_partial_files(env, tmp_path, monkeypatch):
    """Nothing can be checked about a crash in sampling, but it must not leave a half folder."""
    import privdiff.rdm.pipeline as pl

    pipe, _ = make_pipeline(env[0], index=env[1], ledger=env[2])

    def boom(*a, **k):
        raise RuntimeError("sampler crashed")

    monkeypatch.setattr("privdiff.diffusion.sampling.sample", boom)
    with pytest.raises(RuntimeError):
        pl.generate_to_directory(pipe, ["a bag"], tmp_path / "g", num_inference_steps=1)
    assert not (tmp_path / "g").exists()


# ------------------------------------------------------------------ 2. cheap over-budget refusal


def test_over_budget_is_refused_before_the_model_loads_and_says_how_many_still_fit(env, tmp_path, monkeypatch, capsys):
    import privdiff.encoders as encoders
    from privdiff.accounting import DPRDMQuery, Ledger
    from privdiff.rdm.model import RDMModel

    def no_loading(*a, **k):
        raise AssertionError("loaded a model or encoder before the budget check")

    monkeypatch.setattr(RDMModel, "load", no_loading)
    monkeypatch.setattr(encoders, "load_text_encoder", no_loading)
    small = tmp_path / "small.db"
    Ledger.create(small, epsilon=3.0, delta=1e-3)
    query = DPRDMQuery(sigma=1.0, sample_rate=0.5, k=4)  # the tiny model's generation defaults
    with Ledger.open(small) as book:
        fit = queries_that_fit(book, query)
        assert 1 <= fit < 40
        assert book.preview(query, fit) <= 3.0 < book.preview(query, fit + 1)
    model, index, _ = env
    code = main(
        [
            "generate",
            "--model",
            str(model),
            "--index",
            str(index),
            "--ledger",
            str(small),
            "--quiet",
            "--out",
            str(tmp_path / "g"),
        ]
        + [a for i in range(fit + 1) for a in ("--prompt", f"p{i}")]
    )
    err = capsys.readouterr().err
    assert code == 3 and f" {fit} quer" in err and "of this setting still fit" in err
    assert _state(small) == (0.0, 0, 0) and not (tmp_path / "g").exists()


@pytest.mark.integration
def test_queries_that_fit_accounts_for_earlier_charges():
    import tempfile
    from pathlib import Path

    from privdiff.accounting import DPRDMQuery, Ledger

    with tempfile.TemporaryDirectory() as d:
        book = Ledger.create(Path(d) / "b.db", epsilon=2.0, delta=1e-5)
        q = DPRDMQuery(sigma=1.0, sample_rate=0.05, k=4)
        fresh = queries_that_fit(book, q)
        book.charge(q, count=fresh // 2)
        left = queries_that_fit(book, q)
        assert 0 < left < fresh and book.preview(q, left) <= 2.0 < book.preview(q, left + 1)
        with pytest.raises(PrivacyBudgetExceeded, match=rf"\. {left} quer(y|ies) of this setting still fits?\."):
            check_budget(Path(d) / "b.db", sigma=1.0, sample_rate=0.05, k=4, count=left + 1)
        check_budget(Path(d) / "b.db", sigma=1.0, sample_rate=0.05, k=4, count=left)  # fits: no error
        book.close()


# ------------------------------------------------------------------ 3. warnings


def test_setting_warnings_padding_and_delta():
    msgs = setting_warnings(count=1000, k=20, sample_rate=0.01, delta=1e-5)
    assert len(msgs) == 1 and "q·N" in msgs[0] and "--sample-rate >= 0.04" in msgs[0]
    msgs = setting_warnings(count=1000, k=4, sample_rate=0.5, delta=1e-3)
    assert len(msgs) == 1 and "δ" in msgs[0] and "1/N" in msgs[0]
    assert setting_warnings(count=49320, k=20, sample_rate=0.01, delta=1 / 49320 / 10) == []


def test_cli_warns_on_stderr_before_charging(env, tmp_path, capsys):
    # 32 rows, q = 0.05 → q·N = 1.6 < k = 4; δ = 1e-3 < 1/32 is fine; then a δ ≥ 1/N ledger.
    assert _gen(env, tmp_path / "g", "--sample-rate", "0.05") == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "zero padding" in err
    from privdiff.accounting import Ledger

    loose = tmp_path / "loose.db"
    Ledger.create(loose, epsilon=50.0, delta=0.05)
    assert _gen((env[0], env[1], loose), tmp_path / "g2") == 0
    assert "1/N" in capsys.readouterr().err


def test_warnings_come_from_make_pipeline_before_any_charge(env):
    with pytest.warns(PrivdiffWarning, match="zero padding"):
        make_pipeline(env[0], index=env[1], ledger=env[2], sample_rate=0.05)
    assert _state(env[2])[1] == 0


def test_domain_warning_fires_for_an_out_of_domain_index_only(tmp_path):
    from privdiff.retrieval import EmbeddingIndex

    rng = np.random.default_rng(0)
    centre_a, centre_b = rng.normal(size=16), rng.normal(size=16)

    def cluster(centre, n):
        return centre + 0.6 * rng.normal(size=(n, 16))

    write_domain_reference(tmp_path, cluster(centre_a, 400), TINY_SPACE)
    inside = EmbeddingIndex.from_embeddings(cluster(centre_a, 300), space_id=TINY_SPACE)
    outside = EmbeddingIndex.from_embeddings(cluster(centre_b, 300), space_id=TINY_SPACE)
    assert domain_warning(tmp_path, inside) is None
    msg = domain_warning(tmp_path, outside)
    assert msg is not None and "outside the model's domain" in msg
    assert domain_warning(tmp_path / "no-reference", outside) is None  # no reference file: skipped


# ------------------------------------------------------------------ 4. prompts file, progress, grids


def test_prompts_file_combines_with_prompt_and_skips_blanks_and_comments(env, tmp_path):
    pf = tmp_path / "prompts.txt"
    pf.write_text("# my prompts\n\na sandal\n   \n  a bag  \n# a coat\n")
    assert _gen(env, tmp_path / "g", "--prompts", str(pf), prompts=("a shirt",)) == 0
    rec = json.loads((tmp_path / "g" / "generation.json").read_text())
    assert rec["prompts"] == ["a shirt", "a sandal", "a bag"] and _state(env[2])[1] == 3


@pytest.mark.parametrize("content", [None, "# only a comment\n\n"])
def test_bad_prompts_file_exits_2_before_the_charge(env, tmp_path, capsys, content):
    pf = tmp_path / "prompts.txt"
    if content is not None:
        pf.write_text(content)
    assert _gen(env, tmp_path / "g", "--prompts", str(pf), prompts=()) == 2
    assert "prompts file" in capsys.readouterr().err and _state(env[2])[1] == 0


def test_progress_ticks_once_per_ddim_step_of_every_batch(env, monkeypatch):
    import tqdm.auto

    bars = []

    class FakeBar:
        def __init__(self, *a, total=None, **k):
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, k=1):
            self.n += k

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    pipe, _ = make_pipeline(env[0], index=env[1], ledger=env[2])
    pipe(["a bag"], images_per_prompt=5, batch_size=2, num_inference_steps=3, progress=True)
    assert [(b.total, b.n) for b in bars] == [(3 * 3, 3 * 3)]  # 3 batches × 3 steps


def test_grid_rows_are_labelled(env, tmp_path):
    from PIL import Image

    from privdiff.report.images import make_grid, make_labelled_grid

    imgs = np.zeros((2, 3, 12, 12, 1), dtype=np.uint8) + 128
    a = make_labelled_grid(list(imgs), ["a sandal", "a bag"], title="DP-RDM")
    b = make_labelled_grid(list(imgs), ["a coat", "a hat"], title="DP-RDM")
    bare = make_grid(imgs.reshape(6, 12, 12, 1), ncols=3)
    assert a.shape[1] > bare.shape[1] and a.shape[0] > bare.shape[0]
    assert not np.array_equal(a, b)  # the text differs, so the pixels do
    label_area = a[:, : a.shape[1] - bare.shape[1]]
    assert (label_area < 100).any()  # dark text on the white label column
    assert _gen(env, tmp_path / "g") == 0
    grid = np.asarray(Image.open(tmp_path / "g" / "grid.png"))
    assert grid.shape[1] > 3 * bare.shape[1]  # scale 3 plus the label column


# ------------------------------------------------------------------ 5. chaining into eval


def test_generate_output_folder_is_read_by_eval_as_its_images_only(env, tmp_path, capsys):
    from privdiff.evaluation.io import load_source

    out = tmp_path / "g"
    assert _gen(env, out) == 0
    src = load_source(out)
    with np.load(out / "images.npz") as z:
        assert np.array_equal(src.images, z["images"])
    assert src.spec.startswith("npz:") and src.images.shape == (4, 12, 12, 1)
    (out / "images.npz").unlink()  # images/ alone is read too, still without grid.png
    assert load_source(out).images.shape == (4, 12, 12, 1)
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "replication",
                str(out),
                str(out),
                "--feature-space",
                "pixel",
                "--threshold",
                "0.99",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["n_generated"] == 4


def test_labelled_grid_size_is_capped():
    from privdiff.report.images import GRID_MAX_COLS, GRID_MAX_ROWS, make_labelled_grid

    many = [np.zeros((GRID_MAX_COLS + 40, 4, 4, 1), dtype=np.uint8)] * (GRID_MAX_ROWS + 30)
    capped = make_labelled_grid(many, [str(i) for i in range(len(many))], title="t")
    exact = make_labelled_grid(
        [np.zeros((GRID_MAX_COLS, 4, 4, 1), dtype=np.uint8)] * GRID_MAX_ROWS,
        [str(i) for i in range(GRID_MAX_ROWS)],
    )
    assert capped.shape[0] <= exact.shape[0] + 20 and capped.shape[1] <= max(exact.shape[1], 600)
