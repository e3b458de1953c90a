"""``privdiff train rdm`` (adapt training on public data) and ``privdiff generate`` (DP-RDM)."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

_MODES = ("dp-rdm", "public-retrieval", "non-private", "no-retrieval")
#: generate's options that ``--pipeline`` (cli/_decoder_generate.py) uses.
_DECODER_ARGS = (
    "pipeline pipeline_type out n model mode index ledger k sigma sample_rate lam mix_with public_data encoder "
    "guidance_scale steps seed ip_adapter embed_norm image_size device prior quiet as_json"
).split()


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    @train_app.command("rdm")
    def train_rdm_cmd(
        public: str = typer.Option(
            "fashion-mnist:dprdm-public", "--public", help="Public training set (dataset spec)."
        ),
        size: int | None = typer.Option(
            None,
            "--size",
            metavar="N",
            help="Resize every image to N×N, N in [8, 1024] (Lanczos; folders are centre-cropped first).",
        ),
        encoder: str = typer.Option(
            "default", "--encoder", help="Image encoder name (privdiff.encoders; default: fmnist-public-cnn/v1)."
        ),
        out: Path = typer.Option(..., "--out", help="Model directory to write (config.json + model.safetensors)."),
        steps: int = typer.Option(3000, "--steps", help="Total optimiser steps."),
        batch_size: int = typer.Option(32, "--batch-size"),
        k: int = typer.Option(4, "--k", help="k: public neighbours averaged into the context (paper: 4)."),
        s_max: float = typer.Option(0.05, "--s-max", help="s_max: largest training noise std per coordinate."),
        p_uncond: float = typer.Option(0.1, "--p-uncond", help="Probability of the null context (CFG)."),
        lr: float = typer.Option(1e-3, "--lr"),
        channels: str = typer.Option("32,32,64", "--channels", help="U-Net block_out_channels (3 levels)."),
        checkpoint_every: int = typer.Option(250, "--checkpoint-every"),
        seed: int = typer.Option(0, "--seed"),
        threads: int | None = typer.Option(None, "--threads", help="torch CPU threads (default: torch's)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
        balance: str = typer.Option(
            "none", "--balance", help="Batch sampling: none (uniform over images) or classes (uniform over classes)."
        ),
        context: str = typer.Option(
            "neighbours",
            "--context",
            help="Training context: neighbours (mean of the k global public neighbours) or inference "
            "(mean of --context-k nearest rows of a Poisson subsample at --context-rate, like generation).",
        ),
        context_k: int = typer.Option(20, "--context-k", help="Neighbours averaged in an inference-like context."),
        context_rate: float = typer.Option(
            0.01, "--context-rate", help="Subsampling rate q of an inference-like context's candidate pool."
        ),
        device: str = typer.Option(
            "cpu", "--device", help="Where the U-Net trains: cpu, cuda, cuda:N or mps (random numbers stay on the CPU)."
        ),
    ) -> None:
        """Adapt-train the RDM on public images (context = noisy mean of k public neighbours)."""
        from privdiff.data import check_size, load_dataset
        from privdiff.encoders import load_image_encoder
        from privdiff.errors import InvalidParameter, check_int
        from privdiff.rdm.pipeline import DEFAULT_GENERATION
        from privdiff.rdm.train import TrainConfig, cached_embeddings, train_rdm
        from privdiff.utils.device import check_device

        size = check_size(size)
        check_device(device)  # before the data and encoder load
        try:
            block_out_channels = tuple(int(c) for c in channels.split(","))
        except ValueError:
            raise InvalidParameter("channels", channels, "three comma-separated integers, e.g. 32,32,64") from None
        config = TrainConfig(
            block_out_channels=block_out_channels,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            k=k,
            s_max=s_max,
            p_uncond=p_uncond,
            seed=seed,
            checkpoint_every=checkpoint_every,
            balance=balance,
            context=context,
            context_k=context_k,
            context_rate=context_rate,
        ).validate()
        if threads is not None:
            import torch

            torch.set_num_threads(check_int("threads", threads, 1))
        command = shlex.join(
            [
                "privdiff",
                "train",
                "rdm",
                "--public",
                public,
                "--encoder",
                encoder,
                "--out",
                str(out),
                "--steps",
                str(steps),
                "--batch-size",
                str(batch_size),
                "--k",
                str(k),
                "--s-max",
                str(s_max),
                "--p-uncond",
                str(p_uncond),
                "--lr",
                str(lr),
                "--channels",
                channels,
                "--seed",
                str(seed),
            ]
            + (["--size", str(size)] if size is not None else [])
            + (["--balance", balance] if balance != "none" else [])
            + (
                ["--context", context, "--context-k", str(context_k), "--context-rate", str(context_rate)]
                if context != "neighbours"
                else []
            )
        )
        dataset = load_dataset(public, size=size)
        if balance == "classes" and dataset.labels is None:
            raise InvalidParameter("balance", balance, "'none' for an unlabelled public set (classes needs labels)")
        enc = load_image_encoder(encoder)
        typer.echo(f"public set {dataset.name}: {len(dataset)} images; encoder {enc.space_id} (d={enc.dim})")
        emb = cached_embeddings(dataset, enc, private=False, progress=True)
        result = train_rdm(
            dataset.images,
            emb,
            space_id=enc.space_id,
            out_dir=out,
            config=config,
            resume=resume,
            progress=True,
            labels=dataset.labels,
            device=device,
            extra_info={
                "data": public,
                "encoder": encoder,
                "command": command,
                "device": device,
                "generation_defaults": dict(DEFAULT_GENERATION),
            },
        )
        from privdiff.rdm.pipeline import write_domain_reference

        # Public reference for generate's "private data outside the model's domain" warning.
        write_domain_reference(result.out_dir, emb, enc.space_id)
        typer.echo(
            f"trained {result.steps_done} steps ({result.num_parameters / 1e6:.2f} M params), "
            f"final loss {result.final_loss:.4f}; model -> {result.out_dir}"
        )

    @app.command("generate")
    def generate_cmd(
        prompt: list[str] | None = typer.Option(
            None, "--prompt", help="Text prompt (repeat for several; one private query each)."
        ),
        prompts_file: Path | None = typer.Option(
            None,
            "--prompts",
            help="File with one prompt per line (blank lines and # comments ignored); combines with --prompt.",
        ),
        n: int = typer.Option(16, "-n", "--images-per-prompt", help="Images per prompt (free: one context each)."),
        model: Path | None = typer.Option(None, "--model", help="RDM directory (default: the shipped checkpoint)."),
        mode: str = typer.Option(
            "dp-rdm", "--mode", help=f"One of {', '.join(_MODES)} (the last three are baselines)."
        ),
        index: Path | None = typer.Option(None, "--index", help="Private index directory (dp-rdm)."),
        ledger: Path | None = typer.Option(
            None, "--ledger", help="Privacy ledger (dp-rdm; create with `privdiff budget init`)."
        ),
        k: int | None = typer.Option(None, "--k", help="k neighbours (default: the model's generation defaults)."),
        sigma: float | None = typer.Option(None, "--sigma", help="σ: noise std per coordinate."),
        sample_rate: float | None = typer.Option(None, "--sample-rate", help="q: Poisson subsampling rate."),
        lam: float = typer.Option(1.0, "--lam", help="λ: weight of the private context (1 = omit query)."),
        mix_with: str = typer.Option("query", "--mix-with", help="What λ mixes with: query | public."),
        public_data: str = typer.Option(
            "fashion-mnist:dprdm-public", "--public-data", help="Public retrieval set (spec)."
        ),
        backend: str = typer.Option(
            "exact",
            "--backend",
            help="dp-rdm top-k backend: exact (a sharded --index is searched shard by shard here), "
            "ivf (public coarse centroids from --public-data) or ray (a sharded --index, one Ray actor per shard).",
        ),
        ray_address: str = typer.Option(
            "local", "--ray-address", help="With --backend ray: local (start Ray here) or auto (join a cluster)."
        ),
        ivf_nlist: int = typer.Option(64, "--ivf-nlist", help="With --backend ivf: public coarse centroids."),
        nprobe: int = typer.Option(16, "--nprobe", help="With --backend ivf: lists probed per query."),
        private_data: str | None = typer.Option(
            None, "--private-data", help="Private set spec, only for --mode non-private."
        ),
        encoder: str = typer.Option(
            "default", "--encoder", help="Encoder name (text + image, one space; default: the model's own space)."
        ),
        guidance_scale: float | None = typer.Option(None, "--guidance-scale", help="w of classifier-free guidance."),
        steps: int | None = typer.Option(None, "--steps", help="DDIM steps."),
        seed: int = typer.Option(0, "--seed", help="Seed of the public sampler noise x_T (not of the DP noise)."),
        out: Path = typer.Option(
            ...,
            "--out",
            help="Output directory: images/*.png, images.npz (key 'images'), grid.png, generation.json.",
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
        as_json: bool = typer.Option(False, "--json", help="Print the JSON record."),
        # --- DP-RDM on an unCLIP-class decoder instead of the RDM (privdiff.decoders) ---
        pipeline: Path | None = typer.Option(
            None,
            "--pipeline",
            help="Local diffusers decoder folder conditioned on the released CLIP image embedding "
            "(needs --pipeline-type and --encoder clip:DIR; replaces --model).",
        ),
        pipeline_type: str | None = typer.Option(
            None, "--pipeline-type", help="kandinsky22 | stable-unclip | ip-adapter (with --pipeline)."
        ),
        ip_adapter: Path | None = typer.Option(
            None, "--ip-adapter", help="IP-Adapter weights file (with --pipeline-type ip-adapter)."
        ),
        embed_norm: float | None = typer.Option(
            None,
            "--embed-norm",
            help="Length of the embedding given to the decoder (default: mean CLIP image_embeds norm "
            "on --public-data).",
        ),
        image_size: int | None = typer.Option(
            None, "--image-size", help="Height = width in pixels with --pipeline (default: the decoder's)."
        ),
        device: str = typer.Option("cpu", "--device", help="torch device with --pipeline (fp16 on cuda)."),
        prior: Path | None = typer.Option(
            None,
            "--prior",
            help="With --pipeline: kandinsky-2-2-prior folder; queries = its predicted image embeddings.",
        ),
    ) -> None:
        """Generate images; in dp-rdm mode each prompt is one charged private query.

        Everything is checked before the ledger is charged (and the budget before any model
        loads); warnings about a meaningless setting go to stderr first.
        """
        import json
        import warnings

        from privdiff.errors import InvalidParameter, PrivdiffWarning, check_int
        from privdiff.rdm.pipeline import (
            BACKENDS,
            check_budget,
            check_seed,
            generate_to_directory,
            generation_defaults,
            make_pipeline,
            resolve_model_dir,
        )
        from privdiff.report.outputs import OutputDir

        if mode not in _MODES:
            raise InvalidParameter("mode", mode, "one of " + ", ".join(_MODES))
        if backend not in BACKENDS:
            raise InvalidParameter("backend", backend, "one of " + ", ".join(BACKENDS))
        if ray_address not in ("local", "auto"):
            raise InvalidParameter("ray-address", ray_address, "'local' or 'auto'")
        check_int("n", n, 1, 4096)
        check_seed(seed)
        prompt_list = list(prompt or []) + (read_prompts(prompts_file) if prompts_file is not None else [])
        if not prompt_list:
            raise InvalidParameter("prompt", None, "at least one prompt (--prompt TEXT or --prompts FILE)")
        if any(not p.strip() for p in prompt_list):
            raise InvalidParameter("prompt", "", "non-empty text")
        out = Path(out)
        # The folder is created and write-tested (then removed) before anything loads or is
        # charged; generate_to_directory repeats this for real right before the charge.
        OutputDir.prepare(out, record="generation.json").abort()
        if pipeline is not None or pipeline_type is not None:
            from privdiff.cli._decoder_generate import generate_with_decoder

            scope = locals()
            generate_with_decoder(prompts=prompt_list, **{a: scope[a] for a in _DECODER_ARGS})
            return
        model_dir = resolve_model_dir(model)

        def show(message, category, filename, lineno, file=None, line=None):  # one line per warning
            typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)

        with warnings.catch_warnings():
            warnings.simplefilter("always", PrivdiffWarning)
            warnings.showwarning = show
            if mode == "dp-rdm":
                if index is None or ledger is None:
                    raise InvalidParameter(
                        "index/ledger",
                        (index, ledger),
                        "both given in dp-rdm mode (--index DIR --ledger FILE)",
                    )
                defaults = generation_defaults(model_dir)
                # Cheap refusal: the ledger alone decides, before the model and encoders load.
                check_budget(
                    ledger,
                    sigma=sigma if sigma is not None else defaults["sigma"],
                    sample_rate=sample_rate if sample_rate is not None else defaults["sample_rate"],
                    k=check_int("k", k if k is not None else defaults["k"], 1),
                    count=len(prompt_list),
                )
            pipe, defaults = make_pipeline(
                model_dir,
                mode=mode,
                index=index,
                ledger=ledger,
                k=k,
                sigma=sigma,
                sample_rate=sample_rate,
                lam=lam,
                mix_with=mix_with,
                public_data=public_data,
                private_data=private_data,
                encoder=encoder,
                backend=backend,
                ray_address=ray_address,
                ivf_nlist=ivf_nlist,
                nprobe=nprobe,
            )
            record = generate_to_directory(
                pipe,
                prompt_list,
                out,
                images_per_prompt=n,
                guidance_scale=guidance_scale if guidance_scale is not None else defaults["guidance_scale"],
                num_inference_steps=steps if steps is not None else defaults["num_inference_steps"],
                seed=seed,
                progress=not quiet,
            )
        if as_json:
            typer.echo(json.dumps(record, indent=2))
            return
        priv = record["privacy"]
        typer.echo(f"mode {record['mode']}: {record['images_shape'][0]}×{record['images_shape'][1]} images -> {out}")
        if record["mode"] == "dp-rdm":
            typer.echo(
                f"ε spent {priv['epsilon_spent']:.4g}, remaining {priv['epsilon_remaining']:.4g} "
                f"(δ={priv['delta']:.3g}); "
                f"σ={priv['sigma']:g} q={priv['sample_rate']:g} k={priv['k']}"
            )
        elif not record["private"]:
            typer.secho("NON-PRIVATE baseline (ε = ∞): do not release these images.", fg=typer.colors.RED)
        else:
            typer.echo("baseline with ε = 0 (no private data used)")


def read_prompts(path: Path) -> list[str]:
    """Prompts from a text file: one per line; blank lines and lines starting with ``#`` skipped."""
    from privdiff.errors import DataError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read prompts file {str(path)!r}: {exc}") from None
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise DataError(f"prompts file {str(path)!r} holds no prompts (only blank lines or # comments)")
    return prompts
