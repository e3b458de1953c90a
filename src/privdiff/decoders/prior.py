"""Queries from a diffusion prior: the prompt's *predicted image embedding* instead of its text embedding.

DP-RDM retrieves private image embeddings with a query; CLIP text and image embeddings of the
same content are far apart (the "modality gap"), so a text-tower query ranks neighbours more
loosely than an image-space one. An unCLIP model's prior (``KandinskyV22PriorPipeline``) maps a
prompt to an image embedding in the same CLIP space; this module wraps it as a privdiff
``TextEncoder`` whose unit outputs serve as queries. The query is public (a function of the prompt
and a fixed seed), so it costs no privacy; the prior's sampling noise is seeded per prompt so the
same prompt always gives the same query.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from privdiff.encoders.base import l2_normalize
from privdiff.encoders.text import check_texts
from privdiff.errors import CheckpointError, check_int, check_nonnegative


class PriorQueryEncoder:
    """TextEncoder: prompt → the prior's predicted CLIP image embedding (unit rows).

    Args:
        pipe: a ``KandinskyV22PriorPipeline``.
        space_id: the CLIP space of ``pipe.image_encoder`` (``CLIPEncoder(prior_dir).space_id``).
        num_inference_steps, guidance_scale: the prior's sampler (diffusers' defaults: 25, 4.0).
        seed: public seed of the prior's noise (fixed, so a prompt's query is reproducible).
    """

    query_kind = "prior"

    def __init__(
        self,
        pipe: Any,
        space_id: str,
        *,
        num_inference_steps: int = 25,
        guidance_scale: float = 4.0,
        seed: int = 0,
        device: str = "cpu",
    ):
        self.pipe = pipe
        self.space_id = space_id
        self.dim = int(pipe.image_encoder.config.projection_dim)
        self.num_inference_steps = check_int("prior_steps", num_inference_steps, 1, 1000)
        self.guidance_scale = check_nonnegative("prior_guidance_scale", guidance_scale)
        self.seed = check_int("prior_seed", seed, 0)
        self.device = device
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)

    def __repr__(self) -> str:
        return f"PriorQueryEncoder(space_id={self.space_id!r}, dim={self.dim})"

    def encode_text(self, texts: list[str]) -> np.ndarray:
        import torch

        texts = check_texts(texts)
        out = []
        for t in texts:  # one seeded draw per prompt: a prompt's query does not depend on its batch
            g = torch.Generator(device=self.device).manual_seed(self.seed)
            with torch.inference_mode():
                emb = self.pipe(
                    t,
                    num_inference_steps=self.num_inference_steps,
                    guidance_scale=self.guidance_scale,
                    generator=g,
                ).image_embeds
            out.append(emb.float().cpu().numpy()[0])
        return l2_normalize(np.stack(out))


def load_prior(path: str | Path, clip_encoder: Any, *, device: str = "cpu", dtype: Any = None, **kwargs: Any):
    """A :class:`PriorQueryEncoder` from a local ``kandinsky-2-2-prior`` folder.

    The prior's image tower must be the one ``clip_encoder`` wraps (same ``space_id``): the prior
    predicts embeddings in *its* image space, and the index lives in ``clip_encoder``'s.
    """
    import torch
    from diffusers import KandinskyV22PriorPipeline

    from privdiff.encoders.hfclip import clip_space_id
    from privdiff.errors import EncoderMismatch

    folder = Path(path).expanduser()
    if not (folder / "model_index.json").is_file():
        raise CheckpointError(
            f"prior folder {str(folder)!r} has no model_index.json; download kandinsky-community/kandinsky-2-2-prior "
            "elsewhere (`huggingface-cli download kandinsky-community/kandinsky-2-2-prior --local-dir DIR`) and pass it"
        )
    space = clip_space_id(folder)
    if space != clip_encoder.space_id:
        raise EncoderMismatch(expected=clip_encoder.space_id, found=space, what=f"the prior's image tower ({folder})")
    dtype = dtype if dtype is not None else torch.float32
    pipe = KandinskyV22PriorPipeline.from_pretrained(folder, local_files_only=True, dtype=dtype).to(device)
    return PriorQueryEncoder(pipe, space, device=device, **kwargs)
