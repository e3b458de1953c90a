"""A retrieval embedding trained on *public* Fashion-MNIST only: a small CNN's penultimate layer.

Why (issue #10 item 3): EfficientNet-Lite0's ImageNet features separate Fashion-MNIST classes
poorly (nearest-centroid accuracy ~0.73 on test images, 0.24 on Shirt) and say little about
garment shape, so a neighbour mean carries "some top-like thing" more than "this kind of boot".
A classifier trained on the DP-RDM *public* split learns exactly the distinctions of this domain;
its penultimate ReLU layer (128-d, centred on the public mean, L2-normalised) is the space
``fmnist-public-cnn/v1``. ``fmnist-public-cnn+effnet-lite0-64px-c/v1`` concatenates it with the
EfficientNet space (each part unit-norm, scaled by 1/√2), so a cosine there is the average of the
two cosines: class and shape from the CNN, texture/appearance from EfficientNet.

Privacy: the network is trained on ``fashion-mnist:dprdm-public`` only (``train_public_cnn``
refuses a spec that names the private split). The domain *yardstick*
(:mod:`privdiff.evaluation.yardstick`) has the same architecture but is trained on the full
Fashion-MNIST train split, which contains every private image; it must NOT be used as a
retrieval encoder: a retrieval embedding trained on private data would leak through the
contexts, and it would also make the evaluation judge its own features.

The shipped asset (``privdiff/assets/encoders/fmnist-public-cnn/``: ``config.json`` with the
centre and the exact command, ``model.safetensors``) is reproduced by::

    python -m privdiff.encoders.public_cnn --out src/privdiff/assets/encoders/fmnist-public-cnn
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from privdiff.encoders.base import l2_normalize
from privdiff.encoders.efficientnet import ASSET_DIR
from privdiff.errors import CheckpointError, InvalidParameter, check_int

SPACE_ID = "fmnist-public-cnn/v1"
CONCAT_SPACE_ID = "fmnist-public-cnn+effnet-lite0-64px-c/v1"
ASSET = ASSET_DIR / "fmnist-public-cnn"
CENTRE_KEY = "retrieval_centre"
DEFAULT_DATA = "fashion-mnist:dprdm-public"


class PublicCNNEncoder:
    """ImageEncoder: centred, L2-normalised penultimate features of a public-data CNN.

    Images of any size and 1 or 3 channels are turned grey (channel mean) and resized to the
    network's side (bilinear, antialiased), as the EfficientNet encoder resizes to its input.
    """

    def __init__(self, net: Any, centre: np.ndarray, space_id: str = SPACE_ID, source: str = ""):
        self.net = net
        self.input_size = int(net.config.image_size)
        self.centre = np.asarray(centre, dtype=np.float32).reshape(-1)
        if self.centre.shape != (net.config.feature_dim,) or not np.isfinite(self.centre).all():
            raise InvalidParameter("centre", f"array of shape {self.centre.shape}", f"({net.config.feature_dim},)")
        self.dim = int(net.config.feature_dim)
        self.space_id = space_id
        self.source = source

    def __repr__(self) -> str:
        return f"PublicCNNEncoder(space_id={self.space_id!r}, weights={self.weights_sha256_12}, source={self.source!r})"

    @property
    def weights_sha256_12(self) -> str:
        h = hashlib.sha256()
        for k, v in sorted(self.net.net.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().numpy().tobytes())
        h.update(self.centre.tobytes())
        return h.hexdigest()[:12]

    @property
    def centre_sha256_12(self) -> str:
        return hashlib.sha256(self.centre.tobytes()).hexdigest()[:12]

    @property
    def fingerprint(self) -> str:
        """Weights + centre: what a text projection trained into this space must match."""
        return self.weights_sha256_12

    def _to_grey(self, images: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        from privdiff.encoders.efficientnet import check_images

        x = check_images(images)
        if x.shape[1:] == (self.input_size, self.input_size, 1):
            return x
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().mean(dim=1, keepdim=True)
        t = F.interpolate(t, size=(self.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def features(self, images: np.ndarray, *, batch_size: int = 1024, progress: bool = False) -> np.ndarray:
        """Raw penultimate features (N, 128) float32, before centring and normalisation."""
        grey = self._to_grey(images)
        batch_size = check_int("batch_size", batch_size, minimum=1)
        out = [self.net.features(grey[s : s + batch_size]) for s in range(0, grey.shape[0], batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def encode_images(self, images: np.ndarray, *, batch_size: int = 1024, progress: bool = False) -> np.ndarray:
        return l2_normalize(self.features(images, batch_size=batch_size) - self.centre)


class ConcatEncoder:
    """ImageEncoder: [n(e₁), …, n(e_m)]/√m, a unit vector whose cosine is the mean of the parts'."""

    def __init__(self, parts: list[Any], space_id: str):
        if len(parts) < 2:
            raise InvalidParameter("parts", len(parts), "at least two encoders")
        self.parts = list(parts)
        self.dim = int(sum(p.dim for p in parts))
        self.space_id = space_id

    def __repr__(self) -> str:
        return f"ConcatEncoder(space_id={self.space_id!r}, parts={self.parts!r})"

    @property
    def centre_sha256_12(self) -> str:
        return "+".join(str(getattr(p, "centre_sha256_12", None)) for p in self.parts)

    @property
    def fingerprint(self) -> str:
        return "+".join(str(getattr(p, "fingerprint", getattr(p, "centre_sha256_12", None))) for p in self.parts)

    def encode_images(self, images: np.ndarray, *, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        scale = np.float32(1.0 / np.sqrt(len(self.parts)))
        return np.concatenate(
            [
                l2_normalize(p.encode_images(images, batch_size=batch_size, progress=progress)) * scale
                for p in self.parts
            ],
            axis=1,
        )


# ---------------------------------------------------------------------------------------------
# Training and the shipped asset
# ---------------------------------------------------------------------------------------------


def balanced_rows(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row ids with every class resampled to the largest class's count (rare classes repeated).

    The public split has 1,500 images per clothing class but 60 per footwear class; without this
    the CNN would learn footwear from 1.7 % of its batches and retrieve it worst.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    target = int(counts.max())
    rows = [
        np.concatenate(
            [np.flatnonzero(labels == c)] * (target // n) + [rng.choice(np.flatnonzero(labels == c), target % n, False)]
        )
        for c, n in zip(classes, counts, strict=True)
    ]
    return rng.permutation(np.concatenate(rows))


def train_public_cnn(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    *,
    data: str,
    epochs: int = 5,
    seed: int = 0,
    test_images: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    progress: bool = False,
) -> PublicCNNEncoder:
    """Train the CNN on class-balanced public images; centre = mean feature of the public set."""
    if "private" in data:
        raise InvalidParameter("data", data, "a public dataset spec (the retrieval encoder never sees private data)")
    from privdiff.encoders.small_cnn import train_yardstick

    rng = np.random.default_rng(seed)
    rows = balanced_rows(labels, rng)
    net = train_yardstick(
        np.asarray(images)[rows],
        np.asarray(labels)[rows],
        class_names,
        test_images=test_images,
        test_labels=test_labels,
        epochs=epochs,
        seed=seed,
        train_data=data + " (class-balanced by repetition)",
        progress=progress,
    )
    centre = net.features(np.asarray(images)).mean(axis=0)
    return PublicCNNEncoder(net, centre, source=data)


def save_public_cnn(encoder: PublicCNNEncoder, directory: str | os.PathLike, *, command: str) -> Path:
    directory = Path(directory)
    net = encoder.net
    net.config = replace(
        net.config,
        report=dict(net.config.report)
        | {CENTRE_KEY: [float(v) for v in encoder.centre], "command": command, "space_id": encoder.space_id},
    )
    return net.save_pretrained(directory)


def load_public_cnn(directory: str | os.PathLike = ASSET) -> PublicCNNEncoder:
    from privdiff.encoders.small_cnn import Yardstick

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise CheckpointError(
            f"no public CNN encoder at {directory}; train it with "
            f"`python -m privdiff.encoders.public_cnn --out {directory}`"
        )
    net = Yardstick.from_pretrained(directory)
    report = net.config.report
    if CENTRE_KEY not in report or report.get("space_id") != SPACE_ID:
        raise CheckpointError(f"{directory} is a classifier, not a {SPACE_ID} retrieval encoder (no centre/space id)")
    return PublicCNNEncoder(net, np.asarray(report[CENTRE_KEY], dtype=np.float32), source=net.config.train_data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=f"Train the {SPACE_ID} retrieval encoder on public data.")
    ap.add_argument("--data", default=DEFAULT_DATA, help="public labelled training set (dataset spec)")
    ap.add_argument("--test", default="fashion-mnist:test", help="held-out set for the reported accuracy")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ASSET)
    args = ap.parse_args(argv)
    import torch

    from privdiff.data import load_dataset

    torch.set_num_threads(check_int("threads", args.threads, 1))
    command = shlex.join(
        ["python", "-m", "privdiff.encoders.public_cnn", *(argv if argv is not None else sys.argv[1:])]
    )
    public = load_dataset(args.data)
    test = load_dataset(args.test)
    enc = train_public_cnn(
        public.images,
        public.labels,
        list(public.class_names),
        data=args.data,
        epochs=args.epochs,
        seed=args.seed,
        test_images=test.images,
        test_labels=test.labels,
        progress=True,
    )
    save_public_cnn(enc, args.out, command=command)
    report = {k: v for k, v in enc.net.config.report.items() if k != CENTRE_KEY}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
