"""diffusers' ``output_type`` conventions for privdiff's pipelines.

``"pil"``: a list of ``PIL.Image`` (mode ``L`` for one channel); ``"np"``: float32 (N, H, W, C) in
[0, 1]; ``"pt"``: float32 tensor (N, C, H, W) in [0, 1] — what ``DDPMPipeline`` and
``StableDiffusionPipeline`` return for the same names (``VaeImageProcessor.postprocess``).
"""

from __future__ import annotations

from typing import Any

import torch

from privdiff.errors import InvalidParameter

OUTPUT_TYPES = ("pil", "np", "pt")


def check_output_type(output_type: Any, *, allow_none: bool = False) -> str | None:
    """``output_type`` if it is one of :data:`OUTPUT_TYPES` (or None where allowed), else InvalidParameter."""
    if output_type is None and allow_none:
        return None
    if output_type not in OUTPUT_TYPES:
        allowed = list(OUTPUT_TYPES) + (["None"] if allow_none else [])
        raise InvalidParameter("output_type", output_type, f"one of {allowed}")
    return output_type


def postprocess(x0: torch.Tensor, output_type: str) -> Any:
    """Model-space samples (N, C, H, W) in [-1, 1] → ``output_type`` (values clipped to [0, 1])."""
    images = (x0.detach().float().cpu() / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return images
    arr = images.permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return arr
    from diffusers.utils import numpy_to_pil

    return numpy_to_pil(arr)
