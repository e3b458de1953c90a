"""CPSample's guided noise prediction ε̂_{θ,φ}, as a guidance object for :func:`ddim_sample`.

Kazdan et al., *CPSample* (arXiv 2409.07025), §3 as reconstructed in methods/cpsample.md §3, in the
form of DDIM classifier guidance (Dhariwal & Nichol 2021, §4.2, Algorithm 2:
ε̂ = ε_θ − √(1−ᾱ_t)·∇_{x_t} log p_φ(y | x_t)):

* z = f_φ(x_t, t), p = σ(z), ŷ = 1[p ≥ 1/2];
* **gate**, per sample: guidance acts only where max(p, 1−p) > 1 − α (α is the paper's confidence
  threshold; Fig. 1 uses α = 0.001). It is evaluated under ``torch.no_grad``, so samples that are
  not gated cost one classifier forward pass and no graph;
* ``mode="toward_opposite"`` (default): ε̂ = ε_θ − s·√(1−ᾱ_t)·∇_{x_t} log p_φ(1−ŷ | x_t, t);
* ``mode="away_from_predicted"``: ε̂ = ε_θ + s·√(1−ᾱ_t)·∇_{x_t} log p_φ(ŷ | x_t, t);
* ``mode="boundary"``: ε̂ = ε_θ − s·√(1−ᾱ_t)·∇_{x_t} [½ log p_φ(1 | ·) + ½ log p_φ(0 | ·)] (drives z to 0).

The gate reads x̂_0 or x_t, and s has one meaning in every mode: see :class:`CPSampleGuidance`.

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

from privdiff.errors import CheckpointError, InvalidParameter, check_in_range, check_int, check_nonnegative

GuidanceMode = Literal["boundary", "toward_opposite", "away_from_predicted"]
MODES: tuple[str, ...] = ("boundary", "toward_opposite", "away_from_predicted")
GATE_ON: tuple[str, ...] = ("x0", "xt")
STEPS: tuple[str, ...] = ("unit", "gradient")

#: Defaults chosen by the measurement in docs/results/cpsample/guidance/ (shipped fmnist64 model and
#: classifier, 128 paired samples; the README there has the command): toward_opposite gated on x̂_0 with
#: a unit step, s = 2, α = 0.25 and the t-window t < 500 from the classifier's report cut copies
#: 73/128 → 18/128 at +1 % FID (boundary, same s: 29/128, +1 %; the previous sampler: 17/128, +12 %).
DEFAULT_MODE = "toward_opposite"
DEFAULT_GATE_ON = "x0"
DEFAULT_STEP = "unit"
DEFAULT_ALPHA = 0.25
DEFAULT_SCALE = 2.0


@dataclass
class GateStats:
    """How often the gate fired: per sampler call (step) and overall.

    A step outside the t-window (``t_max``) counts as evaluated-and-not-fired in the firing rate
    (the rate stays "fired / (sample, step) pairs", comparable with and without a window) and is
    marked ``classifier: False``: no classifier pass was made for it.
    """

    per_step: list[dict[str, Any]] = field(default_factory=list)

    def record(self, t: torch.Tensor, fired: torch.Tensor, conf: torch.Tensor, classifier: bool = True) -> None:
        self.per_step.append(
            {
                "t": int(t.max()) if t.numel() else -1,
                "fired": int(fired.sum()),
                "batch": int(fired.numel()),
                "max_confidence": float(conf.max()) if conf.numel() else float("nan"),
                "classifier": classifier,
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

    @property
    def classifier_calls(self) -> int:
        """Sampler steps on which the classifier ran (the rest were outside the t-window)."""
        return sum(1 for s in self.per_step if s.get("classifier", True))

    def summary(self) -> dict[str, Any]:
        return {
            "evaluations": self.evaluations,
            "fired": self.fired,
            "firing_rate": self.firing_rate,
            "calls": len(self.per_step),
            "calls_with_firing": self.steps_with_firing,
            "classifier_calls": self.classifier_calls,
            "per_step": [{"t": s["t"], "fired": s["fired"], "batch": s["batch"]} for s in self.per_step],
        }

    def reset(self) -> None:
        self.per_step.clear()


class CPSampleGuidance:
    """The CPSample correction ε_θ → ε̂_{θ,φ}; plug it into ``ddim_sample(..., guidance=...)``.

    **The guided ε.** With z the classifier logit (see ``gate_on``), ŷ = 1[z ≥ 0] and a = ᾱ_t,
    every mode is DDIM classifier guidance (Dhariwal & Nichol 2021, Algorithm 2,
    ε̂ = ε_θ − √(1−ᾱ_t)·∇_{x_t} log p(y | x_t), the form of the CPSample paper's guided ε̂_{θ,φ},
    methods/cpsample.md §3) for a different target y, and its gradient is a weight w(z) times
    sign(z)·∇_{x_t} z:

    * ``"boundary"``: target the uniform label, log p̃ = ½ log σ(z) + ½ log σ(−z), i.e.
      minimise BCE(z, ½) = log cosh(z/2) + log 2; w = ½·tanh(|z|/2). Near the decision boundary this
      is ≈ ∇(z²/8) = z∇z/4: the push **vanishes at z = 0** and is bounded (by ½) far from it, so
      it drives the logit to the boundary instead of past it. Not in the paper (a privdiff choice);
    * ``"toward_opposite"`` (default): target 1−ŷ, ε̂ = ε_θ − s·√(1−a)·∇ log p(1−ŷ); w = σ(|z|) → 1
      when confident, so the push keeps its size at z = 0 (spec §3 reconstructed rule). The gate
      still stops it: it is off once max(p, 1−p) ≤ 1 − α, i.e. |z| ≤ logit(1 − α), before z = 0
      for α < ½ (with α = ½ it fires on both sides and hops across the boundary);
    * ``"away_from_predicted"``: ε̂ = ε_θ + s·√(1−a)·∇ log p(ŷ); w = 1 − σ(|z|) < α wherever the
      gate fires (spec §3 "variant").

    **One meaning of s** (``step="unit"``, default): the shift of ε is

        δ = s · √(1−ᾱ_t) · m(z) · sign(z) · ∇z / rms(∇z),     m = w / sup_{gate fires} w ∈ [0, 1]

    (sup w = ½, 1, α for the three modes), so s is the per-pixel RMS of the shift of ε in units of
    √(1−ᾱ_t) (ε itself has RMS 1) at full weight, whatever the mode, the classifier's gradient size
    or α. ``step="gradient"`` is the old raw-gradient form δ = s·√(1−a)·w·sign(z)·∇z, where s's
    meaning depends on the mode (≈ s·‖∇z‖ vs ≈ s·α·‖∇z‖) and on the classifier: kept for
    comparison (``mode="toward_opposite", gate_on="xt", step="gradient"`` is the previous sampler).

    **Gate.** Per sample, guidance acts where max(p, 1−p) > 1 − α, p = σ(z), evaluated under
    ``torch.no_grad``. ``gate_on="x0"`` (default) evaluates the classifier on the predicted clean
    sample x̂_0 = (x_t − √(1−ᾱ_t)·ε_θ)/√ᾱ_t (Ho et al. 2020, Eq. 15) at ``classifier_t`` (0: clean
    images, the small-t end the classifier was trained on); the gradient is taken with respect to
    x_t through x̂_0 with ε_θ held fixed (∇_{x_t} = ∇_{x̂_0}/√ᾱ_t). It sees a copy forming early
    (issue 15: 0.97 on x̂_0 at t = 380 where x_t reads 0.58). ``gate_on="xt"`` is the paper's gate on
    the noisy input at t.

    **t-window.** ``t_max``: at t ≥ t_max the classifier is not run at all (no guidance there); set
    it from the classifier's per-t report with :func:`privdiff.cpsample.diagnostics.fire_window`
    (the timesteps where member confidence never exceeds 1 − α). ``None``: every step.

    Args:
        classifier: ``(x, t) -> logit z`` of shape (B,), the random-label classifier f_φ.
        alpha: confidence threshold α ∈ (0, 0.5]; the gate fires where max(p, 1−p) > 1 − α.
        scale: guidance scale s ≥ 0 (meaning set by ``step``). s = 0 leaves ε_θ untouched.
        mode: ``"boundary"``, ``"toward_opposite"`` or ``"away_from_predicted"``.
        gate_on: ``"x0"`` or ``"xt"``.
        step: ``"unit"`` or ``"gradient"``.
        t_max: skip the classifier at t ≥ t_max (``None``: never skip).
        classifier_t: timestep passed to the classifier with x̂_0 when ``gate_on="x0"``.
    """

    def __init__(
        self,
        classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        alpha: float = DEFAULT_ALPHA,
        scale: float = DEFAULT_SCALE,
        mode: GuidanceMode = DEFAULT_MODE,
        gate_on: str = DEFAULT_GATE_ON,
        step: str = DEFAULT_STEP,
        t_max: int | None = None,
        classifier_t: int = 0,
    ):
        self.alpha = check_in_range("alpha", alpha, 0.0, 0.5, low_inclusive=False, high_inclusive=True)
        self.scale = check_nonnegative("scale", scale)
        if mode not in MODES:
            raise InvalidParameter("mode", mode, f"one of {list(MODES)}")
        if gate_on not in GATE_ON:
            raise InvalidParameter("gate_on", gate_on, f"one of {list(GATE_ON)}")
        if step not in STEPS:
            raise InvalidParameter("step", step, f"one of {list(STEPS)}")
        self.t_max = None if t_max is None else check_int("t_max", t_max, 1)
        self.classifier_t = check_int("classifier_t", classifier_t, 0)
        self.mode = mode
        self.gate_on = gate_on
        self.step = step
        self.classifier = classifier
        self.stats = GateStats()

    def settings(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "scale": self.scale,
            "mode": self.mode,
            "gate_on": self.gate_on,
            "step": self.step,
            "t_max": self.t_max,
            "classifier_t": self.classifier_t,
        }

    def _classifier_input(
        self, x_t: torch.Tensor, t: torch.Tensor, a: torch.Tensor, eps: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the classifier reads: (x_t, t), or (x̂_0, classifier_t) — differentiable in x_t."""
        if self.gate_on == "xt":
            return x_t, t
        if eps is None:
            raise InvalidParameter("eps", None, "the model's ε prediction (gate_on='x0' needs it for x̂_0)")
        x0 = (x_t - (1.0 - a).sqrt() * eps.to(x_t.dtype)) / a.sqrt()
        return x0, torch.full_like(t, self.classifier_t)

    def gate(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        *,
        eps: torch.Tensor | None = None,
        alpha_prod_t: torch.Tensor | float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(fired mask, confidence max(p, 1−p)) for each sample; no autograd graph is built.

        ``gate_on="x0"`` needs ``eps`` and ``alpha_prod_t`` (for x̂_0). The t-window is not applied
        here (see :meth:`correction`).
        """
        t = _as_batch(t, x_t.shape[0], x_t.device)
        a = _alpha_bar(1.0 if alpha_prod_t is None else alpha_prod_t, x_t)
        with torch.no_grad():
            z = self.classifier(*self._classifier_input(x_t, t, a, eps))
        conf = torch.sigmoid(z.abs())  # = max(p, 1−p), exact near 1
        return conf > 1.0 - self.alpha, conf

    def _weight(self, z: torch.Tensor) -> torch.Tensor:
        """w(z) (``step="gradient"``) or m(z) = w / sup w (``step="unit"``); see the class docstring."""
        absz = z.abs()
        if self.mode == "boundary":
            w, sup = 0.5 * torch.tanh(absz / 2), 0.5
        elif self.mode == "toward_opposite":
            w, sup = torch.sigmoid(absz), 1.0
        else:
            w, sup = torch.sigmoid(-absz), self.alpha
        return w / sup if self.step == "unit" else w

    def correction(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        alpha_prod_t: torch.Tensor | float,
        eps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(δ, fired) with ε̂ = ε_θ + δ; δ is zero where the gate did not fire. Records gate stats.

        ``eps`` (ε_θ(x_t, t)) is needed when ``gate_on="x0"``.
        """
        t = _as_batch(t, x_t.shape[0], x_t.device)
        delta = torch.zeros_like(x_t)
        if self.t_max is not None and bool((t >= self.t_max).all()):
            none = torch.zeros(x_t.shape[0], dtype=torch.bool, device=x_t.device)
            self.stats.record(t, none, torch.full((x_t.shape[0],), 0.5), classifier=False)
            return delta, none
        a = _alpha_bar(alpha_prod_t, x_t)
        if a.shape[0] != x_t.shape[0]:
            a = a.expand(x_t.shape[0], *a.shape[1:])
        fired, conf = self.gate(x_t, t, eps=eps, alpha_prod_t=a)
        if self.t_max is not None:
            fired = fired & (t < self.t_max)
        self.stats.record(t, fired, conf)
        if self.scale == 0.0 or not bool(fired.any()):
            return delta, fired
        xg = x_t[fired].detach().requires_grad_(True)
        a_g = a[fired]
        with torch.enable_grad():
            x_in, t_in = self._classifier_input(xg, t[fired], a_g, None if eps is None else eps[fired].detach())
            z = self.classifier(x_in, t_in)
            (grad,) = torch.autograd.grad(z.sum(), xg)  # ∇_{x_t} z per sample (no batch coupling)
        z = z.detach()
        weight = (torch.sign(z) * self._weight(z)).view(-1, *([1] * (x_t.ndim - 1)))
        if self.step == "unit":
            rms = grad.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12).view_as(weight)
            grad = grad / rms
        delta[fired] = (self.scale * (1.0 - a_g).sqrt() * weight * grad).to(x_t.dtype)
        return delta, fired

    def __call__(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        eps: torch.Tensor,
        alpha_prod_t: torch.Tensor | float,
    ) -> torch.Tensor:
        """ε̂_{θ,φ}(x_t, t) from ε = ε_θ(x_t, t) (the :class:`privdiff.diffusion.Guidance` protocol)."""
        delta, fired = self.correction(x_t, t, alpha_prod_t, eps)
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
        # Folders saved before gate_on/step/t_max existed ran the raw-gradient step on x_t.
        guidance = CPSampleGuidance(
            clf,
            alpha=config["alpha"],
            scale=config["scale"],
            mode=config["mode"],
            gate_on=config.get("gate_on", "xt"),
            step=config.get("step", "gradient"),
            t_max=config.get("t_max"),
            classifier_t=config.get("classifier_t", 0),
        )
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
        # A CFG batch is [uncond; cond] with identical latents: gate and differentiate one copy
        # (with gate_on="x0", x̂_0 is predicted from that copy's ε, the unconditional one).
        half = n // 2 if n % 2 == 0 and n > 1 and torch.equal(sample[: n // 2], sample[n // 2 :]) else n
        delta, _ = self.guidance.correction(
            sample[:half], t[:half], self.alphas_cumprod.to(sample.device)[t[:half]], out.sample[:half]
        )
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
