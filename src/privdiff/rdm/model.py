"""The retrieval-augmented diffusion model (RDM) of DP-RDM, built from diffusers parts.

DP-RDM (Lebensold et al., arXiv 2403.14421; method notes §3 step 9 and §5) conditions an
ε-predicting U-Net on a context of k tokens in the retrieval embedding space through
cross-attention; the "retrieval encoder" is the identity. We keep exactly that shape with a small
:class:`diffusers.UNet2DConditionModel` working directly in pixel space (28×28 grey for the
embedded Fashion-MNIST data: no VQ first stage is needed at that size), ``cross_attention_dim`` =
the embedding dimension d.

The noise schedule is the LDM/RDM one, β_t = (linspace(√0.0015, √0.0195, 1000))² (notes §5),
which diffusers calls ``scaled_linear``. DDPM is used for training and DDIM for sampling; both
are rebuilt from the config stored with the weights.

A model is a diffusers pipeline folder (:meth:`RDMModel.save_pretrained`): ``unet/`` (the
``UNet2DConditionModel``, config + safetensors, which ``UNet2DConditionModel.from_pretrained``
opens), ``scheduler/`` (the DDIM scheduler it samples with) and ``model_index.json`` naming them
with ``_class_name = "DPRDMPipeline"`` plus the privdiff metadata: ``rdm_config`` (architecture, the
encoder ``space_id`` it was trained in, k, the schedule) and ``privdiff`` (the training config, the
exact command, the generation defaults). :meth:`RDMModel.from_pretrained` also reads the v1 layout
(``config.json`` + ``model.safetensors``). Loading it next to an encoder or index of another space
raises :class:`~privdiff.errors.EncoderMismatch` (see :meth:`RDMModel.check_space`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from privdiff.encoders.base import check_same_space
from privdiff.errors import CheckpointError, InvalidParameter, check_int
from privdiff.utils.atomic import atomic_write_json

FORMAT = "privdiff-rdm"
FORMAT_VERSION = 2
#: The v1 layout (read only): ``config.json`` + ``model.safetensors`` in the model directory.
V1_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: The v2 layout: a diffusers pipeline folder.
MODEL_INDEX = "model_index.json"
PIPELINE_CLASS = "DPRDMPipeline"

#: The LDM/RDM training schedule of DP-RDM (notes §5): 1000 steps, β from 0.0015 to 0.0195 on a
#: square-root-linear grid ("scaled_linear" in diffusers).
RDM_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0015,
    "beta_end": 0.0195,
}


@dataclass
class RDMConfig:
    """Architecture and embedding-space identity of an RDM.

    Attributes:
        space_id: the encoder space the context lives in (``ImageEncoder.space_id``).
        embedding_dim: d, the context token size (= ``cross_attention_dim``).
        k: context tokens used in training (the paper's k = 4 neighbours, notes §5). Sampling may
            use any number of tokens: identical tokens give the same cross-attention output for
            every count, and distinct (public-neighbour) tokens are attended over.
        sample_size, channels: image size (square) and channels in model space.
        block_out_channels, layers_per_block, attention_head_dim, norm_num_groups: U-Net shape.
        schedule: the diffusion β schedule (see :data:`RDM_SCHEDULE`).
    """

    space_id: str
    embedding_dim: int
    k: int = 4
    sample_size: int = 28
    channels: int = 1
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    schedule: dict[str, Any] = field(default_factory=lambda: dict(RDM_SCHEDULE))

    def __post_init__(self) -> None:
        if not isinstance(self.space_id, str) or not self.space_id:
            raise InvalidParameter("space_id", self.space_id, "a non-empty string")
        self.embedding_dim = check_int("embedding_dim", self.embedding_dim, 1)
        self.k = check_int("k", self.k, 1)
        self.sample_size = check_int("sample_size", self.sample_size, 4)
        self.channels = check_int("channels", self.channels, 1)
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if len(self.block_out_channels) != 3:
            raise InvalidParameter("block_out_channels", self.block_out_channels, "three levels")
        # Two downsamplings: the image side must divide by 4 (28 → 14 → 7).
        if self.sample_size % 4:
            raise InvalidParameter("sample_size", self.sample_size, "a multiple of 4")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise InvalidParameter(
                    "block_out_channels",
                    self.block_out_channels,
                    f"multiples of norm_num_groups={self.norm_num_groups}",
                )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RDMConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def build_unet(config: RDMConfig):
    """The conditional U-Net: 3 levels, cross-attention on the two lower ones (14×14 and 7×7)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=config.sample_size,
        in_channels=config.channels,
        out_channels=config.channels,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=config.embedding_dim,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=config.norm_num_groups,
    )


class RDMModel(nn.Module):
    """ε_θ(x_t, t, C): a U-Net conditioned on a context C of shape (B, k, d).

    The null context ∅ of classifier-free guidance is the zero tensor (as in the authors' code,
    notes §3 step 10); unlike the authors, our training drops the context to ∅ with a small
    probability so the unconditional branch is actually trained (notes §8 item 7).
    """

    def __init__(self, config: RDMConfig, unet: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.unet = unet if unet is not None else build_unet(config)

    @property
    def space_id(self) -> str:
        return self.config.space_id

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Predict ε for noisy images x_t (B, C, H, W) at integer steps t (B,) given C (B, k, d)."""
        if context.ndim != 3 or context.shape[-1] != self.config.embedding_dim:
            raise InvalidParameter("context", tuple(context.shape), f"a (B, k, {self.config.embedding_dim}) tensor")
        if context.shape[0] != x_t.shape[0]:
            raise InvalidParameter("context", tuple(context.shape), f"batch size {x_t.shape[0]} (as x_t)")
        return self.unet(x_t, t, encoder_hidden_states=context.to(x_t.dtype)).sample

    def null_context(self, batch: int, tokens: int | None = None, device=None) -> torch.Tensor:
        """∅: zeros of shape (batch, tokens, d)."""
        return torch.zeros(batch, tokens or self.config.k, self.config.embedding_dim, device=device)

    def check_space(self, space_id: str, what: str = "encoder") -> None:
        """Refuse an encoder/index from another embedding space (``EncoderMismatch``)."""
        check_same_space(self.config.space_id, space_id, what=what)

    # -- diffusers schedulers rebuilt from the stored schedule ---------------------------------

    def ddpm_scheduler(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler(**self.config.schedule, clip_sample=False, prediction_type="epsilon")

    def ddim_scheduler(self):
        from privdiff.diffusion.sampling import make_ddim_scheduler

        return make_ddim_scheduler(**self.config.schedule)

    # -- persistence -----------------------------------------------------------------------------

    def save_pretrained(
        self, directory: str | os.PathLike, *, extra: dict[str, Any] | None = None, scheduler: Any = None
    ) -> Path:
        """Write the pipeline folder: ``unet/``, ``scheduler/`` and ``model_index.json``.

        ``extra`` (training config, command, generation defaults...) goes under ``privdiff`` in
        ``model_index.json``; ``scheduler`` defaults to :meth:`ddim_scheduler`. The index is written
        last and atomically, so a directory with an index always has the weights it names; other
        files in the directory (training state, plots, the domain reference) are left alone, and
        the v1 files of an earlier save are removed (they would describe other weights).
        """
        import diffusers

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        scheduler = scheduler if scheduler is not None else self.ddim_scheduler()
        self.unet.save_pretrained(directory / "unet", safe_serialization=True)
        scheduler.save_pretrained(directory / "scheduler")
        index = {
            "_class_name": PIPELINE_CLASS,
            "_diffusers_version": diffusers.__version__,
            "scheduler": ["diffusers", type(scheduler).__name__],
            "unet": ["diffusers", type(self.unet).__name__],
            "rdm_config": self.config.to_dict(),
            "privdiff": {"format": FORMAT, "format_version": FORMAT_VERSION, **(extra or {})},
        }
        atomic_write_json(directory / MODEL_INDEX, index)
        for stale in (CONFIG_FILE, WEIGHTS_FILE):
            (directory / stale).unlink(missing_ok=True)
        return directory

    def save(self, directory: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
        """:meth:`save_pretrained` (kept for callers of the v1 API)."""
        return self.save_pretrained(directory, extra=extra)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, space_id: str | None = None) -> RDMModel:
        """Load a model directory (v2 pipeline folder or v1); with ``space_id`` also refuse a model
        of another space."""
        directory = Path(directory)
        info = read_model_info(directory)
        config = RDMConfig.from_dict(info["model"])
        if space_id is not None:
            check_same_space(space_id, config.space_id, what=f"RDM model {directory}")
        if info["format_version"] == V1_VERSION:
            return cls._load_v1_weights(config, directory)
        from diffusers import UNet2DConditionModel

        try:
            unet = UNet2DConditionModel.from_pretrained(directory / "unet", low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot load the RDM U-Net in {directory / 'unet'}: {exc}") from exc
        reference = build_unet(config)
        if {k: v for k, v in reference.state_dict().items()}.keys() != unet.state_dict().keys():
            raise CheckpointError(f"the U-Net in {directory / 'unet'} does not match rdm_config in {MODEL_INDEX}")
        return cls(config, unet=unet).eval()

    load = from_pretrained

    @classmethod
    def _load_v1_weights(cls, config: RDMConfig, directory: Path) -> RDMModel:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        model = cls(config)
        try:
            state = load_file(str(directory / WEIGHTS_FILE))
        except (OSError, SafetensorError) as exc:
            raise CheckpointError(f"cannot read RDM weights {directory / WEIGHTS_FILE}: {exc}") from exc
        missing, unexpected = model.unet.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"RDM weights in {directory} do not match config.json: missing {list(missing)[:3]}, "
                f"unexpected {list(unexpected)[:3]}"
            )
        model.eval()
        return model


def _read_json(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(info, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return info


def read_model_info(directory: str | os.PathLike) -> dict[str, Any]:
    """The model's metadata, checked to be an RDM of a known layout.

    The same shape for both layouts: ``format``, ``format_version``, ``model`` (the
    :class:`RDMConfig` dict) and every ``extra`` given at save time (``generation_defaults``,
    ``training``, ``command``...).
    """
    directory = Path(directory)
    index = directory / MODEL_INDEX
    if directory.is_dir() and index.is_file():
        raw = _read_json(index)
        meta = raw.get("privdiff")
        if raw.get("_class_name") != PIPELINE_CLASS or not isinstance(meta, dict) or "rdm_config" not in raw:
            raise CheckpointError(
                f"{index} is not a {PIPELINE_CLASS} folder (found _class_name={raw.get('_class_name')!r}); "
                "an RDM needs rdm_config and privdiff entries"
            )
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{index} is not a {FORMAT} v{FORMAT_VERSION} model (found format={meta.get('format')!r}, "
                f"version={meta.get('format_version')!r})"
            )
        if not (directory / "unet" / "config.json").is_file():
            raise CheckpointError(f"{directory} has {MODEL_INDEX} but no unet/ weights")
        return {**meta, "model": raw["rdm_config"]}
    cfg = directory / CONFIG_FILE
    if not directory.is_dir() or not cfg.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise CheckpointError(
            f"{directory} is not an RDM model directory (needs {MODEL_INDEX} with unet/ and scheduler/, "
            f"or the v1 {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    info = _read_json(cfg)
    if info.get("format") != FORMAT or info.get("format_version") != V1_VERSION or "model" not in info:
        raise CheckpointError(
            f"{cfg} is not a {FORMAT} v{V1_VERSION} config (found format={info.get('format')!r}, "
            f"version={info.get('format_version')!r})"
        )
    return info


class ClassifierFreeGuidance:
    """A denoiser ``(x_t, t) -> ε̂`` applying classifier-free guidance with a fixed context.

    ε̂ = ε_θ(x_t, t, ∅) + w·(ε_θ(x_t, t, C) − ε_θ(x_t, t, ∅))  (Ho & Salimans 2022, Eq. 6; the
    form of the DP-RDM code, notes §3 step 10, with w the ``guidance_scale``; the paper uses
    w = 2.0, or 1.25 on CIFAR-10). Both branches run as one batch of 2B.

    ``context`` is (B, k, d) for B images; it is typically one privatised context repeated for
    several images (post-processing: no extra privacy cost).
    """

    def __init__(self, model: RDMModel, context: torch.Tensor, guidance_scale: float):
        self.model = model
        self.context = context
        self.guidance_scale = float(guidance_scale)
        self._null = torch.zeros_like(context)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x_t.shape[0]
        eps = self.model(
            torch.cat([x_t, x_t]),
            torch.cat([t, t]),
            torch.cat([self.context.to(x_t.dtype), self._null.to(x_t.dtype)]),
        )
        eps_cond, eps_uncond = eps[:b], eps[b:]
        return eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)
