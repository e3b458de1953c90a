"""CPSample's guided noise prediction ε̂_{θ,φ}, as a guidance object for :func:`ddim_sample`.

Kazdan et al., *CPSample* (arXiv 2409.07025), §3 as reconstructed in methods/cpsample.md §3, in the
form of DDIM classifier guidance (Dhariwal & Nichol 2021, §4.2, Algorithm 2:
ε̂ = ε_θ − √(1−ᾱ_t)·∇_{x_t} log p_φ(y | x_t)):

* z = f_φ(x_t, t), p = σ(z), ŷ = 1[p ≥ 1/2];
* **gate**, per sample: guidance acts only where max(p, 1−p) > 1 − α (α is the paper's confidence
  threshold; Fig. 1 uses α = 0.001). It is evaluated under ``torch.no_grad``, so samples that are
  not gated cost one classifier forward pass and no graph;
* ``mode="toward_opposite"`` (default): ε̂ = ε_θ − s·√(1−ᾱ_t)·∇_{x_t} log p_φ(1−ŷ | x_t, t);
* ``mode="away_from_predicted"``: ε̂ = ε_θ + s·√(1−ᾱ_t)·∇_{x_t} log p_φ(ŷ | x_t, t).

Which sign/target the paper uses is not known (spec §3, "Variant to keep as a configuration
switch"); both move x_t towards p = 1/2. log p is taken from the logit as log σ(±z) for stability.
The gradient flows through the classifier only; ε_θ is held fixed.

Because the correction depends only on (x_t, t), it commutes with classifier-free guidance: adding
it to both CFG branches adds it once to ε_u + w(ε_c − ε_u). :class:`CPSampleUNet` uses that to
protect a diffusers ``UNet2DConditionModel`` inside a latent (Stable-Diffusion-style) pipeline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

# ModelMixin must be a name in this module: diffusers' pipeline loader looks a custom component's
# base class up in the component's own module to find its load method (CPSampleUNet below).
from diffusers.models.modeling_utils import ModelMixin

from privdiff.errors import CheckpointError, InvalidParameter, check_in_range, check_nonnegative

GuidanceMode = Literal["toward_opposite", "away_from_predicted"]
MODES: tuple[str, ...] = ("toward_opposite", "away_from_predicted")


@dataclass
class GateStats:
    """How often the gate fired: per sampler call (step) and overall."""

    per_step: list[dict[str, Any]] = field(default_factory=list)

    def record(self, t: torch.Tensor, fired: torch.Tensor, conf: torch.Tensor) -> None:
        self.per_step.append(
            {
                "t": int(t.max()) if t.numel() else -1,
                "fired": int(fired.sum()),
                "batch": int(fired.numel()),
                "max_confidence": float(conf.max()) if conf.numel() else float("nan"),
            }
        )

    @property
    def evaluations(self) -> int:
        return sum(s["batch"] for s in self.per_step)

    @property
    def fired(self) -> int:
        return sum(s["fired"] for s in self.per_step)

    @property
    def firing_rate(self) -> float:
        """Fraction of (sample, step) pairs on which guidance was applied."""
        return self.fired / self.evaluations if self.evaluations else 0.0

    @property
    def steps_with_firing(self) -> int:
        return sum(1 for s in self.per_step if s["fired"])

    def summary(self) -> dict[str, Any]:
        return {
            "evaluations": self.evaluations,
            "fired": self.fired,
            "firing_rate": self.firing_rate,
            "calls": len(self.per_step),
            "calls_with_firing": self.steps_with_firing,
            "per_step": [{"t": s["t"], "fired": s["fired"], "batch": s["batch"]} for s in self.per_step],
        }

    def reset(self) -> None:
        self.per_step.clear()


class CPSampleGuidance:
    """The CPSample correction ε_θ → ε̂_{θ,φ}; plug it into ``ddim_sample(..., guidance=...)``.

    Args:
        classifier: ``(x_t, t) -> logit z`` of shape (B,), the random-label classifier f_φ.
        alpha: confidence threshold α ∈ (0, 0.5]; the gate fires where max(p, 1−p) > 1 − α.
        scale: guidance scale s ≥ 0 (paper's Fig. 1: s = 1000). s = 0 leaves ε_θ untouched.
        mode: ``"toward_opposite"`` or ``"away_from_predicted"`` (see module docstring).
    """

    def __init__(
        self,
        classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        alpha: float = 0.001,
        scale: float = 1000.0,
        mode: GuidanceMode = "toward_opposite",
    ):
        self.alpha = check_in_range("alpha", alpha, 0.0, 0.5, low_inclusive=False, high_inclusive=True)
        self.scale = check_nonnegative("scale", scale)
        if mode not in MODES:
            raise InvalidParameter("mode", mode, f"one of {list(MODES)}")
        self.mode = mode
        self.classifier = classifier
        self.stats = GateStats()

    def settings(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "scale": self.scale, "mode": self.mode}

    def gate(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fired mask, confidence max(p, 1−p)) for each sample; no autograd graph is built."""
        with torch.no_grad():
            z = self.classifier(x_t, t)
        conf = torch.sigmoid(z.abs())  # = max(p, 1−p), exact near 1
        return conf > 1.0 - self.alpha, conf

    def correction(
        self, x_t: torch.Tensor, t: torch.Tensor, alpha_prod_t: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(δ, fired) with ε̂ = ε_θ + δ; δ is zero where the gate did not fire. Records gate stats."""
        t = _as_batch(t, x_t.shape[0], x_t.device)
        fired, conf = self.gate(x_t, t)
        self.stats.record(t, fired, conf)
        delta = torch.zeros_like(x_t)
        if self.scale == 0.0 or not bool(fired.any()):
            return delta, fired
        xg = x_t[fired].detach().requires_grad_(True)
        with torch.enable_grad():
            z = self.classifier(xg, t[fired])
            y_hat_is_one = z.detach() >= 0
            if self.mode == "toward_opposite":
                # log p(1−ŷ) = log σ(−z) if ŷ = 1 else log σ(z)
                log_p = torch.nn.functional.logsigmoid(torch.where(y_hat_is_one, -z, z))
                sign = -1.0
            else:
                # log p(ŷ) = log σ(z) if ŷ = 1 else log σ(−z)
                log_p = torch.nn.functional.logsigmoid(torch.where(y_hat_is_one, z, -z))
                sign = 1.0
            (grad,) = torch.autograd.grad(log_p.sum(), xg)
        a = _alpha_bar(alpha_prod_t, x_t)
        a_g = a[fired] if a.shape[0] == x_t.shape[0] else a
        delta[fired] = sign * self.scale * (1.0 - a_g).sqrt() * grad.to(x_t.dtype)
        return delta, fired

    def __call__(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        eps: torch.Tensor,
        alpha_prod_t: torch.Tensor | float,
    ) -> torch.Tensor:
        """ε̂_{θ,φ}(x_t, t) from ε = ε_θ(x_t, t) (the :class:`privdiff.diffusion.Guidance` protocol)."""
        delta, fired = self.correction(x_t, t, alpha_prod_t)
        if not bool(fired.any()) or self.scale == 0.0:
            return eps  # bit-for-bit plain DDIM where nothing fired
        return eps + delta.to(eps.dtype)


def protected_denoiser(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    guidance: CPSampleGuidance,
    alphas_cumprod: torch.Tensor,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """ε̂_{θ,φ} as a plain denoiser ``(x_t, t) -> ε̂``: what the MIA of Algorithm 1 queries."""

    def eps_hat(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = _as_batch(t, x_t.shape[0], x_t.device)
        with torch.no_grad():
            eps = denoiser(x_t, t)
        return guidance(x_t, t, eps, alphas_cumprod.to(x_t.device)[t])

    return eps_hat


class CPSampleUNet(ModelMixin):
    """Wrap a diffusers ``UNet2DConditionModel`` so its ε output carries the CPSample correction.

    For latent pipelines (Stable Diffusion, the RDM): the classifier is trained on VAE latents, and
    ``unet(latents, t, encoder_hidden_states).sample`` becomes ε + δ(latents, t). Since δ does not
    depend on the text conditioning, both classifier-free-guidance branches get the same δ and the
    CFG-combined prediction is ε_u + w(ε_c − ε_u) + δ: CPSample on the CFG ε, as the spec's §3
    "Stable Diffusion" paragraph asks. Attributes not defined here (``config``, ``dtype``...) are
    forwarded to the wrapped network so pipelines can use it in place of the original.

    It survives a pipeline's ``save_pretrained``: as a diffusers ``ModelMixin`` it is saved (not
    silently skipped as a plain module is) into the component folder as ``config.json`` (class
    names, α, s, mode), ``unet/`` (the wrapped network, stock layout), ``classifier/`` and
    ``alphas_cumprod.safetensors``; ``Pipeline.from_pretrained`` of that folder loads it back
    through :meth:`from_pretrained` (``model_index.json`` names ``privdiff.cpsample.guidance``).
    The classifier must itself be a ``ModelMixin`` (:class:`NoiseAwareClassifier` is).
    """

    CONFIG_FILE = "config.json"
    ACP_FILE = "alphas_cumprod.safetensors"

    def __init__(self, unet: torch.nn.Module, guidance: CPSampleGuidance, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.guidance = guidance
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().clone(), persistent=False)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write the wrapped U-Net, the classifier, ᾱ and the guidance settings (see class docstring)."""
        from safetensors.torch import save_file

        from privdiff.utils.atomic import atomic_write_json

        clf = self.guidance.classifier
        for name, part in (("unet", self.unet), ("classifier", clf)):
            if not isinstance(part, ModelMixin):
                raise CheckpointError(
                    f"cannot save a CPSampleUNet whose {name} is a {type(part).__name__}: it must be a diffusers "
                    "ModelMixin (save_pretrained/from_pretrained), or the saved pipeline would lose it"
                )
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        safe = {"safe_serialization": kwargs.get("safe_serialization", True)}
        self.unet.save_pretrained(directory / "unet", **safe)
        clf.save_pretrained(directory / "classifier", **safe)
        save_file({"alphas_cumprod": self.alphas_cumprod.detach().cpu().contiguous()}, str(directory / self.ACP_FILE))
        config = {
            "_class_name": type(self).__name__,
            "unet_class": [type(self.unet).__module__.split(".")[0], type(self.unet).__name__],
            "classifier_class": [type(clf).__module__, type(clf).__name__],
            **self.guidance.settings(),
        }
        atomic_write_json(directory / self.CONFIG_FILE, config)  # last: a config always has its parts

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> CPSampleUNet:
        """Load a folder written by :meth:`save_pretrained` (``torch_dtype`` is honoured; other
        loader options diffusers passes are not needed for these small parts)."""
        import importlib

        from safetensors.torch import load_file

        directory = Path(pretrained_model_name_or_path)
        try:
            config = json.loads((directory / cls.CONFIG_FILE).read_text())
            unet_lib, unet_name = config["unet_class"]
            clf_lib, clf_name = config["classifier_class"]
            unet_cls = getattr(importlib.import_module(unet_lib), unet_name)
            clf_cls = getattr(importlib.import_module(clf_lib), clf_name)
            unet = unet_cls.from_pretrained(directory / "unet", low_cpu_mem_usage=False)
            clf = clf_cls.from_pretrained(directory / "classifier", low_cpu_mem_usage=False).eval()
            acp = load_file(str(directory / cls.ACP_FILE))["alphas_cumprod"]
        except (OSError, KeyError, ValueError, AttributeError, ImportError) as exc:
            raise CheckpointError(f"cannot load a CPSampleUNet from {directory}: {exc}") from exc
        guidance = CPSampleGuidance(clf, alpha=config["alpha"], scale=config["scale"], mode=config["mode"])
        wrapped = cls(unet, guidance, acp)
        if kwargs.get("torch_dtype") is not None:
            wrapped.unet.to(kwargs["torch_dtype"])
        return wrapped.eval()

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("unet"), name)

    def forward(self, sample: torch.Tensor, timestep, *args, return_dict: bool = True, **kwargs):
        out = self.unet(sample, timestep, *args, return_dict=True, **kwargs)
        t = _as_batch(torch.as_tensor(timestep, device=sample.device), sample.shape[0], sample.device)
        n = sample.shape[0]
        # A CFG batch is [uncond; cond] with identical latents: gate and differentiate one copy.
        half = n // 2 if n % 2 == 0 and n > 1 and torch.equal(sample[: n // 2], sample[n // 2 :]) else n
        delta, _ = self.guidance.correction(sample[:half], t[:half], self.alphas_cumprod.to(sample.device)[t[:half]])
        if half != n:
            delta = torch.cat([delta, delta])
        eps = out.sample + delta.to(out.sample.dtype)
        if not return_dict:
            return (eps,)
        out.sample = eps
        return out


def _as_batch(t: torch.Tensor | int, n: int, device) -> torch.Tensor:
    t = torch.as_tensor(t, device=device).long()
    return t.expand(n) if t.ndim == 0 else t


def _alpha_bar(alpha_prod_t: torch.Tensor | float, x_t: torch.Tensor) -> torch.Tensor:
    """ᾱ_t as a tensor broadcastable against x_t: (B, 1, 1, 1) per sample, or (1, 1, 1, 1) shared."""
    a = torch.as_tensor(alpha_prod_t, dtype=torch.float32, device=x_t.device).reshape(-1)
    return a.view(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
