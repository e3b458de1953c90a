"""Networks and sampling loops over diffusers schedulers, with guidance hooks."""

from privdiff.diffusion.model import (
    DDIM_SCHEDULE,
    UNET_PRESETS,
    DiffusionModel,
    build_unet,
    load_model,
    save_model,
    unet_config,
)
from privdiff.diffusion.sampling import Denoiser, Guidance, ddim_sample, make_ddim_scheduler, sample
from privdiff.diffusion.training import TrainConfig, train_diffusion

__all__ = [
    "DDIM_SCHEDULE",
    "UNET_PRESETS",
    "Denoiser",
    "DiffusionModel",
    "Guidance",
    "TrainConfig",
    "build_unet",
    "ddim_sample",
    "load_model",
    "make_ddim_scheduler",
    "sample",
    "save_model",
    "train_diffusion",
    "unet_config",
]
