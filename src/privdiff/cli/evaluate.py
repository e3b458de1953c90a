"""``privdiff eval``: FID, replication rate and replication-threshold calibration.

Sources (A, B, GENERATED, REFERENCE...) are dataset specs (``fashion-mnist:test[:500]``), plain
image folders or ``.npz`` files with an ``images`` array (:mod:`privdiff.evaluation.io`). Every
command can write its full result JSON (settings, sample counts, versions) with ``--out``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from privdiff.cli._options import size_option


def _load(source: str, size: int | None):
    """:func:`privdiff.evaluation.io.load_source`, resized to ``size``×``size`` when asked.

    With ``--size`` the images are resized while they are decoded (so a folder of mixed sizes
    loads), through the same spec mapping and the same empty-source check as ``load_source``.
    """
    from privdiff.evaluation.io import load_source

    if size is None:
        return load_source(source)
    from privdiff.data import load_dataset
    from privdiff.errors import DataError
    from privdiff.evaluation.io import ImageSource, source_to_spec

    spec = source_to_spec(source)
    dataset = load_dataset(spec, size=size)
    if len(dataset) == 0:
        raise DataError(f"image source {str(source)!r} holds no images")
    return ImageSource(images=dataset.images, spec=f"{spec} (resized to {size}×{size})")


def _write_json(payload: dict, path: Path) -> Path:
    from privdiff.utils.atomic import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, payload)


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    eval_app = typer.Typer(help="Evaluate images: FID and replication (memorisation) rate.", no_args_is_help=True)
    app.add_typer(eval_app, name="eval")

    @eval_app.command("fid")
    def fid(
        a: str = typer.Argument(..., help="First image set: dataset spec, image folder or .npz."),
        b: str = typer.Argument(..., help="Second image set: dataset spec, image folder or .npz."),
        batch_size: int = typer.Option(50, "--batch-size", help="Images per Inception forward pass."),
        size: int | None = size_option(),
        out: Path = typer.Option(None, "--out", help="Write the result JSON to this file."),
        no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write cached statistics."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    ) -> None:
        """FID between A and B with the standard FID Inception-v3 (statistics cached by content)."""
        import warnings

        from privdiff.data import check_size
        from privdiff.errors import check_int
        from privdiff.evaluation.fid import FIDSampleSizeWarning, compute_fid

        batch_size = check_int("batch_size", batch_size, minimum=1, maximum=4096)
        size = check_size(size)
        src_a, src_b = _load(a, size), _load(b, size)
        with warnings.catch_warnings():
            # The same messages are in result.warnings and printed below; avoid printing them twice.
            warnings.simplefilter("ignore", FIDSampleSizeWarning)
            result = compute_fid(
                src_a.images,
                src_b.images,
                batch_size=batch_size,
                cache=not no_cache,
                progress=progress and not as_json,
            )
        result.settings.update(source_a=src_a.spec, source_b=src_b.spec)
        payload = result.to_dict()
        if out is not None:
            _write_json(payload, out)
        if as_json:
            import json

            typer.echo(json.dumps(payload, indent=2))
            return
        typer.echo(f"FID = {result.fid:.4f}   (n_a={result.n_a} from {src_a.spec}, n_b={result.n_b} from {src_b.spec})")
        for msg in result.warnings:
            typer.secho(f"warning: {msg}", err=True, fg=typer.colors.YELLOW)
        if out is not None:
            typer.echo(f"result -> {out}")

    @eval_app.command("replication")
    def replication(
        generated: str = typer.Argument(..., help="Generated images: dataset spec, folder or .npz."),
        reference: str = typer.Argument(..., help="Reference (training) images: dataset spec, folder or .npz."),
        feature_space: str = typer.Option("pixel", "--feature-space", help="pixel, effnet or inception."),
        threshold: float = typer.Option(
            None,
            "--threshold",
            help="Replication threshold τ (default: the calibrated one for the feature space).",
        ),
        out: Path = typer.Option(None, "--out", help="Directory for replication.json, top_pairs.png, histogram.png."),
        top_n: int = typer.Option(4, "--top-n", help="Number of most-similar pairs in the grid."),
        batch_size: int = typer.Option(None, "--batch-size", help="Batch size of the feature extractor."),
        size: int | None = size_option(),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (without per-image arrays)."),
    ) -> None:
        """Fraction of GENERATED images whose nearest REFERENCE image has cosine similarity > τ."""
        import json

        from privdiff.data import check_size
        from privdiff.errors import check_in_range, check_int
        from privdiff.evaluation.features import check_feature_space
        from privdiff.evaluation.replication import (
            recommended_threshold,
            replication_report,
            save_histogram,
            save_top_pairs,
        )

        # Validate every option before loading images, so a typo costs nothing.
        feature_space = check_feature_space(feature_space)
        top_n = check_int("top_n", top_n, minimum=1, maximum=256)
        if threshold is None:
            recommended_threshold(feature_space)  # raises with a remedy if the space is uncalibrated
        else:
            check_in_range("threshold", threshold, -1.0, 1.0, low_inclusive=True)
        if batch_size is not None:
            check_int("batch_size", batch_size, minimum=1, maximum=4096)
        size = check_size(size)
        gen, ref = _load(generated, size), _load(reference, size)
        report = replication_report(
            gen.images,
            ref.images,
            feature_space=feature_space,
            threshold=threshold,
            batch_size=batch_size,
            settings={"generated": gen.spec, "reference": ref.spec},
        )
        summary = report.to_dict(include_arrays=False, top_n=top_n)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            summary["files"] = {
                "json": str(_write_json(report.to_dict(include_arrays=True, top_n=top_n), out / "replication.json")),
                "top_pairs": str(save_top_pairs(report, gen.images, ref.images, out / "top_pairs.png", n=top_n)),
                "histogram": str(
                    save_histogram(
                        report,
                        out / "histogram.png",
                        title=f"NN similarity of {gen.spec} to {ref.spec}",
                    )
                ),
            }
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
            return
        typer.echo(
            f"replication rate = {report.rate:.4f}  ({report.n_replicated}/{report.n_generated} above "
            f"τ={report.threshold:.4f}, feature space {feature_space}, {report.n_reference} reference images)"
        )
        for pair in report.top_pairs(min(top_n, report.n_generated)):
            typer.echo(
                f"  generated #{pair['generated_index']:<5} ~ reference #{pair['reference_index']:<5} "
                f"s={pair['similarity']:.4f}"
            )
        if out is not None:
            typer.echo(f"outputs -> {out}")

    @eval_app.command("calibrate")
    def calibrate(
        reference: str = typer.Argument(..., help="Reference images (the set copies would come from)."),
        non_copies: str = typer.Argument(..., help="Held-out images of the same domain (known non-copies)."),
        feature_space: str = typer.Option("pixel", "--feature-space", help="pixel, effnet or inception."),
        max_fpr: float = typer.Option(0.01, "--max-fpr", help="Allowed false-positive rate on the non-copies."),
        max_shift: int = typer.Option(0, "--max-shift", help="Copies: max integer translation in pixels."),
        noise_std: float = typer.Option(8.0, "--noise-std", help="Copies: Gaussian pixel noise std (0-255 scale)."),
        brightness: float = typer.Option(
            0.1, "--brightness", help="Copies: additive brightness jitter, fraction of 255."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the copy augmentations."),
        size: int | None = size_option(),
        out: Path = typer.Option(None, "--out", help="Directory for calibration.json and calibration.png."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Calibrate the replication threshold τ for a feature space on your own data."""
        import json

        import numpy as np

        from privdiff.data import check_size
        from privdiff.errors import check_in_range
        from privdiff.evaluation.features import check_feature_space
        from privdiff.evaluation.replication import (
            augment_copies,
            calibrate_threshold,
            save_calibration_plot,
        )

        feature_space = check_feature_space(feature_space)
        check_in_range("max_fpr", max_fpr, 0.0, 1.0, low_inclusive=True, high_inclusive=False)
        size = check_size(size)
        ref, neg = _load(reference, size), _load(non_copies, size)
        copies, aug = augment_copies(
            ref.images, seed=seed, max_shift=max_shift, noise_std=noise_std, brightness=brightness
        )
        cal = calibrate_threshold(
            ref.images,
            copies,
            neg.images,
            feature_space=feature_space,
            max_fpr=max_fpr,
            copy_sources=np.arange(ref.images.shape[0]),
            settings={"reference": ref.spec, "non_copies": neg.spec, "augmentation": aug},
        )
        payload = cal.to_dict()
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            payload["files"] = {
                "json": str(out / "calibration.json"),
                "plot": str(save_calibration_plot(cal, out / "calibration.png")),
            }
            _write_json(payload, out / "calibration.json")
        if as_json:
            typer.echo(json.dumps(payload, indent=2))
            return
        typer.echo(
            f"τ = {cal.threshold:.4f} ({feature_space}): FPR {cal.fpr:.4f} on {neg.spec}, TPR {cal.tpr:.4f} on "
            f"augmented copies, AUC {cal.auc:.4f}"
        )

    @eval_app.command("context-following")
    def context_following_cmd(
        model: Path | None = typer.Option(None, "--model", help="RDM directory (default: the shipped checkpoint)."),
        data: str = typer.Option(
            "fashion-mnist:test", "--data", help="Labelled held-out images the contexts are built from (public)."
        ),
        per_class: int = typer.Option(50, "--per-class", help="Generated images (one context each) per class."),
        classes: str | None = typer.Option(None, "--classes", help="Only these classes (ids or names; default all)."),
        k: int | None = typer.Option(None, "--k", help="Images averaged per context (default: model's generation k)."),
        sigma: float | None = typer.Option(None, "--sigma", help="Context noise std (default: model's generation σ)."),
        guidance_scale: float | None = typer.Option(None, "--guidance-scale", help="CFG w (default: model's)."),
        steps: int | None = typer.Option(None, "--steps", help="DDIM steps (default: model's)."),
        yardstick: str = typer.Option("fashion-mnist", "--yardstick", help="Shipped yardstick name or a directory."),
        seed: int = typer.Option(0, "--seed", help="Seed of the context draw and of x_T (paired across models)."),
        batch_size: int = typer.Option(100, "--batch-size", help="Images per sampler batch (memory only)."),
        threads: int | None = typer.Option(None, "--threads", help="torch CPU threads (default: torch's)."),
        out: Path | None = typer.Option(
            None, "--out", help="Directory for context_following.json, confusion.png and samples.png."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Context following: contexts from class c's held-out images -> fraction of outputs judged c."""
        import json

        from privdiff.data import check_size, class_id, load_dataset
        from privdiff.encoders import load_image_encoder
        from privdiff.errors import DataError, InvalidParameter, check_int
        from privdiff.evaluation.domain import context_following, save_confusion_png
        from privdiff.evaluation.yardstick import load_yardstick
        from privdiff.rdm.model import RDMModel
        from privdiff.rdm.pipeline import check_seed, generation_defaults, resolve_model_dir
        from privdiff.rdm.train import cached_embeddings

        per_class = check_int("per_class", per_class, 1, 100_000)
        check_seed(seed)
        check_int("batch_size", batch_size, 1, 4096)
        if threads is not None:
            import torch

            torch.set_num_threads(check_int("threads", threads, 1))
        model_dir = resolve_model_dir(model)
        defaults = generation_defaults(model_dir)
        yard = load_yardstick(yardstick)
        names = list(yard.config.class_names)
        ids = None
        if classes is not None:
            ids = []
            for tok in (t.strip() for t in classes.split(",")):
                try:
                    ids.append(class_id(tok, names))
                except (IndexError, KeyError):
                    raise InvalidParameter(
                        "classes", tok, f"class ids in [0, {len(names) - 1}] or names: {', '.join(names)}"
                    ) from None
        rdm = RDMModel.load(model_dir)
        dataset = load_dataset(data, size=check_size(rdm.config.sample_size))
        if dataset.labels is None:
            raise DataError(f"{data!r} has no labels; context following needs labelled images")
        enc = load_image_encoder(rdm.config.space_id)
        # Held-out *public* images (the test split): the shared cache is the right place.
        emb = cached_embeddings(dataset, enc, private=False, progress=not as_json)
        result, images = context_following(
            rdm,
            emb,
            dataset.labels,
            yard,
            classes=ids,
            per_class=per_class,
            k=k if k is not None else defaults["k"],
            sigma=sigma if sigma is not None else defaults["sigma"],
            guidance_scale=guidance_scale if guidance_scale is not None else defaults["guidance_scale"],
            num_inference_steps=steps if steps is not None else defaults["num_inference_steps"],
            seed=seed,
            batch_size=batch_size,
            progress=not as_json,
        )
        payload = result.to_dict() | {
            "model": str(model_dir),
            "data": data,
            "yardstick": yardstick,
            "yardstick_test_accuracy": yard.config.report.get("test_accuracy"),
        }
        if out is not None:
            from privdiff.report.images import save_labelled_grid

            out.mkdir(parents=True, exist_ok=True)
            rows = list(images.reshape(len(result.classes), per_class, *images.shape[1:]))
            title = f"context following: {model_dir}"
            payload["files"] = {
                "json": str(out / "context_following.json"),
                "confusion": str(save_confusion_png(result, out / "confusion.png", title=title)),
                "samples": str(
                    save_labelled_grid(rows, [names[c] for c in result.classes], out / "samples.png", scale=2)
                ),
            }
            _write_json(payload, out / "context_following.json")
        if as_json:
            typer.echo(json.dumps(payload, indent=2))
            return
        o = result.overall
        typer.echo(f"context following {o}  ({int(round(o.value * o.n))}/{o.n}, {model_dir})")
        for c, e in zip(result.classes, result.per_class, strict=True):
            typer.echo(f"  {names[c]:<12} {e}")
        if out is not None:
            typer.echo(f"outputs -> {out}")

    @eval_app.command("domain")
    def domain(
        generated: str = typer.Argument(
            ..., help="Generated images: a generate/sample output folder, folder, .npz or spec."
        ),
        reference: str = typer.Argument(..., help="Real images of the domain, e.g. 'fashion-mnist:test{classes=2,4}'."),
        classes: str = typer.Option(
            ..., "--classes", help="The domain's classes, ids or names, e.g. 2,4 or Pullover,Coat."
        ),
        yardstick: str = typer.Option("fashion-mnist", "--yardstick", help="Shipped yardstick name or a directory."),
        n_boot: int = typer.Option(200, "--n-boot", help="Bootstrap replicates for the FID/KID intervals."),
        seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap (evaluation randomness only)."),
        size: int | None = size_option(),
        out: Path = typer.Option(None, "--out", help="Write the result JSON to this file."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """In-domain rate, predicted classes and domain FID/KID (95 % intervals) in a yardstick's feature space."""
        import json

        import numpy as np

        from privdiff.data import check_size, class_id
        from privdiff.errors import InvalidParameter, check_int
        from privdiff.evaluation.domain import distance_with_ci, in_domain_rate
        from privdiff.evaluation.yardstick import load_yardstick

        n_boot = check_int("n_boot", n_boot, 10, 100_000)
        size = check_size(size)
        yard = load_yardstick(yardstick)
        names = list(yard.config.class_names)
        ids = []
        for tok in (t.strip() for t in classes.split(",")):
            try:
                ids.append(class_id(tok, names))
            except (IndexError, KeyError):
                raise InvalidParameter(
                    "classes",
                    tok,
                    f"class ids in [0, {len(names) - 1}] or names: {', '.join(names)}",
                ) from None
        gen, ref = _load(generated, size), _load(reference, size)
        pred = yard.predict(gen.images)
        rate = in_domain_rate(pred, ids)
        fg, fr = yard.features(gen.images), yard.features(ref.images)
        fid_e = distance_with_ci(fg, fr, metric="fid", n_boot=n_boot, seed=seed)
        kid_e = distance_with_ci(fg, fr, metric="kid", n_boot=n_boot, seed=seed)
        counts = np.bincount(pred, minlength=len(names))
        payload = {
            "generated": gen.spec,
            "reference": ref.spec,
            "n_generated": int(len(pred)),
            "n_reference": int(len(fr)),
            "yardstick": yardstick,
            "yardstick_test_accuracy": yard.config.report.get("test_accuracy"),
            "domain_classes": [names[i] for i in sorted(set(ids))],
            "in_domain_rate": rate.to_dict(),
            "domain_fid": fid_e.to_dict(),
            "domain_kid": kid_e.to_dict(),
            "predicted_classes": {names[i]: int(c) for i, c in enumerate(counts)},
            "interval": "95 %: Wilson for the rate; centred bootstrap for FID/KID (privdiff.evaluation.domain)",
        }
        if out is not None:
            _write_json(payload, out)
        if as_json:
            typer.echo(json.dumps(payload, indent=2))
            return
        typer.echo(
            f"in-domain rate {rate}  ({int(round(rate.value * rate.n))}/{rate.n} "
            f"in {', '.join(payload['domain_classes'])})"
        )
        typer.echo(f"domain FID {fid_e}   domain KID {kid_e}   (n={len(pred)} vs {len(fr)} reference)")
        top = sorted(payload["predicted_classes"].items(), key=lambda kv: -kv[1])[:5]
        typer.echo("predicted: " + ", ".join(f"{k} {v}" for k, v in top if v))
        if len(pred) < 1000:
            typer.secho(
                f"warning: {len(pred)} generated images; FID differences of a few points need >= 1,000 "
                "(compare only equal n)",
                err=True,
                fg=typer.colors.YELLOW,
            )
        if out is not None:
            typer.echo(f"result -> {out}")
