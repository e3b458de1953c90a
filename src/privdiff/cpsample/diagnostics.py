"""Will the CPSample gate do anything? Warnings read from a classifier's training report.

The gate fires where the classifier's confidence max(p, 1−p) exceeds 1 − α
(:class:`~privdiff.cpsample.guidance.CPSampleGuidance`). It protects a training image only if it
fires on it, and it leaves novel samples alone only if it does not fire on non-members. The
method's rule (Kazdan et al., arXiv 2409.07025, §3; privdiff issue 15): train until at least 99 %
of the training images exceed 1 − α at the timesteps where the gate matters, here the range
[0, small_t_max) that training oversamples, because that is where the classifier can be confident
and where a sample is decided to land on a training image (:mod:`privdiff.cpsample.training`).

Two cases make the output meaningless and are warned about (``privdiff protect train`` and
``privdiff sample``):

* the gate at α fires on fewer than 99 % of the training images (at α = 0.001, the paper's value,
  the shipped classifier reaches 1 − α on about 10 % of them): the α that *would* fire is printed;
* a classifier trained without calibration images is confident on most held-out images: the gate
  would push novel samples around as much as copies.

Only the report's numbers are used (``report.json`` / ``classifier.json``), so ``sample`` warns
before anything is generated. Reports written before confidence quantiles were recorded only
support the α values they list (0.5, 0.25, 0.001); the answer is then the smallest of those.
"""

from __future__ import annotations

from typing import Any

#: Share of training images the gate must fire on (the method's stopping rule).
MEMBER_COVERAGE = 0.99
#: Largest α CPSampleGuidance accepts.
MAX_ALPHA = 0.5
#: Used when a report does not record small_t_max (ClassifierTrainConfig's default).
DEFAULT_SMALL_T_MAX = 300


def gate_rows(rows: list[dict[str, Any]], small_t_max: int | None) -> list[dict[str, Any]]:
    """The report rows (timestep bands) that overlap [0, small_t_max): where the gate matters."""
    limit = DEFAULT_SMALL_T_MAX if small_t_max is None else int(small_t_max)
    chosen = [r for r in rows if r["band"][0] < limit]
    return chosen or rows[:1]


def alpha_to_fire(rows: list[dict[str, Any]], coverage: float = MEMBER_COVERAGE) -> float | None:
    """The smallest α at which ≥ ``coverage`` of the images exceed 1 − α in every row; ``None`` if
    no α ≤ 0.5 does.

    Exact from the recorded 1 % confidence quantile (α = 1 − q₀.₀₁, rounded up so the gate's strict
    ``>`` holds); otherwise the smallest recorded α whose recorded fraction reaches ``coverage``.
    """
    if not rows:
        return None
    level = f"{1 - coverage:g}"
    if all(level in r.get("confidence_quantiles", {}) for r in rows):
        lowest = min(float(r["confidence_quantiles"][level]) for r in rows)
        alpha = _round_up(1.0 - lowest)
        return alpha if alpha <= MAX_ALPHA else None
    recorded = sorted({float(a) for r in rows for a in r.get("fraction_above_1_minus_alpha", {})})
    for a in recorded:
        if a <= MAX_ALPHA and all(_fraction(r, a) is not None and _fraction(r, a) >= coverage for r in rows):
            return a
    return None


def _fraction(row: dict[str, Any], alpha: float) -> float | None:
    for key, value in row.get("fraction_above_1_minus_alpha", {}).items():
        if float(key) == alpha:
            return float(value)
    return None


def _round_up(x: float) -> float:
    """The smallest 2-significant-digit number strictly above ``x`` (the gate's test is strict)."""
    import math

    if x <= 0:
        return 1e-6
    digits = 1 - math.floor(math.log10(x))
    # The relative slack keeps float noise (1 − 0.9 = 0.09999999999999998) from rounding onto x.
    r = math.ceil(x * 10**digits * (1 + 1e-9)) / 10**digits
    if r <= x * (1 + 1e-9):
        r += 10**-digits
    return round(r, digits)


def fire_window(rows: list[dict[str, Any]], alpha: float) -> int | None:
    """The t-window for :class:`~privdiff.cpsample.guidance.CPSampleGuidance` (``t_max``): the upper
    edge of the highest timestep band in which some training image's confidence exceeds 1 − α.

    Above it the members' confidence never exceeds 1 − α, so the gate cannot fire there on the
    images it protects and the classifier pass is skipped. Read from the recorded 99 % confidence
    quantile when the report has it, else from the recorded share above 1 − α at this α. ``None``
    (no window: every step) when the top band can fire, or when the report cannot tell for this α.
    """
    if not rows:
        return None
    ordered = sorted(rows, key=lambda r: r["band"][0])
    can_fire = []
    for r in ordered:
        q = r.get("confidence_quantiles", {}).get("0.99")
        if q is not None:
            can_fire.append(float(q) > 1 - alpha)
            continue
        frac = _fraction(r, alpha)
        if frac is None:
            return None  # neither quantiles nor this α recorded: the report cannot bound the window
        can_fire.append(frac > 0)
    if can_fire[-1]:
        return None
    firing = [r["band"][1] for r, c in zip(ordered, can_fire) if c]
    return int(firing[-1]) if firing else int(ordered[0]["band"][1])


def suggest_alpha(meta: dict[str, Any], gate_on: str = "x0") -> float | None:
    """The α to sample with: the smallest α that fires on ≥ 99 % of the training images where the
    gate reads the classifier (:func:`alpha_to_fire`).

    ``gate_on="x0"`` evaluates the classifier on the predicted clean image at t = 0, so the lowest
    timestep band of the report is the one that matters; ``"xt"`` reads it at every t of the gate
    range [0, small_t_max) (:func:`gate_rows`). ``None`` when no α ≤ 0.5 fires (or no report).
    """
    train = (meta.get("report") or {}).get("train") or []
    if not train:
        return None
    if gate_on == "x0":
        rows = [min(train, key=lambda r: r["band"][0])]
    else:
        rows = gate_rows(train, (meta.get("train_config") or {}).get("small_t_max"))
    return alpha_to_fire(rows)


def sampling_defaults(
    meta: dict[str, Any], alpha: float | None = None, t_max: int | None = None, gate_on: str = "x0"
) -> tuple[float, int | None, dict[str, str]]:
    """α and the classifier's t-window for sampling: the caller's, else read from the classifier's report.

    Returns ``(alpha, t_max, why)``: ``t_max`` is ``None`` for "every t", ``why`` says where each
    came from. The one resolution ``privdiff sample --protect``, the benchmark and the experiments
    share, so they all sample with what the CLI would choose.
    """
    from privdiff.cpsample.guidance import DEFAULT_ALPHA  # lazy: guidance imports torch

    why = {"alpha": "--alpha", "t_max": "--t-max"}
    if alpha is None:
        suggested = suggest_alpha(meta, gate_on)
        alpha = DEFAULT_ALPHA if suggested is None else suggested
        why["alpha"] = "default" if suggested is None else "suggested by the classifier's report"
    if t_max is None:
        t_max = fire_window((meta.get("report") or {}).get("train") or [], alpha)
        why["t_max"] = "from the classifier's report"
    return alpha, (t_max or None), why


def has_quantiles(rows: list[dict[str, Any]]) -> bool:
    """Whether :func:`alpha_to_fire` is exact for these rows (quantiles recorded)."""
    return bool(rows) and all(f"{1 - MEMBER_COVERAGE:g}" in r.get("confidence_quantiles", {}) for r in rows)


def _confident_on_most(rows: list[dict[str, Any]], alpha: float) -> float | None:
    """The largest held-out median confidence among ``rows`` if it exceeds 1 − α (the gate fires on
    most held-out images there), else ``None``. Uses the recorded median, or the recorded fraction
    above 1 − α when the report predates quantiles."""
    worst = None
    for r in rows:
        median = r.get("confidence_quantiles", {}).get("0.5")
        if median is not None:
            hit = float(median) > 1 - alpha
            value = float(median)
        else:
            frac = _fraction(r, alpha)
            hit = frac is not None and frac > 0.5
            value = float(r["mean_confidence"])
        if hit and (worst is None or value > worst):
            worst = value
    return worst


def classifier_warnings(meta: dict[str, Any], alpha: float | None = None, gate_on: str = "xt") -> list[str]:
    """One-line warnings about a trained classifier, from its saved metadata (``classifier.json``,
    or ``report.json``'s ``settings`` merged with its ``report``).

    Args:
        meta: needs ``report`` (``train`` rows, optionally ``holdout`` rows); reads
            ``train_config.small_t_max`` and ``calibration_spec`` when present.
        alpha: the α that will be used (``sample --alpha``); ``None`` at ``protect train``, where
            the paper's α = 0.001 is judged and the α that would fire is suggested.
        gate_on: where the sampler's gate reads the classifier: ``"xt"`` at every t of
            [0, small_t_max), ``"x0"`` on x̂_0 at t = 0, judged on the report's lowest band.
    """
    report = meta.get("report") or {}
    train = report.get("train") or []
    if not train:
        return []
    small_t_max = (meta.get("train_config") or {}).get("small_t_max")
    if gate_on == "x0":
        lowest = min(train, key=lambda r: r["band"][0])
        small_t_max = int(lowest["band"][1])
        window = f"t < {small_t_max} (the x̂_0 gate reads t = 0)"
    else:
        window = f"t < {small_t_max if small_t_max is not None else DEFAULT_SMALL_T_MAX}"
    members = gate_rows(train, small_t_max)
    needed = alpha_to_fire(members)
    judged = 0.001 if alpha is None else float(alpha)
    out: list[str] = []
    share = f"{MEMBER_COVERAGE:.0%}"
    if needed is None:
        out.append(
            f"CPSample: no α ≤ {MAX_ALPHA:g} makes the gate fire on {share} of the training images at "
            f"{window}: the classifier never becomes confident enough on them (train longer)"
        )
    elif judged < needed:
        how = f"α ≥ {needed:g}" if has_quantiles(members) else f"α = {needed:g} (the smallest recorded α that does)"
        shares = [_fraction(r, judged) for r in members]
        known = [f for f in shares if f is not None]
        # "Almost never" is said only when the report records this α (else it cannot tell).
        rarely = f" (it fires on at most {max(known):.0%} of them: almost never)" if known and max(known) < 0.5 else ""
        out.append(
            f"CPSample: at α = {judged:g} the gate fires on fewer than {share} of the training images at "
            f"{window}{rarely}, so it protects few of them; {how} would fire on {share}"
        )
    holdout = report.get("holdout")
    if holdout and not meta.get("calibration_spec"):
        gate_alpha = judged if alpha is not None else needed
        if gate_alpha is not None:
            conf = _confident_on_most(gate_rows(holdout, small_t_max), gate_alpha)
            if conf is not None:
                out.append(
                    f"CPSample: trained without --calibration images, the classifier is confident on most "
                    f"held-out images at {window} (median confidence {conf:.3f} > 1 − α = {1 - gate_alpha:g}): "
                    "the gate would push novel samples as well as copies; retrain with --calibration SPEC"
                )
    return out
