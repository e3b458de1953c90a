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

* **SecMI** (Duan et al. 2023, "Are Diffusion Models Vulnerable to Membership Inference Attacks?",
  ICML 2023, arXiv 2302.01316), its statistical variant SecMI_stat: the t-error of a deterministic
  DDIM inversion. See :func:`secmi_errors` for exactly what is computed.
* **Classifier confidence** (grey-box: the attacker holds CPSample's random-label classifier f_φ,
  which by design memorises the training images): :func:`classifier_confidence_scores`.
* **Nearest generated sample** (black-box: the attacker sees only samples):
  :func:`nearest_sample_scores`, the cosine similarity of each candidate to its nearest sample.

Every attack has a *score* function with one convention, higher = more member-like
(``*_scores``); the error functions (``*_errors``, lower = member) are kept for Table 3's z-test.

The attack's power is summarised the way the MIA literature now asks for (Carlini et al. 2022,
"Membership Inference Attacks From First Principles"): ROC AUC and TPR at low FPR, alongside the
z-test statistic of the CPSample paper. :func:`two_sided_report` reports it **in both directions**:
a defence that over-corrects (members *less* member-like than non-members, AUC ≪ 0.5) leaks as
much as one that does nothing, because an attacker who knows the defence flips the sign of its
score. It gives the AUC, the flipped AUC 1 − AUC and the two-sided AUC max(AUC, 1 − AUC), each
with a stratified bootstrap CI, and TPR at 1 % and 0.1 % FPR in each direction, or "not
resolvable" where the non-members are too few to measure that FPR.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from privdiff.errors import InvalidParameter, check_in_range, check_int, check_positive

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
    a = alphas_cumprod[t].to(device=x0.device, dtype=x0.dtype)
    out = np.zeros(x0.shape[0])
    for _ in range(repeats):
        for s in range(0, x0.shape[0], batch_size):
            xb = x0[s : s + batch_size]
            eps = torch.randn(xb.shape, generator=g).to(xb.device)  # CPU draws: same noise on any device
            x_t = a.sqrt() * xb + (1 - a).sqrt() * eps
            tb = torch.full((xb.shape[0],), t, dtype=torch.long, device=xb.device)
            with torch.no_grad():  # a protected denoiser re-enables grad for its classifier term only
                eps_hat = denoiser(x_t, tb).detach()
            out[s : s + xb.shape[0]] += (eps - eps_hat).pow(2).flatten(1).sum(1).cpu().numpy()
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
    a = alphas_cumprod[t].to(device=x0.device, dtype=x0.dtype)
    out = np.zeros(x0.shape[0])
    for s in range(0, x0.shape[0], batch_size):
        xb = x0[s : s + batch_size]
        zero = torch.zeros(xb.shape[0], dtype=torch.long, device=xb.device)
        with torch.no_grad():  # a protected denoiser re-enables grad for its classifier term only
            eps0 = denoiser(xb, zero).detach()
            x_t = a.sqrt() * xb + (1 - a).sqrt() * eps0
            eps_hat = denoiser(x_t, torch.full((xb.shape[0],), t, dtype=torch.long, device=xb.device)).detach()
        out[s : s + xb.shape[0]] = (eps0 - eps_hat).abs().pow(p).flatten(1).sum(1).cpu().numpy()
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

    unknown = set(attacks) - {"loss", "pia", "secmi"}
    if unknown:
        raise InvalidParameter("attacks", sorted(unknown), "a subset of ['loss', 'pia', 'secmi']")
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
        elif attack == "pia":
            em = pia_errors(denoiser, members, t, alphas_cumprod=alphas_cumprod)
            en = pia_errors(denoiser, nonmembers, t, alphas_cumprod=alphas_cumprod)
        else:
            em = secmi_errors(denoiser, members, t, alphas_cumprod=alphas_cumprod)
            en = secmi_errors(denoiser, nonmembers, t, alphas_cumprod=alphas_cumprod)
        results.append(summarise(attack, t, em, en))
    return results


# ---------------------------------------------------------------------------------------------
# More attacks, as scores (higher = more member-like)
# ---------------------------------------------------------------------------------------------


def loss_scores(denoiser: Denoiser, x0: torch.Tensor, t: int, **kwargs: Any) -> np.ndarray:
    """Loss attack as a score: −:func:`loss_attack_errors` (higher = more member-like)."""
    return -loss_attack_errors(denoiser, x0, t, **kwargs)


def pia_scores(denoiser: Denoiser, x0: torch.Tensor, t: int, **kwargs: Any) -> np.ndarray:
    """PIA as a score: −:func:`pia_errors` (higher = more member-like)."""
    return -pia_errors(denoiser, x0, t, **kwargs)


def _ddim_move(
    denoiser: Denoiser, x: torch.Tensor, t_from: int, t_to: int, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM (η = 0) move of x from timestep t_from to t_to, up or down the chain
    (Song et al. 2021, Eq. 12 with σ = 0): x̂_0 = (x − √(1−ᾱ_from)·ε̂)/√ᾱ_from, then
    x' = √ᾱ_to·x̂_0 + √(1−ᾱ_to)·ε̂ with ε̂ = ε̂(x, t_from). Upwards this is the DDIM inversion step."""
    a_from = alphas_cumprod[t_from].to(device=x.device, dtype=x.dtype)
    a_to = alphas_cumprod[t_to].to(device=x.device, dtype=x.dtype)
    with torch.no_grad():  # a protected denoiser re-enables grad for its classifier term only
        eps = denoiser(x, torch.full((x.shape[0],), t_from, dtype=torch.long, device=x.device)).detach()
    x0_hat = (x - (1 - a_from).sqrt() * eps) / a_from.sqrt()
    return a_to.sqrt() * x0_hat + (1 - a_to).sqrt() * eps


def secmi_errors(
    denoiser: Denoiser,
    x0: torch.Tensor,
    t: int,
    *,
    alphas_cumprod: torch.Tensor,
    interval: int = 10,
    batch_size: int = 128,
) -> np.ndarray:
    """SecMI_stat t-error (Duan et al. 2023, ICML, arXiv 2302.01316, §4 "t-error"; their defaults
    t_SEC = 100, interval k = 10), per image, lower = member.

    Exactly what is computed (the authors' ``get_intermediate_results``):

    1. x̃: the deterministic DDIM *inversion* of the clean image x_0 along 0 → k → 2k → … → t − k
       (each move uses ε̂ at the timestep it starts from; the first reads ε̂(x_0, 0));
    2. one DDIM inversion step t − k → t, then one DDIM denoising step t → t − k, giving x̃';
    3. error = ‖x̃ − x̃'‖² summed over pixels.

    Members sit where the model's deterministic flow is accurate, so the round trip returns closer
    to where it started. ``denoiser`` may be the CPSample-protected ε̂_{θ,φ}: the correction then
    acts in every DDIM move. t/k + 1 denoiser calls per image. ``t`` must be a multiple of
    ``interval`` and at least 2·interval (step 1 needs at least one move).
    """
    interval = check_int("interval", interval, minimum=1)
    t = _validate(x0, t, alphas_cumprod)
    if t % interval or t < 2 * interval:
        raise InvalidParameter("t", t, f"a multiple of interval={interval} that is >= {2 * interval}")
    check_int("batch_size", batch_size, minimum=1)
    acp = alphas_cumprod
    out = np.zeros(x0.shape[0])
    for s in range(0, x0.shape[0], batch_size):
        x = x0[s : s + batch_size]
        t_c = 0
        for t_next in range(interval, t, interval):  # 0 → k → … → t − k
            x = _ddim_move(denoiser, x, t_c, t_next, acp)
            t_c = t_next
        x_up = _ddim_move(denoiser, x, t_c, t, acp)
        x_back = _ddim_move(denoiser, x_up, t, t_c, acp)
        out[s : s + x.shape[0]] = (x - x_back).pow(2).flatten(1).sum(1).cpu().numpy()
    return out


def secmi_scores(denoiser: Denoiser, x0: torch.Tensor, t: int, **kwargs: Any) -> np.ndarray:
    """SecMI_stat as a score: −:func:`secmi_errors` (higher = more member-like)."""
    return -secmi_errors(denoiser, x0, t, **kwargs)


def classifier_confidence_scores(
    classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    t: int = 0,
    *,
    alphas_cumprod: torch.Tensor,
    seed: int = 0,
    batch_size: int = 128,
) -> np.ndarray:
    """Grey-box attack with CPSample's own classifier: its confidence on each image noised to t.

    x_t = √ᾱ_t·x + √(1−ᾱ_t)·ε (one seeded draw; t = 0 is almost the clean image, what the default
    x̂_0 gate reads), z = f_φ(x_t, t). The classifier was trained to be confident, max(p, 1−p) ≈ 1,
    exactly on the training images (random labels can only be fitted by memorising them), so a
    high confidence says "member". The score returned is |z|: confidence is σ(|z|), the same
    ranking (same AUC and TPR), but |z| does not round to 1.0 in floating point for the most
    confident images, which would tie them.
    """
    t = _validate(x0, t, alphas_cumprod)
    check_int("batch_size", batch_size, minimum=1)
    g = torch.Generator().manual_seed(seed)
    a = alphas_cumprod[t].to(device=x0.device, dtype=x0.dtype)
    out = np.zeros(x0.shape[0])
    for s in range(0, x0.shape[0], batch_size):
        xb = x0[s : s + batch_size]
        x_t = a.sqrt() * xb + (1 - a).sqrt() * torch.randn(xb.shape, generator=g).to(xb.device)
        with torch.no_grad():
            z = classifier(x_t, torch.full((xb.shape[0],), t, dtype=torch.long, device=xb.device))
        out[s : s + xb.shape[0]] = z.detach().abs().double().cpu().numpy()
    return out


def nearest_sample_scores(candidates: np.ndarray, generated: np.ndarray, *, feature_space: str = "pixel") -> np.ndarray:
    """Black-box attack: each candidate's cosine similarity to its nearest generated sample.

    The attacker sees only outputs (uint8 NHWC ``generated``). A model that copies a training
    image emits near-duplicates of it, so members sit closer to some sample than non-members do
    (the extraction test of Carlini et al. 2023, "Extracting Training Data from Diffusion Models",
    turned into a per-candidate score). Nearest neighbours are exact
    (:func:`privdiff.evaluation.replication.nearest_neighbours`), in a
    :mod:`privdiff.evaluation.features` space (``pixel``: centred cosine = Pearson correlation).
    """
    from privdiff.evaluation.features import extract_features
    from privdiff.evaluation.replication import nearest_neighbours

    sims, _ = nearest_neighbours(
        extract_features(candidates, feature_space), extract_features(generated, feature_space)
    )
    return sims.astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Two-sided reporting
# ---------------------------------------------------------------------------------------------

#: FPRs at which TPR is reported (Carlini et al. 2022 ask for the low-FPR regime).
DEFAULT_FPRS: tuple[float, ...] = (0.01, 0.001)
#: The two directions an attacker may read a score in.
DIRECTIONS: tuple[str, ...] = ("as_scored", "flipped")


def check_scores(name: str, scores: Any) -> np.ndarray:
    """A non-empty, finite, 1-d float64 array of scores, else :class:`InvalidParameter`."""
    try:
        a = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidParameter(name, type(scores).__name__, "a 1-d array of real scores") from None
    if a.ndim != 1 or a.size == 0:
        raise InvalidParameter(name, f"<array of shape {a.shape}>", "a non-empty 1-d array of scores")
    bad = int((~np.isfinite(a)).sum())
    if bad:
        raise InvalidParameter(
            name,
            f"<{bad} non-finite of {a.size} scores>",
            "finite scores (no NaN or inf)",
            hint="a NaN score usually means the attack diverged; fix it rather than drop the image",
        )
    return a


def auc_score(member_scores: Any, nonmember_scores: Any) -> float:
    """ROC AUC of "higher score ⇒ member": P(S_m > S_n) + ½·P(S_m = S_n), the Mann–Whitney U / (n_m·n_n)."""
    return _auc(check_scores("member_scores", member_scores), check_scores("nonmember_scores", nonmember_scores))


def _auc(m: np.ndarray, n: np.ndarray) -> float:
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([m, n]))  # average ranks give ties the ½ credit
    u = ranks[: m.size].sum() - m.size * (m.size + 1) / 2.0
    return float(u / (m.size * n.size))


def fpr_resolvable(n_nonmembers: int, max_fpr: float) -> bool:
    """Whether ``n_nonmembers`` can measure TPR at FPR ≤ ``max_fpr``: at least one false positive
    must be allowed, ⌊max_fpr·n⌋ ≥ 1, i.e. n ≥ 1/max_fpr (1,000 non-members for 0.1 %). Below that
    the only threshold is "no non-member above it", FPR = 0, which is not the quantity asked for."""
    return math.floor(max_fpr * n_nonmembers + 1e-9) >= 1


def tpr_at_fpr(member_scores: Any, nonmember_scores: Any, max_fpr: float) -> float:
    """Largest TPR of "score > τ ⇒ member" over thresholds τ whose FPR is ≤ ``max_fpr`` (exact).

    With k = ⌊max_fpr·n_n⌋ false positives allowed, the best τ is the (k+1)-th largest non-member
    score: any lower τ admits k+1 non-members, and TPR only falls as τ rises. Members tied with τ
    are not counted (a threshold at that value would admit that non-member too), as in
    ``sklearn.metrics.roc_curve``.
    """
    check_in_range("max_fpr", max_fpr, 0.0, 1.0, low_inclusive=True)
    return _tpr(
        check_scores("member_scores", member_scores), check_scores("nonmember_scores", nonmember_scores), max_fpr
    )


def _tpr(m: np.ndarray, n: np.ndarray, max_fpr: float) -> float:
    k = math.floor(max_fpr * n.size + 1e-9)
    if k >= n.size:
        return 1.0
    tau = np.partition(n, n.size - 1 - k)[n.size - 1 - k]  # the (k+1)-th largest
    return float((m > tau).mean())


def two_sided_report(
    member_scores: Any,
    nonmember_scores: Any,
    *,
    fprs: Sequence[float] = DEFAULT_FPRS,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """AUC, flipped AUC, two-sided AUC and TPR at low FPR in both directions, with bootstrap CIs.

    Scores follow the module's convention (higher = more member-like). "flipped" is the attacker
    who reads the score the other way (−score): its AUC is 1 − AUC and its TPR at FPR f is that of
    −score. The two-sided AUC max(AUC, 1 − AUC) is what an attacker who knows the sign gets; its
    point estimate is biased upwards near 0.5 (it is ≥ 0.5 by construction), so read it with its CI.

    CIs are percentile intervals of a stratified bootstrap (members and non-members resampled
    separately, ``n_boot`` times, seeded), at level ``confidence``. A TPR at an FPR the
    non-members cannot resolve (:func:`fpr_resolvable`) is reported as ``value: None`` with
    ``resolvable: False`` and a note, not as a number.

    Raises:
        InvalidParameter: empty or non-finite scores, an FPR outside (0, 1), ``n_boot`` < 1 or
            ``confidence`` outside (0, 1).
    """
    m = check_scores("member_scores", member_scores)
    n = check_scores("nonmember_scores", nonmember_scores)
    fprs = [check_in_range("fpr", f, 0.0, 1.0, high_inclusive=False) for f in fprs]
    n_boot = check_int("n_boot", n_boot, minimum=1)
    confidence = check_in_range("confidence", confidence, 0.0, 1.0, high_inclusive=False)
    rng = np.random.default_rng(seed)
    q = [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100]

    def ci(samples: np.ndarray) -> list[float]:
        lo, hi = np.percentile(samples, q)
        return [float(lo), float(hi)]

    boot_auc = np.empty(n_boot)
    boot_tpr = {(d, f): np.empty(n_boot) for d in DIRECTIONS for f in fprs}
    for b in range(n_boot):
        mb = m[rng.integers(0, m.size, m.size)]
        nb = n[rng.integers(0, n.size, n.size)]
        boot_auc[b] = _auc(mb, nb)
        for f in fprs:
            boot_tpr[("as_scored", f)][b] = _tpr(mb, nb, f)
            boot_tpr[("flipped", f)][b] = _tpr(-mb, -nb, f)
    auc = _auc(m, n)
    tpr: dict[str, dict[str, Any]] = {d: {} for d in DIRECTIONS}
    for d in DIRECTIONS:
        sm, sn = (m, n) if d == "as_scored" else (-m, -n)
        for f in fprs:
            key = f"{f:g}"
            if fpr_resolvable(n.size, f):
                tpr[d][key] = {"value": _tpr(sm, sn, f), "ci": ci(boot_tpr[(d, f)]), "resolvable": True}
            else:
                tpr[d][key] = {
                    "value": None,
                    "ci": None,
                    "resolvable": False,
                    "note": f"not resolvable at {n.size} non-members (needs >= {math.ceil(1 / f - 1e-9)})",
                }
    return {
        "n_members": int(m.size),
        "n_nonmembers": int(n.size),
        "auc": {"value": auc, "ci": ci(boot_auc)},
        "auc_flipped": {"value": 1.0 - auc, "ci": ci(1.0 - boot_auc)},
        "auc_two_sided": {"value": max(auc, 1.0 - auc), "ci": ci(np.maximum(boot_auc, 1.0 - boot_auc))},
        "better_direction": "as_scored" if auc >= 0.5 else "flipped",
        "tpr_at_fpr": tpr,
        "bootstrap": {
            "n_boot": n_boot,
            "confidence": confidence,
            "seed": seed,
            "method": "percentile; members and non-members resampled separately",
        },
    }
