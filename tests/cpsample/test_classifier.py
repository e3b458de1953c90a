"""The random-label classifier: labels, overfitting, per-band report, save/load, validation."""

from __future__ import annotations

import json

import pytest
import torch

from privdiff.cpsample import (
    ClassifierTrainConfig,
    NoiseAwareClassifier,
    ProtectionClassifier,
    evaluate_classifier,
    load_classifier,
    random_labels,
)
from privdiff.cpsample.training import sample_timesteps
from privdiff.errors import CheckpointError, InvalidParameter


def test_random_labels_are_fixed_by_their_seed_and_roughly_balanced():
    a, b, c = random_labels(2000, 5), random_labels(2000, 5), random_labels(2000, 6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert 0.45 < float(a.mean()) < 0.55


def test_classifier_outputs_one_logit_per_image_for_scalar_or_batched_t():
    clf = NoiseAwareClassifier(in_channels=3, block_out_channels=(8, 16))
    x = torch.randn(5, 3, 12, 12)
    assert clf(x, torch.arange(5)).shape == (5,)
    assert clf(x, torch.tensor(7)).shape == (5,)


def test_small_t_oversampling_puts_the_requested_share_below_small_t_max():
    cfg = ClassifierTrainConfig(small_t_fraction=0.5, small_t_max=100)
    t = sample_timesteps(20000, cfg, 1000, torch.Generator().manual_seed(0))
    share = float((t < 100).float().mean())
    assert share == pytest.approx(0.5 + 0.5 * 0.1, abs=0.02)  # the mixture's mass below 100
    assert int(t.min()) >= 0 and int(t.max()) <= 999


def test_overfit_classifier_is_accurate_and_confident_on_training_images_at_small_t(
    memorised, tiny_train_set, alphas_cumprod
):
    clf, labels = memorised
    report = evaluate_classifier(
        clf,
        tiny_train_set,
        labels,
        alphas_cumprod=alphas_cumprod,
        bands=((0, 10), (900, 1000)),
        alphas=(0.5, 0.01),
        draws=4,
    )
    small, large = report
    assert small["accuracy"] == 1.0
    assert small["fraction_above_1_minus_alpha"]["0.5"] == 1.0
    assert small["mean_confidence"] > large["mean_confidence"]
    assert small["fraction_above_1_minus_alpha"]["0.01"] <= small["fraction_above_1_minus_alpha"]["0.5"]
    assert small["evaluations"] == 4 * len(tiny_train_set)


def test_heldout_report_without_labels_measures_label_free_confidence(memorised, alphas_cumprod):
    clf, _ = memorised
    held = torch.rand((16, 1, 8, 8), generator=torch.Generator().manual_seed(11)) * 2 - 1
    rows = evaluate_classifier(clf, held, None, alphas_cumprod=alphas_cumprod, bands=((0, 10),), draws=2, seed=4)
    row = rows[0]
    assert row["evaluations"] == 16 * 2
    q = row["confidence_quantiles"]
    assert q["0.01"] <= row["mean_confidence"] <= q["0.99"]
    # Without labels, "accuracy" is against fresh Bernoulli(1/2) labels the classifier never saw:
    # chance, i.e. within 3 binomial standard deviations (0.088 at 32 draws) of 1/2.
    assert abs(row["accuracy"] - 0.5) <= 3 * (0.25 / row["evaluations"]) ** 0.5


def test_save_and_load_round_trip_keeps_logits_labels_and_provenance(memorised, tmp_path):
    clf, labels = memorised
    ProtectionClassifier(classifier=clf, labels=labels, meta={"label_seed": 1, "data_spec": "tiny"}).save(
        tmp_path / "c"
    )
    loaded = load_classifier(tmp_path / "c")
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 10, 500])
    # The weights must survive bit for bit; the logits only to float tolerance, since CPU kernels
    # may pick another summation order for a freshly allocated (differently aligned) copy.
    saved, restored = clf.state_dict(), loaded.classifier.state_dict()
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    with torch.no_grad():
        torch.testing.assert_close(loaded.classifier(x, t), clf(x, t), rtol=1e-5, atol=1e-6)
    assert torch.equal(loaded.labels, labels)
    assert loaded.meta["label_seed"] == 1
    assert json.loads((tmp_path / "c" / "classifier.json").read_text())["kind"] == "privdiff.cpsample.classifier"


def test_loading_a_non_classifier_directory_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="classifier.json"):
        load_classifier(tmp_path)
    (tmp_path / "classifier.json").write_text(json.dumps({"kind": "something-else"}))
    with pytest.raises(CheckpointError, match="kind"):
        load_classifier(tmp_path)


@pytest.mark.parametrize(
    "field,value",
    [
        ("steps", 0),
        ("small_t_fraction", 1.5),
        ("small_t_max", 0),
        ("block_out_channels", (12,)),
        ("lr", 0.0),
        ("target_alpha", 0.0),
        ("target_alpha", 0.6),
        ("check_every", 0),
        ("stop_t_max", 1001),
    ],
)
def test_bad_classifier_settings_are_typed_errors(field, value):
    with pytest.raises(InvalidParameter, match=field):
        ClassifierTrainConfig(**{field: value}).validate()


@pytest.mark.integration
def test_calibration_images_pull_confidence_off_the_training_set_towards_half(tiny_train_set, alphas_cumprod):
    from privdiff.cpsample import train_classifier

    g = torch.Generator().manual_seed(21)
    calib = torch.rand((24, 1, 8, 8), generator=g) * 2 - 1
    probe = torch.rand((24, 1, 8, 8), generator=g) * 2 - 1  # neither trained on nor calibrated
    cfg = ClassifierTrainConfig(
        steps=200,
        batch_size=6,
        lr=3e-3,
        small_t_fraction=1.0,
        small_t_max=40,
        label_seed=1,
        seed=0,
        block_out_channels=(8, 16),
        calibration_batch_size=12,
        target_alpha=None,  # both train 200 steps: the comparison is about the calibration term alone
    )
    plain, labels, _ = train_classifier(tiny_train_set, alphas_cumprod=alphas_cumprod, config=cfg, progress=False)
    calibrated, _, _ = train_classifier(
        tiny_train_set, alphas_cumprod=alphas_cumprod, config=cfg, calibration=calib, progress=False
    )
    t = torch.zeros(24, dtype=torch.long)
    with torch.no_grad():
        conf_plain = torch.sigmoid(plain(probe, t).abs()).mean()
        conf_cal = torch.sigmoid(calibrated(probe, t).abs()).mean()
        train_pred = (calibrated(tiny_train_set, t[:6]) >= 0).float()
    assert conf_cal < conf_plain
    assert torch.equal(train_pred, labels)  # still fits the random labels


def test_calibration_images_of_another_shape_are_a_data_error(tiny_train_set, alphas_cumprod):
    from privdiff.cpsample import train_classifier
    from privdiff.errors import DataError

    with pytest.raises(DataError, match="calibration"):
        train_classifier(
            tiny_train_set,
            alphas_cumprod=alphas_cumprod,
            calibration=torch.zeros(2, 1, 4, 4),
            config=ClassifierTrainConfig(steps=1, block_out_channels=(8, 16)),
            progress=False,
        )


def _rule_config(**kw):
    base = dict(
        steps=1500,
        batch_size=6,
        lr=3e-3,
        small_t_fraction=1.0,
        small_t_max=40,
        label_seed=1,
        seed=0,
        block_out_channels=(8, 16),
        target_alpha=0.05,
        check_every=10,
        stop_t_max=20,
    )
    return ClassifierTrainConfig(**(base | kw))


def test_training_stops_when_99_percent_of_members_exceed_one_minus_alpha(tiny_train_set, alphas_cumprod):
    """The method's rule (issue 15): stop at the first check where ≥ 99 % of members are above 1 − α."""
    from privdiff.cpsample import train_classifier
    from privdiff.cpsample.training import member_coverage

    cfg = _rule_config()
    clf, labels, log = train_classifier(tiny_train_set, alphas_cumprod=alphas_cumprod, config=cfg, progress=False)
    assert log["stop_reason"] == "rule"
    assert log["steps_run"] < cfg.steps and log["steps_run"] % cfg.check_every == 0
    assert len(log["loss_per_step"]) == log["steps_run"]
    assert log["rule_checks"][-1]["coverage"] >= 0.99
    assert all(c["coverage"] < 0.99 for c in log["rule_checks"][:-1])
    # An independent check at the rule's timesteps agrees (more draws, another seed).
    fresh = member_coverage(
        clf, tiny_train_set, labels, _rule_config(check_draws=20), alphas_cumprod, torch.Generator().manual_seed(7)
    )
    assert fresh >= 0.9


def test_training_stops_at_the_cap_when_the_rule_is_not_met(tiny_train_set, alphas_cumprod):
    from privdiff.cpsample import train_classifier

    cfg = _rule_config(steps=20, target_alpha=1e-6)
    _, _, log = train_classifier(tiny_train_set, alphas_cumprod=alphas_cumprod, config=cfg, progress=False)
    assert log["stop_reason"] == "max_steps" and log["steps_run"] == 20
    assert [c["step"] for c in log["rule_checks"]] == [10, 20]
    _, _, fixed = train_classifier(
        tiny_train_set, alphas_cumprod=alphas_cumprod, config=_rule_config(steps=15, target_alpha=None), progress=False
    )
    assert fixed["stop_reason"] == "fixed_steps" and fixed["steps_run"] == 15 and fixed["rule_checks"] == []


def test_calibration_is_off_by_default():
    import inspect

    from privdiff.cpsample import train_classifier

    assert inspect.signature(train_classifier).parameters["calibration"].default is None


def test_training_the_classifier_on_an_explicit_cpu_device_is_the_default_run(tiny_train_set, alphas_cumprod):
    from privdiff.cpsample.training import train_classifier

    cfg = dict(steps=4, batch_size=4, target_alpha=None, block_out_channels=(8, 16))
    a, _, log_a = train_classifier(
        tiny_train_set, alphas_cumprod=alphas_cumprod, config=ClassifierTrainConfig(**cfg), progress=False
    )
    b, _, log_b = train_classifier(
        tiny_train_set,
        alphas_cumprod=alphas_cumprod,
        config=ClassifierTrainConfig(**cfg),
        progress=False,
        device="cpu",
    )
    assert log_a["loss_per_step"] == log_b["loss_per_step"]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_training_the_classifier_on_a_device_this_machine_lacks_is_refused(tiny_train_set, alphas_cumprod):
    from privdiff.cpsample.training import train_classifier

    missing = f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"
    with pytest.raises(InvalidParameter, match="device"):
        train_classifier(
            tiny_train_set, alphas_cumprod=alphas_cumprod, config=ClassifierTrainConfig(steps=2), device=missing
        )


def test_protect_train_refuses_a_bad_device_before_loading_anything(tmp_path, capsys):
    from privdiff.cli import main

    args = ["protect", "train", "--data", "no-such-data", "--model", str(tmp_path / "none")]
    code = main([*args, "--out", str(tmp_path / "clf"), "--device", "tpu"])
    assert code == 2 and "device" in capsys.readouterr().err
    assert not (tmp_path / "clf").exists()
