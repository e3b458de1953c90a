"""The DP-RDM generation pipeline: prompts → contexts → DDIM with classifier-free guidance → images.

Data flow (DESIGN.md; method notes §3):

    prompt ─ text encoder ─► q̂ (public) ─► context source ─► C (B, k, d) ─► DDIM + CFG ─► images
                                           └ DP-RDM: ledger charge → subsample → top-k → mean + N(0, σ²I)

Exactly one query per prompt is sent to the context source, in one call, before anything else
that costs compute; with :class:`~privdiff.rdm.conditioning.DPRetrievalContext` that call charges
the ledger for all prompts at once and raises :class:`~privdiff.errors.PrivacyBudgetExceeded`
(nothing charged, nothing produced) when they do not fit. Everything after the release is
post-processing: λ-mixing, sampling and drawing ``images_per_prompt`` images from one privatised
context cost no privacy (notes §3, "caching is free").

Randomness: x_T is the only randomness here and it is public, so it is seedable (``seed`` or a
``torch.Generator``); the DP noise lives inside the retriever and no seed reaches it. The DDIM
sampler runs with η = 0 by default, so images are a deterministic function of (C, x_T).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from privdiff.checkpoints import RDM_MODEL, resolve_checkpoint
from privdiff.diffusion.output import check_output_type
from privdiff.errors import (
    InvalidParameter,
    PrivacyBudgetExceeded,
    PrivdiffWarning,
    check_in_range,
    check_int,
    check_nonnegative,
)
from privdiff.rdm.conditioning import Conditioning, ContextSource
from privdiff.rdm.model import ClassifierFreeGuidance, RDMModel
from privdiff.utils.jsonsafe import jsonable

#: Largest seed accepted for the public sampler noise: seeds are fed to ``torch.Generator``
#: (unsigned 64-bit) and recorded in JSON/SQLite-friendly signed 64-bit form, and ``sample`` also
#: uses ``seed + 1``; 2^63 − 1 satisfies all of them, so a bigger seed is refused up front.
MAX_SEED = 2**63 - 1

#: Memory a single generation request may plan for (x_T, outputs and one batch's contexts and
#: activations, see :func:`generation_memory`). Above it a request is refused *before* the
#: ledger charge rather than failing with an allocation error after it.
MAX_GENERATION_BYTES = 8 * 2**30


def check_seed(seed: Any) -> int:
    """A seed in [0, :data:`MAX_SEED`], else :class:`InvalidParameter` naming the range."""
    return check_int("seed", seed, 0, MAX_SEED)


def generation_memory(channels: int, size: int, k: int, dim: int, batch_size: int) -> tuple[int, int]:
    """(bytes per image, fixed bytes) a request plans for.

    Per image: x_T (float32) + the uint8 output twice (the per-batch pieces and their
    concatenation). Fixed: one batch's contexts (float32 (b, k, d), twice for the guidance's
    conditional/unconditional pair) and ~16 float32 activations of the image size per batch
    element (the U-Net's widest feature maps at these sizes are well below that).
    """
    pixels = channels * size * size
    per_image = 4 * pixels + 2 * pixels
    fixed = batch_size * (2 * 4 * k * dim + 16 * 4 * pixels * 8)
    return per_image, fixed


def _count_queries(prompts: Any, query_embeddings: Any) -> int:
    if prompts is not None and query_embeddings is None:
        if isinstance(prompts, str):
            return 1
        try:
            return len(prompts)
        except TypeError:
            raise InvalidParameter("prompts", prompts, "a list of strings") from None
    if query_embeddings is not None and prompts is None:
        shape = np.shape(query_embeddings)
        return int(shape[0]) if len(shape) == 2 else 1
    raise InvalidParameter("prompts", prompts, "either prompts or query_embeddings (exactly one)")


@dataclass(frozen=True)
class GenerationOutput:
    """Images and the record of how they were made.

    Attributes:
        images: uint8 (P, n, H, W, C): ``images_per_prompt`` = n images for each of P queries.
        prompts: the P prompts (``None`` entries when query embeddings were given directly).
        mode: the context source's mode (``dp-rdm`` or a baseline name).
        private: False only for the ε = ∞ baselines (``non-private``, ``subsampled``).
        privacy: the source's privacy record (ε spent/remaining and δ after the charge, σ, q, k...).
        settings: sampler settings (guidance scale, steps, η, seed, images per prompt...).
    """

    images: np.ndarray = field(repr=False)
    prompts: list[str | None]
    mode: str
    private: bool
    privacy: dict[str, Any]
    settings: dict[str, Any]

    def flat_images(self) -> np.ndarray:
        """All images as (P·n, H, W, C), prompt-major."""
        p, n = self.images.shape[:2]
        return self.images.reshape(p * n, *self.images.shape[2:])

    def record(self) -> dict[str, Any]:
        """A JSON-friendly description (no pixels); ε = ∞ is written as the string "inf"."""

        return jsonable(
            {
                "mode": self.mode,
                "private": self.private,
                "prompts": self.prompts,
                "images_shape": list(self.images.shape),
                "privacy": self.privacy,
                "settings": self.settings,
            }
        )


@dataclass
class DPRDMPipelineOutput(BaseOutput):
    """What :class:`DPRDMPipeline` returns when an ``output_type`` is given (diffusers conventions).

    Attributes:
        images: the P·n images, prompt-major: a list of PIL images (``"pil"``), float (N, H, W, C)
            in [0, 1] (``"np"``) or a float tensor (N, C, H, W) in [0, 1] (``"pt"``).
        privacy: the context source's privacy record (as :attr:`GenerationOutput.privacy`).
        generation: the full :class:`GenerationOutput` (uint8 images, prompts, settings).
    """

    images: Any
    privacy: dict[str, Any]
    generation: GenerationOutput


class DPRDMPipeline(DiffusionPipeline):
    """Model + scheduler + text encoder + context source (DP retriever or a baseline).

    A diffusers ``DiffusionPipeline``: its registered modules are the conditional U-Net
    (``unet``) and the ``scheduler`` (any diffusers scheduler: the sampling loop is
    :func:`privdiff.diffusion.sample`); :meth:`save_pretrained` writes the model folder
    (``model_index.json`` + ``unet/`` + ``scheduler/``) and :meth:`from_pretrained` reads it back
    with a context source and text encoder given at load time (they are not model weights: the
    private index and its ledger never go into a model folder).

    Args:
        model: a trained :class:`RDMModel`.
        source: a context source from :mod:`privdiff.rdm.conditioning`.
        text_encoder: a :class:`~privdiff.encoders.base.TextEncoder` in the model's space
            (optional if you always pass ``query_embeddings``).
        scheduler: a diffusers scheduler; default: DDIM rebuilt from the model's stored schedule.

    Every component must live in the model's embedding space (else ``EncoderMismatch``).
    """

    def __init__(
        self,
        model: RDMModel,
        source: ContextSource,
        text_encoder: Any = None,
        *,
        scheduler: Any = None,
    ):
        super().__init__()
        if getattr(source, "space_id", ""):
            model.check_space(source.space_id, what=f"{source.mode} context source")
        if text_encoder is not None:
            model.check_space(text_encoder.space_id, what="text encoder")
        self.model = model.eval()
        self.source = source
        self.text_encoder = text_encoder
        self.register_modules(unet=model.unet, scheduler=scheduler if scheduler is not None else model.ddim_scheduler())
        self.register_to_config(rdm_config=model.config.to_dict())
        #: Metadata saved with the model (generation defaults, training record, command).
        self.model_info: dict[str, Any] = {}

    # -- diffusers plumbing: the U-Net lives inside ``model`` ------------------------------------

    @property
    def device(self):
        return self.unet.device

    @property
    def dtype(self):
        return self.unet.dtype

    def to(self, *args: Any, **kwargs: Any) -> DPRDMPipeline:
        self.model.to(*args, **kwargs)
        return self

    def save_pretrained(self, save_directory: str | os.PathLike, **_: Any) -> None:
        """Write the model folder (:meth:`RDMModel.save_pretrained`) with this pipeline's scheduler."""
        self.model.save_pretrained(save_directory, extra=self.model_info, scheduler=self.scheduler)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        source: ContextSource | None = None,
        text_encoder: Any = None,
        scheduler: Any = None,
        **_: Any,
    ) -> DPRDMPipeline:
        """Load a model folder (v2 or v1 layout) into a pipeline.

        ``source`` defaults to the query-only context (no retrieval, no privacy cost); pass a
        :class:`~privdiff.rdm.conditioning.DPRetrievalContext` (or use :func:`make_pipeline`) to
        retrieve from a private index. ``scheduler`` defaults to the folder's ``scheduler/``.
        """
        from privdiff.rdm.conditioning import QueryOnlyContext
        from privdiff.rdm.model import read_model_info

        directory = Path(pretrained_model_name_or_path)
        model = RDMModel.from_pretrained(directory)
        if scheduler is None and (directory / "scheduler" / "scheduler_config.json").is_file():
            import diffusers

            cfg_class = _scheduler_class_of(directory)
            scheduler = getattr(diffusers, cfg_class).from_pretrained(directory / "scheduler")
        if source is None:
            source = QueryOnlyContext(model.config.k, model.embedding_dim, model.space_id)
        pipe = cls(model, source, text_encoder, scheduler=scheduler)
        pipe.model_info = {
            k: v for k, v in read_model_info(directory).items() if k not in ("format", "format_version", "model")
        }
        return pipe

    def __call__(
        self,
        prompts: Sequence[str] | None = None,
        *,
        query_embeddings: np.ndarray | None = None,
        images_per_prompt: int = 1,
        guidance_scale: float = 2.0,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        seed: int | None = None,
        generator: Any = None,
        request_id: str | None = None,
        batch_size: int = 64,
        progress: bool = False,
        output_type: str | None = None,
        return_dict: bool = True,
    ) -> GenerationOutput | DPRDMPipelineOutput | tuple:
        """Generate ``images_per_prompt`` images for each prompt (or query embedding row).

        Args:
            prompts: text prompts, one private query each.
            query_embeddings: (P, d) query embeddings instead of prompts.
            images_per_prompt: images drawn from each prompt's single context (no extra cost).
            guidance_scale: w in ε̂ = ε(∅) + w·(ε(C) − ε(∅)) (paper: 2.0; 1.25 on CIFAR-10).
            num_inference_steps: DDIM steps (paper: 100).
            eta: DDIM η (paper: 0).
            seed / generator: public randomness of x_T (give one, not both).
            request_id: passed to the ledger with the charge.
            batch_size: images per sampler batch (memory only; results do not depend on it).
            output_type: None (default) returns a :class:`GenerationOutput` (uint8 (P, n, H, W, C));
                ``"pil"``, ``"np"`` or ``"pt"`` return a :class:`DPRDMPipelineOutput` in diffusers'
                conventions (:mod:`privdiff.diffusion.output`).
            return_dict: with an ``output_type``, False returns ``(images, privacy)``.

        Raises:
            InvalidParameter, EncoderMismatch: bad input, checked before any charge.
            PrivacyBudgetExceeded: the prompts do not fit in the budget; nothing is produced.
        """
        import torch

        from privdiff.diffusion.output import postprocess
        from privdiff.diffusion.sampling import sample
        from privdiff.report.images import to_uint8

        # 1. Validate everything before the (possibly charged) context query.
        req = self.check_request(
            prompts,
            query_embeddings=query_embeddings,
            images_per_prompt=images_per_prompt,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            eta=eta,
            seed=seed,
            generator=generator,
            batch_size=batch_size,
            output_type=output_type,
        )
        images_per_prompt, seed, batch_size = (
            req["images_per_prompt"],
            req["seed"],
            req["batch_size"],
        )
        num_inference_steps = req["num_inference_steps"]
        queries, prompt_list = self._queries(prompts, query_embeddings)
        cfg = self.model.config
        n_total = len(prompt_list) * images_per_prompt
        if generator is None:
            generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
        # All of x_T is drawn up front (and before the charge: it is public randomness and the
        # largest allocation), so images do not depend on batch_size.
        x_T = torch.randn((n_total, cfg.channels, cfg.sample_size, cfg.sample_size), generator=generator)

        # 2. One query per prompt, all in one call (DP-RDM: one ledger charge for P queries).
        cond: Conditioning = self.source.condition(queries, request_id=request_id)

        # 3. Post-processing: sample n images per context. Contexts are expanded per batch, not
        # for all P·n images at once ((P·n, k, d) floats would dominate memory).
        contexts_p = torch.from_numpy(np.ascontiguousarray(cond.contexts))
        out, converted = [], []
        n_batches = math.ceil(n_total / batch_size)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            # One tick per DDIM step of every batch, so a long batch still shows movement.
            bar = tqdm(
                total=n_batches * num_inference_steps,
                desc=f"generate ({cond.mode})",
                unit="step",
                disable=None,
            )  # None: off when stderr is not a terminal
        try:
            for start in range(0, n_total, batch_size):
                rows = torch.arange(start, min(start + batch_size, n_total)) // images_per_prompt
                denoiser = ClassifierFreeGuidance(self.model, contexts_p[rows], guidance_scale)
                x0 = sample(
                    denoiser,
                    self.scheduler,
                    x_T[start : start + batch_size],
                    num_inference_steps=num_inference_steps,
                    eta=eta,
                    generator=generator,
                    callback=(lambda *a: bar.update(1)) if bar is not None else None,
                )
                out.append(to_uint8(x0))
                if output_type is not None:
                    converted.append(postprocess(x0, output_type))
        finally:
            if bar is not None:
                bar.close()
        images = np.concatenate(out).reshape(
            len(prompt_list), images_per_prompt, cfg.sample_size, cfg.sample_size, cfg.channels
        )
        result = GenerationOutput(
            images=images,
            prompts=prompt_list,
            mode=cond.mode,
            private=cond.private,
            privacy=dict(cond.privacy),
            settings={
                "images_per_prompt": images_per_prompt,
                "guidance_scale": req["guidance_scale"],
                "num_inference_steps": num_inference_steps,
                "eta": req["eta"],
                "seed": seed,
                "scheduler": _scheduler_name(self.scheduler),
                "space_id": cfg.space_id,
                "context_tokens": int(cond.contexts.shape[1]),
            },
        )
        if output_type is None:
            return result
        if output_type == "pil":
            flat: Any = [im for chunk in converted for im in chunk]
        elif output_type == "pt":
            flat = torch.cat(converted)
        else:
            flat = np.concatenate(converted)
        if not return_dict:
            return flat, result.privacy
        return DPRDMPipelineOutput(images=flat, privacy=result.privacy, generation=result)

    def check_request(
        self,
        prompts: Sequence[str] | None = None,
        *,
        query_embeddings: np.ndarray | None = None,
        images_per_prompt: int = 1,
        guidance_scale: float = 2.0,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        seed: int | None = None,
        generator: Any = None,
        batch_size: int = 64,
        output_type: str | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        """Validate a request without running it (no encoding, no charge); returns the checked
        values plus ``memory_bytes`` and ``num_images``. :meth:`__call__` runs this first; callers
        that must act before the charge (e.g. create an output folder) can run it earlier.

        Raises:
            InvalidParameter: any bad value, including an ``images_per_prompt`` whose arrays
                would not fit in :data:`MAX_GENERATION_BYTES` (the message names the maximum).
        """
        images_per_prompt = check_int("images_per_prompt", images_per_prompt, 1)
        guidance_scale = check_nonnegative("guidance_scale", guidance_scale)
        num_inference_steps = check_int(
            "num_inference_steps", num_inference_steps, 1, self.scheduler.config.num_train_timesteps
        )
        eta = check_in_range("eta", eta, 0.0, 1.0, low_inclusive=True)
        batch_size = check_int("batch_size", batch_size, 1)
        check_output_type(output_type, allow_none=True)
        if seed is not None and generator is not None:
            raise InvalidParameter("seed", seed, "None when a generator is given")
        if seed is not None:
            seed = check_seed(seed)
        n_prompts = _count_queries(prompts, query_embeddings)
        cfg = self.model.config
        k = int(getattr(self.source, "k", cfg.k))
        per_image, fixed = generation_memory(cfg.channels, cfg.sample_size, k, cfg.embedding_dim, batch_size)
        max_n = max(0, (MAX_GENERATION_BYTES - fixed) // (per_image * max(1, n_prompts)))
        if images_per_prompt > max_n:
            raise InvalidParameter(
                "images_per_prompt",
                images_per_prompt,
                f"an integer in [1, {max_n}]",
                hint=f"{n_prompts} prompt(s) × {images_per_prompt} images would need "
                f"{(fixed + per_image * n_prompts * images_per_prompt) / 2**30:.1f} GiB; "
                f"the limit is {MAX_GENERATION_BYTES / 2**30:.0f} GiB (run several smaller requests)",
            )
        return {
            "images_per_prompt": images_per_prompt,
            "guidance_scale": guidance_scale,
            "num_inference_steps": num_inference_steps,
            "eta": eta,
            "seed": seed,
            "batch_size": batch_size,
            "num_images": n_prompts * images_per_prompt,
            "memory_bytes": fixed + per_image * n_prompts * images_per_prompt,
            "image_bytes": cfg.channels * cfg.sample_size**2 * n_prompts * images_per_prompt,
        }

    def _queries(self, prompts: Sequence[str] | None, query_embeddings: np.ndarray | None):
        if (prompts is None) == (query_embeddings is None):
            raise InvalidParameter("prompts", prompts, "either prompts or query_embeddings (exactly one)")
        if prompts is not None:
            if isinstance(prompts, str):
                prompts = [prompts]
            prompt_list = list(prompts)
            if not prompt_list or not all(isinstance(p, str) and p.strip() for p in prompt_list):
                raise InvalidParameter("prompts", prompts, "a non-empty list of non-empty strings")
            if self.text_encoder is None:
                raise InvalidParameter("text_encoder", None, "a TextEncoder when prompts are given")
            queries = np.asarray(self.text_encoder.encode_text(prompt_list), dtype=np.float32)
            return queries, prompt_list
        q = np.asarray(query_embeddings, dtype=np.float32)
        if q.ndim != 2 or q.shape[0] < 1 or q.shape[1] != self.model.embedding_dim:
            raise InvalidParameter(
                "query_embeddings",
                f"array of shape {q.shape}",
                f"(P >= 1, {self.model.embedding_dim})",
            )
        return q, [None] * q.shape[0]


def _scheduler_name(scheduler: Any) -> str:
    """ "DDIM" for diffusers' DDIMScheduler (the name recorded before other schedulers were
    accepted), else the class name without "Scheduler"."""
    return type(scheduler).__name__.removesuffix("Scheduler")


def _scheduler_class_of(directory: Path) -> str:
    """The scheduler class a model folder names (``model_index.json``), DDIMScheduler by default."""
    import json

    index = directory / "model_index.json"
    if index.is_file():
        entry = json.loads(index.read_text()).get("scheduler")
        if isinstance(entry, list) and len(entry) == 2 and entry[0] == "diffusers" and isinstance(entry[1], str):
            return entry[1]
    return "DDIMScheduler"


# ---------------------------------------------------------------------------------------------
# Assembly from files (used by the CLI and the experiments)
# ---------------------------------------------------------------------------------------------

#: Generation settings used when neither the command line nor the model's ``config.json``
#: (``generation_defaults``) gives one. σ = 0.05 and k = 20 are the paper's MS-COCO regime
#: (z = σk/2 = 0.5, notes §4.6-4.7); q = 0.01 on the embedded private split (N = 49,320,
#: δ = 1/N) answers 543 queries within ε = 10 under the PLD accountant (``privdiff account
#: calibrate --solve queries``), with ≈ 490 private images in each subsample.
DEFAULT_GENERATION: dict[str, Any] = {
    "k": 20,
    "sigma": 0.05,
    "sample_rate": 0.01,
    "guidance_scale": 2.0,
    "num_inference_steps": 50,
    "lam": 1.0,
}

#: The shipped RDM checkpoint (package data ``privdiff/assets/checkpoints/rdm/fashion-mnist``).
SHIPPED_MODEL = RDM_MODEL
MODEL_ENV_VAR = RDM_MODEL.env_var


def resolve_model_dir(model: str | os.PathLike | None = None) -> Path:
    """The RDM model directory: ``model`` if given, else ``$PRIVDIFF_RDM_MODEL``, else the shipped
    one (package data, then the privdiff home; :func:`privdiff.checkpoints.resolve_checkpoint`).

    Raises:
        CheckpointError: no model there (the message names every place looked at).
    """
    return resolve_checkpoint(RDM_MODEL, model)


def generation_defaults(model_dir: str | os.PathLike) -> dict[str, Any]:
    """:data:`DEFAULT_GENERATION` updated with the model's stored ``generation_defaults``."""
    from privdiff.rdm.model import read_model_info

    return DEFAULT_GENERATION | dict(read_model_info(model_dir).get("generation_defaults", {}))


def public_embeddings_for(
    spec: str,
    image_encoder: Any,
    private_index: Any = None,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> Any:
    """:class:`~privdiff.retrieval.PublicEmbeddings` of a public dataset spec (cached encoding in
    ``cache_dir``, default privdiff's shared cache).

    With ``private_index``, a set sharing any image with it is refused before encoding."""
    from privdiff.data import load_dataset
    from privdiff.rdm.train import cached_embeddings
    from privdiff.retrieval import PublicEmbeddings, check_public_disjoint

    ds = load_dataset(spec)
    if private_index is not None:
        check_public_disjoint(private_index, ds.images, name=spec)
    emb = cached_embeddings(ds, image_encoder, private=False, cache_dir=cache_dir)
    return PublicEmbeddings(emb, space_id=image_encoder.space_id, source=spec)


def make_pipeline(
    model_dir: str | os.PathLike,
    *,
    mode: str = "dp-rdm",
    index: str | os.PathLike | None = None,
    ledger: str | os.PathLike | Any = None,
    k: int | None = None,
    sigma: float | None = None,
    sample_rate: float | None = None,
    lam: float = 1.0,
    mix_with: str = "query",
    public_data: str = "fashion-mnist:dprdm-public",
    private_data: str | None = None,
    encoder: str = "default",
    model: RDMModel | None = None,
    text_encoder: Any = None,
    image_encoder: Any = None,
    embedding_cache: str | os.PathLike | None = None,
    backend: str = "exact",
    ray_address: str = "local",
    ivf_nlist: int = 64,
    nprobe: int = 16,
) -> tuple[DPRDMPipeline, dict[str, Any]]:
    """Load a model, encoders and the context source for ``mode``; returns (pipeline, defaults).

    This is the one place a mode becomes a context source: the CLI, the experiments and the demo
    all assemble their pipelines here.

    Everything that can fail (missing ledger, index of another space, bad σ/q/k) fails here,
    before any query is charged.

    Args:
        encoder: encoder name for text and images; ``"default"`` means the model's own space
            (``model.config.space_id``), any other name must name that space.
        model, text_encoder, image_encoder: components already loaded (from ``model_dir`` and
            ``encoder``), so an application that builds several modes over one model loads them
            once; each is still checked to live in the model's space. Default: loaded here.
        embedding_cache: directory of the image-embedding cache (default: privdiff's shared one).
        ledger: a ledger path, or an already open :class:`~privdiff.accounting.Ledger` (used as is).
        backend: the dp-rdm top-k backend (:data:`BACKENDS`): ``"exact"`` (exact search; over the
            shards in this process when ``index`` is a sharded index directory), ``"ivf"`` (an
            IVF layout whose ``ivf_nlist`` coarse centroids are trained on ``public_data``,
            ``nprobe`` lists probed per query) or ``"ray"`` (a sharded index, one Ray actor per
            shard; ``ray_address`` is ``"local"`` or ``"auto"``). The shard actors start here,
            before anything is charged.
    """
    from privdiff.encoders import encoder_for_model, load_image_encoder, load_text_encoder
    from privdiff.evaluation.baselines import NonPrivateRetrievalContext, SubsampledRetrievalContext
    from privdiff.rdm.conditioning import (
        DPRetrievalContext,
        PublicRetrievalContext,
        QueryOnlyContext,
    )

    defaults = generation_defaults(model_dir)
    k = check_int("k", k if k is not None else defaults["k"], 1)
    model = model if model is not None else RDMModel.load(model_dir)
    # "default" is the model's own space here (an RDM trained in another space than the shipped
    # one works without naming its encoder); an explicit name that mismatches is refused below.
    encoder = encoder_for_model(encoder, model.space_id)
    text = text_encoder if text_encoder is not None else load_text_encoder(encoder)
    model.check_space(text.space_id, what=f"text encoder {encoder!r}")
    loaded_image_encoder = image_encoder

    def image_encoder():
        # Loaded on first use: the dp-rdm and no-retrieval modes never encode an image.
        enc = loaded_image_encoder if loaded_image_encoder is not None else load_image_encoder(encoder)
        model.check_space(enc.space_id, what=f"image encoder {encoder!r}")
        return enc

    if mode == "dp-rdm":
        from privdiff.accounting.ledger import Ledger
        from privdiff.retrieval import DPRetriever, PublicRetriever, load_index

        if index is None or ledger is None:
            raise InvalidParameter(
                "index/ledger",
                (index, ledger),
                "both given in dp-rdm mode (--index DIR --ledger FILE)",
            )
        sigma = sigma if sigma is not None else defaults["sigma"]
        sample_rate = sample_rate if sample_rate is not None else defaults["sample_rate"]
        idx, search = _dp_backend(
            index,
            backend,
            space_id=model.space_id,
            ray_address=ray_address,
            ivf_nlist=ivf_nlist,
            nprobe=nprobe,
            public=lambda private: public_embeddings_for(
                public_data, image_encoder(), private, cache_dir=embedding_cache
            ),
        )
        # An open Ledger may be passed: a process that keeps its own handle on the file (the service)
        # must not open it twice, since closing a second descriptor of a SQLite file drops the
        # process's POSIX locks on it (sqlite.org/howtocorrupt.html §2.2).
        book = ledger if isinstance(ledger, Ledger) else Ledger.open(ledger)
        retriever = DPRetriever(search, k, sigma, sample_rate, book, query_space=text.space_id)
        for message in setting_warnings(count=idx.count, k=k, sample_rate=sample_rate, delta=book.delta):
            warnings.warn(message, PrivdiffWarning, stacklevel=2)
        message = domain_warning(model_dir, idx)
        if message:
            warnings.warn(message, PrivdiffWarning, stacklevel=2)
        public = None
        if mix_with == "public" and lam < 1.0:
            public = PublicRetriever(
                public_embeddings_for(public_data, image_encoder(), idx, cache_dir=embedding_cache),
                k,
            )
        source: Any = DPRetrievalContext(retriever, lam=lam, mix_with=mix_with, public_retriever=public)
    elif mode == "public-retrieval":
        from privdiff.retrieval import PublicRetriever, load_index

        # With --index, the "public" set is checked to share no image with the private one.
        idx = None if index is None else load_index(index, expected_space=model.space_id, verify="size")
        source = PublicRetrievalContext(
            PublicRetriever(
                public_embeddings_for(public_data, image_encoder(), idx, cache_dir=embedding_cache),
                k,
            )
        )
    elif mode in ("non-private", "subsampled"):
        from privdiff.data import load_dataset
        from privdiff.rdm.train import cached_embeddings

        if private_data is None:
            raise InvalidParameter("private_data", None, f"a dataset spec for the {mode} baseline (--private-data)")
        if mode == "subsampled" and ledger is not None:
            # ε = ∞: a ledger here would suggest the outputs are covered by its budget.
            raise InvalidParameter(
                "ledger",
                str(ledger),
                "None in subsampled mode (σ = 0, ε = ∞: nothing is private, so nothing is charged)",
                hint="use mode='dp-rdm' for a privacy guarantee",
            )
        if mode == "subsampled":
            sample_rate = check_in_range(
                "sample_rate", sample_rate if sample_rate is not None else defaults["sample_rate"], 0.0, 1.0
            )
        enc = image_encoder()
        emb = cached_embeddings(load_dataset(private_data), enc, private=True, cache_dir=embedding_cache)
        if mode == "subsampled":
            source = SubsampledRetrievalContext(emb, k, sample_rate, space_id=enc.space_id)
        else:
            source = NonPrivateRetrievalContext(emb, k, space_id=enc.space_id)
    elif mode == "no-retrieval":
        source = QueryOnlyContext(k, model.embedding_dim, model.space_id)
    else:
        raise InvalidParameter("mode", mode, "dp-rdm, public-retrieval, non-private, subsampled or no-retrieval")
    return DPRDMPipeline(model, source, text), defaults


#: Top-k backends ``make_pipeline`` (and ``privdiff generate --backend``) can serve dp-rdm with.
BACKENDS = ("exact", "ivf", "ray")


def _dp_backend(
    index: str | os.PathLike,
    backend: str,
    *,
    space_id: str,
    ray_address: str,
    ivf_nlist: int,
    nprobe: int,
    public: Any,
) -> tuple[Any, Any]:
    """(index metadata, top-k backend) for ``backend`` over ``index`` (a plain or sharded index
    directory); every check that can fail runs here, before the ledger is ever charged."""
    from privdiff.errors import EncoderMismatch
    from privdiff.retrieval import (
        ExactTopK,
        IVFLayout,
        IVFTopK,
        PublicCoarseQuantizer,
        RayShardedTopK,
        ShardedIndex,
        ShardedTopK,
        is_sharded_index,
        load_index,
    )

    if backend not in BACKENDS:
        raise InvalidParameter("backend", backend, "one of " + ", ".join(BACKENDS))
    if ray_address not in ("local", "auto"):
        raise InvalidParameter("ray_address", ray_address, "'local' or 'auto'")
    if is_sharded_index(index):
        sharded = ShardedIndex.open(index)
        if sharded.space_id != space_id:
            raise EncoderMismatch(expected=space_id, found=sharded.space_id, what=f"index {str(index)!r}")
        if backend == "ivf":
            raise InvalidParameter(
                "backend", backend, "exact or ray for a sharded index", hint="ivf needs the unsharded index"
            )
        return sharded, (ShardedTopK(sharded) if backend == "exact" else RayShardedTopK(sharded, address=ray_address))
    if backend == "ray":
        raise InvalidParameter(
            "backend",
            backend,
            "exact or ivf for an unsharded index",
            hint=f"split {str(index)!r} with `privdiff index shard INDEX --shards S --out DIR` first",
        )
    idx = load_index(index, expected_space=space_id)
    if backend == "ivf":
        check_int("nprobe", nprobe, 1, ivf_nlist)
        quantizer = PublicCoarseQuantizer.train(public(idx), ivf_nlist)  # public rows only
        return idx, IVFTopK(idx, IVFLayout(idx, quantizer), nprobe=nprobe)
    return idx, ExactTopK(idx)


def generate_to_directory(
    pipeline: DPRDMPipeline,
    prompts: Sequence[str],
    out: str | os.PathLike,
    *,
    label_grid: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run the pipeline and write the output folder (:mod:`privdiff.report.outputs`):
    ``images/p<i>_<j>.png``, ``images.npz`` (key ``images``, (P·n, H, W, C) prompt-major),
    ``grid.png`` (one row per prompt, labelled with it; ``label_grid=False`` for bare tiles) and
    ``generation.json``.

    Everything that could fail is checked before the pipeline's charge: the request
    (:meth:`DPRDMPipeline.check_request`, memory included) and the folder (not a file, no earlier
    output, writable, enough free space). A refused request (bad input, over budget) leaves no
    files and no folder it created.
    """
    import json

    from privdiff.report.images import save_grid, save_labelled_grid
    from privdiff.report.outputs import OutputDir, files_record

    req = pipeline.check_request(prompts, **kwargs)
    # PNG + npz of the images, plus the grid at scale 3 (9× the pixels, RGB) and slack.
    estimate = 2 * req["image_bytes"] + 27 * req["image_bytes"] + (1 << 20)
    target = OutputDir.prepare(out, record="generation.json", estimate_bytes=estimate)
    try:
        result = pipeline(prompts, **kwargs)
        p, n = result.images.shape[:2]
        target.write_images(result.flat_images(), [f"p{i:02d}_{j:03d}" for i in range(p) for j in range(n)])
        if label_grid:
            labels = [f"{i}: {t}" if t is not None else f"query {i}" for i, t in enumerate(result.prompts)]
            title = _setting_title(result)
            target.write_grid(lambda path: save_labelled_grid(list(result.images), labels, path, title=title, scale=3))
        else:
            target.write_grid(lambda path: save_grid(result.flat_images(), path, ncols=n, scale=3))
        record = result.record() | {"files": files_record("p<prompt>_<image>.png", "generation.json")}
        target.commit(json.dumps(record, indent=2) + "\n")
    except BaseException:
        target.abort()
        raise
    return record


def _setting_title(result: GenerationOutput) -> str:
    pv, st = result.privacy, result.settings
    if result.mode == "dp-rdm":
        head = (
            f"DP-RDM eps_spent={pv.get('epsilon_spent', 0):.3g} delta={pv.get('delta', 0):.2g} "
            f"sigma={pv.get('sigma')} q={pv.get('sample_rate')} k={pv.get('k')}"
        )
    elif result.mode == "subsampled":
        head = f"SUBSAMPLED, NOISELESS baseline (eps = inf, NOT PRIVATE) q={pv.get('sample_rate')} k={pv.get('k')}"
    elif not result.private:
        head = "NON-PRIVATE baseline (eps = inf)"
    else:
        head = f"{result.mode} baseline (eps = 0)"
    return f"{head}  w={st['guidance_scale']:g} steps={st['num_inference_steps']} seed={st['seed']}"


# ---------------------------------------------------------------------------------------------
# Checks before anything heavy or charged: budget, setting warnings, domain
# ---------------------------------------------------------------------------------------------


def queries_that_fit(ledger: Any, query: Any, *, limit: int = 10**9) -> int:
    """Largest T ≤ ``limit`` with ``ledger.preview(query, T)`` within the budget (0 if none).

    ε is non-decreasing in the number of queries, so an exponential then binary search over
    counts needs O(log T) accountant calls.
    """
    budget = ledger.epsilon_budget
    if ledger.preview(query, 1) > budget:
        return 0
    lo, hi = 1, 2
    while hi <= limit and ledger.preview(query, hi) <= budget:
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:  # invariant: lo fits, hi does not (or is past the limit)
        mid = (lo + hi) // 2
        if ledger.preview(query, mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def check_budget(ledger_path: str | os.PathLike, *, sigma: float, sample_rate: float, k: int, count: int) -> None:
    """Cheap early refusal: raise :class:`PrivacyBudgetExceeded` (with how many queries of this
    setting still fit) if ``count`` queries of (σ, q, k) would not fit in the ledger's budget.

    Reads only the ledger; meant to run before models and encoders load. It charges nothing: the
    authoritative, atomic check-and-charge still happens in the retriever.
    """
    from privdiff.accounting import DPRDMQuery
    from privdiff.accounting.ledger import Ledger

    query = DPRDMQuery(sigma=sigma, sample_rate=sample_rate, k=k)
    count = check_int("count", count, 1)
    book = Ledger.open(ledger_path)
    try:
        would_be = book.preview(query, count)
        if would_be > book.epsilon_budget:
            raise PrivacyBudgetExceeded(
                epsilon_spent=book.status().epsilon_spent,
                epsilon_would_be=would_be,
                epsilon_budget=book.epsilon_budget,
                delta=book.delta,
                queries_requested=count,
                queries_remaining=queries_that_fit(book, query, limit=count - 1),
            )
    finally:
        book.close()


#: Context slots that may be padding before we warn: with q·N expected subsampled records and k
#: slots, the zero pad fills max(0, k − q·N) of them on average.
SUBSAMPLE_MARGIN = 2.0


def setting_warnings(*, count: int, k: int, sample_rate: float, delta: float) -> list[str]:
    """Warnings for a DP-RDM setting whose output would be mostly meaningless (empty if fine)."""
    out = []
    expected = sample_rate * count
    if expected < k:
        out.append(
            f"expected subsample q·N = {sample_rate:g}·{count} = {expected:.3g} records < k = {k}: most of each "
            f"context is zero padding. Use --sample-rate >= {min(1.0, SUBSAMPLE_MARGIN * k / count):.3g} "
            f"(= {SUBSAMPLE_MARGIN:g}·k/N) or --k <= {max(1, int(expected / SUBSAMPLE_MARGIN))}"
        )
    if delta >= 1.0 / count:
        out.append(
            f"the ledger's δ = {delta:.3g} is >= 1/N = {1.0 / count:.3g} for this index of N = {count}: "
            "standard guidance is δ ≪ 1/N (a δ this large allows releasing some records outright)"
        )
    return out


#: File in a model directory with public reference embeddings for :func:`domain_warning`.
DOMAIN_REFERENCE_FILE = "domain_reference.npz"
#: Public rows kept as the reference (evenly spaced over the model's public training set).
DOMAIN_REFERENCE_ROWS = 1000
#: Warn when the private set's mean max-similarity to the reference falls below this fraction of
#: the public set's own (held-out public rows against the reference). Measured with the default
#: encoder (effnet-lite0-64px-c/v1) on subsets (encoding runs ~100 images/s on this CPU): the
#: reference and baseline from 1,000 rows of fashion-mnist:dprdm-public (500 reference, 500
#: held out; baseline 0.625), then 1,000 rows of each set (LFW: all 200 / the 100 faces):
#: Fashion-MNIST dprdm-private 0.642 (ratio 1.03) and test 0.643 (1.03) do not warn; MNIST
#: (mnist5k) 0.553 (0.89), sklearn digits 0.537 (0.86), LFW 0.449 (0.72) and LFW faces 0.344
#: (0.55) do. 0.95 leaves a margin on both sides. The check costs ~0.1 s at generate time
#: (1,000 private rows × 1,000 references × d = 1280; 0.09 s measured on a 49,320-row index).
#: Re-measured in the shipped model's space (fmnist-public-cnn/v1, its domain_reference.npz:
#: baseline 0.949) on 1,000 rows each: dprdm-private 0.997, its winter tops 0.995, test 0.998 do not
#: warn; mnist5k 0.757, digits 0.750, LFW faces 0.908 and non-faces 0.852 (100 each) do.
DOMAIN_RATIO_THRESHOLD = 0.95


def write_domain_reference(model_dir: str | os.PathLike, public_embeddings: np.ndarray, space_id: str) -> Path:
    """Store :data:`DOMAIN_REFERENCE_ROWS` evenly spaced public embeddings (float16) and the public
    set's own mean max-similarity to them (measured on other public rows) in ``model_dir``."""
    from privdiff.retrieval.private import mean_max_similarity

    emb = np.asarray(public_embeddings, dtype=np.float32)
    n = emb.shape[0]
    if emb.ndim != 2 or n < 2:
        raise InvalidParameter("public_embeddings", f"array of shape {emb.shape}", "(N >= 2, d)")
    # Reference and held-out rows are disjoint (a row's similarity to itself is 1): at most
    # half of the set each, evenly spaced.
    m = min(DOMAIN_REFERENCE_ROWS, n // 2)
    ref_idx = np.unique(np.linspace(0, n - 1, num=m).round().astype(np.int64))
    rest = np.setdiff1d(np.arange(n), ref_idx)
    held = rest[np.unique(np.linspace(0, len(rest) - 1, num=min(m, len(rest))).round().astype(np.int64))]
    reference = emb[ref_idx]
    baseline = mean_max_similarity(emb[held], reference)
    path = Path(model_dir) / DOMAIN_REFERENCE_FILE
    np.savez(
        path,
        reference=reference.astype(np.float16),
        baseline=np.float64(baseline),
        space_id=np.str_(space_id),
    )
    return path


def domain_warning(model_dir: str | os.PathLike, index: Any) -> str | None:
    """A warning when the private index lies far outside the model's public domain, else None.

    Needs the model's :data:`DOMAIN_REFERENCE_FILE` (written by ``privdiff train rdm``, or by
    :func:`write_domain_reference`); without it the check is skipped.
    """
    from privdiff.retrieval.private import domain_similarity

    path = Path(model_dir) / DOMAIN_REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            reference, baseline, space = z["reference"], float(z["baseline"]), str(z["space_id"])
    except Exception:  # noqa: BLE001 - a broken optional file only disables the warning
        return None
    if space != index.space_id or reference.ndim != 2 or reference.shape[1] != index.dim or baseline <= 0:
        return None
    sim = domain_similarity(index, reference)
    if sim < DOMAIN_RATIO_THRESHOLD * baseline:
        return (
            f"the private index looks far outside the model's domain: its mean nearest-neighbour similarity "
            f"to the model's public training set is {sim:.3f}, vs {baseline:.3f} for the public set itself "
            f"(warning below {DOMAIN_RATIO_THRESHOLD:g}×); retrieved contexts will be poor whatever ε is spent"
        )
    return None
