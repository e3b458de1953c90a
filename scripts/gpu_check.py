"""DP-RDM on full-size unCLIP-class decoders, timed on a GPU, offline (issue 11 item 5).

Builds, with random weights and from configs written in ``privdiff.decoders.synthetic`` (the
published shapes; nothing is downloaded):

* Kandinsky 2.2: the decoder U-Net + MoVQ of ``kandinsky-2-2-decoder`` and the ViT-bigG/14 CLIP
  towers of ``kandinsky-2-2-prior`` (1280-d image embeddings);
* Stable unCLIP: ``stable-diffusion-2-1-unclip`` (U-Net, VAE, OpenCLIP-H text encoder, image
  normaliser) and its ViT-H/14 image encoder (1024-d), with text queries from a ViT-H-sized text
  tower with projection;

then runs DP-RDM generation end to end through the real mechanism and ledger (a synthetic "private"
index of random unit vectors, exact top-k over a Poisson subsample) at ``--size`` px in fp16, and
writes JSON: images/s, peak GPU memory, and the share of wall time spent in retrieval + ledger
(``source.condition``: charge, subsample, top-k, noise) vs text encoding vs denoising + decoding.
Random weights draw noise, so image quality is not measured; speed and memory are what these
shapes cost.

``--cpu-dry-run`` runs the same code path with the tiny components on the CPU in seconds (a test
runs it). ``--train-rdm`` adds "train the Fashion-MNIST RDM at larger size" (``privdiff train rdm
--device cuda``, within 8 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _params(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


class TimedSource:
    """Wraps a context source and times ``condition`` (the ledger charge + private retrieval)."""

    def __init__(self, source):
        self._source = source
        self.seconds = 0.0

    def __getattr__(self, name):
        return getattr(self._source, name)

    def condition(self, queries, *, request_id=None):
        t = time.perf_counter()
        out = self._source.condition(queries, request_id=request_id)
        self.seconds += time.perf_counter() - t
        return out


class TimedText:
    """Wraps a text encoder and times ``encode_text``."""

    def __init__(self, encoder, device):
        self._enc = encoder
        self._device = device
        self.seconds = 0.0

    def __getattr__(self, name):
        return getattr(self._enc, name)

    def encode_text(self, texts):
        t = time.perf_counter()
        out = self._enc.encode_text(texts)
        _sync(self._device)
        self.seconds += time.perf_counter() - t
        return out


def build_family(family: str, size: str, device: str, dtype):
    """(decoder adapter, CLIP encoder, parameter counts) built directly on ``device``."""
    import torch

    from privdiff.decoders import Kandinsky22Decoder, StableUnCLIPDecoder, synthetic
    from privdiff.encoders.hfclip import CLIPEncoder

    with torch.device(device):
        if family == "kandinsky22":
            from diffusers import KandinskyV22Pipeline

            towers = synthetic.clip_towers(size)
            clip = CLIPEncoder(device=device, dtype=dtype, **_tower_kwargs(towers))
            pipe = KandinskyV22Pipeline(**synthetic.kandinsky22_components(size, image_embed_dim=clip.dim))
            pipe = pipe.to(device=device, dtype=dtype)
            decoder = Kandinsky22Decoder(pipe, clip.zero_image_embed(), device=device)
            counts = {"unet": _params(pipe.unet), "movq": _params(pipe.movq)}
        else:
            from diffusers import StableUnCLIPImg2ImgPipeline
            from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

            vision = synthetic.CLIP_CONFIGS["tiny"]["vision"] if size == "tiny" else synthetic.VIT_H_VISION
            image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision)).eval()
            text = dict(synthetic.SD21_TEXT, projection_dim=1024) if size == "full" else None
            towers = synthetic.clip_towers(size, vision=vision, text=text)
            towers["image_encoder"] = image_encoder  # the pipeline's own image tower defines the space
            clip = CLIPEncoder(device=device, dtype=dtype, **_tower_kwargs(towers))
            comps = synthetic.stable_unclip_components(size, image_encoder=image_encoder)
            pipe = StableUnCLIPImg2ImgPipeline(**comps).to(device=device, dtype=dtype)
            decoder = StableUnCLIPDecoder(pipe, device=device)
            counts = {"unet": _params(pipe.unet), "vae": _params(pipe.vae), "text_encoder": _params(pipe.text_encoder)}
    counts |= {"clip_image": _params(clip.image_model), "clip_text": _params(clip.text_model)}
    return decoder, clip, counts


def _tower_kwargs(towers: dict) -> dict:
    return {
        "image_model": towers["image_encoder"],
        "text_model": towers["text_encoder"],
        "tokenizer": towers["tokenizer"],
    }


def run_family(family: str, args, work: Path) -> dict:
    import torch

    from privdiff.accounting.ledger import Ledger
    from privdiff.decoders import make_decoder_pipeline, public_embed_norm
    from privdiff.retrieval import build_index

    size = "tiny" if args.cpu_dry_run else "full"
    device = "cpu" if args.cpu_dry_run else "cuda"
    dtype = torch.float32 if args.cpu_dry_run else torch.float16
    torch.manual_seed(0)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    decoder, clip, counts = build_family(family, size, device, dtype)
    _sync(device)
    build_s = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(args.index_rows, clip.dim)).astype(np.float32)
    index_dir, ledger_path = work / f"{family}-index", work / f"{family}-ledger.db"
    build_index(index_dir, rows, space_id=clip.space_id, source="synthetic:gpu-check")
    Ledger.create(ledger_path, epsilon=1e6, delta=1e-6).close()
    public = rng.integers(0, 256, size=(8, 64, 64, 3), dtype=np.uint8)
    nu = public_embed_norm(clip, public, count=8)

    pipe, defaults = make_decoder_pipeline(
        "<in memory>",
        pipeline_type=family,
        encoder=clip,
        index=index_dir,
        ledger=ledger_path,
        k=args.k,
        sigma=args.sigma,
        sample_rate=args.sample_rate,
        embed_norm=nu,
        decoder=decoder,
    )
    timed_source = TimedSource(pipe.source)
    timed_text = TimedText(pipe.text_encoder, device)
    pipe.source, pipe.text_encoder = timed_source, timed_text
    prompts = [f"a photo of item {i}" for i in range(args.prompts)]
    call = dict(
        num_inference_steps=args.steps,
        seed=0,
        height=args.size,
        width=args.size,
        batch_size=args.batch_size,
        guidance_scale=defaults["guidance_scale"],
    )
    pipe(prompts[:1], images_per_prompt=1, **(call | {"num_inference_steps": min(2, args.steps)}))  # warm-up
    timed_source.seconds = timed_text.seconds = 0.0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t = time.perf_counter()
    out = pipe(prompts, images_per_prompt=args.images_per_prompt, **call)
    _sync(device)
    total = time.perf_counter() - t
    n_images = int(np.prod(out.images.shape[:2]))
    retrieval, text = timed_source.seconds, timed_text.seconds
    return {
        "family": family,
        "parameters": counts,
        "build_seconds": round(build_s, 2),
        "size_px": args.size,
        "dtype": str(dtype).replace("torch.", ""),
        "steps": args.steps,
        "guidance_scale": call["guidance_scale"],
        "prompts": len(prompts),
        "images": n_images,
        "images_shape": list(out.images.shape),
        "index_rows": args.index_rows,
        "embed_dim": clip.dim,
        "embed_norm": round(nu, 4),
        "seconds_total": round(total, 3),
        "images_per_second": round(n_images / total, 4),
        "share_retrieval_and_ledger": round(retrieval / total, 5),
        "share_text_encoding": round(text / total, 5),
        "share_denoising_and_decoding": round(max(0.0, total - retrieval - text) / total, 5),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "queries_charged": out.privacy["queries_charged"],
        "epsilon_spent": out.privacy["epsilon_spent"],
    }


def train_rdm_step(args, work: Path) -> dict:
    """Train the Fashion-MNIST RDM at a larger size on the GPU (``privdiff train rdm --device``).

    The recipe of the candidate checkpoint (public CNN space, class-balanced batches, inference-like
    contexts) with 2× the channels and batch 256. The dry run trains 3 steps on 64 images on the CPU.
    """
    dry = args.cpu_dry_run
    cmd = [sys.executable, "-m", "privdiff", "train", "rdm"]
    full = cmd + [
        "--public",
        "fashion-mnist:dprdm-public[:64]" if dry else "fashion-mnist:dprdm-public",
        "--encoder",
        "fmnist-public-cnn/v1",
        "--out",
        str(work / "rdm-large"),
        "--channels",
        "16,16,32" if dry else "64,64,128",
        "--steps",
        "3" if dry else str(args.train_steps),
        "--batch-size",
        "8" if dry else "256",
        "--checkpoint-every",
        "1000000",
        "--balance",
        "classes",
        "--context",
        "inference",
        "--context-k",
        "20",
        "--context-rate",
        "0.2",
        "--device",
        "cpu" if dry else "cuda",
    ]
    t = time.perf_counter()
    try:
        proc = subprocess.run(full, capture_output=True, text=True, timeout=8 * 60)
    except subprocess.TimeoutExpired:
        return {"command": full, "error": "did not finish within 8 minutes"}
    seconds = time.perf_counter() - t
    out: dict = {"command": full, "returncode": proc.returncode, "seconds": round(seconds, 1)}
    info_path = work / "rdm-large" / "model_index.json"
    if proc.returncode == 0 and info_path.exists():
        training = json.loads(info_path.read_text())["privdiff"]["training"]
        steps = int(training["steps_done"])
        out.update(
            steps=steps, final_loss=training["final_loss_ema100"], wall_seconds_including_setup=round(seconds, 1)
        )
    else:
        out["tail"] = proc.stdout[-800:] + proc.stderr[-800:]
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-dry-run", action="store_true", help="tiny components on the CPU (seconds)")
    ap.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    ap.add_argument("--families", default="kandinsky22,stable-unclip")
    ap.add_argument("--size", type=int, default=None, help="pixels (default 768; 32 in the dry run)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default 25; 2 in the dry run)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--images-per-prompt", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--index-rows", type=int, default=None, help="private index size (default 100,000; 200 dry)")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--sigma", type=float, default=0.05)
    ap.add_argument("--sample-rate", type=float, default=0.01)
    ap.add_argument("--train-rdm", action="store_true", help="also train the Fashion-MNIST RDM at larger size")
    ap.add_argument("--train-steps", type=int, default=3000)
    args = ap.parse_args(argv)
    dry = args.cpu_dry_run
    args.size = args.size or (32 if dry else 768)
    args.steps = args.steps or (2 if dry else 25)
    args.index_rows = args.index_rows or (200 if dry else 100_000)
    if dry:
        args.sample_rate = max(args.sample_rate, 0.5)
        args.k = min(args.k, 4)
        args.sigma = max(args.sigma, 1.0)

    import torch

    if not dry and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --cpu-dry-run to exercise the code path on the CPU)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: nothing here may download
    report: dict = {
        "mode": "cpu-dry-run" if dry else "gpu",
        "device": "cpu" if dry else torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="privdiff-gpu-check-") as tmp:
        for family in [f.strip() for f in args.families.split(",") if f.strip()]:
            report["results"].append(run_family(family, args, Path(tmp)))
            print(json.dumps(report["results"][-1]), flush=True)
        if args.train_rdm:
            report["train_rdm"] = train_rdm_step(args, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
