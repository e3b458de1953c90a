"""Training CPSample's classifier to overfit random labels on noisy inputs, and checking that it did.

Training (methods/cpsample.md §2, "[I] recommended"): x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1−ᾱ_t) I) with
fresh noise every step, binary cross-entropy on the logit against the fixed random labels. t is
drawn from a mixture: with probability ``small_t_fraction`` uniformly from {0..small_t_max−1},
otherwise from U{0..T−1}. Oversampling small t matters because that is where the classifier *can*
be confident (at large t, x_t is mostly noise) and where the gate has to fire to stop a sample
landing on a training image.

Stopping (the method's rule: "trained to overfit", spec §2 "Stopping rule"; issue 15): every
``check_every`` steps the members are noised at t ~ U{0..stop_t_max−1} (the timesteps where the gate
reads the classifier: t = 0 on x̂_0 for the default x̂_0 gate, hence the small default range) and
training stops once ≥ 99 % of them have confidence > 1 − ``target_alpha``; ``steps`` is the cap.
The pull towards p = 1/2 on non-member ``calibration`` images is off unless such images are given:
it is a privdiff option, not in the paper.

Evaluation (§2 "Evaluation of the classifier"): per timestep band, accuracy and mean confidence
max(p, 1−p) on the training images (should approach 100 % / 1 at small t) and on held-out images
(must stay ≈ 50 % / ≈ 0.5, or CPSample would push novel samples around too), and the fraction of
training images whose confidence exceeds 1 − α: those are the images the gate protects.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from privdiff.cpsample.classifier import NoiseAwareClassifier, confidence, random_labels
from privdiff.cpsample.diagnostics import MEMBER_COVERAGE
from privdiff.diffusion.noising import q_sample
from privdiff.diffusion.trainer import TrainingLoop
from privdiff.errors import (
    CheckpointError,
    DataError,
    InvalidParameter,
    check_in_range,
    check_int,
)
from privdiff.utils.atomic import atomic_write_json
from privdiff.utils.train_config import TrainConfig

CLASSIFIER_DIR = "classifier"
CLASSIFIER_JSON = "classifier.json"
KIND = "privdiff.cpsample.classifier"

#: Timestep bands [lo, hi) of the evaluation report (T = 1000).
DEFAULT_BANDS: tuple[tuple[int, int], ...] = (
    (0, 50),
    (50, 100),
    (100, 200),
    (200, 300),
    (300, 500),
    (500, 1000),
)
#: α values of the paper's MIA table (methods/cpsample.md §5.3).
PAPER_ALPHAS: tuple[float, ...] = (0.5, 0.25, 0.001)
#: Quantiles of the confidence recorded per band: 0.01 gives the α that fires on 99 % of the images
#: (:func:`privdiff.cpsample.diagnostics.alpha_to_fire`), 0.5 whether most images are confident.
CONFIDENCE_QUANTILES: tuple[float, ...] = (0.01, 0.5, 0.99)


@dataclass
class ClassifierTrainConfig(TrainConfig):
    """Settings of the random-label classifier's training.

    The shared fields are those of :class:`privdiff.utils.train_config.TrainConfig`, run by
    :class:`privdiff.diffusion.trainer.TrainingLoop` without gradient clipping; by default there
    is no warm-up and no EMA (``ema_decay`` > 0 returns the EMA weights). ``checkpoint_every`` is
    not used: :func:`train_classifier` keeps the run in memory and its caller saves the result.

    Attributes:
        steps: AdamW steps.
        batch_size: images per step (the whole set when it is smaller).
        lr: AdamW learning rate (no weight decay: the goal is to overfit).
        small_t_fraction: probability that a draw of t comes from {0..small_t_max−1}.
        small_t_max: upper end of the oversampled range of t.
        label_seed: seed of the Bernoulli(1/2) labels (recorded; fixed once).
        seed: seed of initialisation, batches, t and noise.
        block_out_channels: classifier widths per level.
        calibration_batch_size: calibration images per step (when a calibration set is given).
        target_alpha: the α of the stopping rule (stop once ≥ 99 % of the members exceed 1 − α at
            t < stop_t_max); ``None`` trains for exactly ``steps`` steps. Default: the paper's 0.001.
        check_every: steps between two checks of the rule.
        stop_t_max: the rule checks t ~ U{0..stop_t_max−1}.
        check_draws: (t, ε) draws per member per check.
    """

    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    small_t_fraction: float = 0.5
    small_t_max: int = 300
    label_seed: int = 0
    seed: int = 0
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    calibration_batch_size: int = 32
    target_alpha: float | None = 0.001
    check_every: int = 100
    stop_t_max: int = 50
    check_draws: int = 2

    def validate(self, num_train_timesteps: int = 1000) -> ClassifierTrainConfig:
        self.validate_shared()
        check_in_range("small_t_fraction", self.small_t_fraction, 0.0, 1.0, low_inclusive=True)
        check_int("small_t_max", self.small_t_max, minimum=1, maximum=num_train_timesteps)
        check_int("label_seed", self.label_seed, minimum=0)
        check_int("calibration_batch_size", self.calibration_batch_size, minimum=1)
        if self.target_alpha is not None:
            check_in_range("target_alpha", self.target_alpha, 0.0, 0.5, low_inclusive=False, high_inclusive=True)
        check_int("check_every", self.check_every, minimum=1)
        check_int("stop_t_max", self.stop_t_max, minimum=1, maximum=num_train_timesteps)
        check_int("check_draws", self.check_draws, minimum=1)
        if not self.block_out_channels or any(int(c) % 8 for c in self.block_out_channels):
            raise InvalidParameter("block_out_channels", self.block_out_channels, "non-empty, each a multiple of 8")
        return self


@dataclass
class ProtectionClassifier:
    """A trained classifier with its labels and provenance (what ``privdiff protect train`` writes)."""

    classifier: NoiseAwareClassifier
    labels: torch.Tensor
    meta: dict[str, Any]

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.classifier.save_pretrained(directory / CLASSIFIER_DIR, safe_serialization=True)
        manifest = {"kind": KIND, "labels": [int(v) for v in self.labels.tolist()], **self.meta}
        atomic_write_json(directory / CLASSIFIER_JSON, manifest)
        return directory


def load_classifier(directory: str | Path) -> ProtectionClassifier:
    """Load a directory written by :meth:`ProtectionClassifier.save`."""
    directory = Path(directory)
    path = directory / CLASSIFIER_JSON
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a CPSample classifier: {CLASSIFIER_JSON} is missing")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if manifest.get("kind") != KIND:
        raise CheckpointError(f"{directory} holds kind {manifest.get('kind')!r}, expected {KIND!r}")
    try:
        clf = NoiseAwareClassifier.from_pretrained(directory / CLASSIFIER_DIR, low_cpu_mem_usage=False).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot load classifier weights from {directory / CLASSIFIER_DIR}: {exc}") from None
    labels = torch.tensor(manifest.pop("labels"), dtype=torch.float32)
    manifest.pop("kind")
    return ProtectionClassifier(classifier=clf, labels=labels, meta=manifest)


def sample_timesteps(
    n: int, config: ClassifierTrainConfig, num_train_timesteps: int, generator: torch.Generator
) -> torch.Tensor:
    """t from the small-t-oversampling mixture described in the module docstring."""
    t_all = torch.randint(0, num_train_timesteps, (n,), generator=generator)
    t_small = torch.randint(0, config.small_t_max, (n,), generator=generator)
    pick_small = torch.rand(n, generator=generator) < config.small_t_fraction
    return torch.where(pick_small, t_small, t_all)


def train_classifier(
    x0: torch.Tensor,
    *,
    alphas_cumprod: torch.Tensor,
    config: ClassifierTrainConfig | None = None,
    calibration: torch.Tensor | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> tuple[NoiseAwareClassifier, torch.Tensor, dict[str, Any]]:
    """Fit a :class:`NoiseAwareClassifier` to random labels on noisy versions of ``x0``.

    Args:
        x0: training images in model space, (N, C, H, W) in [-1, 1] (pixels or VAE latents).
        alphas_cumprod: ᾱ_t of the diffusion model being protected (its schedule, length T).
        calibration: optional images that are *not* training images (and not the evaluation
            hold-out), trained towards the soft target p = 1/2. An overfit network tends to be
            confident everywhere, not only near its training points; this term ties its confidence
            off the training set to 1/2, which is what keeps CPSample's gate from firing on novel
            samples (methods/cpsample.md §2, "Evaluation" (b)). A privdiff design choice [I], not
            in the paper.
        device: where the classifier trains (``cpu``, ``cuda``, ``cuda:N``, ``mps``); batches, t
            and noise are still drawn on the CPU and moved, so every device sees the same numbers.
            The classifier is returned on this device.

    Returns:
        ``(classifier, labels, log)`` where ``log`` holds the loss curve, wall time, the stopping
        rule's checks (``rule_checks``: step and member coverage), ``steps_run`` and ``stop_reason``
        (``"rule"``: ≥ 99 % of members above 1 − target_alpha; ``"max_steps"``; ``"fixed_steps"``
        when ``target_alpha`` is ``None``).
    """
    from privdiff.utils.device import check_device

    n_t = int(alphas_cumprod.shape[0])
    config = (config or ClassifierTrainConfig()).validate(n_t)
    dev = check_device(device)
    if x0.ndim != 4 or x0.shape[0] < 2:
        raise DataError(f"need at least 2 training images (N, C, H, W); got shape {tuple(x0.shape)}")
    if calibration is not None and tuple(calibration.shape[1:]) != tuple(x0.shape[1:]):
        raise DataError(
            f"calibration images {tuple(calibration.shape[1:])} do not match training images {tuple(x0.shape[1:])}"
        )
    labels = random_labels(x0.shape[0], config.label_seed)
    torch.manual_seed(config.seed)
    clf = NoiseAwareClassifier(in_channels=x0.shape[1], block_out_channels=tuple(config.block_out_channels))
    clf = clf.to(dev).train()
    loop = TrainingLoop(clf, config, weight_decay=0.0, grad_clip=None)
    acp_dev, labels_dev = alphas_cumprod.to(dev), labels.to(dev)
    batch = min(config.batch_size, x0.shape[0])
    t0 = time.perf_counter()
    checks: list[dict[str, Any]] = []
    stop_reason = "fixed_steps" if config.target_alpha is None else "max_steps"
    check_gen = torch.Generator().manual_seed(config.seed + 1)  # the checks do not shift training's draws

    def loss_fn(step: int, g: torch.Generator) -> torch.Tensor:
        idx = torch.randperm(x0.shape[0], generator=g)[:batch]
        t = sample_timesteps(batch, config, n_t, g)
        noise = torch.randn(x0[idx].shape, generator=g)
        t = t.to(dev)
        x_t = q_sample(x0[idx].to(dev), t, acp_dev, noise.to(dev))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(clf(x_t, t), labels_dev[idx.to(dev)])
        if calibration is not None:
            cidx = torch.randint(
                0,
                calibration.shape[0],
                (min(config.calibration_batch_size, calibration.shape[0]),),
                generator=g,
            )
            tc = sample_timesteps(cidx.shape[0], config, n_t, g)
            noise_c = torch.randn(calibration[cidx].shape, generator=g)
            tc = tc.to(dev)
            xc = q_sample(calibration[cidx].to(dev), tc, acp_dev, noise_c.to(dev))
            zc = clf(xc, tc)
            loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(zc, torch.full_like(zc, 0.5))
        return loss

    def should_stop(steps_done: int, _losses: list[float]) -> bool:
        """The method's rule, checked every ``check_every`` steps and at the cap (see ``member_coverage``)."""
        nonlocal stop_reason
        if config.target_alpha is None or (steps_done % config.check_every and steps_done != config.steps):
            return False
        coverage = member_coverage(clf, x0, labels, config, alphas_cumprod, check_gen)
        checks.append({"step": steps_done, "coverage": coverage})
        if coverage >= MEMBER_COVERAGE:
            stop_reason = "rule"
            return True
        return False

    loop.run(
        loss_fn, should_stop=should_stop, progress=progress, desc="train classifier", postfix="bce", postfix_window=50
    )
    losses = loop.losses
    if loop.ema is not None:
        loop.ema.copy_to(clf.parameters())
    clf.eval()
    log = {
        "loss_per_step": losses,
        "train_wall_seconds": round(time.perf_counter() - t0, 1),
        "parameters": sum(p.numel() for p in clf.parameters()),
        "steps_run": len(losses),
        "stop_reason": stop_reason,
        "rule": {
            "target_alpha": config.target_alpha,
            "coverage_needed": MEMBER_COVERAGE,
            "t_range": [0, config.stop_t_max],
        },
        "rule_checks": checks,
    }
    return clf, labels, log


@torch.no_grad()
def member_coverage(
    classifier: NoiseAwareClassifier,
    x0: torch.Tensor,
    labels: torch.Tensor,
    config: ClassifierTrainConfig,
    alphas_cumprod: torch.Tensor,
    generator: torch.Generator,
    batch_size: int = 256,
) -> float:
    """Share of (member, draw) pairs whose confidence in the member's own label exceeds 1 − target_alpha
    at t ~ U{0..stop_t_max−1}: the stopping rule's statistic. A wrong label counts as not covered."""
    was_training = classifier.training
    classifier.eval()
    hits, count = 0, 0
    for _ in range(config.check_draws):
        for start in range(0, x0.shape[0], batch_size):
            xb, yb = x0[start : start + batch_size], labels[start : start + batch_size]
            t = torch.randint(0, config.stop_t_max, (xb.shape[0],), generator=generator)
            z = _logits(classifier, xb, t, alphas_cumprod, torch.randn(xb.shape, generator=generator)).cpu()
            right = (z >= 0).float() == yb
            hits += int((right & (confidence(z) > 1 - float(config.target_alpha))).sum())
            count += xb.shape[0]
    classifier.train(was_training)
    return hits / count


@torch.no_grad()
def evaluate_classifier(
    classifier: NoiseAwareClassifier,
    x0: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    alphas_cumprod: torch.Tensor,
    bands: Sequence[tuple[int, int]] = DEFAULT_BANDS,
    alphas: Sequence[float] = PAPER_ALPHAS,
    draws: int = 4,
    seed: int = 0,
    batch_size: int = 256,
) -> list[dict[str, Any]]:
    """Per-band accuracy, mean confidence, confidence quantiles and fraction above 1 − α, over ``draws`` draws
    of (t, ε).

    ``labels`` may be ``None`` for held-out images, which have no label: their "accuracy" is then
    measured against fresh Bernoulli(1/2) labels drawn from ``seed`` (expected 0.5 whatever the
    classifier does), while confidence is label-free and is the number that matters.
    """
    g = torch.Generator().manual_seed(seed)
    if labels is None:
        labels = torch.bernoulli(torch.full((x0.shape[0],), 0.5), generator=g)
    rows = []
    for lo, hi in bands:
        correct, conf_sum, count = 0.0, 0.0, 0
        above = {a: 0 for a in alphas}
        confs: list[torch.Tensor] = []
        for _ in range(draws):
            for start in range(0, x0.shape[0], batch_size):
                xb, yb = x0[start : start + batch_size], labels[start : start + batch_size]
                t = torch.randint(lo, hi, (xb.shape[0],), generator=g)
                z = _logits(classifier, xb, t, alphas_cumprod, torch.randn(xb.shape, generator=g)).cpu()
                correct += float(((z >= 0).float() == yb).sum())
                conf = confidence(z)
                conf_sum += float(conf.sum())
                confs.append(conf.detach().reshape(-1).double())
                for a in alphas:
                    above[a] += int((conf > 1 - a).sum())
                count += xb.shape[0]
        rows.append(
            {
                "band": [lo, hi],
                "accuracy": correct / count,
                "mean_confidence": conf_sum / count,
                "fraction_above_1_minus_alpha": {str(a): above[a] / count for a in alphas},
                "confidence_quantiles": {
                    str(q): float(torch.quantile(torch.cat(confs), q)) for q in CONFIDENCE_QUANTILES
                },
                "evaluations": count,
            }
        )
    return rows


def _logits(
    classifier: NoiseAwareClassifier, x0: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor, noise
) -> torch.Tensor:
    """The classifier's logits on q(x_t | x_0) for CPU-drawn (t, ε), computed on the classifier's device."""
    dev = next(classifier.parameters()).device
    t = t.to(dev)
    return classifier(q_sample(x0.to(dev), t, alphas_cumprod.to(dev), noise.to(dev)), t)


def training_config_dict(config: ClassifierTrainConfig) -> dict[str, Any]:
    d = asdict(config)
    d["block_out_channels"] = list(config.block_out_channels)
    return d
