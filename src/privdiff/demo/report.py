"""``report.html`` of ``privdiff demo``: the demo's summary and figures as one self-contained page.

A pure function of the demo's result (:class:`privdiff.demo.DemoResult`, read as attributes) and
the files the demo wrote beside it: every number on the page is read from the result, every
picture from disk, and ``summary.json`` is written from the same result, so the page cannot
disagree with it.

The plain-language text says what each guarantee means and what it does not: DP-RDM gives
(ε, δ)-differential privacy to each private image over all queries charged to one ledger
(Lebensold et al., arXiv 2403.14421, §3-4); CPSample gives an empirically measured reduction of
copies and no formal guarantee (Kazdan et al., arXiv 2409.07025, §2.2 and §5).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from privdiff.report.html import HtmlReport, Section

if TYPE_CHECKING:  # the demo is an application above the report; only its types are needed here
    from privdiff.demo import CPSampleResult, DemoResult, DPRDMResult, PlannerResult
    from privdiff.demo import Section as DemoSection

#: What a cold run adds, said once for the terminal and the report. The throughput is the one
#: ../shared/RESOURCES.md measured on an idle 2-core machine; a loaded machine is several times slower.
COLD_INDEX_NOTE = (
    "A cold run first embeds the private split (49,320 images) with EfficientNet-Lite0: about "
    "2 minutes at ~400 images/s on 2 idle cores, unless privdiff's embedding cache already holds it."
)

_MODE_LABELS = {
    "dp-rdm": "DP-RDM (private, ε charged)",
    "public-retrieval": "public retrieval (ε = 0)",
    "non-private": "non-private (ε = ∞) NOT PRIVATE",
    "no-retrieval": "no retrieval (ε = 0)",
}
#: Width of the whole image table on the page; columns share it.
_TABLE_WIDTH = 920


def _eps(v: Any) -> str:
    if v in ("inf", float("inf")):
        return "∞"
    return f"{float(v):.3g}"


def _cell_image(directory: Path, n: int) -> np.ndarray | str:
    """The n images of one (prompt, mode) call tiled 4 wide; a note if they are missing."""
    from PIL import Image

    from privdiff.report.images import make_grid

    # generate_to_directory writes the PNGs under images/ (older runs: beside the grid).
    where = directory / "images" if (directory / "images").is_dir() else directory
    files = [where / f"p00_{j:03d}.png" for j in range(n)]
    if not all(f.is_file() for f in files):
        return "images missing"
    imgs = np.stack([np.asarray(Image.open(f)) for f in files])
    if imgs.ndim == 3:
        imgs = imgs[..., None]
    grid = make_grid(imgs, ncols=min(4, n), pad=2)
    return np.repeat(np.repeat(grid, 2, axis=0), 2, axis=1)  # ×2 nearest: crisp at any zoom


def _kv(section: Section, rows: list[list[Any]], headers: list[str] | None = None) -> None:
    """A two-column table of settings; values are formatted as text so the column reads left-aligned."""

    def text(v: Any) -> str:
        if isinstance(v, bool) or v is None:
            return "–" if v is None else str(v)
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    section.table([[k, text(v)] for k, v in rows], headers=headers)


def _skip(section: Section, s: DemoSection) -> bool:
    if s.ok:
        return False
    kind = "warn" if s.status in ("skipped", "not run") else "bad"
    section.callout(f"This section was {s.status}: {s.reason}", kind)
    return True


def write_report(result: DemoResult, out_dir: str | Path) -> Path:
    """Write ``out_dir/report.html`` from the demo's result; returns its path."""
    out = Path(out_dir)
    secs = result.sections
    rep = HtmlReport(
        "privdiff demo: private image generation, end to end",
        subtitle=f"{result.size} run started {result.started_utc} · command: {result.command}",
    )
    _overview(rep, result)
    _guarantees(rep, secs["dprdm"])
    _dprdm(rep, secs["dprdm"], out)
    _cpsample(rep, secs["cpsample"], out)
    _planner(rep, secs["planner"], out)
    _timings(rep, result)
    return rep.write(out / "report.html")


def _overview(rep: HtmlReport, result: DemoResult) -> None:
    secs = result.sections
    s = rep.section("At a glance")
    s.text(
        "privdiff implements two ways to generate images without leaking the images behind them. "
        "DP-RDM lets a public diffusion model draw on a private image collection through a "
        "differentially private retrieval step, charging every query to a privacy budget. CPSample "
        "stops a model that memorised its training images from reproducing them. This page shows both "
        "running on the Fashion-MNIST data that ships with privdiff."
    )
    rows: list[list[Any]] = []
    d = secs["dprdm"]
    if d.ok:
        led, r = d.ledger.status, d.refused_request
        rows += [
            ["DP-RDM prompts answered", len(d.prompts)],
            [
                "DP-RDM ε spent / budget",
                f"{led.epsilon_spent:.3g} / {led.epsilon_budget:g} (δ = {led.delta:.2g})",
            ],
            ["over-budget request refused, nothing charged", "yes" if r.without_effect else "NO"],
        ]
    c = secs["cpsample"]
    if c.ok:
        cd = c.conditions
        rows += [
            [
                "CPSample replication rate: plain DDIM",
                f"{cd['ddim'].replication_rate:.1%} ({cd['ddim'].n_replicated} of {cd['ddim'].n_generated})",
            ],
            [
                "CPSample replication rate: protected",
                f"{cd['cpsample'].replication_rate:.1%} "
                f"({cd['cpsample'].n_replicated} of {cd['cpsample'].n_generated})",
            ],
        ]
    rows.append(["total wall time", f"{result.total_seconds:.0f} s"])
    _kv(s, rows)
    for name, sec in secs.items():
        if sec.status in ("skipped", "failed"):
            title = {"dprdm": "DP-RDM", "cpsample": "CPSample", "planner": "Privacy planner"}[name]
            s.callout(
                f"{title} was {sec.status}: {sec.reason}",
                "warn" if sec.status == "skipped" else "bad",
            )


def _guarantees(rep: HtmlReport, d: DPRDMResult | DemoSection) -> None:
    s = rep.section("What the guarantees mean, and what they do not")
    led = d.ledger.status if d.ok else None
    spent = (
        (
            f"In this run ε = {led.epsilon_spent:.3g} of a budget of {led.epsilon_budget:g}, "
            f"with δ = 1/N = {led.delta:.2g}. "
        )
        if led is not None
        else ""
    )
    s.parts.append("<h3>DP-RDM: (ε, δ)-differential privacy for every private image</h3>")
    s.text(
        "Each prompt is one query to the private collection: the query's k nearest private image "
        "embeddings, taken from a fresh random subsample, are averaged and Gaussian noise is added "
        "before the model sees them. The ledger charges every query before it is answered and "
        "refuses any that would exceed the budget. "
        + spent
        + "What this means: for every single private image, everything released through queries "
        "charged to this ledger (the contexts and every picture drawn from them) is almost equally "
        "likely whether or not that image was in the collection: probabilities change by at most a "
        "factor e^ε, except with probability δ. So no output can depend much on any one private image."
    )
    s.bullets(
        [
            "It is not a guarantee about the public data or the model: the model was trained on public "
            "images and may reproduce those.",
            "It covers only queries charged to this one ledger. This demo creates a fresh ledger on each run, "
            "which is fine for a demo on benchmark data; a real deployment keeps one ledger per dataset for its "
            "whole life, because resetting the budget resets the guarantee.",
            "It protects individual images, not population facts: if the collection is full of sneakers, "
            "the outputs will show sneakers. That is the intended use.",
            "The collection's size N is treated as public, and timing side channels are not defended against.",
            "The non-private baseline (ε = ∞) has no guarantee at all; it is shown only as the quality upper "
            "bound. Public retrieval and no retrieval never touch private data (ε = 0).",
        ]
    )
    s.parts.append("<h3>CPSample: fewer copies of training images, measured, not proven</h3>")
    s.text(
        "CPSample trains a classifier to memorise random labels on the model's training images. Where it "
        "is confident, the sample is near a training image, and the sampler is pushed back towards "
        "uncertainty. The protection is empirical: we count how many samples are near-copies of a "
        "training image (replication rate) with and without it."
    )
    s.bullets(
        [
            "There is no ε and no formal differential-privacy guarantee.",
            "Anyone holding the model weights can sample without the protection.",
            "The count uses a pixel-space similarity threshold calibrated on noisy copies; shifted or "
            "re-posed copies and partial copies below the threshold are not counted.",
            "The reduction is only as good as the classifier and the settings (α, guidance scale).",
        ]
    )


def _dprdm(rep: HtmlReport, d: DPRDMResult | DemoSection, out: Path) -> None:
    s = rep.section("DP-RDM: answering prompts from a private collection")
    if _skip(s, d):
        return
    m, led, idx, gen = d.mechanism, d.ledger.status, d.index, d.generation
    from privdiff.data import DPRDM_PUBLIC_PER_CLASS, FOOTWEAR_CLASSES

    trained_on = d.model.training.get("data") or "the public split"
    shoes = {DPRDM_PUBLIC_PER_CLASS[c] for c in FOOTWEAR_CLASSES}
    others = {v for c, v in DPRDM_PUBLIC_PER_CLASS.items() if c not in FOOTWEAR_CLASSES}
    split = (
        f", where each footwear class has {min(shoes):,} images against {max(others):,} for every other class"
        if "dprdm-public" in trained_on
        else ""
    )
    s.text(
        f"The private collection is {d.private_data} ({idx.count:,} images). The model was trained on "
        f"public images only ({trained_on}){split}, so footwear prompts are where private retrieval should help; "
        f"the last prompt is a control the public data already covers. The public-retrieval baseline searches "
        f"{d.public_data}."
    )
    _kv(
        s,
        [
            ["private images N", idx.count],
            ["budget ε / δ = 1/N", f"{led.epsilon_budget:g} / {led.delta:.3g}"],
            ["accountant", led.accountant],
            ["σ (noise std) / q (subsample rate) / k", f"{m.sigma:g} / {m.sample_rate:g} / {m.k}"],
            ["noise multiplier z = σk/2", m.noise_multiplier],
            ["expected subsample size q·N", f"{m.expected_subsample:,.0f}"],
            [
                "classifier-free guidance w / DDIM steps",
                f"{gen.guidance_scale:g} / {gen.num_inference_steps}",
            ],
            ["images per prompt and mode (same x_T in every mode)", gen.images_per_prompt],
            ["RDM checkpoint", f"{d.model.dir} ({d.model.steps_done or '?'} training steps)"],
            ["private index", ("cached: " if idx.cached else "built this run: ") + idx.path],
        ],
        headers=["setting", "value"],
    )
    if m.expected_subsample < 20 * m.k:
        s.callout(
            f"With this private set each query's random subsample holds about {m.expected_subsample:.0f} "
            f"images, so its k = {m.k} nearest neighbours often include other classes. DP-RDM images are "
            "then less specific than with the full private set (run without --quick).",
            "warn",
        )

    s.parts.append("<h3>Budget after each prompt</h3>")
    eps = [p.epsilon_spent_after for p in d.prompts]
    if len(eps) > 1:
        s.text(
            f"ε does not add up prompt by prompt: the first prompt brought it to {eps[0]:.3g}, the other "
            f"{len(eps) - 1} together added {eps[-1] - eps[0]:.3g}. Each query sees a small random subsample and "
            "noise, and the accountant bounds the whole history at once, so the privacy loss of many queries "
            "grows far more slowly than their number."
        )
    s.table(
        [
            [
                p.text,
                p.concept,
                "yes" if p.heldout else "no",
                p.epsilon_spent_after,
                p.epsilon_remaining_after,
            ]
            for p in d.prompts
        ],
        headers=["prompt", "asks for", "phrasing unseen in training", "ε spent after", "ε left"],
    )

    s.parts.append("<h3>Images: one row per prompt, one column per way of building the context</h3>")
    modes = gen.modes
    headers = ["prompt"] + [_MODE_LABELS.get(mo, mo) for mo in modes]
    classes = [None] + ["bad" if mo == "non-private" else ("good" if mo == "dp-rdm" else None) for mo in modes]
    rows = []
    for p in d.prompts:
        label = p.text + (" (unseen phrasing)" if p.heldout else "")
        rows.append([label] + [_cell_image(out / p.modes[mo].dir, gen.images_per_prompt) for mo in modes])
    width = min(260, (_TABLE_WIDTH - 160) // max(1, len(modes)))
    s.image_table(
        rows,
        headers,
        header_classes=classes,
        width=width,
        caption="Every cell starts from the same random noise x_T per prompt, so differences come "
        "from the context alone. The non-private column reads private data without noise: it "
        "carries no privacy guarantee and is shown only as a reference.",
    )

    r = d.refused_request
    s.parts.append("<h3>A request over budget is refused, atomically</h3>")
    ok = r.without_effect
    s.text(
        f"After the prompts above, the budget still had room for {r.prompts_that_would_fit:,} more prompts "
        f"at these settings (one more would already bring ε to {r.epsilon_with_one_prompt_more_than_fits:.5g}). "
        f"The demo then asked for {r.prompts_requested:,} prompts in one request, which would have brought ε "
        f"to {r.epsilon_if_answered:.4g} > {led.epsilon_budget:g}. The ledger checks the whole request "
        "before anything is computed, so it answers none of it rather than the part that fits."
    )
    s.callout(
        ("Refused. " if r.refused else "NOT refused — this is a bug. ")
        + f"ε spent before {r.epsilon_spent_before:.4g}, after {r.epsilon_spent_after:.4g}; queries "
        f"charged before {r.queries_before}, after {r.queries_after}; images written: {r.images_written}. "
        + (f"The ledger said: {r.error}" if r.error else ""),
        "info" if ok else "bad",
    )


def _cpsample(rep: HtmlReport, c: CPSampleResult | DemoSection, out: Path) -> None:
    s = rep.section("CPSample: a memorising model, with and without protection")
    if _skip(s, c):
        return
    st, cd, tau = c.settings, c.conditions, c.threshold
    s.text(
        f"The diffusion model below was trained on only {c.model.num_train_images} images "
        f"({c.model.data_spec}) until it memorised them, so plain sampling often returns near-copies. "
        f"Both rows start from the same {st.n} noise images x_T; only the protection differs."
    )
    s.image(out / c.training_png, caption=f"the {c.model.num_train_images} training images")
    s.table(
        [
            [
                cd[n].label,
                f"{cd[n].replication_rate:.1%}",
                f"{cd[n].n_replicated} / {cd[n].n_generated}",
                cd[n].similarity["median"],
                cd[n].similarity["max"],
                "–" if cd[n].gate is None else f"{cd[n].gate['firing_rate']:.2%}",
                cd[n].sample_seconds,
            ]
            for n in ("ddim", "cpsample")
        ],
        headers=[
            "sampler",
            "replication rate",
            "near-copies",
            "median NN similarity",
            "max NN similarity",
            "gate fired (sample·steps)",
            "seconds",
        ],
    )
    f = c.fisher_exact
    calibration = ""
    if tau.fpr is not None and tau.tpr is not None:
        calibration = (
            f" (calibrated so that {tau.fpr:.0%} of unrelated test images exceed it and "
            f"{tau.tpr:.0%} of lightly noised copies do)"
        )
    s.text(
        f"A sample counts as a near-copy when its cosine similarity to the nearest training image in pixel space "
        f"exceeds τ = {tau.tau:.3f}{calibration}. "
        f"Two-sided Fisher exact test of the difference: p = {f['p_value']:.2g}. "
        f"CPSample settings: α = {st.alpha:g} (the gate fires where the classifier's confidence exceeds "
        f"1 − α), guidance scale s = {st.scale:g}, {st.mode}, {st.num_inference_steps} DDIM steps."
    )
    if not c.classifier.matches_model_data:
        s.callout(
            f"The classifier was trained on {c.classifier.data_spec}, not on the model's training set "
            f"{c.model.data_spec}; the protection does not target these images.",
            "bad",
        )
    for n in (
        "ddim",
        "cpsample",
    ):  # side by side: the same x_T sits at the same place in both grids
        s.image(out / cd[n].samples_png, caption=f"{cd[n].label}: all {st.n} samples", width=480)
    s.parts.append("<h3>The four samples closest to a training image</h3>")
    for n in ("ddim", "cpsample"):
        s.image(
            out / cd[n].top_pairs_png,
            caption=f"{cd[n].label}: left the sample, right its nearest training image (CPSample paper, Fig. 1 layout)",
            width=320,
        )


def _planner(rep: HtmlReport, p: PlannerResult | DemoSection, out: Path) -> None:
    s = rep.section("Privacy planner: how many queries a budget buys")
    if _skip(s, p):
        return
    s.text(
        "Before serving anything, a data owner can see how ε grows with the number of queries. These are the "
        "DP-RDM paper's three sample-figure settings (δ = 1/N). 'paper' is the accountant the authors used; "
        "'pld' (privdiff's default) is a tighter analysis of the same mechanism, so the same ε buys more queries."
    )
    s.table(
        [
            [
                r.name,
                r.dataset_size,
                r.sigma,
                r.sample_rate,
                r.k,
                r.figure_queries,
                r.epsilon_at_figure_queries["paper"],
                r.epsilon_at_figure_queries["pld"],
                r.queries_at_target["paper"],
                r.queries_at_target["pld"],
            ]
            for r in p.settings
        ],
        headers=[
            "setting",
            "N",
            "σ",
            "q",
            "k",
            "T",
            "ε at T (paper)",
            "ε at T (pld)",
            f"T at ε ≤ {p.target_epsilon:g} (paper)",
            f"T at ε ≤ {p.target_epsilon:g} (pld)",
        ],
    )
    captions = {
        "epsilon_vs_queries.png": "ε against the number of queries T, per accountant",
        "queries_at_target.png": f"queries answerable within ε = {p.target_epsilon:g}",
        "concept_density.png": "a bigger private collection gives the same concept density at a smaller ε",
    }
    for f in p.figures:
        # The ε-vs-queries figure has one panel per setting: it needs the page's full width.
        wide = Path(f).name == "epsilon_vs_queries.png"
        s.image(out / f, caption=captions.get(Path(f).name, Path(f).name), width=1000 if wide else 480)


def _timings(rep: HtmlReport, result: DemoResult) -> None:
    s = rep.section("Timings and reproduction")
    cpu = result.cpu_timings
    s.table(
        [[k, v, cpu.get(k)] for k, v in result.timings.items()]
        + [["total", result.total_seconds, result.total_cpu_seconds]],
        headers=["phase", "wall seconds", "CPU seconds (all threads)"],
    )
    d = result.sections["dprdm"]
    if d.ok:
        idx = d.index
        if idx.cached:
            s.text("The private index came from the cache. " + COLD_INDEX_NOTE)
        else:
            how = (
                "their embeddings came from privdiff's embedding cache"
                if idx.embeddings_from_cache
                else f"encoded at {idx.images_per_second or 0:.0f} images per second"
            )
            s.text(
                f"The private index was built in this run from {idx.count:,} images ({how}). "
                "Later runs reuse it from the cache."
            )
    env = result.environment
    variables = " ".join(f"{k}={v}" for k, v in env.get("variables", {}).items())
    s.text(
        f"Run on Python {env['python']}, {env['cpus']} CPUs ({env['machine']}). "
        f"Reproduce with `{(variables + ' ' if variables else '') + result.command}`. "
        "Every number on this page is in summary.json next to this file."
    )
