"""DP-RDM on an unCLIP-class decoder: prompt → CLIP text query → DP release → rescale → decoder.

    prompt ─ CLIP text tower ─► q̂ (public) ─► DPRetrievalContext (ledger charge → subsample → top-k
             → mean + N(0, σ²I), then λ-mixing with q̂) ─► c = mean of the k context tokens
             ─► c · (ν / ‖c‖) ─► decoder(image_embeds = …) ─► images

The private index holds unit CLIP image embeddings (``privdiff index build --encoder clip:DIR``),
so the release r̃ lives on (a noisy version of) the unit sphere, while the decoders were trained on
*raw* ``image_embeds``, whose norm ν is far from 1 and nearly constant across images. Handing the
decoder a vector of the wrong length changes what it draws (it is out of its training
distribution), so the conditioning vector keeps the direction of the λ-mixed release and gets the
length ν the decoder expects.

**The choice of ν** (:func:`public_embed_norm`): the mean ‖image_embeds‖ of the same CLIP image
tower over public images (default: 64 evenly spaced images of the ``--public-data`` set), or a
value given explicitly (``embed_norm=``, e.g. the mean norm on the decoder's own training
distribution when you know it). It is never measured on the private set: ν is one number, but a
statistic of private data released without noise would leak. Everything after the release (the
mixing, the rescaling, the decoder) is post-processing and costs no privacy; the ledger is charged
exactly as for privdiff's own RDM (one query per prompt, one atomic charge per request, after all
checks).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from privdiff.decoders.adapters import FAMILIES, check_decoder_files, load_decoder
from privdiff.errors import EncoderMismatch, InvalidParameter, check_int, check_nonnegative, check_positive
from privdiff.rdm.pipeline import MAX_GENERATION_BYTES, GenerationOutput, check_seed

#: Public images averaged for ν when no ``embed_norm`` is given.
NORM_CALIBRATION_IMAGES = 64

#: Below this length a mixed context has no usable direction; the query direction is used
#: instead (Gaussian noise makes an exactly-zero release a probability-0 event).
_MIN_NORM = 1e-8


@dataclass(frozen=True)
class DecoderOutput(GenerationOutput):
    """:class:`~privdiff.rdm.pipeline.GenerationOutput` (uint8 (P, n, H, W, 3)) plus PIL access."""

    def pil_images(self) -> list[list[Any]]:
        """The images as PIL, ``[prompt][image]``."""
        from PIL import Image

        return [[Image.fromarray(img) for img in row] for row in self.images]


def rescale_to_norm(vectors: np.ndarray, norm: float, fallback: np.ndarray) -> np.ndarray:
    """Rows of ``vectors`` with length ``norm`` (direction kept); a (near-)zero row takes the
    direction of the matching ``fallback`` row (the public query)."""
    v = np.asarray(vectors, dtype=np.float64)
    lengths = np.linalg.norm(v, axis=1, keepdims=True)
    fb = np.asarray(fallback, dtype=np.float64)
    v = np.where(lengths > _MIN_NORM, v, fb)
    lengths = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / lengths * norm).astype(np.float32)


def public_embed_norm(encoder: Any, images: np.ndarray, count: int = NORM_CALIBRATION_IMAGES) -> float:
    """ν: mean ‖image_embeds‖ of ``encoder`` over ``count`` evenly spaced public ``images``."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] < 1:
        raise InvalidParameter("images", f"array of shape {images.shape}", "public images (N >= 1, H, W, C)")
    idx = np.unique(np.linspace(0, images.shape[0] - 1, num=min(count, images.shape[0])).round().astype(np.int64))
    raw = encoder.raw_image_embeds(images[idx])
    return float(np.linalg.norm(raw, axis=1).mean())


class DecoderDPRDMPipeline:
    """DP-RDM with an unCLIP-class decoder. Same call contract as
    :class:`~privdiff.rdm.pipeline.DPRDMPipeline` (``check_request`` then ``__call__``, one charge
    per request, :class:`GenerationOutput` with uint8 images), so ``generate_to_directory`` and the
    CLI drive it unchanged.

    Args:
        decoder: an adapter from :mod:`privdiff.decoders.adapters`.
        source: a context source (:class:`~privdiff.rdm.conditioning.DPRetrievalContext`, or
            :class:`~privdiff.rdm.conditioning.QueryOnlyContext` for the ε = 0 baseline).
        text_encoder: the CLIP text tower of the source's space.
        embed_norm: ν, the length of the vector handed to the decoder.
        embed_norm_source: how ν was obtained (recorded in every output).
    """

    def __init__(
        self,
        decoder: Any,
        source: Any,
        text_encoder: Any,
        *,
        embed_norm: float,
        embed_norm_source: str = "given",
    ):
        self.decoder = decoder
        self.source = source
        self.text_encoder = text_encoder
        self.embed_norm = check_positive("embed_norm", embed_norm)
        self.embed_norm_source = embed_norm_source
        space = getattr(source, "space_id", "")
        if text_encoder is not None and space and text_encoder.space_id != space:
            raise EncoderMismatch(expected=space, found=text_encoder.space_id, what="text encoder")
        dim = int(getattr(source, "dim", None) or getattr(getattr(source, "retriever", None), "dim", 0) or 0)
        if dim and dim != decoder.embed_dim:
            raise InvalidParameter(
                "encoder",
                f"a {dim}-d CLIP space ({space})",
                f"the {decoder.embed_dim}-d image-embedding space the {decoder.family} decoder was trained in",
            )

    def check_request(
        self,
        prompts: Sequence[str] | None = None,
        *,
        images_per_prompt: int = 1,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        seed: int | None = None,
        generator: Any = None,
        batch_size: int = 4,
        height: int | None = None,
        width: int | None = None,
        query_embeddings: Any = None,
        **_: Any,
    ) -> dict[str, Any]:
        """Validate a request (no encoding, no charge); raises InvalidParameter on any bad value."""
        if query_embeddings is not None:
            raise InvalidParameter("query_embeddings", "an array", "None: decoder pipelines take text prompts")
        prompt_list = _check_prompts(prompts)
        images_per_prompt = check_int("images_per_prompt", images_per_prompt, 1)
        gs = self.decoder.default_guidance if guidance_scale is None else guidance_scale
        gs = check_nonnegative("guidance_scale", gs)
        steps = self.decoder.default_steps if num_inference_steps is None else num_inference_steps
        steps = check_int("num_inference_steps", steps, 1, int(self.decoder.pipe.scheduler.config.num_train_timesteps))
        batch_size = check_int("batch_size", batch_size, 1)
        if seed is not None and generator is not None:
            raise InvalidParameter("seed", seed, "None when a generator is given")
        if seed is not None:
            seed = check_seed(seed)
        height, width = self.decoder.check_size(height, width)
        n = len(prompt_list) * images_per_prompt
        image_bytes = 3 * height * width * n
        # uint8 output twice + the float32 initial latents for every image.
        per_image = 2 * 3 * height * width + 4 * int(np.prod(self.decoder.latent_shape(1, height, width)))
        if per_image * n > MAX_GENERATION_BYTES:
            max_n = max(0, MAX_GENERATION_BYTES // (per_image * len(prompt_list)))
            raise InvalidParameter("images_per_prompt", images_per_prompt, f"an integer in [1, {max_n}] at this size")
        return {
            "prompts": prompt_list,
            "images_per_prompt": images_per_prompt,
            "guidance_scale": gs,
            "num_inference_steps": steps,
            "seed": seed,
            "batch_size": batch_size,
            "height": height,
            "width": width,
            "num_images": n,
            "memory_bytes": per_image * n,
            "image_bytes": image_bytes,
        }

    def __call__(
        self,
        prompts: Sequence[str],
        *,
        images_per_prompt: int = 1,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        seed: int | None = None,
        generator: Any = None,
        request_id: str | None = None,
        batch_size: int = 4,
        height: int | None = None,
        width: int | None = None,
        progress: bool = False,
    ) -> DecoderOutput:
        """Generate ``images_per_prompt`` images per prompt; each prompt is one private query.

        Raises:
            InvalidParameter, EncoderMismatch: bad input, checked before any charge.
            PrivacyBudgetExceeded: the prompts do not fit in the budget; nothing is produced.
        """
        import torch

        req = self.check_request(
            prompts,
            images_per_prompt=images_per_prompt,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            seed=seed,
            generator=generator,
            batch_size=batch_size,
            height=height,
            width=width,
        )
        prompt_list, n, bs = req["prompts"], req["images_per_prompt"], req["batch_size"]
        h, w = req["height"], req["width"]
        queries = np.asarray(self.text_encoder.encode_text(prompt_list), dtype=np.float32)  # public
        if generator is None:
            s = req["seed"] if req["seed"] is not None else int(torch.seed() % 2**63)
            generator = torch.Generator().manual_seed(s)
        # Public initial latents for every image, drawn before the charge, so with a deterministic
        # scheduler (DDIM, η = 0) the images do not depend on the batch size; a stochastic one
        # (Kandinsky's DDPM) also draws step noise from the (public) generator, batch by batch.
        total = len(prompt_list) * n
        latents = torch.randn(self.decoder.latent_shape(total, h, w), generator=generator)
        device_gen = torch.Generator(device=self.decoder.device).manual_seed(
            int(torch.randint(0, 2**62, (1,), generator=generator))
        )

        cond = self.source.condition(queries, request_id=request_id)  # the one charged step
        # Post-processing from here on: one vector per prompt, with the decoder's norm.
        embeds = rescale_to_norm(cond.contexts.mean(axis=1), self.embed_norm, queries)
        rows = np.repeat(embeds, n, axis=0)
        row_prompts = [p for p in prompt_list for _ in range(n)]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=-(-total // bs) * req["num_inference_steps"], desc=f"generate ({self.decoder.family})")
        out = []
        try:
            for start in range(0, total, bs):
                stop = min(start + bs, total)
                out.append(
                    self.decoder.generate(
                        rows[start:stop],
                        row_prompts[start:stop],
                        latents[start:stop],
                        guidance_scale=req["guidance_scale"],
                        num_inference_steps=req["num_inference_steps"],
                        generator=device_gen,
                        height=h,
                        width=w,
                        on_step=(lambda: bar.update(1)) if bar is not None else None,
                    )
                )
        finally:
            if bar is not None:
                bar.close()
        images = np.concatenate(out).reshape(len(prompt_list), n, h, w, 3)
        return DecoderOutput(
            images=images,
            prompts=list(prompt_list),
            mode=cond.mode,
            private=cond.private,
            privacy=dict(cond.privacy),
            settings={
                "images_per_prompt": n,
                "guidance_scale": req["guidance_scale"],
                "num_inference_steps": req["num_inference_steps"],
                "seed": req["seed"],
                "decoder": self.decoder.family,
                "scheduler": type(self.decoder.pipe.scheduler).__name__,
                "space_id": getattr(self.source, "space_id", ""),
                "height": h,
                "width": w,
                "embed_norm": self.embed_norm,
                "embed_norm_source": self.embed_norm_source,
                "query_encoder": getattr(self.text_encoder, "query_kind", "clip-text"),
            },
        )


def _check_prompts(prompts: Any) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    try:
        out = list(prompts)
    except TypeError:
        raise InvalidParameter("prompts", prompts, "a non-empty list of non-empty strings") from None
    if not out or not all(isinstance(p, str) and p.strip() for p in out):
        raise InvalidParameter("prompts", prompts, "a non-empty list of non-empty strings")
    return out


def make_decoder_pipeline(
    pipeline_dir: str | os.PathLike,
    *,
    pipeline_type: str,
    encoder: Any,
    mode: str = "dp-rdm",
    index: str | os.PathLike | None = None,
    ledger: str | os.PathLike | None = None,
    k: int | None = None,
    sigma: float | None = None,
    sample_rate: float | None = None,
    lam: float = 1.0,
    embed_norm: float | None = None,
    public_data: str = "fashion-mnist:dprdm-public",
    ip_adapter: str | os.PathLike | None = None,
    ip_adapter_scale: float = 1.0,
    noise_level: int = 0,
    prior: str | os.PathLike | None = None,
    device: str = "cpu",
    dtype: Any = None,
    decoder: Any = None,
) -> tuple[DecoderDPRDMPipeline, dict[str, Any]]:
    """Assemble DP-RDM over a local decoder folder; returns (pipeline, defaults).

    Everything that can fail (folders, index space, decoder dimension, σ/q/k, the ledger) fails
    here, before any query is charged.

    Args:
        pipeline_dir: the decoder's diffusers folder; ``pipeline_type`` one of :data:`FAMILIES`.
        encoder: ``"clip:<folder>"`` or a loaded :class:`~privdiff.encoders.hfclip.CLIPEncoder`
            (the space the index was built in and the decoder was trained in).
        mode: ``"dp-rdm"`` (needs ``index`` and ``ledger``) or ``"no-retrieval"`` (ε = 0 baseline:
            the prompt's text embedding, rescaled, conditions the decoder).
        k, sigma, sample_rate: the mechanism (defaults: :data:`privdiff.rdm.pipeline.DEFAULT_GENERATION`).
        lam: λ, weight of the private release against the query embedding (1 = pure release).
        embed_norm: ν (module docstring); default measured on ``public_data``.
        prior: a local ``kandinsky-2-2-prior`` folder: queries are the prior's predicted image
            embeddings of the prompts (:mod:`privdiff.decoders.prior`) instead of text embeddings.
        decoder: an already built adapter instead of loading ``pipeline_dir``.
    """
    import warnings

    from privdiff.encoders import load_text_encoder
    from privdiff.errors import PrivdiffWarning
    from privdiff.rdm.conditioning import DPRetrievalContext, QueryOnlyContext
    from privdiff.rdm.pipeline import DEFAULT_GENERATION, setting_warnings

    if pipeline_type not in FAMILIES:
        raise InvalidParameter("pipeline_type", pipeline_type, "one of " + ", ".join(FAMILIES))
    if mode not in ("dp-rdm", "no-retrieval"):
        raise InvalidParameter("mode", mode, "dp-rdm or no-retrieval with --pipeline")
    defaults = dict(DEFAULT_GENERATION)
    k = check_int("k", k if k is not None else defaults["k"], 1)
    sigma = sigma if sigma is not None else defaults["sigma"]
    sample_rate = sample_rate if sample_rate is not None else defaults["sample_rate"]
    if embed_norm is not None:
        embed_norm = check_positive("embed_norm", embed_norm)
    if decoder is None:  # a missing folder fails before any model loads
        check_decoder_files(pipeline_type, pipeline_dir, ip_adapter)
    clip = load_text_encoder(encoder) if isinstance(encoder, str) else encoder
    if not hasattr(clip, "raw_image_embeds"):
        raise InvalidParameter("encoder", encoder, "a CLIP encoder ('clip:<folder>') with image and text towers")
    if prior is not None:
        from privdiff.decoders.prior import load_prior

        query_encoder: Any = load_prior(prior, clip, device=device, dtype=dtype)
    else:
        if not getattr(clip, "has_text", True):
            clip.encode_text(["probe"])  # raises the CheckpointError naming the missing text tower
        query_encoder = clip
    if mode == "dp-rdm":
        from privdiff.accounting.ledger import Ledger
        from privdiff.retrieval import DPRetriever, load_index

        if index is None or ledger is None:
            raise InvalidParameter(
                "index/ledger", (index, ledger), "both given in dp-rdm mode (--index DIR --ledger FILE)"
            )
        idx = load_index(index, expected_space=clip.space_id)
        book = Ledger.open(ledger)
        retriever = DPRetriever(idx, k, sigma, sample_rate, book, query_space=clip.space_id)
        for message in setting_warnings(count=idx.count, k=k, sample_rate=sample_rate, delta=book.delta):
            warnings.warn(message, PrivdiffWarning, stacklevel=2)
        source: Any = DPRetrievalContext(retriever, lam=lam, mix_with="query")
    else:
        source = QueryOnlyContext(k, clip.dim, clip.space_id)
    if decoder is None:
        decoder = load_decoder(
            pipeline_type,
            pipeline_dir,
            clip_encoder=clip,
            ip_adapter=ip_adapter,
            ip_adapter_scale=ip_adapter_scale,
            noise_level=noise_level,
            device=device,
            dtype=dtype,
        )
    if decoder.embed_dim != clip.dim:
        raise InvalidParameter(
            "encoder",
            f"{encoder} ({clip.dim}-d)",
            f"the {decoder.embed_dim}-d CLIP image space of the {pipeline_type} decoder",
        )
    if embed_norm is None:
        from privdiff.data import load_dataset

        embed_norm = public_embed_norm(clip, load_dataset(public_data).images)
        norm_source = f"mean ‖image_embeds‖ on {NORM_CALIBRATION_IMAGES} images of {public_data}"
    else:
        norm_source = "given"
    pipe = DecoderDPRDMPipeline(decoder, source, query_encoder, embed_norm=embed_norm, embed_norm_source=norm_source)
    defaults |= {"guidance_scale": decoder.default_guidance, "num_inference_steps": decoder.default_steps}
    return pipe, defaults
