"""``privdiff index build|info`` and ``privdiff audit retrieval`` through the real CLI entry point."""

import json

import numpy as np
import pytest

from privdiff.cli import main


class _TinyEncoder:
    space_id = "tiny-mean/v1"
    dim = 4

    def encode_images(self, images, *, batch_size=256, progress=False):
        x = images.reshape(len(images), -1).astype(np.float32)
        feats = np.stack([x.mean(1), x.std(1), x[:, ::2].mean(1), x[:, 1::2].mean(1)], axis=1) + 1.0
        return feats / np.linalg.norm(feats, axis=1, keepdims=True)


@pytest.fixture
def npz_dataset(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, size=(20, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(20) % 3
    p = tmp_path / "private.npz"
    np.savez(p, images=imgs, labels=labels)
    return p


@pytest.fixture
def tiny_encoder(monkeypatch):
    import privdiff.encoders

    monkeypatch.setattr(privdiff.encoders, "load_image_encoder", lambda name="default": _TinyEncoder())


def test_index_build_then_info_shows_manifest_without_labels(tmp_path, npz_dataset, tiny_encoder, capsys):
    out = tmp_path / "idx"
    assert main(["index", "build", "--data", f"npz:{npz_dataset}", "--out", str(out), "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert (built["count"], built["dim"], built["space_id"], built["visibility"]) == (
        20,
        4,
        "tiny-mean/v1",
        "private",
    )
    assert main(["index", "info", str(out), "--verify", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["verified"] == "full" and info["fingerprint"] == built["fingerprint"]
    assert "labels" not in info and "class_names" not in info


def test_index_info_shows_a_short_manifest_fingerprint_never_the_vectors_hash(
    tmp_path, npz_dataset, tiny_encoder, capsys
):
    import hashlib

    from privdiff.retrieval import read_manifest

    out = tmp_path / "idx"
    assert main(["index", "build", "--data", f"npz:{npz_dataset}", "--out", str(out), "--json"]) == 0
    built = capsys.readouterr().out
    vectors_sha = read_manifest(out).sha256
    manifest_sha = hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    for argv in (
        ["index", "info", str(out)],
        ["index", "info", str(out), "--json"],
        ["index", "info", str(out), "--verify"],
    ):
        assert main(argv) == 0
        shown = capsys.readouterr().out
        assert manifest_sha[:12] in shown and manifest_sha not in shown
        assert vectors_sha[:12] not in shown
    assert vectors_sha[:12] not in built and json.loads(built)["fingerprint"] == manifest_sha[:12]
    # Error messages name the index the same way, never by its vectors' hash.
    vec = out / "embeddings.npy"
    data = bytearray(vec.read_bytes())
    data[-1] ^= 0xFF
    vec.write_bytes(bytes(data))
    assert main(["index", "info", str(out), "--verify"]) != 0
    err = capsys.readouterr().err
    assert manifest_sha[:12] in err and vectors_sha[:12] not in err


def test_index_build_refuses_existing_output_with_exit_code_2(tmp_path, npz_dataset, tiny_encoder, capsys):
    out = tmp_path / "idx"
    out.mkdir()
    assert main(["index", "build", "--data", f"npz:{npz_dataset}", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_index_info_on_corrupt_index_exits_4_naming_the_problem(tmp_path, npz_dataset, tiny_encoder, capsys):
    out = tmp_path / "idx"
    assert main(["index", "build", "--data", f"npz:{npz_dataset}", "--out", str(out)]) == 0
    vec = out / "embeddings.npy"
    vec.write_bytes(vec.read_bytes()[:-8])
    capsys.readouterr()
    assert main(["index", "info", str(out), "--verify"]) == 4  # IndexCorrupt: exit code 4
    assert "truncated" in capsys.readouterr().err


@pytest.mark.integration
def test_audit_cli_writes_json_and_png_and_passes_for_the_real_mechanism(tmp_path, capsys):
    out = tmp_path / "audit"
    rc = main(
        [
            "audit",
            "retrieval",
            "--sigma",
            "0.3",
            "--k",
            "10",
            "--runs",
            "3000",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["passed"] and res["epsilon_hat"] <= res["epsilon_accountant"]
    assert (out / "audit.json").is_file() and (out / "audit.png").is_file()


@pytest.mark.integration
def test_audit_cli_exits_1_when_it_catches_a_broken_mechanism(tmp_path, capsys):
    rc = main(
        [
            "audit",
            "retrieval",
            "--sigma",
            "0.2",
            "--sample-rate",
            "0.05",
            "--k",
            "10",
            "--n-records",
            "10",
            "--runs",
            "3000",
            "--mechanism",
            "broken-pad-last-record",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 1
    assert "VIOLATION" in capsys.readouterr().out


def test_audit_cli_rejects_bad_sample_rate_with_exit_code_2(tmp_path, capsys):
    assert main(["audit", "retrieval", "--sample-rate", "0", "--out", str(tmp_path)]) == 2
    assert "sample_rate" in capsys.readouterr().err


@pytest.mark.slow
def test_index_build_with_the_real_encoder_on_fashion_mnist(tmp_path, capsys):
    from pathlib import Path

    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    out = tmp_path / "idx"
    assert (
        main(
            [
                "index",
                "build",
                "--data",
                "fashion-mnist:train[:64]",
                "--encoder",
                "effnet-lite0-32px",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    m = json.loads(capsys.readouterr().out)
    assert (m["count"], m["dim"]) == (64, 1280)


def test_index_build_from_precomputed_embeddings(tmp_path, capsys):
    emb = np.random.default_rng(0).standard_normal((30, 6)).astype(np.float32)
    np.save(tmp_path / "emb.npy", emb)
    out = tmp_path / "idx"
    assert (
        main(
            [
                "index",
                "build",
                "--embeddings",
                str(tmp_path / "emb.npy"),
                "--space-id",
                "metaclip-b16/v1",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    m = json.loads(capsys.readouterr().out)
    assert (m["count"], m["dim"], m["space_id"]) == (30, 6, "metaclip-b16/v1")
    from privdiff.retrieval import load_index
    from privdiff.retrieval.private import unsafe_nonprivate_rows

    rows = np.asarray(unsafe_nonprivate_rows(load_index(out), reason="test: what the CLI stored"))
    np.testing.assert_allclose(rows, emb / np.linalg.norm(emb, axis=1, keepdims=True), rtol=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "exactly one"),
        (["--data", "npz:/x.npz", "--embeddings", "e.npy"], "exactly one"),
        (["--embeddings", "e.npy"], "space-id"),
    ],
)
def test_index_build_needs_exactly_one_source(tmp_path, capsys, args, message):
    assert main(["index", "build", "--out", str(tmp_path / "idx"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "idx").exists()


def test_index_build_reports_unreadable_embeddings_as_data_error(tmp_path, capsys):
    (tmp_path / "e.npy").write_bytes(b"not numpy")
    rc = main(
        [
            "index",
            "build",
            "--embeddings",
            str(tmp_path / "e.npy"),
            "--space-id",
            "s",
            "--out",
            str(tmp_path / "i"),
        ]
    )
    assert rc == 2
    assert "cannot read embeddings" in capsys.readouterr().err


@pytest.mark.integration
def test_an_index_built_with_the_default_encoder_is_one_the_shipped_rdm_retrieves_from(tmp_path, capsys):
    # No --encoder anywhere: `index build` embeds in the shipped model's space, and the shipped
    # model assembles a dp-rdm pipeline on that index (nothing is charged by assembling it).
    from pathlib import Path

    from privdiff.accounting import Ledger
    from privdiff.rdm.model import read_model_info
    from privdiff.rdm.pipeline import make_pipeline, resolve_model_dir

    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    out = tmp_path / "idx"
    assert main(["index", "build", "--data", "fashion-mnist:train[:64]", "--out", str(out), "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    shipped = read_model_info(resolve_model_dir())["model"]
    assert (built["space_id"], built["dim"]) == (shipped["space_id"], shipped["embedding_dim"])
    Ledger.create(tmp_path / "b.db", epsilon=10.0, delta=1e-5).close()
    pipe, _ = make_pipeline(resolve_model_dir(), index=out, ledger=tmp_path / "b.db", sample_rate=0.5)
    assert pipe.text_encoder.space_id == shipped["space_id"]
    with Ledger.open(tmp_path / "b.db") as book:
        assert book.status().queries == 0


def test_index_build_scan_copy_int8_writes_the_copy_and_searches_give_the_same_ids(tmp_path, capsys):
    from privdiff.retrieval import load_index
    from privdiff.retrieval.private import ExactTopK

    emb = np.random.default_rng(1).standard_normal((400, 16)).astype(np.float32)
    np.save(tmp_path / "emb.npy", emb)
    common = ["index", "build", "--embeddings", str(tmp_path / "emb.npy"), "--space-id", "x/v1"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--out", str(tmp_path / "i8"), "--scan-copy", "int8"]) == 0
    assert "scan copy int8" in capsys.readouterr().out
    plain, i8 = load_index(tmp_path / "plain"), load_index(tmp_path / "i8")
    assert plain.scan_dtypes == () and i8.scan_dtypes == ("int8",)
    assert plain.fingerprint == i8.fingerprint  # the copy does not change what the ledger is bound to
    q = np.random.default_rng(2).standard_normal((8, 16)).astype(np.float32)
    pytest.importorskip("numba")  # the test extra installs it; the int8 scan needs its kernel
    a = ExactTopK(plain, scan="float32").topk_sums(q, 5, 0.5, np.random.default_rng(3))
    b = ExactTopK(i8).topk_sums(q, 5, 0.5, np.random.default_rng(3))  # auto: the int8 copy
    assert repr(ExactTopK(i8)).endswith("scan='int8')")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_index_build_refuses_an_unknown_scan_copy_before_writing(tmp_path, capsys):
    np.save(tmp_path / "emb.npy", np.ones((4, 3), dtype=np.float32))
    rc = main(
        ["index", "build", "--embeddings", str(tmp_path / "emb.npy"), "--space-id", "x/v1"]
        + ["--out", str(tmp_path / "idx"), "--scan-copy", "int4"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "--scan-copy" in err and "int4" in err and "none, float16, int8" in err
    assert not (tmp_path / "idx").exists()
