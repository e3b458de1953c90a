"""Membership inference against plain DDIM vs CPSample, two-sided, per threat model (issue #15 item 5).

Members are the model's training images, non-members held-out test images. Three threat models:

* **white-box denoiser** — the attacker queries (x_t, t) -> ε̂: the plain ε_θ ("DDIM"), or ε̂_{θ,φ}
  with the CPSample correction inside ("CPSample"), as in the paper's Algorithm 1
  (methods/cpsample.md §5.3). Attacks: loss (Matsumoto et al. 2023, one noise draw per image),
  PIA (Kong et al. 2024), SecMI_stat (Duan et al. 2023, t-error of a DDIM inversion round trip);
* **classifier access** — the attacker also holds CPSample's random-label classifier f_φ, which
  memorises the training images by design: its confidence |z| on the image noised to t. Only the
  CPSample condition has a classifier;
* **black-box samples** — the attacker sees only generated images: each candidate's cosine
  similarity to its nearest sample, for samples of plain DDIM vs of CPSample with the guidance
  ``privdiff sample --protect`` uses by default (same seed, so the same x_T for both).

Every attack is reported by :func:`privdiff.evaluation.mia.two_sided_report`: AUC, flipped AUC and
two-sided AUC with bootstrap CIs, TPR at 1 % and 0.1 % FPR in both directions (or "not
resolvable" when the non-members are too few). Error attacks also get the paper's z-test.

Writes ``mia.json`` (the command, every setting, per-image scores and the reports),
``mia_table.md``, ``mia_auc.png`` and the black-box samples (``samples_<condition>.npz``, key
``images``) to ``--out`` (default ``docs/results/cpsample/membership``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

THREAT_MODELS = {
    "white-box denoiser": "queries ε̂(x_t, t) (the CPSample correction inside for CPSample)",
    "classifier access": "holds CPSample's classifier f_φ (only CPSample has one)",
    "black-box samples": "sees only generated samples",
}

#: --threat-models names → THREAT_MODELS keys.
SHORT = {"white-box": "white-box denoiser", "classifier": "classifier access", "black-box": "black-box samples"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="diffusion model (default: the shipped cpsample/fmnist64)")
    p.add_argument("--classifier", default=None, help="CPSample classifier (default: <model>/classifier)")
    p.add_argument("--members", default=None, help="the model's training set (default: the classifier's data_spec)")
    p.add_argument("--nonmembers", default="fashion-mnist:test[:128]", help="held-out images (dataset spec)")
    p.add_argument("--timesteps", type=int, nargs="+", default=[100], help="t of the loss attack and PIA")
    p.add_argument("--repeats", type=int, default=1, help="noise draws per image, loss attack (paper: 1)")
    p.add_argument("--secmi-t", type=int, default=100, help="SecMI t_SEC (Duan et al.: 100)")
    p.add_argument("--secmi-interval", type=int, default=10, help="SecMI DDIM interval k (Duan et al.: 10)")
    p.add_argument("--classifier-t", type=int, nargs="+", default=[0, 100], help="t of the confidence attack")
    p.add_argument("--samples", type=int, default=1000, help="generated samples per condition (black-box)")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps of the generated samples")
    p.add_argument("--feature-space", default="pixel", help="space of the nearest-sample distance")
    p.add_argument(
        "--fid-reference",
        default=None,
        help="also the Inception FID of each condition's samples against these images (dataset spec); "
        "the quality side of the black-box trade-off",
    )
    # CPSample guidance; None = what `privdiff sample --protect` picks (classifier report, else defaults).
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--scale", type=float, default=None)
    p.add_argument("--mode", default=None)
    p.add_argument("--gate-on", default=None)
    p.add_argument("--step", default=None)
    p.add_argument("--t-max", type=int, default=None, help="0 = classifier at every t")
    p.add_argument(
        "--threat-models",
        nargs="+",
        default=list(SHORT),
        choices=list(SHORT),
        help="which threat models to run (default: all)",
    )
    p.add_argument(
        "--conditions",
        nargs="+",
        default=["DDIM", "CPSample"],
        choices=["DDIM", "CPSample"],
        help="which conditions to run (default both; a CPSample-only run compares guidance variants)",
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the CIs")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--device",
        default="cpu",
        help="torch device of the model and classifier (noise is drawn on the CPU, so results match across devices)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/results/cpsample/membership")
    p.add_argument("--tag", default="")
    p.add_argument("--render", default=None, help="only re-render mia_table.md and the figure from this mia.json")
    return p.parse_args(argv)


def guidance_settings(meta: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """CPSample settings, each the flag's value or what ``privdiff sample --protect`` would use
    without it (α: the classifier report's suggestion, t-window: its fire window; the rest: the
    library defaults)."""
    from privdiff.cpsample import guidance as g
    from privdiff.cpsample.diagnostics import sampling_defaults

    gate_on = args.gate_on or g.DEFAULT_GATE_ON
    alpha, t_max, _ = sampling_defaults(meta, args.alpha, args.t_max, gate_on)
    return {
        "alpha": alpha,
        "scale": g.DEFAULT_SCALE if args.scale is None else args.scale,
        "mode": args.mode or g.DEFAULT_MODE,
        "gate_on": gate_on,
        "step": args.step or g.DEFAULT_STEP,
        "t_max": t_max,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        saved = Path(args.render)
        record = json.loads(saved.read_text())
        stem = saved.stem.replace("mia", "", 1)  # "mia_x" -> "_x"
        (saved.parent / f"mia_table{stem}.md").write_text(markdown_table(record))
        plot(record["results"], saved.parent / f"mia_auc{stem}.png")
        return 0
    import numpy as np
    import torch

    from privdiff.checkpoints import CPSAMPLE_MODEL, resolve_checkpoint
    from privdiff.cpsample import CPSampleGuidance, load_classifier, protected_denoiser
    from privdiff.data import load_dataset
    from privdiff.diffusion import load_model
    from privdiff.diffusion.generate import generate
    from privdiff.evaluation import mia
    from privdiff.evaluation.replication import replication_report
    from privdiff.report.images import to_model_space

    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    model_dir = resolve_checkpoint(CPSAMPLE_MODEL, args.model)
    classifier_dir = Path(args.classifier) if args.classifier else model_dir / "classifier"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"_{args.tag}" if args.tag else ""
    model = load_model(model_dir, device=args.device)
    protection = load_classifier(classifier_dir)
    protection.classifier.to(args.device)
    members_spec = args.members or protection.meta["data_spec"]
    acp = model.alphas_cumprod()
    members_u8 = load_dataset(members_spec).images
    nonmembers_u8 = load_dataset(args.nonmembers).images
    members, nonmembers = to_model_space(members_u8).to(args.device), to_model_space(nonmembers_u8).to(args.device)
    settings = guidance_settings(protection.meta, args)

    def new_guidance() -> CPSampleGuidance:
        return CPSampleGuidance(protection.classifier, **settings)

    rows: list[dict[str, Any]] = []

    def record(threat: str, attack: str, condition: str, params: dict[str, Any], sm, sn, errors: bool) -> None:
        rep = mia.two_sided_report(sm, sn, n_boot=args.n_boot, seed=args.seed)
        row = {
            "threat_model": threat,
            "attack": attack,
            "condition": condition,
            "params": params,
            "report": rep,
            "mean_member_score": float(np.mean(sm)),
            "mean_nonmember_score": float(np.mean(sn)),
            "member_scores": [float(v) for v in sm],
            "nonmember_scores": [float(v) for v in sn],
        }
        if errors:  # the paper's Table 3 test, on errors (= −score)
            row["z"], row["p"] = mia.z_test(-np.asarray(sm), -np.asarray(sn))
        rows.append(row)
        a, two = rep["auc"], rep["auc_two_sided"]
        print(
            f"{threat:>18} | {attack:<24} | {condition:<8} | AUC {a['value']:.3f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}]"
            f" two-sided {two['value']:.3f}  ({time.perf_counter() - t_start:.0f} s)",
            flush=True,
        )

    white_box_gate: dict[str, float] = {}
    # --- white-box denoiser -------------------------------------------------------------------
    for condition in args.conditions if "white-box" in args.threat_models else ():
        denoiser = model.denoiser()
        guidance = None
        if condition == "CPSample":
            guidance = new_guidance()
            denoiser = protected_denoiser(denoiser, guidance, acp)
        kw = {"alphas_cumprod": acp, "batch_size": args.batch_size}
        for t in args.timesteps:
            lkw = {**kw, "repeats": args.repeats}
            sm = mia.loss_scores(denoiser, members, t, seed=args.seed, **lkw)
            sn = mia.loss_scores(denoiser, nonmembers, t, seed=args.seed + 1, **lkw)
            record("white-box denoiser", f"loss (t={t})", condition, {"t": t, "repeats": args.repeats}, sm, sn, True)
            sm, sn = mia.pia_scores(denoiser, members, t, **kw), mia.pia_scores(denoiser, nonmembers, t, **kw)
            record("white-box denoiser", f"PIA (t={t})", condition, {"t": t, "p": 4}, sm, sn, True)
        skw = {**kw, "interval": args.secmi_interval}
        sm = mia.secmi_scores(denoiser, members, args.secmi_t, **skw)
        sn = mia.secmi_scores(denoiser, nonmembers, args.secmi_t, **skw)
        name = f"SecMI (t={args.secmi_t}, k={args.secmi_interval})"
        record(
            "white-box denoiser",
            name,
            condition,
            {"t_sec": args.secmi_t, "interval": args.secmi_interval},
            sm,
            sn,
            True,
        )
        if guidance is not None:  # over every white-box query of this condition (loss, PIA, SecMI)
            white_box_gate[condition] = guidance.stats.firing_rate

    # --- classifier access (CPSample only: plain DDIM has no classifier) -----------------------
    for t in args.classifier_t if "classifier" in args.threat_models and "CPSample" in args.conditions else ():
        kw = {"alphas_cumprod": acp, "batch_size": args.batch_size}
        sm = mia.classifier_confidence_scores(protection.classifier, members, t, seed=args.seed, **kw)
        sn = mia.classifier_confidence_scores(protection.classifier, nonmembers, t, seed=args.seed + 1, **kw)
        record("classifier access", f"confidence |z| (t={t})", "CPSample", {"t": t}, sm, sn, False)

    # --- black-box samples ----------------------------------------------------------------------
    sampling: dict[str, Any] = {}
    for condition in args.conditions if "black-box" in args.threat_models else ():
        guidance = new_guidance() if condition == "CPSample" else None
        images, info = generate(
            model,
            args.samples,
            num_inference_steps=args.sample_steps,
            seed=args.seed,
            guidance=guidance,
            batch_size=args.batch_size,
            progress=False,
        )
        # The samples are kept (uint8, a few hundred KB) so FID/KID or a visual check can follow.
        np.savez_compressed(out / f"samples_{condition.lower()}{tag}.npz", images=images)
        rep = replication_report(images, members_u8, feature_space=args.feature_space)
        sampling[condition] = {
            **info,
            "replication_rate": rep.rate,
            "replicated": rep.n_replicated,
            "replication_threshold": rep.threshold,
            "gate_firing_rate": guidance.stats.firing_rate if guidance else None,
        }
        if args.fid_reference:
            import warnings

            from privdiff.evaluation.fid import compute_fid

            with warnings.catch_warnings():  # small-n warnings are kept in the record instead
                warnings.simplefilter("ignore")
                fid = compute_fid(images, load_dataset(args.fid_reference).images)
            sampling[condition]["fid"] = {"value": fid.fid, "reference": args.fid_reference, "warnings": fid.warnings}
        sm = mia.nearest_sample_scores(members_u8, images, feature_space=args.feature_space)
        sn = mia.nearest_sample_scores(nonmembers_u8, images, feature_space=args.feature_space)
        params = {"samples": args.samples, "sample_steps": args.sample_steps, "feature_space": args.feature_space}
        record("black-box samples", "nearest sample (cosine)", condition, params, sm, sn, False)
        print(f"  {condition}: {rep.n_replicated}/{args.samples} samples replicate a member", flush=True)

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    record_json = {
        "experiment": "cpsample_mia",
        "command": command,
        "settings": {
            **vars(args),
            "model": str(model_dir),
            "classifier": str(classifier_dir),
            "members": members_spec,
            "n_members": int(members.shape[0]),
            "n_nonmembers": int(nonmembers.shape[0]),
            "cpsample": settings,
            "score_direction": "higher score => member; AUC < 0.5 means the flipped attack works",
            "z_definition": "error attacks (error = -score): z = (mean_err_non - mean_err_mem)"
            " / sqrt(s_m^2/n_m + s_n^2/n_n), p = 1 - Phi(z)",
        },
        "threat_models": THREAT_MODELS,
        "white_box_gate_firing_rate": white_box_gate,
        "sampling": sampling,
        "wall_seconds": time.perf_counter() - t_start,
        "results": rows,
    }
    (out / f"mia{tag}.json").write_text(json.dumps(record_json, indent=2))
    (out / f"mia_table{tag}.md").write_text(markdown_table(record_json))
    plot(rows, out / f"mia_auc{tag}.png")
    print(f"wrote {out / f'mia{tag}.json'}, mia_table{tag}.md, mia_auc{tag}.png")
    return 0


def _cell(x: dict[str, Any] | None) -> str:
    if x is None:
        return "—"
    if x.get("value") is None:
        return x.get("note", "not resolvable")
    lo, hi = x["ci"]
    return f"{x['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def _tpr_cell(tpr: dict[str, Any], fpr: str) -> str:
    """ "as scored / flipped", or the one "not resolvable" note both directions share."""
    a, f = tpr["as_scored"].get(fpr), tpr["flipped"].get(fpr)
    if a is not None and f is not None and a.get("value") is None and f.get("value") is None:
        return a.get("note", "not resolvable")
    return f"{_cell(a)} / {_cell(f)}"


def markdown_table(record: dict[str, Any]) -> str:
    """The per-threat-model table (also usable to re-render a saved ``mia.json``)."""
    s = record["settings"]
    lines = [
        f"Members: `{s['members']}` (n = {s['n_members']}); non-members: `{s['nonmembers']}` "
        f"(n = {s['n_nonmembers']}). CPSample: " + ", ".join(f"{k} = {v}" for k, v in s["cpsample"].items()) + ".",
        "",
        'Scores are read as "higher ⇒ member"; *flipped* is the attacker who reads them the other way. '
        "Two-sided AUC = max(AUC, 1 − AUC). [95 % bootstrap CI]. TPR cells: as scored / flipped.",
        "",
    ]
    for threat, what in record["threat_models"].items():
        rows = [r for r in record["results"] if r["threat_model"] == threat]
        if not rows:
            continue
        lines += [f"### {threat} — the attacker {what}", ""]
        lines += [
            "| attack | condition | AUC [CI] | two-sided AUC [CI] | TPR @ 1 % FPR [CI] (as scored / flipped) "
            "| TPR @ 0.1 % FPR [CI] (as scored / flipped) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            rep = r["report"]
            tpr = rep["tpr_at_fpr"]
            attack = r["attack"].replace("|", "\\|")  # "|z|" would split the Markdown cell
            lines.append(
                f"| {attack} | {r['condition']} | {_cell(rep['auc'])} | {_cell(rep['auc_two_sided'])} | "
                f"{_tpr_cell(tpr, '0.01')} | {_tpr_cell(tpr, '0.001')} |"
            )
        if threat == "black-box samples" and record.get("sampling"):
            lines.append("")
            for cond, info in record["sampling"].items():
                lines.append(
                    f"- {cond}: {info['n']} samples, {info['num_inference_steps']} DDIM steps, "
                    f"{info['replicated']}/{info['n']} replicate a member (pixel cosine > "
                    f"{info['replication_threshold']:.3f})"
                    + (
                        f", Inception FID {info['fid']['value']:.1f} against `{info['fid']['reference']}`"
                        if info.get("fid")
                        else ""
                    )
                )
        lines.append("")
    lines.append(f"Command: `{record['command']}`")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """AUC with its CI per (threat model, attack, condition), 0.5 marked: a forest plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"DDIM": "tab:blue", "CPSample": "tab:orange"}
    fig, ax = plt.subplots(figsize=(7.5, 0.38 * len(rows) + 1.4))
    labels = []
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        auc = r["report"]["auc"]
        ax.errorbar(
            auc["value"],
            y,
            xerr=[[auc["value"] - auc["ci"][0]], [auc["ci"][1] - auc["value"]]],
            fmt="o",
            color=colours.get(r["condition"], "k"),
            capsize=3,
        )
        labels.append(f"{r['threat_model']}: {r['attack']} — {r['condition']}")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels[::-1], fontsize=7)
    ax.axvline(0.5, color="k", lw=0.8, ls="--")
    ax.axvspan(0.4, 0.6, color="tab:green", alpha=0.08)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("ROC AUC, members vs non-members (95 % bootstrap CI)")
    ax.set_title("AUC < 0.5 leaks as much (flip the score); shaded: two-sided AUC ≤ 0.6", fontsize=9)
    for cond, colour in colours.items():
        ax.plot([], [], "o", color=colour, label=cond)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
