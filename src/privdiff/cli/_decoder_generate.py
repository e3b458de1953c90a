"""``privdiff generate --pipeline DIR --pipeline-type ...``: DP-RDM on an unCLIP-class decoder.

Kept apart from ``cli/rdm.py`` (which calls :func:`generate_with_decoder`) so the RDM command stays
readable; the order of checks is the same: usage, output folder, budget (ledger only), then the
models load, then one charge inside the pipeline.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import typer


def generate_with_decoder(
    *,
    pipeline: Path | None,
    pipeline_type: str | None,
    prompts: list[str],
    out: Path,
    n: int,
    model: Path | None,
    mode: str,
    index: Path | None,
    ledger: Path | None,
    k: int | None,
    sigma: float | None,
    sample_rate: float | None,
    lam: float,
    mix_with: str,
    public_data: str,
    encoder: str,
    guidance_scale: float | None,
    steps: int | None,
    seed: int,
    ip_adapter: Path | None,
    embed_norm: float | None,
    image_size: int | None,
    device: str,
    prior: Path | None,
    quiet: bool,
    as_json: bool,
) -> None:
    from privdiff.decoders.adapters import FAMILIES
    from privdiff.errors import InvalidParameter, PrivdiffWarning, check_int
    from privdiff.rdm.pipeline import DEFAULT_GENERATION, check_budget, generate_to_directory

    if pipeline is None or pipeline_type is None:
        raise InvalidParameter("--pipeline/--pipeline-type", (pipeline, pipeline_type), "both given together")
    if pipeline_type not in FAMILIES:
        raise InvalidParameter("--pipeline-type", pipeline_type, "one of " + ", ".join(FAMILIES))
    if model is not None:
        raise InvalidParameter("--model", str(model), "not given with --pipeline (the decoder replaces the RDM)")
    if mode not in ("dp-rdm", "no-retrieval"):
        raise InvalidParameter("--mode", mode, "dp-rdm or no-retrieval with --pipeline")
    if mix_with != "query":
        raise InvalidParameter("--mix-with", mix_with, "'query' with --pipeline")
    if not encoder.startswith("clip:") or len(encoder) <= len("clip:"):
        raise InvalidParameter("--encoder", encoder, "'clip:<folder>': the CLIP towers of the decoder's space")
    if ip_adapter is not None and pipeline_type != "ip-adapter":
        raise InvalidParameter("--ip-adapter", str(ip_adapter), "given only with --pipeline-type ip-adapter")
    if image_size is not None:
        check_int("image-size", image_size, 8, 4096)
    k_checked = check_int("k", k if k is not None else DEFAULT_GENERATION["k"], 1)

    def show(message, category, filename, lineno, file=None, line=None):  # one line per warning
        typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)

    with warnings.catch_warnings():
        warnings.simplefilter("always", PrivdiffWarning)
        warnings.showwarning = show
        if mode == "dp-rdm":
            if index is None or ledger is None:
                raise InvalidParameter(
                    "index/ledger", (index, ledger), "both given in dp-rdm mode (--index DIR --ledger FILE)"
                )
            # Cheap refusal: the ledger alone decides, before any model loads.
            check_budget(
                ledger,
                sigma=sigma if sigma is not None else DEFAULT_GENERATION["sigma"],
                sample_rate=sample_rate if sample_rate is not None else DEFAULT_GENERATION["sample_rate"],
                k=k_checked,
                count=len(prompts),
            )
        import torch

        from privdiff.decoders import make_decoder_pipeline
        from privdiff.decoders.adapters import check_decoder_files
        from privdiff.encoders.hfclip import CLIPEncoder

        check_decoder_files(pipeline_type, pipeline, ip_adapter)  # before anything loads
        if quiet:  # the libraries' own loading bars and advice (e.g. "install accelerate")
            import diffusers.utils.logging
            import transformers.utils.logging

            for lib in (diffusers.utils.logging, transformers.utils.logging):
                lib.disable_progress_bar()
                lib.set_verbosity_error()

        dtype: Any = torch.float16 if device.startswith("cuda") else torch.float32
        clip = CLIPEncoder(encoder.split(":", 1)[1], device=device, dtype=dtype)
        pipe, defaults = make_decoder_pipeline(
            pipeline,
            pipeline_type=pipeline_type,
            encoder=clip,
            mode=mode,
            index=index,
            ledger=ledger,
            k=k_checked,
            sigma=sigma,
            sample_rate=sample_rate,
            lam=lam,
            embed_norm=embed_norm,
            public_data=public_data,
            ip_adapter=ip_adapter,
            prior=prior,
            device=device,
            dtype=dtype,
        )
        record = generate_to_directory(
            pipe,
            prompts,
            out,
            images_per_prompt=n,
            guidance_scale=guidance_scale if guidance_scale is not None else defaults["guidance_scale"],
            num_inference_steps=steps if steps is not None else defaults["num_inference_steps"],
            seed=seed,
            height=image_size,
            width=image_size,
            progress=not quiet,
        )
    if as_json:
        typer.echo(json.dumps(record, indent=2))
        return
    shape = record["images_shape"]
    typer.echo(f"{pipeline_type} decoder, mode {record['mode']}: {shape[0]}×{shape[1]} images -> {out}")
    priv = record["privacy"]
    if record["mode"] == "dp-rdm":
        typer.echo(
            f"ε spent {priv['epsilon_spent']:.4g}, remaining {priv['epsilon_remaining']:.4g} (δ={priv['delta']:.3g}); "
            f"σ={priv['sigma']:g} q={priv['sample_rate']:g} k={priv['k']}; "
            f"embedding norm {record['settings']['embed_norm']:.4g}"
        )
    else:
        typer.echo("baseline with ε = 0 (no private data used)")
