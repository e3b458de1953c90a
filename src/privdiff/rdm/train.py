"""DP-RDM "adapt" training of the RDM on public data only (method notes §5).

Every public image x_i is conditioned on the mean of the k nearest *public* neighbours of its own
embedding (itself excluded; exact inner-product search with faiss), each neighbour L2-normalised
before averaging, plus Gaussian noise at a level drawn once per minibatch:

    r̄_i = (1/k) Σ_j n(e_{nn_j(i)}),   r̃_i = r̄_i + s·ξ_i,   s = s_max·(1 − u),  u ~ U[0, 1)

(the authors' ``aggregate_and_noise`` training branch: one ``torch.rand(1)`` per batch, ξ per
element), replicated to k identical tokens. This is exactly the transform the private retriever
applies at inference (mean of k unit vectors + N(0, σ²I)), minus the subsampling, so the model
learns to read a noisy mean.

Deliberate difference from the authors (notes §8 item 7): the context is replaced by the null
context ∅ (zeros) with probability ``p_uncond`` (default 0.1), so the unconditional branch that
classifier-free guidance uses at sampling time is trained rather than never seen.

Two data-side options (issue #10 item 3), both off by default so the shipped recipe is unchanged:

- ``balance="classes"``: each batch row picks a class uniformly, then an image of that class. The
  DP-RDM public split has 1,500 images per clothing class but 60 per footwear class, so uniform
  sampling shows the model ~1.7 % footwear per class-slot; balanced sampling shows 10 %.
- ``context="inference"``: the context is built the way the private retriever builds it at
  generation time (method notes §3): a Poisson subsample of the public set at rate
  ``context_rate`` (≈ q·N candidates, as DP-RDM's subsampling gives), the ``context_k`` rows of
  it most similar to the image (itself excluded), their unit-vector mean, plus N(0, s²I) with
  s ≤ ``s_max`` (set it to the inference σ). The paper's global top-4 neighbours are far closer
  to the image than the top-20 of a 1 % subsample, so a model trained on them sees sharper
  contexts than it is given at inference.

Objective: ε-prediction MSE under the DDPM forward process with the RDM schedule; AdamW with a
linear warm-up; an EMA of the weights is what gets saved as the model. Training is resumable from
``<out>/training/state.pt`` and writes the loss curve as PNG + JSON.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privdiff.encoders.base import l2_normalize
from privdiff.errors import (
    CheckpointError,
    DataError,
    InvalidParameter,
    check_in_range,
    check_int,
    check_nonnegative,
)
from privdiff.utils.atomic import atomic_open
from privdiff.utils.cache import ArrayCache, cache_key, cache_root
from privdiff.utils.train_config import TrainConfig as BaseTrainConfig

# Lazy imports: faiss, torch, diffusers, tqdm, matplotlib (and rdm.model, which imports torch) are
# imported inside the functions that use them, for start-up time: the CLI imports this module for
# its embedding cache.

STATE_DIR = "training"
STATE_FILE = "state.pt"
BALANCE_CHOICES = ("none", "classes")
CONTEXT_CHOICES = ("neighbours", "inference")


@dataclass
class TrainConfig(BaseTrainConfig):
    """Adapt-training settings (names follow the notes; paper values in brackets).

    The shared fields are those of :class:`privdiff.utils.train_config.TrainConfig`; the loop is
    :class:`privdiff.diffusion.trainer.TrainingLoop` (gradient-norm clip 1.0, no weight decay).

    Attributes:
        steps: optimiser steps in total (a resumed run continues up to this number).
        batch_size: images per step [32 per GPU × 40 GPUs].
        lr: AdamW learning rate after warm-up [1e-4 at batch 1280; a small model at batch 64
            trains faster at 1e-3].
        warmup_steps: linear warm-up length [100].
        k: neighbours averaged into the context, and context tokens [4].
        s_max: s_max, the largest training noise std per coordinate [0.05 at d = 512].
        p_uncond: probability of the null context (0 in the paper; see module docstring).
        ema_decay: the largest EMA decay of the saved weights (reached after a warm-up).
        seed: seed of everything public in training (batches, noise, dropout of the context).
        checkpoint_every: steps between checkpoints (model + resumable state + loss plot).
        block_out_channels, layers_per_block, attention_head_dim: U-Net shape.
        balance: ``"none"`` (uniform over images) or ``"classes"`` (uniform over classes, then
            over the class's images; needs labels).
        context: ``"neighbours"`` (the paper's: mean of the k global public neighbours) or
            ``"inference"`` (mean of the ``context_k`` nearest rows of a Poisson subsample at rate
            ``context_rate``, like DP-RDM inference; see the module docstring).
        context_k: neighbours averaged into an ``"inference"`` context (generation k, default 20).
        context_rate: Poisson subsampling rate of the candidate pool of an ``"inference"``
            context (generation q, default 0.01).
    """

    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    k: int = 4
    s_max: float = 0.05
    p_uncond: float = 0.1
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 250
    block_out_channels: tuple[int, ...] = (32, 32, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    balance: str = "none"
    context: str = "neighbours"
    context_k: int = 20
    context_rate: float = 0.01

    def validate(self) -> TrainConfig:
        self.validate_shared()
        check_int("k", self.k, 1)
        check_nonnegative("s_max", self.s_max)
        check_in_range("p_uncond", self.p_uncond, 0.0, 1.0, low_inclusive=True, high_inclusive=False)
        if self.balance not in BALANCE_CHOICES:
            raise InvalidParameter("balance", self.balance, "one of " + ", ".join(BALANCE_CHOICES))
        if self.context not in CONTEXT_CHOICES:
            raise InvalidParameter("context", self.context, "one of " + ", ".join(CONTEXT_CHOICES))
        check_int("context_k", self.context_k, 1)
        check_in_range("context_rate", self.context_rate, 0.0, 1.0, low_inclusive=False, high_inclusive=True)
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d


# ---------------------------------------------------------------------------------------------
# Conditioning (the adapt transform)
# ---------------------------------------------------------------------------------------------


def public_neighbour_means(embeddings: np.ndarray, k: int) -> np.ndarray:
    """r̄_i: mean of the k nearest neighbours of each row among the *other* rows (notes §5).

    Exact inner-product search (faiss ``IndexFlatIP``) on L2-normalised rows; the neighbours are
    normalised before averaging and the mean is not re-normalised, matching the inference-time
    aggregate of the private retriever. The row itself is excluded by index (an exact duplicate
    image elsewhere in the set still counts as a neighbour).
    """
    import faiss

    x = l2_normalize(embeddings)
    n, d = x.shape
    k = check_int("k", k, 1, maximum=n - 1 if n > 1 else 1)
    if n < 2:
        raise InvalidParameter("embeddings", f"{n} rows", "at least 2 rows (each needs a neighbour)")
    index = faiss.IndexFlatIP(d)
    index.add(x)
    _, ids = index.search(x, k + 1)
    means = np.empty_like(x)
    for i in range(n):
        row = ids[i]
        row = row[row != i][:k]
        means[i] = x[row].mean(axis=0)
    return means


def adapt_context(r_bar, k: int, s_max: float, generator=None):
    """The training context R̃ (B, k, d) from means r̄ (B, d): r̄ + s·ξ replicated k times.

    s = s_max·(1 − u) with **one** u ~ U[0, 1) for the whole minibatch and ξ ~ N(0, I) per
    element (authors' ``aggregate_and_noise``, notes §5 step 3).
    """
    import torch

    u = torch.rand(1, generator=generator)
    s = s_max * (1.0 - u)
    noisy = r_bar + s * torch.randn(r_bar.shape, generator=generator)
    return noisy.unsqueeze(1).expand(-1, k, -1).contiguous()


def drop_context(context, p_uncond: float, generator=None):
    """Replace each row's context by ∅ (zeros) with probability ``p_uncond`` (CFG training)."""
    import torch

    if p_uncond <= 0:
        return context
    keep = (torch.rand(context.shape[0], generator=generator) >= p_uncond).to(context.dtype)
    return context * keep[:, None, None]


def batch_indices(n: int, batch_size: int, generator=None, class_rows: list | None = None):
    """Row indices of one minibatch: uniform over the n rows, or class-balanced.

    ``class_rows`` (one int64 tensor of row ids per class, as from :func:`class_rows_of`): each
    row of the batch picks a class uniformly, then one of that class's images uniformly.
    """
    import torch

    if class_rows is None:
        return torch.randint(0, n, (batch_size,), generator=generator)
    cls = torch.randint(0, len(class_rows), (batch_size,), generator=generator)
    u = torch.rand(batch_size, generator=generator)
    sizes = torch.tensor([len(r) for r in class_rows])
    within = torch.minimum((u * sizes[cls]).long(), sizes[cls] - 1)
    return torch.stack([class_rows[int(c)][int(j)] for c, j in zip(cls, within, strict=True)])


def class_rows_of(labels: np.ndarray, n: int) -> list:
    """One int64 tensor of row ids per class present in ``labels`` (N,), for balanced batches."""
    import torch

    lab = np.asarray(labels)
    if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer):
        raise InvalidParameter("labels", f"<{lab.dtype} array of shape {lab.shape}>", f"integer labels of shape ({n},)")
    return [torch.from_numpy(np.flatnonzero(lab == c)) for c in np.unique(lab)]


def inference_like_means(unit, idx, *, k: int, rate: float, generator=None):
    """Context means built like DP-RDM inference (module docstring), for the rows ``idx``.

    For each row i: a Poisson subsample of all rows at ``rate`` (row i itself never in it), the
    ``k`` subsample rows with the largest inner product with row i (all of them if fewer), and
    the mean of those unit vectors. ``unit`` is the (N, d) float tensor of L2-normalised
    embeddings. An empty subsample (probability (1−rate)^(N−1)) falls back to one uniformly
    drawn other row, so every row gets a context.
    """
    import torch

    n = unit.shape[0]
    b = idx.shape[0]
    pool = torch.rand((b, n), generator=generator) < rate
    pool[torch.arange(b), idx] = False
    empty = ~pool.any(dim=1)
    if empty.any():
        other = (idx[empty] + 1 + torch.randint(0, n - 1, (int(empty.sum()),), generator=generator)) % n
        pool[empty.nonzero().squeeze(1), other] = True
    sims = unit[idx] @ unit.T
    sims = sims.masked_fill(~pool, float("-inf"))
    kk = min(k, n - 1)
    top, ids = sims.topk(kk, dim=1)
    valid = torch.isfinite(top).to(unit.dtype)
    return (unit[ids] * valid[..., None]).sum(dim=1) / valid.sum(dim=1, keepdim=True)


# ---------------------------------------------------------------------------------------------
# Embedding cache (embeddings of the public set are computed once)
# ---------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """The shared embedding cache (public data only; files are written with the usual umask)."""
    return cache_root("embeddings")


#: Sub-directory of an embedding cache that holds embeddings of private data (mode 0700, files 0600).
PRIVATE_CACHE_SUBDIR = "private"


def cached_embeddings(
    dataset,
    encoder,
    *,
    private: bool,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> np.ndarray:
    """``encoder.encode_images(dataset.images)``, cached on disk by (space, dataset, content hash).

    Args:
        private: whether ``dataset`` is private data. Required, so every caller says which:
            public embeddings go to the shared cache (``cache_dir``, default
            :func:`default_cache_dir`); private ones only to ``<cache_dir>/private``, a 0700
            directory of 0600 files, never to the shared one.
    """
    if not isinstance(private, bool):
        raise InvalidParameter("private", private, "True (private data) or False (public data)")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    # Private embeddings live in an owner-only (0700) sub-directory as 0600 files from their
    # first byte: raw private embeddings are as sensitive as the images.
    cache = ArrayCache(cache_dir / PRIVATE_CACHE_SUBDIR, private=True) if private else ArrayCache(cache_dir)
    # repr(encoder) names its fixed parts (e.g. the centring vector's id), so a changed mapping
    # under an unchanged space_id still misses the cache.
    key = cache_key("embeddings", encoder.space_id, repr(encoder), dataset.name, np.asarray(dataset.images))
    emb = cache.load(key, shape=(len(dataset), encoder.dim))
    if emb is not None:
        return emb
    emb = np.asarray(encoder.encode_images(dataset.images, progress=progress), dtype=np.float32)
    cache.save(key, emb)
    return emb


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    out_dir: Path
    steps_done: int
    final_loss: float
    seconds: float
    num_parameters: int


def train_rdm(
    images: np.ndarray,
    embeddings: np.ndarray,
    *,
    space_id: str,
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    extra_info: dict[str, Any] | None = None,
    labels: np.ndarray | None = None,
    device: str = "cpu",
) -> TrainResult:
    """Adapt-train an RDM on public ``images`` (uint8 NHWC) with their ``embeddings`` (N, d).

    Writes the EMA model to ``out_dir`` (loadable with :meth:`RDMModel.load`) every
    ``checkpoint_every`` steps and at the end, plus ``out_dir/training/`` (resumable state, loss
    curve PNG + JSON). ``extra_info`` (e.g. the data spec and the exact command) goes into the
    model's ``config.json``. ``labels`` (N,) are needed only for ``config.balance="classes"``.

    ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``) is where the U-Net trains. Every random
    number is still drawn on the CPU (see :class:`~privdiff.diffusion.trainer.TrainingLoop`), so
    the run is the CPU run up to floating-point differences of the device's kernels, and a run
    started on one device resumes on another.
    """
    import torch

    from privdiff.diffusion.trainer import TrainingLoop
    from privdiff.rdm.model import RDMConfig, RDMModel
    from privdiff.report.images import to_model_space
    from privdiff.utils.device import check_device

    config = (config or TrainConfig()).validate()
    dev = check_device(device)
    images = np.asarray(images)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DataError(f"training images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    if embeddings.ndim != 2 or embeddings.shape[0] != images.shape[0]:
        raise DataError(f"embeddings {embeddings.shape} do not match {images.shape[0]} images")
    if not np.all(np.isfinite(embeddings)):
        raise DataError("embeddings contain NaN or inf")
    n, h, w, c = images.shape
    if h != w:
        raise DataError(f"training images must be square, got {h}×{w}")
    if config.balance == "classes" and labels is None:
        raise InvalidParameter("labels", None, "class labels of the training images (balance='classes')")
    class_rows = class_rows_of(labels, n) if config.balance == "classes" else None
    out_dir = Path(out_dir)
    state_dir = out_dir / STATE_DIR
    state_path = state_dir / STATE_FILE
    if state_path.exists() and not resume:
        raise CheckpointError(f"{out_dir} already holds a training run; pass resume=True (--resume) or a new --out")

    model_cfg = RDMConfig(
        space_id=space_id,
        embedding_dim=embeddings.shape[1],
        k=config.k,
        sample_size=h,
        channels=c,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        attention_head_dim=config.attention_head_dim,
    )
    torch.manual_seed(config.seed)
    model = RDMModel(model_cfg).to(dev)
    model.train()
    scheduler = model.ddpm_scheduler()
    alphas_cumprod = scheduler.alphas_cumprod.to(dev)
    # LambdaLinear-style warm-up then constant lr (notes §5); EMA with warm-up (decay
    # 1 − (1 + step)^(−2/3), capped at ema_decay) so the short CPU runs do not carry the random
    # initialisation in the average.
    loop = TrainingLoop(model, config, weight_decay=0.0, grad_clip=1.0, model_key="model")

    if resume and state_path.exists():
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=False)
        except Exception as exc:  # any unpickling failure means the state is unusable
            raise CheckpointError(f"cannot read training state {state_path}: {exc}") from exc
        if state.get("model_config") != model_cfg.to_dict():
            raise CheckpointError(f"{state_path} was trained with a different model/encoder config; use a new --out")
        # States written before the shared loop also hold "lr_scheduler": the lr is a function of
        # the step alone (warmup_lr), so it is not needed.
        loop.load_state_dict(state)

    # Precomputed once: the conditioning means and the model-space images.
    if config.context == "neighbours":
        r_bar_all = torch.from_numpy(public_neighbour_means(embeddings, config.k))
    else:
        if n < 2:
            raise InvalidParameter("embeddings", f"{n} rows", "at least 2 rows (each needs a neighbour)")
        unit_all = torch.from_numpy(l2_normalize(embeddings))
    x_all = to_model_space(images)
    t0 = time.time()

    def checkpoint(step: int) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        # Built before the state is saved: building draws from the global RNG, whose saved state
        # must be the one training continues from.
        ema_model = loop.averaged_into(RDMModel(model_cfg))
        with atomic_open(state_path) as fh:
            torch.save(
                {**loop.state_dict(), "model_config": model_cfg.to_dict(), "train_config": config.to_dict()},
                fh,
            )
        info = {
            "training": config.to_dict() | {"steps_done": step, "final_loss_ema100": loop.tail_mean()},
            "num_parameters": ema_model.num_parameters(),
        }
        info.update(extra_info or {})
        ema_model.save(out_dir, extra=info)
        write_loss_curve(loop.losses, state_dir, title=f"RDM adapt training ({step} steps)")

    from privdiff.diffusion.noising import q_sample

    def loss_fn(step: int, gen) -> torch.Tensor:
        idx = batch_indices(n, config.batch_size, gen, class_rows)
        x0 = x_all[idx]
        if config.context == "neighbours":
            r_bar = r_bar_all[idx]
        else:
            r_bar = inference_like_means(unit_all, idx, k=config.context_k, rate=config.context_rate, generator=gen)
        ctx = adapt_context(r_bar, config.k, config.s_max, gen)
        ctx = drop_context(ctx, config.p_uncond, gen)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (config.batch_size,), generator=gen)
        # Drawn on the CPU above (same numbers on every device), computed on the training device.
        x0, noise, t, ctx = x0.to(dev), noise.to(dev), t.to(dev), ctx.to(dev)
        x_t = q_sample(x0, t, alphas_cumprod, noise)
        return torch.nn.functional.mse_loss(model(x_t, t, ctx), noise)

    loop.run(loss_fn, on_checkpoint=checkpoint, progress=progress, desc="train rdm")
    if not (out_dir / "model_index.json").exists():
        checkpoint(loop.step)
    return TrainResult(
        out_dir=out_dir,
        steps_done=loop.step,
        final_loss=loop.tail_mean(),
        seconds=time.time() - t0,
        num_parameters=model.num_parameters(),
    )


def write_loss_curve(losses: list[float], directory: str | os.PathLike, title: str = "training loss") -> Path:
    """``loss.png`` and ``loss.json`` (key ``loss``, 6 decimals) in ``directory``: the one writer of
    :func:`privdiff.diffusion.training.write_loss_curve`."""
    from privdiff.diffusion.training import write_loss_curve as write

    return write(losses, directory, title=title, json_key="loss", decimals=6)
