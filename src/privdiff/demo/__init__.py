"""The main job (``privdiff demo``, ``make demo``): both methods end to end, and a report people can read.

Phases, each timed (the wall times go to the terminal, ``summary.json`` and the report):

1. **planner** — :func:`privdiff.report.accounting_plots.run_planner`: ε against queries for the
   DP-RDM paper's three figure settings (Lebensold et al., arXiv 2403.14421, §4.6 of the method
   notes), written as PNG + ``planner.json``.
2. **dp-rdm** — DP-RDM's question (Lebensold et al., arXiv 2403.14421, §5): a model trained on
   public data, pointed at a private collection that *is a domain*, here winter tops (Pullover +
   Coat of the private split, ``fashion-mnist:dprdm-private{classes=2,4}``). A private index
   (cached by spec + encoder), a *fresh* ledger with budget ε = 10 and δ = 1/N (the paper's
   default; the page explains the δ ≥ 1/N warning it triggers), coarse prompts ("a photo of a
   top") each answered in ``dp-rdm`` mode and by the baselines (``public-retrieval`` ε = 0,
   ``non-private`` ε = ∞, optionally ``subsampled`` ε = ∞ and ``no-retrieval``) from the same
   x_T; the domain yardstick (:mod:`privdiff.evaluation.yardstick`) judges every image, giving
   each mode's in-domain rate with a Wilson interval; then a request larger than the remaining
   budget, which the ledger refuses atomically.
3. **cpsample** — CPSample (Kazdan et al., arXiv 2409.07025): n samples of a diffusion model that
   memorised 64 training images, from the same x_T with and without classifier protection;
   replication rates against the training set (calibrated pixel-space τ,
   :func:`privdiff.evaluation.replication.recommended_threshold`), top-pair figures (the paper's
   Fig. 1 layout) and the gate-firing rate.
4. **report** — ``report.html`` (self-contained, :class:`privdiff.report.html.HtmlReport`) and
   ``summary.json`` (settings, numbers, timings, the command).

The demo is an application over the public API: its pipelines come from
:func:`privdiff.rdm.pipeline.make_pipeline` (the function users call), its checkpoints from
:func:`privdiff.checkpoints.resolve_checkpoint`, and each section returns a typed result
(:class:`DPRDMResult`, :class:`CPSampleResult`, :class:`PlannerResult`) that the report and the
terminal summary read as attributes; ``summary.json`` is :meth:`DemoResult.to_dict`.

A missing checkpoint (the shipped RDM, the CPSample model or its classifier) skips its section
with the reason written into the report and the summary; the demo never crashes for it. Any other
privdiff error in a section marks that section *failed* (reason recorded) and the rest still run.
A demo with a skipped or failed section did not do what it says, so :func:`check_complete` turns
it into an error once the report is written (``privdiff demo`` exits non-zero).
"""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from privdiff.checkpoints import CPSAMPLE_MODEL, resolve_checkpoint
from privdiff.checkpoints import ENV_VARS as CHECKPOINT_ENV_VARS
from privdiff.errors import (
    CheckpointError,
    InvalidParameter,
    PrivacyBudgetExceeded,
    PrivdiffError,
    check_int,
)
from privdiff.utils.atomic import atomic_write_json
from privdiff.utils.cache import cache_key
from privdiff.utils.jsonsafe import jsonable

#: Demo sizes: ``quick`` (CI, the test), ``default`` (``make demo``), ``full`` (more of everything).
SIZES = ("quick", "default", "full")
SECTIONS = ("planner", "dprdm", "cpsample")

#: Written into the output directory first, so a later run knows which files it may replace.
MARKER = ".privdiff-demo"
#: Outputs a demo run owns in its directory (replaced on the next run; nothing else is touched).
_OWNED = ("planner", "rdm", "cpsample", "report.html", "summary.json")


#: The DP-RDM section's private domain: winter tops. The public split has 1,500 pullovers and
#: 1,500 coats, yet coarse prompts retrieve public T-shirts and shirts (48 % / 49 % of public-only
#: outputs in docs/results/dprdm/domain): the private collection is what pulls the context to
#: long-sleeved garments. Measured there at 1,000 images per setting, with the RDM shipped before
#: the current one (EfficientNet space): in-domain 0.027 public-only against 0.53-0.69 for DP-RDM
#: at ε = 10.
DOMAIN_CLASSES = (2, 4)
DOMAIN_NAME = "winter tops (Pullover + Coat)"
DOMAIN_SPEC = "fashion-mnist:dprdm-private{classes=2,4}"
#: The coarse phrasings of docs/results/dprdm/domain, cycled over the queries.
DOMAIN_PHRASINGS = (("a photo of a top", "a top, any kind"), ("a piece of clothing", "any garment"))


@dataclass(frozen=True)
class DemoPrompt:
    """One text prompt of the DP-RDM section.

    Attributes:
        text: what is typed.
        concept: what it asks for (for the reader, never used in generation): the domain's
            prompts are coarse and name no class.
        heldout: the phrasing is one of ``HELDOUT_PHRASINGS`` (never seen when the text projection
            was trained; :mod:`privdiff.encoders.captions`).
    """

    text: str
    concept: str
    heldout: bool = False

    @property
    def footwear(self) -> bool:
        from privdiff.data import FASHION_MNIST_CLASSES, FOOTWEAR_CLASSES

        return self.concept in {FASHION_MNIST_CLASSES[c] for c in FOOTWEAR_CLASSES}


def _prompt(text: str, concept: str) -> DemoPrompt:
    # The held-out flag is looked up, not asserted, so it stays true to the captions module.
    from privdiff.encoders.captions import HELDOUT_PHRASINGS

    return DemoPrompt(text, concept, heldout=text in HELDOUT_PHRASINGS.get(concept, ()))


def _prompts(size: str) -> tuple[DemoPrompt, ...]:
    # Coarse prompts, repeated: each repetition is one more charged query with its own subsample
    # and noise, so the in-domain rate pools several independent contexts, not one context's
    # images (images drawn from one context are correlated).
    queries = {"quick": 4, "default": 10, "full": 20}[size]
    return tuple(_prompt(*DOMAIN_PHRASINGS[i % len(DOMAIN_PHRASINGS)]) for i in range(queries))


#: The demo's s = 100 is in the raw-gradient units of the sampler gated on x_t (issue 15's reference
#: setting); CPSampleGuidance's defaults now gate on x̂_0 with a unit step, so the demo names its own.
_LEGACY_CPSAMPLE = {"gate_on": "xt", "step": "gradient"}


@dataclass(frozen=True)
class DemoConfig:
    """Everything a demo run depends on (recorded in ``summary.json``).

    Build one with :func:`demo_config`; the fields are the knobs, the presets pick their values.
    ``rdm_steps``/``guidance_scale`` ``None`` mean the model's stored ``generation_defaults``.
    ``cache_dir`` holds the demo's private indexes; image embeddings go to ``embedding_cache``,
    by default privdiff's shared cache (``$PRIVDIFF_CACHE_DIR`` or ``~/.cache/privdiff``), so
    the demo reuses what training, experiments and ``privdiff generate`` already encoded.
    """

    size: str
    out: Path
    cache_dir: Path
    private_data: str
    public_data: str
    prompts: tuple[DemoPrompt, ...]
    modes: tuple[str, ...]
    images_per_prompt: int
    cpsample_n: int
    cpsample_steps: int
    planner_quick: bool
    rdm_steps: int | None = None
    guidance_scale: float | None = None
    epsilon_budget: float = 10.0
    rdm_model: Path | None = None
    cpsample_model: Path | None = None
    cpsample_classifier: Path | None = None
    # α = 0.1, s = 100: the best measured trade-off for the shipped classifier
    # (docs/results/cpsample/tradeoff.json: replication 53 % → 10 % at +12 % FID). The paper's
    # α = 0.001, s = 1000 barely fires with it (too few training images reach p > 0.999).
    alpha: float = 0.1
    scale: float = 100.0
    guidance_mode: str = "toward_opposite"
    encoder: str = "default"
    seed: int = 0
    sections: tuple[str, ...] = SECTIONS
    embedding_cache: Path | None = None
    #: Fashion-MNIST classes of the private domain: the in-domain rate counts outputs the
    #: yardstick assigns to one of them.
    domain_classes: tuple[int, ...] = DOMAIN_CLASSES
    domain_name: str = DOMAIN_NAME

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prompts"] = [asdict(p) for p in self.prompts]
        for key in (
            "out",
            "cache_dir",
            "rdm_model",
            "cpsample_model",
            "cpsample_classifier",
            "embedding_cache",
        ):
            d[key] = None if d[key] is None else str(d[key])
        return d


def demo_config(
    size: str = "default",
    *,
    out: str | os.PathLike = Path("out/demo"),
    cache_dir: str | os.PathLike = Path("out/cache"),
    **overrides: Any,
) -> DemoConfig:
    """The preset of ``size`` (``quick``, ``default`` or ``full``), with any field overridden.

    Sizes (wall time on 2 CPU cores with the private index cached; the first run also encodes the
    private set with the shipped model's encoder, ~500 img/s on a busy 2-core machine):

    * ``quick``: 3,000 of the private winter tops and a quarter of the public set, 4 queries ×
      3 images × 3 modes at 15 DDIM steps (the same 36 images as before the domain story), 16
      CPSample images per condition at 20 steps, the planner's quick grids. Used by the test;
      the images are rough at so few steps and 12 images per mode give wide intervals.
    * ``default``: all 9,000 private winter tops, 10 queries × 4 images × 3 modes at the
      model's DDIM steps, 64 CPSample images per condition. Targets ≤ 4 minutes warm.
    * ``full``: 20 queries × 8 images × 5 modes (with subsampled and no-retrieval), 100 CPSample
      images each.
    """
    if size not in SIZES:
        raise InvalidParameter("size", size, "one of " + ", ".join(SIZES))
    presets: dict[str, dict[str, Any]] = {
        "quick": dict(
            private_data=DOMAIN_SPEC + "[:3000]",
            public_data="fashion-mnist:dprdm-public[::4]",
            modes=("dp-rdm", "public-retrieval", "non-private"),
            images_per_prompt=3,
            rdm_steps=15,
            cpsample_n=16,
            cpsample_steps=20,
            planner_quick=True,
        ),
        "default": dict(
            private_data=DOMAIN_SPEC,
            public_data="fashion-mnist:dprdm-public",
            modes=("dp-rdm", "public-retrieval", "non-private"),
            images_per_prompt=4,
            cpsample_n=64,
            cpsample_steps=50,
            planner_quick=False,
        ),
        "full": dict(
            private_data=DOMAIN_SPEC,
            public_data="fashion-mnist:dprdm-public",
            modes=("dp-rdm", "public-retrieval", "non-private", "subsampled", "no-retrieval"),
            images_per_prompt=8,
            cpsample_n=100,
            cpsample_steps=50,
            planner_quick=False,
        ),
    }
    values = presets[size] | {"prompts": _prompts(size)}
    unknown = sorted(set(overrides) - set(DemoConfig.__dataclass_fields__))
    if unknown:
        raise InvalidParameter("overrides", unknown, "fields of DemoConfig")
    cfg = DemoConfig(size=size, out=Path(out), cache_dir=Path(cache_dir), **(values | overrides))
    return _validated(cfg)


def _validated(cfg: DemoConfig) -> DemoConfig:
    from privdiff.rdm.conditioning import MODES

    path_fields = (
        "out",
        "cache_dir",
        "rdm_model",
        "cpsample_model",
        "cpsample_classifier",
        "embedding_cache",
    )
    paths = {k: Path(getattr(cfg, k)) for k in path_fields if getattr(cfg, k) is not None}
    cfg = replace(
        cfg,
        **paths,
        prompts=tuple(cfg.prompts),
        modes=tuple(cfg.modes),
        sections=tuple(cfg.sections),
        domain_classes=tuple(cfg.domain_classes),
    )
    if not cfg.domain_classes or any(not isinstance(c, int) or not 0 <= c <= 9 for c in cfg.domain_classes):
        raise InvalidParameter("domain_classes", cfg.domain_classes, "one or more Fashion-MNIST class ids in [0, 9]")
    check_int("images_per_prompt", cfg.images_per_prompt, 1, 64)
    check_int("cpsample_n", cfg.cpsample_n, 2, 1000)
    check_int("cpsample_steps", cfg.cpsample_steps, 1, 1000)
    if cfg.rdm_steps is not None:
        check_int("rdm_steps", cfg.rdm_steps, 1, 1000)
    if not cfg.prompts:
        raise InvalidParameter("prompts", cfg.prompts, "at least one prompt")
    if "dp-rdm" not in cfg.modes or any(m not in MODES for m in cfg.modes):
        raise InvalidParameter("modes", cfg.modes, f"'dp-rdm' plus any of {', '.join(MODES[1:])}")
    if any(s not in SECTIONS for s in cfg.sections):
        raise InvalidParameter("sections", cfg.sections, "a subset of " + ", ".join(SECTIONS))
    if not (cfg.epsilon_budget > 0 and math.isfinite(cfg.epsilon_budget)):
        raise InvalidParameter("epsilon_budget", cfg.epsilon_budget, "a finite ε > 0")
    return cfg


# ---------------------------------------------------------------------------------------------
# What each section returns: typed results, read as attributes by the report and the terminal
# summary; summary.json is written from them (:meth:`DemoResult.to_dict`).
# ---------------------------------------------------------------------------------------------


def _plain(v: Any) -> Any:
    """A result as JSON-ready plain data: dataclasses through their own ``to_dict`` when they have
    one (else field by field), containers recursively, leaves by :func:`privdiff.utils.jsonsafe.jsonable`
    (Paths as strings, numpy scalars as numbers, ∞ as "inf")."""
    if is_dataclass(v) and not isinstance(v, type):
        if hasattr(v, "to_dict"):
            return _plain(v.to_dict())
        return {f.name: _plain(getattr(v, f.name)) for f in fields(v)}
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return jsonable(v)


@dataclass(frozen=True)
class SectionNotDone:
    """A section that did not produce results: ``skipped`` (a missing checkpoint), ``failed``
    (another privdiff error) or ``not run`` (not selected); ``reason`` says why."""

    status: str
    reason: str

    @property
    def ok(self) -> bool:
        return False


@dataclass(frozen=True)
class PlannerSetting:
    """One of the DP-RDM paper's figure settings, as the planner evaluated it."""

    name: str
    dataset_size: int
    sigma: float
    sample_rate: float
    k: int
    figure_queries: int
    epsilon_at_figure_queries: dict[str, float]  # accountant → ε after the figure's T queries
    queries_at_target: dict[str, int]  # accountant → queries answerable within the target ε


@dataclass(frozen=True)
class PlannerResult:
    """The privacy planner's figures (paths relative to the output directory) and table."""

    figures: tuple[str, ...]
    json: str
    target_epsilon: float
    settings: tuple[PlannerSetting, ...]
    dir: str = "planner"
    status: str = "ok"
    ok = True


@dataclass(frozen=True)
class IndexInfo:
    """The demo's private index: reused from the cache or built in this run."""

    path: str
    cached: bool
    count: int
    dim: int
    embeddings_from_cache: bool | None = None  # built runs only: no image had to be encoded
    embed_seconds: float | None = None
    images_per_second: float | None = None  # only when images were encoded


@dataclass(frozen=True)
class LedgerInfo:
    """The run's ledger: its final status, its file (relative to the output) and its history."""

    path: str
    status: Any  # privdiff.accounting.ledger.LedgerStatus
    history: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {**self.status.to_dict(), "path": self.path, "history": list(self.history)}


@dataclass(frozen=True)
class ModeOutput:
    """One (prompt, mode) generation: its folder and grid (relative paths), privacy record, and
    how many of its ``n_images`` the domain yardstick assigns to the private domain."""

    dir: str
    grid: str
    private: bool
    privacy: dict[str, Any]
    in_domain: int = 0
    n_images: int = 0


@dataclass(frozen=True)
class DomainRate:
    """One mode's in-domain rate over all its images, with the Wilson 95 % interval."""

    value: float
    low: float
    high: float
    n: int
    predicted_classes: tuple[int, ...]  # counts per Fashion-MNIST class, as the yardstick sees them


@dataclass(frozen=True)
class DomainResult:
    """How each mode answered the coarse prompts, judged by the domain yardstick."""

    name: str
    classes: tuple[int, ...]
    class_names: tuple[str, ...]
    yardstick_test_accuracy: float | None
    rates: dict[str, DomainRate]  # mode → rate
    below_public: tuple[str, ...]  # modes whose point estimate is below public-only retrieval's
    prompts_dp_below_public: tuple[int, ...]  # prompt indices where DP-RDM has fewer in-domain images


@dataclass(frozen=True)
class PromptResult:
    """One prompt answered in every mode, with the budget right after its DP-RDM charge."""

    text: str
    concept: str
    heldout: bool
    footwear: bool
    modes: dict[str, ModeOutput]
    epsilon_spent_after: float
    epsilon_remaining_after: float


@dataclass(frozen=True)
class RefusedRequest:
    """The over-budget request, and the evidence that it was refused without any effect."""

    prompts_requested: int
    prompts_that_would_fit: int
    epsilon_if_answered: float
    epsilon_with_one_prompt_more_than_fits: float
    refused: bool
    error: str | None
    epsilon_spent_before: float
    epsilon_spent_after: float
    queries_before: int
    queries_after: int
    ledger_unchanged: bool
    images_written: int
    output_dir_exists: bool

    @property
    def without_effect(self) -> bool:
        """Refused, nothing charged, no image and no folder written."""
        return self.refused and self.ledger_unchanged and self.images_written == 0 and not self.output_dir_exists


@dataclass(frozen=True)
class Mechanism:
    """The DP-RDM mechanism's settings for every charged query (σ, q, k; z = σk/2; δ = 1/N)."""

    sigma: float
    sample_rate: float
    k: int
    noise_multiplier: float
    expected_subsample: float
    delta: float
    lam: float


@dataclass(frozen=True)
class GenerationSettings:
    guidance_scale: float
    num_inference_steps: int
    images_per_prompt: int
    modes: tuple[str, ...]
    seed: int
    seconds_per_mode: dict[str, float]


@dataclass(frozen=True)
class RDMModelInfo:
    dir: str
    space_id: str
    steps_done: int | None
    training: dict[str, Any]  # the model's recorded training data spec and command


@dataclass(frozen=True)
class DeltaNote:
    """make_pipeline's setting warnings for the DP-RDM ledger (δ = 1/N triggers one), and what the
    same queries would cost at a stricter δ, so the page can say what the warning means."""

    warnings: tuple[str, ...]
    stricter_delta: float
    epsilon_at_stricter_delta: float


@dataclass(frozen=True)
class DPRDMResult:
    """The DP-RDM section: prompts answered in each mode, the ledger, and the refused request."""

    model: RDMModelInfo
    private_data: str
    public_data: str
    index: IndexInfo
    ledger: LedgerInfo
    mechanism: Mechanism
    generation: GenerationSettings
    prompts: tuple[PromptResult, ...]
    refused_request: RefusedRequest
    domain: DomainResult
    delta_note: DeltaNote
    status: str = "ok"
    ok = True


@dataclass(frozen=True)
class CPSampleCondition:
    """One sampler (plain DDIM or CPSample) over the same x_T: its replication and gate numbers."""

    label: str
    sample_seconds: float
    gate: dict[str, Any] | None  # the gate's firing statistics; None for plain DDIM
    cpsample: dict[str, Any] | None  # the guidance settings; None for plain DDIM
    replication_rate: float
    n_replicated: int
    n_generated: int
    similarity: dict[str, float]
    top_pairs: list[dict[str, Any]]
    samples_png: str
    top_pairs_png: str


@dataclass(frozen=True)
class CPSampleModelInfo:
    dir: str
    data_spec: str
    steps_done: int | None
    num_train_images: int


@dataclass(frozen=True)
class ClassifierInfo:
    dir: str
    data_spec: str | None
    matches_model_data: bool


@dataclass(frozen=True)
class CPSampleSettings:
    n: int
    num_inference_steps: int
    eta: float
    seed: int
    alpha: float
    scale: float
    mode: str
    torch_threads: int


@dataclass(frozen=True)
class ReplicationThreshold:
    feature_space: str
    tau: float
    fpr: float | None
    tpr: float | None
    provenance: Any


@dataclass(frozen=True)
class CPSampleResult:
    """The CPSample section: the same x_T sampled with and without protection."""

    model: CPSampleModelInfo
    classifier: ClassifierInfo
    settings: CPSampleSettings
    threshold: ReplicationThreshold
    conditions: dict[str, CPSampleCondition]  # "ddim" and "cpsample"
    fisher_exact: dict[str, Any]
    training_png: str
    status: str = "ok"
    ok = True


Section = PlannerResult | DPRDMResult | CPSampleResult | SectionNotDone


@dataclass
class DemoResult:
    """A demo run: its configuration, each section's result, and the timings.

    ``sections`` maps ``planner``/``dprdm``/``cpsample`` to the section's result, or to a
    :class:`SectionNotDone` saying why it has none. :meth:`to_dict` is ``summary.json``.
    """

    command: str
    started_utc: str
    config: DemoConfig
    sections: dict[str, Section]
    environment: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    cpu_timings: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0
    total_cpu_seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)

    kind = "privdiff-demo"
    format_version = 1

    @property
    def size(self) -> str:
        return self.config.size

    @property
    def skipped(self) -> dict[str, str]:
        """Sections that were selected but skipped or failed → why."""
        return {
            n: s.reason
            for n, s in self.sections.items()
            if isinstance(s, SectionNotDone) and s.status in ("skipped", "failed")
        }

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "format_version": self.format_version,
            "command": self.command,
            "started_utc": self.started_utc,
            "size": self.size,
            "settings": self.config.to_dict(),
            "sections": {n: _plain(s) for n, s in self.sections.items()},
            "skipped": self.skipped,
            "timings": self.timings,
            "cpu_timings": self.cpu_timings,
            "total_seconds": self.total_seconds,
            "total_cpu_seconds": self.total_cpu_seconds,
            "environment": self.environment,
        }
        if self.outputs:
            out["outputs"] = self.outputs
        return _plain(out)


# ---------------------------------------------------------------------------------------------
# Small helpers: phase timing, terminal output, output-directory hygiene
# ---------------------------------------------------------------------------------------------


class _Phases:
    """Wall time and CPU time per named phase, printed as each one ends.

    CPU time (``time.process_time``, all threads of this process) is recorded beside wall time:
    on a machine shared with other jobs it says what the phase costs regardless of contention.
    """

    def __init__(self, console: Any):
        self.console = console
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, what: str) -> Iterator[None]:
        self.console.print(f"[bold cyan]▶[/] {what}")
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            self.seconds[name] = self.seconds.get(name, 0.0) + dt
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + dc
            self.console.print(f"  [dim]{name}: {dt:.1f} s wall, {dc:.1f} s CPU[/]")


def _generation_progress(console: Any):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _prepare_out(out: Path) -> None:
    """Make ``out`` ready: empty or from an earlier demo (its own outputs are replaced).

    Only the files a demo writes are removed, and only where the marker says a demo wrote them,
    so pointing ``--out`` at a directory with other content cannot delete that content.
    """
    out.mkdir(parents=True, exist_ok=True)
    owned = [out / name for name in _OWNED if (out / name).exists()]
    if owned and not (out / MARKER).is_file():
        raise InvalidParameter(
            "out",
            str(out),
            "an empty directory or one written by an earlier `privdiff demo`",
            hint=f"it holds {', '.join(p.name for p in owned)} but no {MARKER} marker; choose another --out",
        )
    for p in owned:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    (out / MARKER).write_text("written by `privdiff demo`; its outputs here are replaced on the next run\n")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "x"


class _DedupTextEncoder:
    """Encodes each distinct prompt once (a request repeating prompts costs one encoding each).

    The refused request below is ~500-1,000 prompts cycling through a few phrasings; MiniLM on
    2 cores would spend seconds on duplicates before the ledger gets to say no. Same outputs.
    """

    def __init__(self, inner: Any):
        self.inner = inner
        self.space_id = inner.space_id
        self.dim = inner.dim

    def encode_text(self, texts: list[str]) -> np.ndarray:
        unique, inverse = np.unique(np.asarray(list(texts), dtype=object).astype(str), return_inverse=True)
        return np.asarray(self.inner.encode_text(list(unique)))[inverse]


# ---------------------------------------------------------------------------------------------
# Phase 1: the privacy planner
# ---------------------------------------------------------------------------------------------


def _section_planner(cfg: DemoConfig, phases: _Phases, command: str) -> PlannerResult:
    from privdiff.report.accounting_plots import run_planner

    out = cfg.out / "planner"
    with phases("planner", f"privacy planner ({'quick' if cfg.planner_quick else 'full'} grids)"):
        result = run_planner(
            out,
            quick=cfg.planner_quick,
            target_epsilon=cfg.epsilon_budget,
            command=command,
            show_progress=False,
        )
    rows = tuple(
        PlannerSetting(
            name=s["name"],
            dataset_size=s["dataset_size"],
            sigma=s["sigma"],
            sample_rate=s["sample_rate"],
            k=s["k"],
            figure_queries=s["figure_queries"],
            epsilon_at_figure_queries={a: v["epsilon"] for a, v in s["epsilon_at_figure_queries"].items()},
            queries_at_target={a: v["queries"] for a, v in s["queries_at_target"].items()},
        )
        for s in result["settings"]
    )
    return PlannerResult(
        figures=tuple(f"planner/{f}" for f in result["figures"]),
        json="planner/planner.json",
        target_epsilon=result["target_epsilon"],
        settings=rows,
    )


# ---------------------------------------------------------------------------------------------
# Phase 2: DP-RDM
# ---------------------------------------------------------------------------------------------


class _WatchedEncoder:
    """The image encoder, noting whether it had to encode (or the embedding cache answered).

    ``cached_embeddings`` keys its cache on ``space_id`` and ``repr(encoder)``; both are passed
    through, so the proxy hits exactly the cache entries of the encoder itself.
    """

    def __init__(self, inner: Any):
        self.inner, self.space_id, self.dim, self.encoded = inner, inner.space_id, inner.dim, False

    def __repr__(self) -> str:
        return repr(self.inner)

    def encode_images(self, images: np.ndarray, **kwargs: Any) -> np.ndarray:
        self.encoded = True
        return self.inner.encode_images(images, **kwargs)


def _embeddings(cfg: DemoConfig, dataset: Any, encoder: Any, *, private: bool) -> np.ndarray:
    from privdiff.rdm.train import cached_embeddings

    return cached_embeddings(dataset, encoder, private=private, cache_dir=cfg.embedding_cache, progress=True)


def _index_dir(cache_dir: Path, spec: str, encoder: Any) -> Path:
    """Cache key of a private index: the dataset spec and the exact encoder (space + fixed parts)."""
    key = cache_key("private-index", spec, encoder.space_id, repr(encoder), length=12)
    return cache_dir / "indexes" / f"{_slug(spec)}-{key}"


def _private_index(cfg: DemoConfig, encoder: Any, phases: _Phases) -> tuple[Path, IndexInfo]:
    """Reuse the cached private index of (spec, encoder), or encode the private set and build it."""
    from privdiff.data import load_dataset
    from privdiff.errors import IndexCorrupt
    from privdiff.retrieval import build_index, read_manifest

    path = _index_dir(cfg.cache_dir, cfg.private_data, encoder)
    with phases("dprdm.index", f"private index over {cfg.private_data}"):
        try:
            m = read_manifest(path)
            # Cheap check here; make_pipeline re-hashes the file before the first query.
            if m.source == cfg.private_data and m.space_id == encoder.space_id and m.visibility == "private":
                phases.console.print(f"  reusing cached index {path} ({m.count:,} × {m.dim})")
                return path, IndexInfo(path=str(path), cached=True, count=m.count, dim=m.dim)
        except IndexCorrupt:
            pass  # missing or broken: rebuild below (build_index replaces it atomically)
        ds = load_dataset(cfg.private_data)
        phases.console.print(f"  embedding {len(ds):,} private images with {encoder.space_id}")
        watched = _WatchedEncoder(encoder)
        t0 = time.perf_counter()
        emb = _embeddings(cfg, ds, watched, private=True)
        encode_s = time.perf_counter() - t0
        idx = build_index(
            path,
            emb,
            space_id=encoder.space_id,
            source=cfg.private_data,
            visibility="private",
            overwrite=True,
            source_images=ds.images,
        )
        rate = round(len(ds) / max(encode_s, 1e-9), 1) if watched.encoded else None
        return path, IndexInfo(
            path=str(path),
            cached=False,
            count=idx.count,
            dim=idx.dim,
            embeddings_from_cache=not watched.encoded,
            embed_seconds=round(encode_s, 2),
            images_per_second=rate,
        )


def _section_dprdm(cfg: DemoConfig, phases: _Phases) -> DPRDMResult:
    import warnings

    from privdiff.accounting import DPRDMQuery, Ledger, compute_epsilon
    from privdiff.encoders import encoder_for_model, load_image_encoder, load_text_encoder
    from privdiff.errors import PrivdiffWarning
    from privdiff.evaluation.yardstick import load_yardstick
    from privdiff.rdm.model import RDMModel, read_model_info
    from privdiff.rdm.pipeline import generate_to_directory, make_pipeline, resolve_model_dir

    console = phases.console
    # Fail (skip) on a missing model before the expensive index build.
    model_dir = resolve_model_dir(cfg.rdm_model)
    info = read_model_info(model_dir)
    # "default" is the model's own space: the private index is built where the model retrieves.
    encoder = encoder_for_model(cfg.encoder, info["model"]["space_id"])
    root = cfg.out / "rdm"
    root.mkdir(parents=True, exist_ok=True)

    with phases("dprdm.load", "loading the encoders and the domain yardstick"):
        image_encoder = load_image_encoder(encoder)
        # Before the ledger exists: a missing yardstick skips the section with nothing charged.
        yardstick = load_yardstick("fashion-mnist")
    index_path, index_info = _private_index(cfg, image_encoder, phases)
    n_private = index_info.count

    # A fresh ledger per demo run. Fine for a demo over a benchmark standing in for private data;
    # a deployment keeps ONE ledger per dataset for its lifetime: a reset budget is no budget.
    ledger_path = root / "ledger.sqlite"
    delta = 1.0 / n_private  # the authors' default δ = 1/N (notes §4.5)
    Ledger.create(ledger_path, epsilon=cfg.epsilon_budget, delta=delta, dataset=cfg.private_data).close()

    with phases("dprdm.load", f"loading the RDM {model_dir} and the context sources"):
        # Every mode is assembled by make_pipeline, the function users call: the model and the
        # encoders are loaded once here and shared, the mode → context source choice is its own.
        model = RDMModel.load(model_dir)
        text = _DedupTextEncoder(load_text_encoder(encoder))
        shared = dict(
            encoder=encoder,
            model=model,
            text_encoder=text,
            image_encoder=image_encoder,
            embedding_cache=cfg.embedding_cache,
            public_data=cfg.public_data,
        )
        pipes, defaults = {}, None
        for mode in cfg.modes:
            # dp-rdm: the cached index + the fresh ledger. public-retrieval: the index too, so its
            # "public" set is checked to share no image with the private one. non-private: the
            # private spec itself (the ε = ∞ reference reads it directly, never sees the ledger).
            kwargs = {
                "dp-rdm": dict(index=index_path, ledger=ledger_path),
                "public-retrieval": dict(index=index_path),
                "non-private": dict(private_data=cfg.private_data),
                "subsampled": dict(private_data=cfg.private_data),
            }.get(mode, {})
            with warnings.catch_warnings(record=True) as caught:
                # The setting warnings (δ = 1/N is one) are shown on the page with what they mean.
                warnings.simplefilter("always", PrivdiffWarning)
                pipes[mode], defaults = make_pipeline(model_dir, mode=mode, **shared, **kwargs)
            if mode == "dp-rdm":
                setting_warnings = tuple(str(w.message) for w in caught if issubclass(w.category, PrivdiffWarning))
            for w in caught:
                if not issubclass(w.category, PrivdiffWarning) or mode != "dp-rdm":
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        k = pipes["dp-rdm"].source.k

    sigma, q = float(defaults["sigma"]), float(defaults["sample_rate"])
    query = DPRDMQuery(sigma, q, k)  # what each prompt is charged as (the retriever's own query)
    guidance_scale = cfg.guidance_scale if cfg.guidance_scale is not None else float(defaults["guidance_scale"])
    steps = cfg.rdm_steps if cfg.rdm_steps is not None else int(defaults["num_inference_steps"])
    gen_kwargs = dict(
        images_per_prompt=cfg.images_per_prompt,
        guidance_scale=guidance_scale,
        num_inference_steps=steps,
    )

    prompts_out: list[PromptResult] = []
    mode_seconds = {m: 0.0 for m in cfg.modes}
    predictions: dict[str, list[np.ndarray]] = {m: [] for m in cfg.modes}
    with phases(
        "dprdm.generate",
        f"answering {len(cfg.prompts)} prompts × {len(cfg.modes)} modes "
        f"× {cfg.images_per_prompt} images ({steps} DDIM steps)",
    ):
        with _generation_progress(console) as progress:
            task = progress.add_task("generate", total=len(cfg.prompts) * len(cfg.modes))
            for i, p in enumerate(cfg.prompts):
                outputs: dict[str, ModeOutput] = {}
                for mode in cfg.modes:
                    progress.update(task, description=f"[{mode}] {p.text!r}")
                    rel = Path("rdm") / mode / f"prompt-{i:02d}"
                    t0 = time.perf_counter()
                    # Same seed for every mode of a prompt: same x_T, so only the context differs.
                    record = generate_to_directory(
                        pipes[mode],
                        [p.text],
                        cfg.out / rel,
                        seed=cfg.seed + i,
                        request_id=f"demo-prompt-{i}",
                        **gen_kwargs,
                    )
                    mode_seconds[mode] += time.perf_counter() - t0
                    with np.load(cfg.out / rel / "images.npz") as z:
                        predicted = yardstick.predict(z["images"])
                    predictions[mode].append(predicted)
                    outputs[mode] = ModeOutput(
                        dir=str(rel),
                        grid=str(rel / "grid.png"),
                        private=record["private"],
                        privacy=record["privacy"],
                        in_domain=int(np.isin(predicted, cfg.domain_classes).sum()),
                        n_images=int(predicted.size),
                    )
                    progress.advance(task)
                dp = outputs["dp-rdm"].privacy
                row = PromptResult(
                    text=p.text,
                    concept=p.concept,
                    heldout=p.heldout,
                    footwear=p.footwear,
                    modes=outputs,
                    epsilon_spent_after=dp["epsilon_spent"],
                    epsilon_remaining_after=dp["epsilon_remaining"],
                )
                prompts_out.append(row)
                console.print(
                    f"  {p.text!r}: ε spent {row.epsilon_spent_after:.4g}, "
                    f"left {row.epsilon_remaining_after:.4g} of {cfg.epsilon_budget:g}"
                )

    with phases("dprdm.refusal", "a request larger than the remaining budget"):
        refusal = _refused_request(cfg, pipes["dp-rdm"], ledger_path, query, gen_kwargs)

    with Ledger.open(ledger_path) as led:
        status = led.status()
        history = tuple(r.to_dict() for r in led.history())
    # What the δ = 1/N warning is about: the same queries at a δ a hundred times smaller.
    stricter = delta / 100
    eps_stricter = compute_epsilon([(query, status.queries)], stricter, status.accountant).epsilon
    return DPRDMResult(
        model=RDMModelInfo(
            dir=str(model_dir),
            space_id=model.space_id,
            steps_done=(info.get("training") or {}).get("steps_done"),
            training={k_: info.get(k_) for k_ in ("data", "command") if k_ in info},
        ),
        private_data=cfg.private_data,
        public_data=cfg.public_data,
        index=index_info,
        ledger=LedgerInfo(path=str(ledger_path.relative_to(cfg.out)), status=status, history=history),
        mechanism=Mechanism(
            sigma=sigma,
            sample_rate=q,
            k=k,
            noise_multiplier=query.noise_multiplier,
            expected_subsample=q * n_private,
            delta=delta,
            lam=float(defaults.get("lam", 1.0)),
        ),
        generation=GenerationSettings(
            guidance_scale=guidance_scale,
            num_inference_steps=steps,
            images_per_prompt=cfg.images_per_prompt,
            modes=tuple(cfg.modes),
            seed=cfg.seed,
            seconds_per_mode={m: round(s, 2) for m, s in mode_seconds.items()},
        ),
        prompts=tuple(prompts_out),
        refused_request=refusal,
        domain=_domain_result(cfg, predictions, prompts_out, yardstick),
        delta_note=DeltaNote(
            warnings=setting_warnings, stricter_delta=stricter, epsilon_at_stricter_delta=float(eps_stricter)
        ),
    )


def _domain_result(
    cfg: DemoConfig, predictions: dict[str, list[np.ndarray]], prompts: list[PromptResult], yardstick: Any
) -> DomainResult:
    """Pooled in-domain rate per mode (Wilson 95 %) and where DP-RDM falls below public-only."""
    from privdiff.data import FASHION_MNIST_CLASSES
    from privdiff.evaluation.domain import in_domain_rate

    rates = {}
    for mode, parts in predictions.items():
        pred = np.concatenate(parts)
        est = in_domain_rate(pred, cfg.domain_classes)
        counts = tuple(int(c) for c in np.bincount(pred, minlength=10))
        rates[mode] = DomainRate(est.value, est.low, est.high, est.n, counts)
    public = rates.get("public-retrieval")
    below = tuple(m for m, r in rates.items() if public is not None and r.value < public.value)
    dp_below = tuple(
        i
        for i, p in enumerate(prompts)
        if "public-retrieval" in p.modes and p.modes["dp-rdm"].in_domain < p.modes["public-retrieval"].in_domain
    )
    return DomainResult(
        name=cfg.domain_name,
        classes=tuple(cfg.domain_classes),
        class_names=tuple(FASHION_MNIST_CLASSES[c] for c in cfg.domain_classes),
        yardstick_test_accuracy=yardstick.config.report.get("test_accuracy"),
        rates=rates,
        below_public=below,
        prompts_dp_below_public=dp_below,
    )


def _refused_request(
    cfg: DemoConfig, pipe: Any, ledger_path: Path, query: Any, gen_kwargs: dict[str, Any]
) -> RefusedRequest:
    """Ask for more prompts than the budget allows; record that nothing was charged or written."""
    from privdiff.accounting import Ledger, solve_queries
    from privdiff.encoders.captions import HELDOUT_PHRASINGS
    from privdiff.rdm.pipeline import generate_to_directory

    with Ledger.open(ledger_path) as led:
        before = led.status()
        # Largest total T with ε ≤ budget for this (σ, q, k), minus what is already spent.
        total = solve_queries(
            before.epsilon_budget,
            before.delta,
            sigma=query.sigma,
            sample_rate=query.sample_rate,
            k=query.k,
            accountant=before.accountant,
        ).value
        fits = max(0, int(total) - before.queries)
        # One prompt more than fits is already refused (recorded below), but its ε lands a hair
        # above the budget; half as many again makes the point readable ("would bring ε to 13").
        one_more = led.preview(query, fits + 1)
        request = fits + 1 + fits // 2
        would_be = led.preview(query, request)
        while would_be <= before.epsilon_budget:  # calibration sits on the safe side; step past it
            request += max(1, fits // 2)
            would_be = led.preview(query, request)
    phrasings = [p for ps in HELDOUT_PHRASINGS.values() for p in ps]
    prompts = [phrasings[j % len(phrasings)] for j in range(request)]
    target = cfg.out / "rdm" / "refused-request"
    pngs_before = sorted(str(p) for p in (cfg.out / "rdm").rglob("*.png"))
    error: str | None = None
    refused = False
    try:
        generate_to_directory(pipe, prompts, target, seed=cfg.seed, request_id="demo-over-budget", **gen_kwargs)
    except PrivacyBudgetExceeded as exc:
        refused, error = True, str(exc)
    with Ledger.open(ledger_path) as led:
        after = led.status()
    pngs_after = sorted(str(p) for p in (cfg.out / "rdm").rglob("*.png"))
    return RefusedRequest(
        prompts_requested=request,
        prompts_that_would_fit=fits,
        epsilon_if_answered=would_be,
        epsilon_with_one_prompt_more_than_fits=one_more,
        refused=refused,
        error=error,
        epsilon_spent_before=before.epsilon_spent,
        epsilon_spent_after=after.epsilon_spent,
        queries_before=before.queries,
        queries_after=after.queries,
        ledger_unchanged=after.epsilon_spent == before.epsilon_spent and after.queries == before.queries,
        images_written=len(pngs_after) - len(pngs_before),
        output_dir_exists=target.exists(),
    )


# ---------------------------------------------------------------------------------------------
# Phase 3: CPSample
# ---------------------------------------------------------------------------------------------


def _section_cpsample(cfg: DemoConfig, phases: _Phases) -> CPSampleResult:
    import torch

    from privdiff.cpsample import CPSampleGuidance, load_classifier
    from privdiff.data import load_dataset
    from privdiff.diffusion.generate import generate
    from privdiff.diffusion.model import load_model
    from privdiff.evaluation.replication import (
        compare_rates,
        recommended_threshold_info,
        replication_report,
        save_top_pairs,
    )
    from privdiff.report.images import save_grid

    model_dir = resolve_checkpoint(CPSAMPLE_MODEL, cfg.cpsample_model)
    clf_dir = cfg.cpsample_classifier if cfg.cpsample_classifier is not None else model_dir / "classifier"
    if not clf_dir.is_dir():
        raise CheckpointError(
            f"no CPSample protection classifier at {clf_dir} (train one with `privdiff protect train "
            f"--data SPEC --model {model_dir} --out {clf_dir}`)"
        )
    # Validate α, s and the mode before loading anything.
    CPSampleGuidance(lambda x, t: x, alpha=cfg.alpha, scale=cfg.scale, mode=cfg.guidance_mode, **_LEGACY_CPSAMPLE)  # type: ignore[arg-type]
    with phases("cpsample.load", f"loading the memorising model {model_dir} and its classifier"):
        model = load_model(model_dir)
        protection = load_classifier(clf_dir)
        data_spec = model.meta.get("data_spec")
        if not data_spec:
            raise CheckpointError(f"{model_dir}/privdiff.json does not name its training set (data_spec)")
        train = load_dataset(data_spec).images
    clf_spec = protection.meta.get("data_spec")
    out = cfg.out / "cpsample"
    out.mkdir(parents=True, exist_ok=True)
    sampled: dict[str, dict[str, Any]] = {}
    images: dict[str, np.ndarray] = {}
    for name, label in (("ddim", "plain DDIM"), ("cpsample", "CPSample")):
        guidance = None
        if name == "cpsample":
            guidance = CPSampleGuidance(
                protection.classifier, alpha=cfg.alpha, scale=cfg.scale, mode=cfg.guidance_mode, **_LEGACY_CPSAMPLE
            )
        with phases(
            f"cpsample.sample_{name}",
            f"{label}: {cfg.cpsample_n} samples, {cfg.cpsample_steps} DDIM steps",
        ):
            with phases.console.status(f"sampling ({label})"):
                # Same seed → same x_T for both conditions: differences come from the guidance alone.
                imgs, sinfo = generate(
                    model,
                    cfg.cpsample_n,
                    num_inference_steps=cfg.cpsample_steps,
                    seed=cfg.seed,
                    guidance=guidance,
                    batch_size=cfg.cpsample_n,
                    progress=False,
                )
        images[name] = imgs
        sampled[name] = {
            "label": label,
            "sample_seconds": round(sinfo["wall_seconds"], 2),
            "gate": None
            if guidance is None
            else {k: v for k, v in guidance.stats.summary().items() if k != "per_step"},
            "cpsample": None if guidance is None else guidance.settings(),
        }
    conditions: dict[str, CPSampleCondition] = {}
    with phases("cpsample.replication", "replication rates against the training set"):
        reports = {n: replication_report(images[n], train, feature_space="pixel") for n in images}
        for n, rep in reports.items():
            # 8 wide (10 beyond 64 images) so the two grids fit side by side in the report.
            save_grid(
                images[n],
                out / f"samples_{n}.png",
                ncols=8 if cfg.cpsample_n <= 64 else 10,
                scale=2,
            )
            save_top_pairs(rep, images[n], train, out / f"top_pairs_{n}.png", n=4)
            d = rep.to_dict(include_arrays=False, top_n=4)
            conditions[n] = CPSampleCondition(
                **sampled[n],
                replication_rate=d["rate"],
                n_replicated=d["n_replicated"],
                n_generated=d["n_generated"],
                similarity=d["similarity_summary"],
                top_pairs=d["top_pairs"],
                samples_png=f"cpsample/samples_{n}.png",
                top_pairs_png=f"cpsample/top_pairs_{n}.png",
            )
        save_grid(train, out / "training_images.png", ncols=16, scale=2)
        fisher = compare_rates(reports["ddim"], reports["cpsample"])
    tau = recommended_threshold_info("pixel")
    return CPSampleResult(
        model=CPSampleModelInfo(
            dir=str(model_dir),
            data_spec=data_spec,
            steps_done=model.meta.get("steps_done"),
            num_train_images=int(len(train)),
        ),
        classifier=ClassifierInfo(
            dir=str(clf_dir), data_spec=clf_spec, matches_model_data=clf_spec in (None, data_spec)
        ),
        settings=CPSampleSettings(
            n=cfg.cpsample_n,
            num_inference_steps=cfg.cpsample_steps,
            eta=0.0,
            seed=cfg.seed,
            alpha=cfg.alpha,
            scale=cfg.scale,
            mode=cfg.guidance_mode,
            torch_threads=torch.get_num_threads(),
        ),
        threshold=ReplicationThreshold(
            feature_space="pixel",
            tau=tau["threshold"],
            fpr=tau.get("fpr"),
            tpr=tau.get("tpr"),
            provenance=tau.get("provenance"),
        ),
        conditions=conditions,
        fisher_exact=fisher,
        training_png="cpsample/training_images.png",
    )


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def check_complete(result: DemoResult) -> None:
    """Raise if a selected section was skipped or failed (one line naming each and its reason).

    Raises:
        CheckpointError: only skips (a missing checkpoint), so the remedy is the checkpoint.
        PrivdiffError: at least one section failed.
    """
    bad = {n: s for n, s in result.sections.items() if s.status in ("skipped", "failed")}
    if not bad:
        return
    report = f"; report written to {result.config.out / 'report.html'}"
    msg = (
        "demo incomplete: " + "; ".join(f"{_TITLES.get(n, n)} {s.status} ({s.reason})" for n, s in bad.items()) + report
    )
    if all(s.status == "skipped" for s in bad.values()):
        raise CheckpointError(msg)
    raise PrivdiffError(msg)


def run_demo(config: DemoConfig, *, command: str | None = None, console: Any = None) -> DemoResult:
    """Run every section of ``config``, write ``report.html`` + ``summary.json``; return the result.

    Sections skip (missing checkpoint) or fail (another privdiff error) on their own; the result
    says which and why, and the report is written in every case.
    """
    from rich.console import Console

    cfg = _validated(config)
    console = console if console is not None else Console()
    command = command or "privdiff demo"
    _prepare_out(cfg.out)
    phases = _Phases(console)
    started, cpu_started = time.perf_counter(), time.process_time()
    started_utc = datetime.now(UTC).isoformat(timespec="seconds")
    console.rule(f"[bold]privdiff demo[/] ({cfg.size}) → {cfg.out}")

    sections: dict[str, Section] = {}
    runners = {
        "planner": lambda: _section_planner(cfg, phases, command),
        "dprdm": lambda: _section_dprdm(cfg, phases),
        "cpsample": lambda: _section_cpsample(cfg, phases),
    }
    order = ("dprdm", "cpsample", "planner")  # the two methods first: they are the point
    for name in order:
        if name not in cfg.sections:
            sections[name] = SectionNotDone("not run", "not selected")
            continue
        console.rule(f"[bold]{_TITLES[name]}")
        try:
            sections[name] = runners[name]()
        except CheckpointError as exc:
            sections[name] = SectionNotDone("skipped", str(exc))
            console.print(f"[bold yellow]skipped {_TITLES[name]}:[/] {exc}")
        except PrivdiffError as exc:
            sections[name] = SectionNotDone("failed", f"{type(exc).__name__}: {exc}")
            console.print(f"[bold red]{_TITLES[name]} failed:[/] {type(exc).__name__}: {exc}")

    result = DemoResult(
        command=command,
        started_utc=started_utc,
        config=cfg,
        sections=sections,
        environment={
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            # Variables that change what the command above does, so they belong to it.
            "variables": {v: os.environ[v] for v in _ENV_VARS if os.environ.get(v)},
        },
    )
    with phases("report", "writing report.html and summary.json"):
        from privdiff.demo.report import write_report

        _record_times(result, phases, started, cpu_started)
        write_report(result, cfg.out)
    _record_times(result, phases, started, cpu_started)
    result.outputs = {"report": "report.html", "summary": "summary.json"}
    atomic_write_json(cfg.out / "summary.json", result.to_dict())
    print_summary(result, console)
    return result


def _record_times(result: DemoResult, phases: _Phases, started: float, cpu_started: float) -> None:
    result.timings = {k: round(v, 2) for k, v in phases.seconds.items()}
    result.cpu_timings = {k: round(v, 2) for k, v in phases.cpu_seconds.items()}
    result.total_seconds = round(time.perf_counter() - started, 2)
    result.total_cpu_seconds = round(time.process_time() - cpu_started, 2)


_ENV_VARS = (*CHECKPOINT_ENV_VARS, "PRIVDIFF_CACHE_DIR", "OMP_NUM_THREADS")
_TITLES = {"planner": "Privacy planner", "dprdm": "DP-RDM", "cpsample": "CPSample"}


def print_summary(result: DemoResult, console: Any) -> None:
    """The closing terminal tables: headline numbers and the wall time of each phase."""
    from rich.table import Table

    table = Table(title="privdiff demo: summary", show_header=True)
    table.add_column("section")
    table.add_column("result")
    for name, s in result.sections.items():
        table.add_row(_TITLES[name], _headline(s))
    console.print(table)
    times = Table(title="time per phase")
    times.add_column("phase")
    times.add_column("wall s", justify="right")
    times.add_column("CPU s", justify="right")
    for k, v in result.timings.items():
        times.add_row(k, f"{v:.1f}", f"{result.cpu_timings[k]:.1f}")
    times.add_row("[bold]total", f"[bold]{result.total_seconds:.1f}", f"[bold]{result.total_cpu_seconds:.1f}")
    console.print(times)
    d = result.sections.get("dprdm")
    if isinstance(d, DPRDMResult):
        idx = d.index
        if idx.cached:
            from privdiff.demo.report import COLD_INDEX_NOTE

            console.print("private index: reused from the cache. " + COLD_INDEX_NOTE)
        else:
            how = (
                "embeddings from the cache"
                if idx.embeddings_from_cache
                else (f"encoded at {idx.images_per_second or 0:.0f} img/s")
            )
            console.print(
                f"private index: built this run ({idx.count:,} images, {how}; "
                f"{result.timings.get('dprdm.index', 0):.0f} s); later runs reuse it."
            )
    console.print(f"report: {result.config.out / 'report.html'}")


def _headline(s: Section) -> str:
    if isinstance(s, SectionNotDone):
        return f"[yellow]{s.status}[/]: {s.reason}"
    if isinstance(s, DPRDMResult):
        led, r = s.ledger.status, s.refused_request
        cached = "cached index" if s.index.cached else "index built"
        rates = ", ".join(f"{m} {r.value:.0%}" for m, r in s.domain.rates.items())
        return (
            f"in-domain ({s.domain.name}): {rates}; "
            f"{len(s.prompts)} prompts answered, ε spent {led.epsilon_spent:.3g} of "
            f"{led.epsilon_budget:g} (δ={led.delta:.2g}); request of {r.prompts_requested} prompts "
            + ("[green]refused[/], ledger unchanged" if r.refused and r.ledger_unchanged else "[red]NOT refused[/]")
            + f"; {cached}"
        )
    if isinstance(s, CPSampleResult):
        c = s.conditions
        return (
            f"replication {c['ddim'].replication_rate:.0%} (DDIM) → {c['cpsample'].replication_rate:.0%} "
            f"(CPSample), gate fired on {c['cpsample'].gate['firing_rate']:.1%} of steps; "
            f"Fisher p={s.fisher_exact['p_value']:.2g}"
        )
    best = {r.name: r.queries_at_target["pld"] for r in s.settings}
    return "queries at ε ≤ 10 (pld): " + ", ".join(f"{n} {v:,}" for n, v in best.items())


__all__ = [
    "SIZES",
    "CPSampleResult",
    "DPRDMResult",
    "DeltaNote",
    "DemoConfig",
    "DemoPrompt",
    "DemoResult",
    "DomainRate",
    "DomainResult",
    "PlannerResult",
    "SectionNotDone",
    "check_complete",
    "demo_config",
    "print_summary",
    "run_demo",
]
