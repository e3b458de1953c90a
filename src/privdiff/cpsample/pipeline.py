"""CPSample as a diffusers pipeline: U-Net + scheduler + the random-label classifier.

``CPSamplePipeline(unet, scheduler, classifier)`` is a ``DiffusionPipeline``: ``save_pretrained``
writes ``model_index.json`` with all three components (the classifier is a diffusers
``ModelMixin``, loaded back from ``privdiff.cpsample.classifier``) and the guidance settings
(α, s, mode); ``CPSamplePipeline.from_pretrained`` reads it back. Sampling is
:func:`privdiff.diffusion.sample` with :class:`~privdiff.cpsample.guidance.CPSampleGuidance`, so
any diffusers scheduler works (Kazdan et al., arXiv 2409.07025 §3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from privdiff.cpsample.guidance import (
    DEFAULT_ALPHA,
    DEFAULT_GATE_ON,
    DEFAULT_MODE,
    DEFAULT_SCALE,
    DEFAULT_STEP,
    MODES,
    CPSampleGuidance,
)
from privdiff.diffusion.output import check_output_type, postprocess
from privdiff.diffusion.sampling import sample
from privdiff.errors import InvalidParameter, check_int, check_nonnegative


@dataclass
class CPSamplePipelineOutput(BaseOutput):
    """Images in diffusers' ``output_type`` conventions and how often the guidance fired.

    Attributes:
        images: list of PIL images, float (N, H, W, C) in [0, 1], or a tensor (N, C, H, W) in [0, 1].
        gate: :meth:`~privdiff.cpsample.guidance.GateStats.summary` of this call.
    """

    images: Any
    gate: dict[str, Any]


class CPSamplePipeline(DiffusionPipeline):
    """A pixel-space ε-prediction U-Net protected by CPSample.

    Args:
        unet: an unconditional ``UNet2DModel`` (or any ``(x, t) -> .sample`` diffusers model).
        scheduler: any diffusers scheduler.
        classifier: the noise-aware random-label classifier (``NoiseAwareClassifier``).
        alpha, scale, mode, gate_on, step, t_max: default guidance settings (stored in
            ``model_index.json``; see :class:`~privdiff.cpsample.guidance.CPSampleGuidance`).
    """

    def __init__(
        self,
        unet: Any,
        scheduler: Any,
        classifier: Any,
        alpha: float = DEFAULT_ALPHA,
        scale: float = DEFAULT_SCALE,
        mode: str = DEFAULT_MODE,
        gate_on: str = DEFAULT_GATE_ON,
        step: str = DEFAULT_STEP,
        t_max: int | None = None,
    ):
        super().__init__()
        settings = {"alpha": alpha, "scale": scale, "mode": mode, "gate_on": gate_on, "step": step, "t_max": t_max}
        CPSampleGuidance(classifier, **settings)  # validates the settings
        self.register_modules(unet=unet, scheduler=scheduler, classifier=classifier)
        self.register_to_config(**settings | {"alpha": float(alpha), "scale": float(scale)})

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        *,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        alpha: float | None = None,
        scale: float | None = None,
        mode: str | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> CPSamplePipelineOutput | tuple:
        """Draw ``batch_size`` protected samples; x_T ~ N(0, I) from ``generator``.

        ``alpha``/``scale``/``mode`` override the stored settings for this call; ``scale=0`` is
        the unprotected sampler on the same x_T.
        """
        batch_size = check_int("batch_size", batch_size, 1)
        num_inference_steps = check_int(
            "num_inference_steps", num_inference_steps, 1, self.scheduler.config.num_train_timesteps
        )
        eta = check_nonnegative("eta", eta)
        output_type = check_output_type(output_type)
        mode = mode if mode is not None else self.config.mode
        if mode not in MODES:
            raise InvalidParameter("mode", mode, f"one of {list(MODES)}")
        # Pipelines saved before gate_on/step/t_max existed ran the raw-gradient step on x_t.
        guidance = CPSampleGuidance(
            self.classifier,
            alpha=self.config.alpha if alpha is None else alpha,
            scale=self.config.scale if scale is None else scale,
            mode=mode,
            gate_on=self.config.get("gate_on", "xt"),
            step=self.config.get("step", "gradient"),
            t_max=self.config.get("t_max"),
        )
        cfg = self.unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
        h, w = (size, size) if isinstance(size, int) else size
        x_T = torch.randn((batch_size, cfg.in_channels, h, w), generator=generator)
        x_T = x_T.to(self.device, self.unet.dtype)
        unet = self.unet

        def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return unet(x, t).sample

        x0 = sample(
            denoiser,
            self.scheduler,
            x_T,
            num_inference_steps=num_inference_steps,
            eta=eta,
            guidance=guidance,
            generator=generator,
        )
        images = postprocess(x0.clamp(-1, 1), output_type)
        if not return_dict:
            return (images,)
        return CPSamplePipelineOutput(images=images, gate=guidance.stats.summary())
