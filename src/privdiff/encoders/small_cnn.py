"""A small CNN classifier for 28×28 grey images whose penultimate layer is a feature space.

One architecture, two uses, two training sets (which is why it lives below both users):

- the domain *yardstick* (:mod:`privdiff.evaluation.yardstick`), trained on the full Fashion-MNIST
  train split, judges generated images and gives the domain-FID feature space;
- the public retrieval space ``fmnist-public-cnn/v1`` (:mod:`privdiff.encoders.public_cnn`), the
  same network trained on the DP-RDM *public* split only (a retrieval encoder must never see
  private data, so the yardstick itself is never used as one).

Checkpoint layout (diffusers-style: config + safetensors, rebuilt from config): ``config.json``
(architecture, class names, image size, training command and report) and ``model.safetensors``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from privdiff.errors import CheckpointError, InvalidParameter, check_int, check_positive
from privdiff.utils.atomic import atomic_path, atomic_write_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class YardstickConfig:
    """Architecture and provenance of a yardstick (everything needed to rebuild it)."""

    image_size: int = 28
    channels: int = 1
    class_names: tuple[str, ...] = ()
    widths: tuple[int, int] = (32, 64)
    feature_dim: int = 128
    train_data: str = ""
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> YardstickConfig:
        known = {f for f in cls.__dataclass_fields__}
        d = {k: v for k, v in d.items() if k in known}
        d["class_names"] = tuple(d.get("class_names", ()))
        d["widths"] = tuple(d.get("widths", (32, 64)))
        return cls(**d)


class YardstickNet(nn.Module):
    """Two conv blocks (two 3×3 convs + 2×2 max-pool each), a ``feature_dim`` ReLU layer, a linear head.

    The classic small Fashion-MNIST CNN shape; ~0.4 M parameters at 28×28. The ReLU layer before
    the head is the domain-feature layer.
    """

    def __init__(self, config: YardstickConfig):
        super().__init__()
        w1, w2 = config.widths
        c = config.channels
        self.body = nn.Sequential(
            nn.Conv2d(c, w1, 3, padding=1),
            nn.BatchNorm2d(w1),
            nn.ReLU(),
            nn.Conv2d(w1, w1, 3, padding=1),
            nn.BatchNorm2d(w1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w1, w2, 3, padding=1),
            nn.BatchNorm2d(w2),
            nn.ReLU(),
            nn.Conv2d(w2, w2, 3, padding=1),
            nn.BatchNorm2d(w2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        side = config.image_size // 4
        self.features = nn.Sequential(nn.Linear(w2 * side * side, config.feature_dim), nn.ReLU())
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (logits, features)."""
        f = self.features(self.body(x))
        return self.head(self.dropout(f)), f


class Yardstick:
    """A trained domain classifier: labels, probabilities and penultimate features of uint8 images."""

    def __init__(self, net: YardstickNet, config: YardstickConfig):
        self.net = net.eval()
        self.config = config

    # -- inference -------------------------------------------------------------------------------
    def _check(self, images: Any) -> np.ndarray:
        x = np.asarray(images)
        cfg = self.config
        want = (cfg.image_size, cfg.image_size, cfg.channels)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != want:
            raise InvalidParameter(
                "images",
                f"<{x.dtype} array of shape {x.shape}>",
                f"uint8 of shape (N, {', '.join(map(str, want))})",
            )
        return x

    @torch.no_grad()
    def _run(self, images: Any, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        x = self._check(images)
        logits, feats = [], []
        for s in range(0, x.shape[0], batch_size):
            lg, f = self.net(to_tensor(x[s : s + batch_size]))
            logits.append(lg.numpy())
            feats.append(f.numpy())
        if not logits:
            d = self.config.feature_dim
            return np.zeros((0, self.config.num_classes), np.float32), np.zeros((0, d), np.float32)
        return np.concatenate(logits), np.concatenate(feats)

    def predict_proba(self, images: Any) -> np.ndarray:
        logits, _ = self._run(images)
        return torch.softmax(torch.from_numpy(logits), dim=1).numpy()

    def predict(self, images: Any) -> np.ndarray:
        logits, _ = self._run(images)
        return logits.argmax(axis=1).astype(np.int64)

    def features(self, images: Any) -> np.ndarray:
        """Penultimate-layer features (N, feature_dim), float32: the domain-FID space."""
        return self._run(images)[1]

    def accuracy(self, images: Any, labels: Any) -> tuple[float, np.ndarray]:
        """(overall accuracy, per-class accuracy array) on labelled images."""
        labels = np.asarray(labels, dtype=np.int64)
        pred = self.predict(images)
        per = np.array(
            [
                float((pred[labels == c] == c).mean()) if (labels == c).any() else float("nan")
                for c in range(self.config.num_classes)
            ]
        )
        return float((pred == labels).mean()), per

    # -- persistence -----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Weights first, config last: a directory with a config always has matching weights.
        with atomic_path(directory / WEIGHTS_NAME) as tmp_w:
            save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(tmp_w))
        atomic_write_json(directory / CONFIG_NAME, self.config.to_dict())
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> Yardstick:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not cfg_path.is_file() or not w_path.is_file():
            raise CheckpointError(f"no yardstick at {directory} (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        try:
            config = YardstickConfig.from_dict(json.loads(cfg_path.read_text()))
            net = YardstickNet(config)
            net.load_state_dict(load_file(str(w_path)))
        except (ValueError, KeyError, RuntimeError, TypeError, SafetensorError) as exc:
            raise CheckpointError(f"yardstick at {directory} is corrupt or of another architecture: {exc}") from None
        return cls(net, config)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC → float NCHW in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def train_yardstick(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    class_names: list[str] | tuple[str, ...],
    *,
    test_images: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    epochs: int = 4,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    train_data: str = "",
    progress: bool = False,
) -> Yardstick:
    """Train a yardstick with Adam and a one-cycle schedule; random ±2 px shifts as augmentation.

    The report in the returned config holds the training loss per epoch and, when test data is
    given, the test accuracy overall and per class.
    """
    x = np.asarray(train_images)
    y = np.asarray(train_labels, dtype=np.int64)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != x.shape[2] or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise InvalidParameter(
            "train_images",
            f"<{x.dtype} array {x.shape}>",
            "uint8 (N >= 2, S, S, C) with one label each",
        )
    if x.shape[1] % 4:
        raise InvalidParameter("image_size", x.shape[1], "a multiple of 4 (two 2×2 poolings)")
    if len(class_names) < 2 or y.min() < 0 or y.max() >= len(class_names):
        raise InvalidParameter(
            "labels",
            f"range [{y.min()}, {y.max()}]",
            f"in [0, {len(class_names) - 1}] with >= 2 classes",
        )
    epochs = check_int("epochs", epochs, 1, 1000)
    batch_size = check_int("batch_size", batch_size, 1, 65536)
    lr = check_positive("lr", lr)

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = YardstickConfig(
        image_size=int(x.shape[1]),
        channels=int(x.shape[3]),
        class_names=tuple(class_names),
        train_data=train_data,
    )
    net = YardstickNet(config)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps_per_epoch = -(-x.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    losses: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * steps_per_epoch, desc="train yardstick", unit="step")
    for _ in range(epochs):
        net.train()
        order = rng.permutation(x.shape[0])
        total, count = 0.0, 0
        for s in range(0, x.shape[0], batch_size):
            idx = order[s : s + batch_size]
            xb = to_tensor(_shift(x[idx], rng, 2))
            logits, _ = net(xb)
            loss = nn.functional.cross_entropy(logits, torch.from_numpy(y[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        losses.append(total / count)
    if bar is not None:
        bar.close()
    report: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "train_images": int(x.shape[0]),
        "train_loss_per_epoch": [round(v, 5) for v in losses],
        "num_parameters": sum(p.numel() for p in net.parameters()),
    }
    yard = Yardstick(net, config)
    if test_images is not None and test_labels is not None:
        acc, per = yard.accuracy(test_images, test_labels)
        report |= {
            "test_images": int(len(test_labels)),
            "test_accuracy": round(acc, 4),
            "test_accuracy_per_class": {n: round(float(a), 4) for n, a in zip(class_names, per)},
        }
    yard.config = replace(config, report=report)
    return yard


def _shift(images: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Each image translated by an integer (dy, dx) in [-max_shift, max_shift], zero-filled."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    dy = rng.integers(0, 2 * max_shift + 1, size=n)
    dx = rng.integers(0, 2 * max_shift + 1, size=n)
    rows = dy[:, None] + np.arange(h)[None, :]
    cols = dx[:, None] + np.arange(w)[None, :]
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
