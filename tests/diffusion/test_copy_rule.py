"""The copy-rate stop rule of fine-tuning (CPSample's regime) and training on an explicit device."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from privdiff.cli import main
from privdiff.diffusion import TrainConfig, load_model, train_diffusion, unet_config
from privdiff.diffusion.training import COPIES_JSON, TRAINING_STATE, CopyRule
from privdiff.errors import InvalidParameter


@pytest.fixture(scope="module")
def tiny_images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, 8, 8, 1), dtype=np.uint8)


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=8, batch_size=4, lr=1e-3, checkpoint_every=4, seed=3, ema_decay=0.9, warmup_steps=1)
    base.update(kw)
    return TrainConfig(**base)


class Scripted:
    """A replica counter that reports the given rates in turn (the rule's logic, not the metric, is tested)."""

    def __init__(self, *rates: float):
        self.rates = list(rates)
        self.seen: list[np.ndarray] = []

    def __call__(self, samples: np.ndarray) -> dict:
        self.seen.append(samples)
        rate = self.rates.pop(0)
        n = len(samples)
        return {"rate": rate, "n_replicated": int(round(rate * n)), "n": n, "ci_low": 0.0, "ci_high": 1.0}


def _train(images, out, *, measure=None, rule=None, **kw):
    return train_diffusion(
        images,
        out,
        unet_config=unet_config("tiny", image_shape=(1, 8, 8)),
        progress=False,
        copy_rule=rule,
        copy_measure=measure,
        **kw,
    )


def _rule(**kw) -> CopyRule:
    return CopyRule(**{"target": 0.05, "check_every": 2, "samples": 3, "ddim_steps": 2, **kw})


def test_the_rule_stops_at_the_first_check_at_or_above_the_target_and_draws_the_curve(tmp_path, tiny_images):
    measure = Scripted(0.0, 0.02, 0.1, 0.5)
    model = _train(tiny_images, tmp_path / "ft", measure=measure, rule=_rule(), config=_cfg(steps=20))
    assert model.meta["steps_done"] == 4  # checks at 0, 2, 4; 0.1 ≥ 0.05 at step 4
    assert model.meta["stop_reason"] == "copy_rate"
    assert model.meta["copy_rate"]["rate"] == 0.1 and model.meta["copy_rate"]["step"] == 4
    assert model.meta["copy_rule"]["target"] == 0.05
    saved = json.loads((tmp_path / "ft" / COPIES_JSON).read_text())
    assert [c["step"] for c in saved["checks"]] == [0, 2, 4] and saved["target"] == 0.05
    assert (tmp_path / "ft" / "copies.png").stat().st_size > 0
    manifest = json.loads((tmp_path / "ft" / "privdiff.json").read_text())
    assert manifest["copy_rate"]["rate"] == 0.1
    # Every check samples the same number of images from the same x_T.
    assert all(s.shape == (3, 8, 8, 1) for s in measure.seen)


@pytest.mark.integration
def test_checks_do_not_change_the_trained_weights(tmp_path, tiny_images):
    plain = _train(tiny_images, tmp_path / "plain", config=_cfg(steps=6))
    checked = _train(
        tiny_images, tmp_path / "checked", measure=Scripted(*[0.0] * 5), rule=_rule(), config=_cfg(steps=6)
    )
    assert checked.meta["stop_reason"] == "max_steps" and checked.meta["steps_done"] == 6
    for (name, p), q in zip(plain.unet.named_parameters(), checked.unet.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.integration
def test_a_resumed_run_keeps_its_copy_history_and_stops_when_the_rate_crosses(tmp_path, tiny_images):
    out = tmp_path / "ft"
    _train(tiny_images, out, measure=Scripted(0.0, 0.0, 0.01), rule=_rule(), config=_cfg(steps=4))
    resumed = _train(tiny_images, out, measure=Scripted(0.03, 0.2), rule=_rule(), config=_cfg(steps=20), resume=True)
    assert resumed.meta["steps_done"] == 8 and resumed.meta["stop_reason"] == "copy_rate"
    checks = json.loads((out / COPIES_JSON).read_text())["checks"]
    assert [(c["step"], c["rate"]) for c in checks] == [(0, 0.0), (2, 0.0), (4, 0.01), (6, 0.03), (8, 0.2)]
    assert len(torch.load(out / TRAINING_STATE, weights_only=False)["copy_checks"]) == 5
    # Resuming a run that already reached its target trains no further and measures nothing more.
    again = Scripted()
    final = _train(tiny_images, out, measure=again, rule=_rule(), config=_cfg(steps=20), resume=True)
    assert final.meta["steps_done"] == 8 and not again.seen


def test_a_starting_model_that_already_copies_enough_is_not_trained(tmp_path, tiny_images):
    model = _train(tiny_images, tmp_path / "ft", measure=Scripted(0.5), rule=_rule(), config=_cfg())
    assert model.meta["steps_done"] == 0 and model.meta["stop_reason"] == "copy_rate"


@pytest.mark.parametrize(
    "field,value",
    [("target", 0.0), ("target", 1.5), ("check_every", 0), ("samples", 0), ("ddim_steps", 0), ("ddim_steps", 1001)],
)
def test_bad_rule_settings_raise_before_anything_is_written(tmp_path, tiny_images, field, value):
    with pytest.raises(InvalidParameter, match=field):
        _train(tiny_images, tmp_path / "x", measure=Scripted(), rule=_rule(**{field: value}), config=_cfg())
    assert not (tmp_path / "x").exists()


def test_a_rule_without_a_measure_is_refused(tmp_path, tiny_images):
    with pytest.raises(InvalidParameter, match="copy_measure"):
        _train(tiny_images, tmp_path / "x", rule=_rule(), config=_cfg())
    assert not (tmp_path / "x").exists()


def test_training_on_a_device_this_machine_lacks_is_refused_before_anything_is_written(tmp_path, tiny_images):
    missing = f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"
    with pytest.raises(InvalidParameter, match="device"):
        _train(tiny_images, tmp_path / "x", config=_cfg(), device=missing)
    assert not (tmp_path / "x").exists()


@pytest.mark.integration
def test_training_with_an_explicit_cpu_device_resumes_bit_identically(tmp_path, tiny_images):
    straight = _train(tiny_images, tmp_path / "a", config=_cfg(steps=4))
    _train(tiny_images, tmp_path / "b", config=_cfg(steps=2), device="cpu")
    resumed = _train(tiny_images, tmp_path / "b", config=_cfg(steps=4), device="cpu", resume=True)
    for (name, p), q in zip(straight.unet.named_parameters(), resumed.unet.parameters()):
        assert torch.equal(p, q), name
    a = torch.load(tmp_path / "a" / TRAINING_STATE, weights_only=False)
    b = torch.load(tmp_path / "b" / TRAINING_STATE, weights_only=False)
    assert a["losses"] == b["losses"]


# --- the command line -------------------------------------------------------------------------


def _fashion_or_skip():
    from privdiff.data import load_dataset

    try:
        load_dataset("fashion-mnist:train[:2]")
    except Exception:  # noqa: BLE001
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.mark.parametrize(
    "args,name",
    [
        (["--stop-at-copy-rate", "0"], "target"),
        (["--stop-at-copy-rate", "1.5"], "target"),
        (["--stop-at-copy-rate", "0.05", "--copy-check-every", "0"], "check_every"),
        (["--stop-at-copy-rate", "0.05", "--copy-check-samples", "0"], "samples"),
        (["--stop-at-copy-rate", "0.05", "--copy-check-steps", "0"], "ddim_steps"),
        (["--stop-at-copy-rate", "0.05", "--copy-threshold", "2"], "copy_threshold"),
        (["--copy-check-every", "5"], "stop_at_copy_rate"),
        (["--device", "tpu"], "device"),
    ],
)
def test_train_diffusion_rejects_bad_rule_and_device_options_before_loading_anything(tmp_path, capsys, args, name):
    code = main(["train", "diffusion", "--data", "no-such-data", "--out", str(tmp_path / "m"), *args])
    assert code == 2 and name in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_train_diffusion_on_a_missing_gpu_is_refused_before_anything_is_written(tmp_path, capsys):
    code = main(["train", "diffusion", "--data", "no-such-data", "--out", str(tmp_path / "m"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and "0 CUDA device" in err
    assert not (tmp_path / "m").exists()


@pytest.mark.integration
def test_train_diffusion_measures_copies_against_its_training_data(tmp_path, capsys):
    _fashion_or_skip()
    base = ["train", "diffusion", "--data", "fashion-mnist:train[:4]", "--size", "8", "--unet", "tiny"]
    base += ["--batch-size", "4", "--checkpoint-every", "2", "--json"]
    assert main([*base, "--out", str(tmp_path / "general"), "--steps", "2"]) == 0
    capsys.readouterr()
    rule = ["--stop-at-copy-rate", "1.0", "--copy-check-every", "2", "--copy-check-samples", "4"]
    rule += ["--copy-check-steps", "2", "--copy-threshold", "0.999"]
    out = tmp_path / "ft"
    code = main([*base, "--out", str(out), "--steps", "4", "--init-from", str(tmp_path / "general"), *rule])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    # τ = 0.999 on a 2-step model: no sample copies a training image, so the run ends at --steps.
    assert result["stop_reason"] == "max_steps" and result["copy_rate"]["step"] == 4
    assert result["copy_rate"]["n"] == 4 and result["copy_rate"]["threshold"] == 0.999
    checks = json.loads((out / COPIES_JSON).read_text())["checks"]
    assert [c["step"] for c in checks] == [0, 2, 4]
    assert all(0 <= c["ci_low"] <= c["rate"] <= c["ci_high"] <= 1 for c in checks)
    meta = load_model(out).meta
    assert meta["copy_rule"]["measure"]["feature_space"] == "pixel"
    assert "--stop-at-copy-rate 1.0" in meta["commands"][-1] and "--copy-threshold 0.999" in meta["commands"][-1]
    # τ = −1: every sample is a "replica", so the starting model already meets any target.
    capsys.readouterr()
    rule[-1] = "-1.0"
    code = main(
        [*base, "--out", str(tmp_path / "ft2"), "--steps", "4", "--init-from", str(tmp_path / "general"), *rule]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps_done"] == 0 and result["stop_reason"] == "copy_rate" and result["copy_rate"]["rate"] == 1.0


def test_the_replica_counter_gives_the_replication_reports_numbers_with_a_wilson_interval():
    from privdiff.evaluation.domain import wilson_interval
    from privdiff.evaluation.replication import replication_counter, replication_report

    rng = np.random.default_rng(1)
    reference = rng.integers(0, 256, size=(20, 8, 8, 1), dtype=np.uint8)
    generated = np.concatenate([reference[:3], rng.integers(0, 256, size=(7, 8, 8, 1), dtype=np.uint8)])
    count, info = replication_counter(reference, threshold=0.9)
    got = count(generated)
    report = replication_report(generated, reference, threshold=0.9)
    assert got["n_replicated"] == report.n_replicated == 3 and got["rate"] == report.rate and got["n"] == 10
    ci = wilson_interval(3, 10)
    assert (got["ci_low"], got["ci_high"]) == (ci.low, ci.high)
    assert info == {"feature_space": "pixel", "threshold": 0.9, "threshold_source": "explicit"}
    with pytest.raises(InvalidParameter, match="generated"):
        count(rng.integers(0, 256, size=(2, 4, 4, 1), dtype=np.uint8))
