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

#: What a cold run adds, said once for the terminal and the report. The throughput of the shipped
#: model's encoder (fmnist-public-cnn/v1) was measured by `privdiff demo --quick`: 3,000 images in
#: 6.1 s wall (3.7 s CPU) on the shared 2-core machine while other jobs ran (load ~7).
COLD_INDEX_NOTE = (
    "A cold run first embeds the private collection (the 9,000 winter tops of `make demo`) with "
    "the shipped model's encoder (a small CNN, fmnist-public-cnn/v1): about 20 seconds at ~500 "
    "images/s on a busy 2-core machine, unless privdiff's embedding cache already holds it."
)

_MODE_LABELS = {
    "dp-rdm": "DP-RDM (private, ε charged)",
    "public-retrieval": "public retrieval (ε = 0)",
    "non-private": "non-private (ε = ∞) NOT PRIVATE",
    "subsampled": "subsampled, no noise (ε = ∞) NOT PRIVATE",
    "no-retrieval": "no retrieval (ε = 0)",
}
_SHORT = {
    "dp-rdm": "DP-RDM",
    "public-retrieval": "public",
    "non-private": "non-private",
    "subsampled": "subsampled",
    "no-retrieval": "none",
}


def _private_mode(mode: str) -> bool:
    """Whether a mode's outputs are covered by a guarantee (ε finite); the ε = ∞ references are not."""
    return mode not in ("non-private", "subsampled")


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
        "running on the Fashion-MNIST data that ships with privdiff: DP-RDM adapting a public model to a private "
        "domain it cannot reach through public retrieval, at a stated ε."
    )
    rows: list[list[Any]] = []
    d = secs["dprdm"]
    if d.ok:
        led, r = d.ledger.status, d.refused_request
        rows += [
            [f"in-domain rate ({d.domain.name}): {_MODE_LABELS.get(mo, mo)}", f"{_rate(rt)} of {rt.n} images"]
            for mo, rt in d.domain.rates.items()
        ]
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


def _rate(r: Any) -> str:
    return f"{r.value:.0%} [{r.low:.0%}, {r.high:.0%}]"


def _dprdm(rep: HtmlReport, d: DPRDMResult | DemoSection, out: Path) -> None:
    s = rep.section("DP-RDM: answering prompts from a private collection")
    if _skip(s, d):
        return
    m, led, idx, gen, dom = d.mechanism, d.ledger.status, d.index, d.generation, d.domain
    trained_on = d.model.training.get("data") or "the public split"
    names = " + ".join(dom.class_names)
    s.text(
        f"The question DP-RDM exists for: a model trained on public images only ({trained_on}) is pointed at a "
        f"private collection that is a domain, here {dom.name}: {d.private_data}, {idx.count:,} images. "
        'The prompts are coarse and name no class ("a photo of a top"). Public retrieval answers them from '
        f"{d.public_data}, which holds pullovers and coats too, yet returns mostly T-shirts and shirts; the "
        "private collection is what pulls the context to its domain. Every image is judged by the domain "
        f"yardstick (a classifier of all ten Fashion-MNIST classes, test accuracy "
        f"{dom.yardstick_test_accuracy or float('nan'):.3f}): an image is in the domain when it calls it {names}."
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
    _delta(s, d)
    _domain_rates(s, d)

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
        [[i + 1, p.text, p.epsilon_spent_after, p.epsilon_remaining_after] for i, p in enumerate(d.prompts)],
        headers=["query", "prompt", "ε spent after", "ε left"],
    )

    s.parts.append("<h3>Images: one row per query, one column per way of building the context</h3>")
    modes = gen.modes
    headers = ["prompt"] + [_MODE_LABELS.get(mo, mo) for mo in modes]
    classes = [None] + ["bad" if not _private_mode(mo) else ("good" if mo == "dp-rdm" else None) for mo in modes]
    rows = []
    for i, p in enumerate(d.prompts):
        counts = ", ".join(f"{_SHORT.get(mo, mo)} {p.modes[mo].in_domain}/{p.modes[mo].n_images}" for mo in modes)
        flag = " ▼ DP-RDM below public-only here" if i in dom.prompts_dp_below_public else ""
        label = f"{i + 1}. {p.text} (in domain: {counts}){flag}"
        rows.append([label] + [_cell_image(out / p.modes[mo].dir, gen.images_per_prompt) for mo in modes])
    width = min(260, (_TABLE_WIDTH - 160) // max(1, len(modes)))
    s.image_table(
        rows,
        headers,
        header_classes=classes,
        width=width,
        caption="Every cell of a row starts from the same random noise x_T, so differences come from the "
        "context alone. Columns marked ε = ∞ read private data without noise: they carry no privacy "
        "guarantee and are shown only as references.",
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


def _delta(s: Section, d: DPRDMResult) -> None:
    """The setting warnings make_pipeline gave for this ledger, and what δ = 1/N means."""
    note, led = d.delta_note, d.ledger.status
    for w in note.warnings:
        s.callout("Warning from privdiff when the DP-RDM pipeline was set up: " + w, "warn")
    s.text(
        f"Why δ = 1/N here: it is the DP-RDM paper's setting (δ = 1/N = {led.delta:.3g}), used so the numbers "
        "compare with the paper, and it is why privdiff warns above. δ is the probability with which the "
        "guarantee may fail outright; a mechanism that publishes each private image with probability δ "
        f"satisfies (0, δ)-DP, and at δ = 1/N it would publish about one of the {d.index.count:,} images. "
        f"A deployment should use δ ≪ 1/N: the same {led.queries} queries charged at δ = "
        f"{note.stricter_delta:.3g} (1/(100 N)) would cost ε = {note.epsilon_at_stricter_delta:.3g} instead of "
        f"{led.epsilon_spent:.3g}: that is the price of a guarantee that does not allow releasing an image outright."
    )


def _domain_rates(s: Section, d: DPRDMResult) -> None:
    """The in-domain rate of each mode, with intervals, and an explicit note for any shortfall."""
    from privdiff.data import FASHION_MNIST_CLASSES

    dom, led = d.domain, d.ledger.status
    s.parts.append(f"<h3>In-domain rate: how often each mode draws {dom.name}</h3>")
    rows = []
    for mode, r in dom.rates.items():
        eps = f"{led.epsilon_spent:.3g}" if mode == "dp-rdm" else ("0" if _private_mode(mode) else "∞")
        top = sorted(range(len(r.predicted_classes)), key=lambda c: -r.predicted_classes[c])[:3]
        seen = ", ".join(f"{FASHION_MNIST_CLASSES[c]} {r.predicted_classes[c]}" for c in top if r.predicted_classes[c])
        rows.append([_MODE_LABELS.get(mode, mode), _rate(r), r.n, eps, seen])
    s.table(rows, headers=["mode", "in-domain rate [95 % CI]", "images", "ε", "most frequent classes (yardstick)"])
    n = min(r.n for r in dom.rates.values())
    width = max(r.high - r.low for r in dom.rates.values())
    s.text(
        "Intervals are Wilson 95 % intervals over the images of a mode. Images drawn from one query's context "
        "are correlated, so they are a little optimistic; a measurement with 1,000 images from 100 queries per "
        "setting is in docs/results/dprdm/domain (made with the RDM shipped before this one: public-only 0.027, "
        "DP-RDM at ε = 10 0.53-0.69)."
    )
    if n < 100:
        s.callout(
            f"Only {n} images per mode in this run, so the intervals are wide (up to {width:.0%} across): "
            "read them as an illustration, not a measurement. `make demo` draws more, and the experiment in "
            "docs/results/dprdm/domain draws 1,000 per setting.",
            "warn",
        )
    dp, pub = dom.rates.get("dp-rdm"), dom.rates.get("public-retrieval")
    if dp is not None and pub is not None:
        if dp.value < pub.value:
            s.callout(
                f"In this run DP-RDM drew fewer in-domain images than public-only retrieval: {_rate(dp)} against "
                f"{_rate(pub)} ({dp.n} images each). "
                + (
                    "The intervals overlap, so this run cannot tell them apart."
                    if dp.high >= pub.low
                    else "The intervals do not overlap: here DP-RDM is worse than public retrieval."
                ),
                "bad",
            )
        else:
            s.text(
                f"DP-RDM, at ε = {led.epsilon_spent:.3g}, drew {dp.value:.0%} in-domain images against "
                f"{pub.value:.0%} for public-only retrieval "
                + (
                    "(the intervals do not overlap)."
                    if dp.low > pub.high
                    else "(the intervals overlap: this run alone does not separate them)."
                )
            )
        if dom.prompts_dp_below_public:
            rows_below = ", ".join(
                f"query {i + 1} ({d.prompts[i].modes['dp-rdm'].in_domain} vs "
                f"{d.prompts[i].modes['public-retrieval'].in_domain} of {d.prompts[i].modes['dp-rdm'].n_images})"
                for i in dom.prompts_dp_below_public
            )
            s.callout(
                f"Rows where DP-RDM has fewer in-domain images than public-only retrieval (marked ▼ below): "
                f"{rows_below}. One query's images share one noisy context, so single rows vary a lot.",
                "warn",
            )
    nonpriv = dom.rates.get("non-private")
    if dp is not None and nonpriv is not None and nonpriv.value < dp.value:
        s.text(
            f"Non-private retrieval ({nonpriv.value:.0%}) is not the ceiling here: the exact k nearest private "
            "neighbours of a coarse prompt are the most T-shirt-like winter tops, and the model draws T-shirts "
            "and shirts from them. DP-RDM's random subsample gives a context more typical of the whole domain."
        )
