"""White-box membership-inference attacks on diffusion models, reported as test statistics and ROC.

Two attacks, both taking any denoiser ``(x_t, t) -> ε̂`` so the plain model ε_θ and the
CPSample-protected ε̂_{θ,φ} (:func:`privdiff.cpsample.guidance.protected_denoiser`) are attacked
the same way:

* **Loss attack** (Matsumoto, Miura & Yanai 2023, "Membership Inference Attacks against Diffusion
  Models", IEEE SPW, arXiv 2302.03262; as used in CPSample's Algorithm 1, methods/cpsample.md §5.3):
  per image e(x) = ‖ε − ε̂(√ᾱ_t·x + √(1−ᾱ_t)·ε, t)‖², summed over pixels, at a fixed t. Members are
  reconstructed better (lower e). CPSample's Table 3 reports the one-sided two-sample z-test
  z = (mean_nonmember − mean_member) / SE with SE = √(s²_m/n_m + s²_n/n_n) and p = 1 − Φ(z).
* **PIA** (Kong et al. 2024, "An Efficient Membership Inference Attack for the Diffusion Model by
  Proximal Initialization", ICLR 2024, arXiv 2305.18355): replace the random ε by the model's own
  output at t = 0, ε₀ = ε̂(x, 0), and score ‖ε₀ − ε̂(√ᾱ_t·x + √(1−ᾱ_t)·ε₀, t)‖_p^p. It is
  deterministic (no noise draw to average out), which makes it much stronger per query. p = 4 is
  the ℓ4 distance of the PIA line of attacks; it is configurable.

The attack's power is summarised the way the MIA literature now asks for (Carlini et al. 2022,
"Membership Inference Attacks From First Principles"): ROC AUC and TPR at 1 % FPR, computed with
scikit-learn, alongside the z-test statistic of the CPSample paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from privdiff.errors import InvalidParameter, check_int, check_positive

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Timesteps of the default sweep (Matsumoto et al. find intermediate t most vulnerable).
DEFAULT_TIMESTEPS: tuple[int, ...] = (50, 100, 200, 300, 500)


@dataclass
class MIAResult:
    """One attack at one timestep. ``z``/``p``: CPSample Table 3's one-sided z-test (p = 1 − Φ(z));
    ``auc``/``tpr_at_1pct_fpr``: ROC summaries with "lower error ⇒ member"."""

    attack: str
    t: int
    n_members: int
    n_nonmembers: int
    mean_member: float
    mean_nonmember: float
    z: float
    p: float
    auc: float
    tpr_at_1pct_fpr: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def z_test(member_errors: np.ndarray, nonmember_errors: np.ndarray) -> tuple[float, float]:
    """One-sided two-sample z-test of "members have lower error" (Welch SE, normal approximation).

    z = (ē_non − ē_mem) / √(s²_mem/n_mem + s²_non/n_non), p = 1 − Φ(z) (``scipy.stats.norm.sf``).
    This reproduces CPSample Table 3's (statistic, p) pairs, e.g. z = 0.59 → p = 0.278
    (methods/cpsample.md §5.3).
    """
    from scipy.stats import norm

    m = np.asarray(member_errors, dtype=np.float64)
    n = np.asarray(nonmember_errors, dtype=np.float64)
    if m.size < 2 or n.size < 2:
        raise InvalidParameter("sample sizes", (m.size, n.size), "at least 2 members and 2 non-members")
    se = math.sqrt(m.var(ddof=1) / m.size + n.var(ddof=1) / n.size)
    if se == 0.0:
        diff = n.mean() - m.mean()
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    else:
        z = float((n.mean() - m.mean()) / se)
    return z, float(norm.sf(z))


def roc_summary(member_errors: np.ndarray, nonmember_errors: np.ndarray, *, max_fpr: float = 0.01) -> dict[str, Any]:
    """AUC and TPR at ``max_fpr`` of the rule "error below a threshold ⇒ member" (scikit-learn ROC).

    TPR@FPR is the largest TPR over ROC points with FPR ≤ ``max_fpr``; with n non-members the FPR
    grid is 1/n, so with fewer than 100 non-members this is the TPR at FPR = 0.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    m = np.asarray(member_errors, dtype=np.float64)
    n = np.asarray(nonmember_errors, dtype=np.float64)
    y = np.concatenate([np.ones(m.size), np.zeros(n.size)])
    score = -np.concatenate([m, n])  # lower error = more member-like
    fpr, tpr, _ = roc_curve(y, score)
    ok = fpr <= max_fpr + 1e-12
    return {
        "auc": float(roc_auc_score(y, score)),
        "tpr_at_fpr": float(tpr[ok].max()) if ok.any() else 0.0,
        "fpr": fpr.tolist(),
        "tpr": tpr.tolist(),
    }


def summarise(attack: str, t: int, member_errors: np.ndarray, nonmember_errors: np.ndarray) -> MIAResult:
    z, p = z_test(member_errors, nonmember_errors)
    roc = roc_summary(member_errors, nonmember_errors)
    return MIAResult(
        attack=attack,
        t=int(t),
        n_members=int(len(member_errors)),
        n_nonmembers=int(len(nonmember_errors)),
        mean_member=float(np.mean(member_errors)),
        mean_nonmember=float(np.mean(nonmember_errors)),
        z=z,
        p=p,
        auc=roc["auc"],
        tpr_at_1pct_fpr=roc["tpr_at_fpr"],
    )


def _validate(x0: torch.Tensor, t: int, alphas_cumprod: torch.Tensor) -> int:
    if x0.ndim != 4:
        raise InvalidParameter("images", tuple(x0.shape), "a (N, C, H, W) tensor in model space")
    return check_int("t", t, minimum=0, maximum=int(alphas_cumprod.shape[0]) - 1)


def loss_attack_errors(
    denoiser: Denoiser,
    x0: torch.Tensor,
    t: int,
    *,
    alphas_cumprod: torch.Tensor,
    seed: int = 0,
    repeats: int = 1,
    batch_size: int = 128,
) -> np.ndarray:
    """Per-image ‖ε − ε̂(√ᾱ_t x + √(1−ᾱ_t) ε, t)‖² summed over pixels (Matsumoto et al. 2023; CPSample
    Algorithm 1), averaged over ``repeats`` noise draws (1 = the paper's single draw)."""
    t = _validate(x0, t, alphas_cumprod)
    check_int("repeats", repeats, minimum=1)
    g = torch.Generator().manual_seed(seed)
    a = alphas_cumprod[t].to(x0.dtype)
    out = np.zeros(x0.shape[0])
    for _ in range(repeats):
        for s in range(0, x0.shape[0], batch_size):
            xb = x0[s : s + batch_size]
            eps = torch.randn(xb.shape, generator=g)
            x_t = a.sqrt() * xb + (1 - a).sqrt() * eps
            tb = torch.full((xb.shape[0],), t, dtype=torch.long)
            with torch.no_grad():  # a protected denoiser re-enables grad for its classifier term only
                eps_hat = denoiser(x_t, tb).detach()
            out[s : s + xb.shape[0]] += (eps - eps_hat).pow(2).flatten(1).sum(1).numpy()
    return out / repeats


def pia_errors(
    denoiser: Denoiser,
    x0: torch.Tensor,
    t: int,
    *,
    alphas_cumprod: torch.Tensor,
    p: float = 4.0,
    batch_size: int = 128,
) -> np.ndarray:
    """PIA (Kong et al. 2024): ‖ε₀ − ε̂(√ᾱ_t x + √(1−ᾱ_t) ε₀, t)‖_p^p with ε₀ = ε̂(x, 0)."""
    t = _validate(x0, t, alphas_cumprod)
    check_positive("p", p)
    a = alphas_cumprod[t].to(x0.dtype)
    out = np.zeros(x0.shape[0])
    for s in range(0, x0.shape[0], batch_size):
        xb = x0[s : s + batch_size]
        zero = torch.zeros(xb.shape[0], dtype=torch.long)
        with torch.no_grad():  # a protected denoiser re-enables grad for its classifier term only
            eps0 = denoiser(xb, zero).detach()
            x_t = a.sqrt() * xb + (1 - a).sqrt() * eps0
            eps_hat = denoiser(x_t, torch.full((xb.shape[0],), t, dtype=torch.long)).detach()
        out[s : s + xb.shape[0]] = (eps0 - eps_hat).abs().pow(p).flatten(1).sum(1).numpy()
    return out


def run_attacks(
    denoiser: Denoiser,
    members: torch.Tensor,
    nonmembers: torch.Tensor,
    *,
    alphas_cumprod: torch.Tensor,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    attacks: Sequence[str] = ("loss", "pia"),
    seed: int = 0,
    repeats: int = 1,
    progress: bool = False,
) -> list[MIAResult]:
    """Run the attacks at each t on members vs non-members (model-space tensors) and summarise.

    The loss attack uses the same noise seed for members and non-members' draws (different images,
    so the draws are independent across images but reproducible).
    """
    from tqdm.auto import tqdm

    unknown = set(attacks) - {"loss", "pia"}
    if unknown:
        raise InvalidParameter("attacks", sorted(unknown), "a subset of ['loss', 'pia']")
    results = []
    jobs = [(a, t) for a in attacks for t in timesteps]
    for attack, t in tqdm(jobs, desc="MIA", disable=not progress):
        if attack == "loss":
            em = loss_attack_errors(denoiser, members, t, alphas_cumprod=alphas_cumprod, seed=seed, repeats=repeats)
            en = loss_attack_errors(
                denoiser,
                nonmembers,
                t,
                alphas_cumprod=alphas_cumprod,
                seed=seed + 1,
                repeats=repeats,
            )
        else:
            em = pia_errors(denoiser, members, t, alphas_cumprod=alphas_cumprod)
            en = pia_errors(denoiser, nonmembers, t, alphas_cumprod=alphas_cumprod)
        results.append(summarise(attack, t, em, en))
    return results
