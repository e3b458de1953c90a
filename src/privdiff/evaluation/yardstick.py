"""A domain yardstick: a small CNN classifier trained on a *full* labelled training set.

Why: DP-RDM's claim is that a public model pointed at a private collection generates images of
*that collection's domain* (Lebensold et al., arXiv 2403.14421, §5). Measuring that needs a judge
that is itself accurate on real images of the domain. The earlier judge, nearest class centroid
in EfficientNet-Lite0 ImageNet features, scores ~0.73 on real Fashion-MNIST test images (0.24 on
Shirt), so it cannot tell a model's failure from its own. This classifier, trained on all 60,000
Fashion-MNIST training images, scores ≥ 0.90 on the 10,000 test images (the shipped checkpoint's
measured numbers are in its ``config.json`` → ``report``), and its penultimate layer is the
feature space of the *domain FID* in :mod:`privdiff.evaluation.domain` (the way Inception-FID uses
Inception's pool layer, Heusel et al. 2017, but with a network that has seen this domain).

The yardstick is trained on public data (the Fashion-MNIST *train* split); it never sees a private
index and it is only ever applied to generated images and to held-out *test* images.

The network and its trainer live in :mod:`privdiff.encoders.small_cnn` (the public retrieval
space reuses the architecture, trained on public data only). Checkpoint layout (diffusers-style:
config + safetensors, rebuilt from config): ``config.json`` (architecture, class names, image size,
training command and report) and ``model.safetensors``. The shipped one lives in the package
(``privdiff/assets/yardstick/``) and is reproduced by ``privdiff train yardstick`` (exact command
in its ``config.json``).
"""

from __future__ import annotations

import os
from pathlib import Path

from privdiff.encoders.small_cnn import (  # noqa: F401  (re-exported: the yardstick's network and trainer)
    CONFIG_NAME,
    WEIGHTS_NAME,
    Yardstick,
    YardstickConfig,
    YardstickNet,
    to_tensor,
    train_yardstick,
)
from privdiff.errors import InvalidParameter

#: Names of shipped yardsticks → package asset directory.
SHIPPED: dict[str, str] = {"fashion-mnist": "fashion-mnist"}
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "yardstick"


def load_yardstick(name_or_path: str | os.PathLike = "fashion-mnist") -> Yardstick:
    """A shipped yardstick by name (``"fashion-mnist"``) or one saved with ``save_pretrained``."""
    if isinstance(name_or_path, str) and name_or_path in SHIPPED:
        return Yardstick.from_pretrained(ASSET_DIR / SHIPPED[name_or_path])
    path = Path(name_or_path)
    if not path.is_dir():
        raise InvalidParameter("yardstick", str(name_or_path), f"one of {', '.join(SHIPPED)} or a yardstick directory")
    return Yardstick.from_pretrained(path)
