"""open_clip adapter: CLIP image and text towers as one privdiff encoder pair.

Real deployments of DP-RDM use CLIP embeddings (arXiv 2403.14421 §5 uses CLIP ViT-L/14). open_clip
cannot be installed on the development machines (it requires torchvision), so it is imported
lazily in the constructor, and the model object can be injected instead (tests use a stand-in).

Preprocessing is done with torch ops only, mirroring open_clip's eval transform: resize the
shorter side to ``image_size`` (bicubic, antialiased), centre-crop to a square, scale to [0, 1],
normalise with the model's mean/std (OpenAI CLIP's by default). Grey images are repeated to RGB.
The ``space_id`` is ``openclip/<model_name>/<12 hex of sha256>`` over the checkpoint file (or, for
an injected model without a file, over its parameters), so two different checkpoints of one
architecture never share a space.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from privdiff.encoders.base import l2_normalize
from privdiff.encoders.text import check_texts
from privdiff.errors import CheckpointError, InvalidParameter, MissingDependency, check_int

# Lazy imports: torch and open_clip are imported inside the functions that use them, for start-up
# time (open_clip alone takes seconds and is an optional dependency).

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def params_digest(model) -> str:
    h = hashlib.sha256()
    state = model.state_dict() if hasattr(model, "state_dict") else {}
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def clip_preprocess(images: np.ndarray, size: int, mean, std):
    """uint8 (N, H, W, C) → float32 tensor (N, 3, size, size): CLIP's eval transform in torch ops.

    Resize the shorter side to ``size`` (bicubic, antialiased), centre-crop a square, scale to
    [0, 1], normalise with ``mean``/``std``; grey images are repeated to RGB. Shared by the
    open_clip and the transformers CLIP adapters (both follow OpenAI CLIP's preprocessing).
    """
    import torch
    import torch.nn.functional as F

    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[-1] not in (1, 3)
    ):
        raise InvalidParameter(
            "images",
            getattr(images, "shape", type(images)),
            "a uint8 array (N, H, W, C), C in {1, 3}",
        )
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    s = size
    scale = s / min(h, w)
    nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
    top, left = (nh - s) // 2, (nw - s) // 2
    x = x[:, :, top : top + s, left : left + s]
    mean_t = torch.tensor(tuple(mean)).view(1, 3, 1, 1)
    std_t = torch.tensor(tuple(std)).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


class OpenCLIPEncoder:
    """ImageEncoder and TextEncoder over an open_clip model (both protocols, one space).

    Args:
        model_name: open_clip architecture name, e.g. ``"ViT-B-32"``.
        checkpoint: local weights file (``open_clip.create_model_and_transforms(model_name,
            pretrained=<path>)``). Required unless ``model`` is given.
        model: an already built model exposing ``encode_image(x)`` / ``encode_text(tokens)``
            (and ideally ``visual.image_size`` / ``visual.preprocess_cfg``); skips open_clip.
        tokenizer: callable list[str] → token tensor; defaults to ``open_clip.get_tokenizer``.
        image_size, mean, std: override what is read from the model.
        device: torch device string.
    """

    def __init__(
        self,
        model_name: str,
        checkpoint: str | Path | None = None,
        *,
        model: Any = None,
        tokenizer: Callable[[list[str]], Any] | None = None,
        image_size: int | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        device: str = "cpu",
    ):
        if not model_name or not isinstance(model_name, str):
            raise InvalidParameter("model_name", model_name, "an open_clip architecture name such as 'ViT-B-32'")
        self.model_name = model_name
        self.device = device
        ckpt = Path(checkpoint).expanduser() if checkpoint is not None else None
        if ckpt is not None and not ckpt.is_file():
            raise CheckpointError(f"open_clip checkpoint {str(ckpt)!r} does not exist")
        if model is None or tokenizer is None:
            try:
                import open_clip
            except ImportError as exc:
                raise MissingDependency(
                    "open_clip_torch",
                    "the open_clip encoder",
                    "pip install open_clip_torch (needs torchvision)",
                ) from exc
            if model is None:
                if ckpt is None:
                    raise InvalidParameter("checkpoint", None, "a local open_clip weights file (nothing is downloaded)")
                model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=str(ckpt), device=device)
            if tokenizer is None:
                tokenizer = open_clip.get_tokenizer(model_name)
        self.model = model.eval() if hasattr(model, "eval") else model
        self.tokenizer = tokenizer

        visual = getattr(model, "visual", None)
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        size = image_size or cfg.get("size") or getattr(visual, "image_size", None)
        if isinstance(size, (tuple, list)):
            size = size[0]
        if size is None:
            raise InvalidParameter("image_size", None, "an int (the model does not expose visual.image_size)")
        self.image_size = check_int("image_size", size, minimum=8, maximum=2048)
        self.mean = tuple(mean or cfg.get("mean") or OPENAI_CLIP_MEAN)
        self.std = tuple(std or cfg.get("std") or OPENAI_CLIP_STD)
        digest = _file_digest(ckpt) if ckpt is not None else params_digest(model)
        self.space_id = f"openclip/{model_name}/{digest}"
        self.dim = int(self._encode_image_tensor(self.preprocess(np.zeros((1, 8, 8, 3), dtype=np.uint8))).shape[-1])

    def __repr__(self) -> str:
        return f"OpenCLIPEncoder(space_id={self.space_id!r}, dim={self.dim}, image_size={self.image_size})"

    def preprocess(self, images: np.ndarray):
        """uint8 (N, H, W, C) → float tensor (N, 3, S, S), open_clip's eval transform in torch ops."""
        return clip_preprocess(images, self.image_size, self.mean, self.std).to(self.device)

    def _encode_image_tensor(self, x):
        import torch

        with torch.inference_mode():
            return self.model.encode_image(x).float().cpu()

    def encode_images(self, images: np.ndarray, *, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        batch_size = check_int("batch_size", batch_size, minimum=1)
        starts = range(0, images.shape[0] if isinstance(images, np.ndarray) else 0, batch_size)
        if not isinstance(images, np.ndarray) or images.ndim != 4:
            self.preprocess(images)  # raises the typed error
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, total=len(starts), desc=f"encoding ({self.space_id})", unit="batch")
        out = np.empty((images.shape[0], self.dim), dtype=np.float32)
        for s in starts:
            out[s : s + batch_size] = self._encode_image_tensor(self.preprocess(images[s : s + batch_size])).numpy()
        return l2_normalize(out)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        import torch

        texts = check_texts(texts)
        tokens = self.tokenizer(texts)
        if hasattr(tokens, "to"):
            tokens = tokens.to(self.device)
        with torch.inference_mode():
            feats = self.model.encode_text(tokens).float().cpu().numpy()
        return l2_normalize(feats)
