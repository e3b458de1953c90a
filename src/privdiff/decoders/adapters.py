"""One adapter per unCLIP-class decoder family: a released CLIP image embedding → images.

Each adapter owns a diffusers pipeline and knows the one argument through which that family takes
a CLIP image embedding, and its unconditional ("negative") counterpart for classifier-free
guidance:

==================  ===========================================  ==========================================
family              conditioning argument                        negative embedding (the family's own)
==================  ===========================================  ==========================================
``kandinsky22``     ``KandinskyV22Pipeline(image_embeds=...)``   ``image_embeds`` of an all-zero pixel
                                                                 tensor (``KandinskyV22PriorPipeline
                                                                 .get_zero_embed``), passed explicitly
``stable-unclip``   ``StableUnCLIPImg2ImgPipeline(image_embeds=  zeros (the pipeline's ``_encode_image``);
                    ..., noise_level=...)`` + the prompt          the prompt conditions the U-Net as usual
``ip-adapter``      ``StableDiffusionPipeline(                   zeros (``encode_image`` for IP-Adapter)
                    ip_adapter_image_embeds=[...])`` + prompt
==================  ===========================================  ==========================================

The adapters are post-processing of the DP release: they receive the released (rescaled)
vector, the public prompt and the public initial latents, nothing else. Everything is loaded
from local folders with ``local_files_only=True``; a missing folder raises
:class:`~privdiff.errors.CheckpointError` naming what to download elsewhere.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from privdiff.errors import CheckpointError, InvalidParameter, check_int

FAMILIES = ("kandinsky22", "stable-unclip", "ip-adapter")

_WHAT_TO_DOWNLOAD = {
    "kandinsky22": "the decoder folder of kandinsky-community/kandinsky-2-2-decoder (model_index.json, unet/, movq/, "
    "scheduler/)",
    "stable-unclip": "a StableUnCLIPImg2ImgPipeline folder such as stabilityai/stable-diffusion-2-1-unclip",
    "ip-adapter": "a Stable Diffusion pipeline folder (e.g. a local copy of an SD 1.5 checkpoint in diffusers format)",
}


def _check_pipeline_folder(path: str | Path, family: str) -> Path:
    p = Path(path).expanduser()
    if not (p / "model_index.json").is_file():
        state = "does not exist" if not p.exists() else "has no model_index.json"
        raise CheckpointError(
            f"{family} pipeline folder {str(p)!r} {state}; nothing is downloaded at run time: download "
            f"{_WHAT_TO_DOWNLOAD[family]} elsewhere (e.g. `huggingface-cli download <repo> --local-dir DIR`) "
            "and pass that folder"
        )
    return p


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """float (N, H, W, C) in [0, 1] (diffusers' ``output_type="np"``) → uint8."""
    return np.clip(np.asarray(images, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


class _Decoder:
    """Shared plumbing; subclasses set ``family`` and implement ``_run``."""

    family = ""
    default_guidance = 4.0
    default_steps = 50

    def __init__(self, pipe: Any, *, device: str = "cpu"):
        self.pipe = pipe
        self.device = device
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)

    # --- shapes -------------------------------------------------------------------------------
    @property
    def dtype(self):
        return self.pipe.unet.dtype

    @property
    def latent_channels(self) -> int:
        return int(self.pipe.unet.config.in_channels)

    @property
    def scale_factor(self) -> int:
        """Pixels per latent pixel."""
        raise NotImplementedError

    @property
    def size_multiple(self) -> int:
        """Heights/widths must be multiples of this (latents divisible through every U-Net level)."""
        return self.scale_factor * 2 ** (len(self.pipe.unet.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        return int(self.pipe.unet.config.sample_size) * self.scale_factor

    def check_size(self, height: Any, width: Any) -> tuple[int, int]:
        m = self.size_multiple
        out = []
        for name, v in (("height", height), ("width", width)):
            v = self.default_size if v is None else check_int(name, v, m, 4096)
            if v % m:
                raise InvalidParameter(name, v, f"a multiple of {m} in [{m}, 4096] for this {self.family} decoder")
            out.append(v)
        return out[0], out[1]

    def latent_shape(self, n: int, height: int, width: int) -> tuple[int, int, int, int]:
        f = self.scale_factor
        return (n, self.latent_channels, height // f, width // f)

    # --- generation ---------------------------------------------------------------------------
    def do_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    def generate(
        self,
        embeds: np.ndarray,
        prompts: list[str],
        latents: Any,
        *,
        guidance_scale: float,
        num_inference_steps: int,
        generator: Any,
        height: int,
        width: int,
        on_step: Any = None,
    ) -> np.ndarray:
        """uint8 (B, height, width, 3) from B image embeddings (B, d), B public prompts, B latents."""
        import torch

        e = torch.from_numpy(np.ascontiguousarray(embeds, dtype=np.float32)).to(self.device, self.dtype)
        kwargs = dict(
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            latents=latents.to(self.device, self.dtype),
            output_type="np",
        )
        if on_step is not None:

            def step_end(pipe, i, t, callback_kwargs):
                on_step()
                return callback_kwargs

            kwargs["callback_on_step_end"] = step_end
        with torch.inference_mode():
            images = self._run(e, list(prompts), kwargs)
        return _to_uint8(images)

    def _run(self, embeds, prompts: list[str], kwargs: dict) -> np.ndarray:
        raise NotImplementedError


class Kandinsky22Decoder(_Decoder):
    """Kandinsky 2.2's decoder (``KandinskyV22Pipeline``); the prompt only reached the query.

    Args:
        pipe: a ``KandinskyV22Pipeline``.
        negative_image_embed: (d,) the unconditional embedding, i.e. the CLIP image tower's
            ``image_embeds`` of a zero pixel tensor (:meth:`CLIPEncoder.zero_image_embed`).
    """

    family = "kandinsky22"
    default_guidance = 4.0

    def __init__(self, pipe: Any, negative_image_embed: np.ndarray, *, device: str = "cpu"):
        super().__init__(pipe, device=device)
        neg = np.asarray(negative_image_embed, dtype=np.float32).reshape(-1)
        if neg.shape[0] != self.embed_dim:
            raise InvalidParameter(
                "encoder",
                f"a {neg.shape[0]}-d CLIP space",
                f"the {self.embed_dim}-d image-embedding space the kandinsky22 decoder was trained in",
            )
        self.negative = neg

    @property
    def embed_dim(self) -> int:
        return int(self.pipe.unet.config.encoder_hid_dim)

    @property
    def scale_factor(self) -> int:
        return int(self.pipe.movq_scale_factor)

    @property
    def size_multiple(self) -> int:
        # KandinskyV22Pipeline rounds the size up to a multiple of f² (downscale_height_and_width).
        f = self.scale_factor
        return math.lcm(super().size_multiple, f * f)

    def _run(self, embeds, prompts, kwargs):
        import torch

        neg = torch.from_numpy(self.negative).to(embeds.device, embeds.dtype).expand(embeds.shape[0], -1)
        return self.pipe(image_embeds=embeds, negative_image_embeds=neg, **kwargs).images


class StableUnCLIPDecoder(_Decoder):
    """Stable unCLIP (``StableUnCLIPImg2ImgPipeline`` with ``image_embeds``, no input image).

    ``noise_level`` (0..999) is the pipeline's own augmentation of the embedding (its image
    normaliser scales, noises and unscales it): public randomness from ``generator``.
    """

    family = "stable-unclip"
    default_guidance = 10.0
    default_steps = 20

    def __init__(self, pipe: Any, *, noise_level: int = 0, device: str = "cpu"):
        super().__init__(pipe, device=device)
        top = int(pipe.image_noising_scheduler.config.num_train_timesteps) - 1
        self.noise_level = check_int("noise_level", noise_level, 0, top)

    @property
    def embed_dim(self) -> int:
        return int(self.pipe.image_normalizer.config.embedding_dim)

    @property
    def scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor)

    def _run(self, embeds, prompts, kwargs):
        return self.pipe(prompt=prompts, image_embeds=embeds, noise_level=self.noise_level, **kwargs).images


class IPAdapterDecoder(_Decoder):
    """A Stable Diffusion pipeline with an IP-Adapter (``ip_adapter_image_embeds``)."""

    family = "ip-adapter"
    default_guidance = 7.5

    def __init__(self, pipe: Any, *, device: str = "cpu"):
        super().__init__(pipe, device=device)
        proj = getattr(pipe.unet, "encoder_hid_proj", None)
        layers = getattr(proj, "image_projection_layers", None)
        if not layers:
            raise InvalidParameter("pipeline", type(pipe).__name__, "a pipeline with an IP-Adapter loaded")
        first = layers[0]
        lin = getattr(first, "image_embeds", None)
        if not hasattr(lin, "in_features"):
            raise InvalidParameter(
                "ip_adapter",
                type(first).__name__,
                "a plain IP-Adapter (ImageProjection over pooled image_embeds); the Plus / FaceID variants take "
                "hidden states, not a pooled embedding",
            )
        self._embed_dim = int(lin.in_features)

    @property
    def embed_dim(self) -> int:
        return self._embed_dim

    @property
    def scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor)

    def do_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0 and self.pipe.unet.config.time_cond_proj_dim is None

    def _run(self, embeds, prompts, kwargs):
        import torch

        e = embeds[:, None, :]  # (B, 1 image, d)
        if self.do_cfg(kwargs["guidance_scale"]):
            e = torch.cat([torch.zeros_like(e), e])  # negative half first, as the pipeline splits it
        return self.pipe(prompt=prompts, ip_adapter_image_embeds=[e], **kwargs).images


def check_decoder_files(
    family: str, path: str | Path, ip_adapter: str | Path | None = None
) -> tuple[Path, Path | None]:
    """(pipeline folder, IP-Adapter weights or None) after checking they exist, loading nothing.

    Raises:
        InvalidParameter: unknown family, or ``ip-adapter`` without its weights file.
        CheckpointError: a missing folder or file (the message names what to download elsewhere).
    """
    if family not in FAMILIES:
        raise InvalidParameter("pipeline_type", family, "one of " + ", ".join(FAMILIES))
    folder = _check_pipeline_folder(path, family)
    if family != "ip-adapter":
        return folder, None
    if ip_adapter is None:
        raise InvalidParameter(
            "ip_adapter", None, "the IP-Adapter weights file (--ip-adapter FILE, e.g. h94/IP-Adapter models/...)"
        )
    weights = Path(ip_adapter).expanduser()
    if not weights.is_file():
        raise CheckpointError(
            f"IP-Adapter weights {str(weights)!r} do not exist; download e.g. models/ip-adapter_sd15.safetensors "
            "from h94/IP-Adapter elsewhere and pass the file"
        )
    return folder, weights


def load_decoder(
    family: str,
    path: str | Path,
    *,
    clip_encoder: Any = None,
    ip_adapter: str | Path | None = None,
    ip_adapter_scale: float = 1.0,
    noise_level: int = 0,
    device: str = "cpu",
    dtype: Any = None,
) -> _Decoder:
    """Load a decoder of ``family`` from a local diffusers folder (nothing is downloaded).

    Args:
        family: one of :data:`FAMILIES`.
        path: the pipeline folder (``model_index.json``).
        clip_encoder: the CLIP encoder of the decoder's space (kandinsky22 needs it for the
            negative embedding).
        ip_adapter: for ``ip-adapter``: the IP-Adapter weights file (``ip-adapter_sd15.safetensors``
            or ``.bin``, from h94/IP-Adapter ``models/``).
        ip_adapter_scale: the adapter's attention scale.
        noise_level: Stable unCLIP's embedding noise level.
    """
    import torch

    folder, weights = check_decoder_files(family, path, ip_adapter)
    dtype = dtype if dtype is not None else torch.float32
    common = dict(local_files_only=True, dtype=dtype)
    if family == "kandinsky22":
        from diffusers import KandinskyV22Pipeline

        if clip_encoder is None:
            raise InvalidParameter("clip_encoder", None, "the CLIP encoder of the decoder's space (kandinsky22)")
        pipe = KandinskyV22Pipeline.from_pretrained(folder, **common).to(device)
        return Kandinsky22Decoder(pipe, clip_encoder.zero_image_embed(), device=device)
    if family == "stable-unclip":
        from diffusers import StableUnCLIPImg2ImgPipeline

        pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(folder, **common).to(device)
        return StableUnCLIPDecoder(pipe, noise_level=noise_level, device=device)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, **common)
    pipe.load_ip_adapter(
        str(weights.parent),
        subfolder="",
        weight_name=weights.name,
        image_encoder_folder=None,  # privdiff supplies the (released) embedding itself
        local_files_only=True,
    )
    pipe.set_ip_adapter_scale(float(ip_adapter_scale))
    pipe = pipe.to(device)  # load_ip_adapter already cast the adapter to the U-Net's dtype
    return IPAdapterDecoder(pipe, device=device)
