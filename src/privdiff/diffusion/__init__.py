"""Networks and sampling loops over diffusers schedulers, with guidance hooks."""

from privdiff.diffusion.sampling import Denoiser, Guidance, ddim_sample, make_ddim_scheduler

__all__ = ["Denoiser", "Guidance", "ddim_sample", "make_ddim_scheduler"]
