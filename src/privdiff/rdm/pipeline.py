"""The DP-RDM generation pipeline: prompts → contexts → DDIM with classifier-free guidance → images.

Data flow (DESIGN.md; method notes §3):

    prompt ─ text encoder ─► q̂ (public) ─► context source ─► C (B, k, d) ─► DDIM + CFG ─► images
                                           └ DP-RDM: ledger charge → subsample → top-k → mean + N(0, σ²I)

Exactly one query per prompt is sent to the context source, in one call, before anything else
that costs compute; with :class:`~privdiff.rdm.conditioning.DPRetrievalContext` that call charges
the ledger for all prompts at once and raises :class:`~privdiff.errors.PrivacyBudgetExceeded`
(nothing charged, nothing produced) when they do not fit. Everything after the release is
post-processing: λ-mixing, sampling and drawing ``images_per_prompt`` images from one privatised
context cost no privacy (notes §3, "caching is free").

Randomness: x_T is the only randomness here and it is public, so it is seedable (``seed`` or a
``torch.Generator``); the DP noise lives inside the retriever and no seed reaches it. The DDIM
sampler runs with η = 0 by default, so images are a deterministic function of (C, x_T).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from privdiff.errors import InvalidParameter, check_in_range, check_int, check_nonnegative
from privdiff.rdm.conditioning import Conditioning, ContextSource
from privdiff.rdm.model import ClassifierFreeGuidance, RDMModel


@dataclass(frozen=True)
class GenerationOutput:
    """Images and the record of how they were made.

    Attributes:
        images: uint8 (P, n, H, W, C): ``images_per_prompt`` = n images for each of P queries.
        prompts: the P prompts (``None`` entries when query embeddings were given directly).
        mode: the context source's mode (``dp-rdm`` or a baseline name).
        private: False only for the non-private (ε = ∞) baseline.
        privacy: the source's privacy record (ε spent/remaining and δ after the charge, σ, q, k...).
        settings: sampler settings (guidance scale, steps, η, seed, images per prompt...).
    """

    images: np.ndarray = field(repr=False)
    prompts: list[str | None]
    mode: str
    private: bool
    privacy: dict[str, Any]
    settings: dict[str, Any]

    def flat_images(self) -> np.ndarray:
        """All images as (P·n, H, W, C), prompt-major."""
        p, n = self.images.shape[:2]
        return self.images.reshape(p * n, *self.images.shape[2:])

    def record(self) -> dict[str, Any]:
        """A JSON-friendly description (no pixels); ε = ∞ is written as the string "inf"."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and math.isinf(v):
                return "inf"
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            if isinstance(v, np.generic):
                return v.item()
            return v

        return clean(
            {
                "mode": self.mode,
                "private": self.private,
                "prompts": self.prompts,
                "images_shape": list(self.images.shape),
                "privacy": self.privacy,
                "settings": self.settings,
            }
        )


class DPRDMPipeline:
    """Model + DDIM scheduler + text encoder + context source (DP retriever or a baseline).

    Args:
        model: a trained :class:`RDMModel`.
        source: a context source from :mod:`privdiff.rdm.conditioning`.
        text_encoder: a :class:`~privdiff.encoders.base.TextEncoder` in the model's space
            (optional if you always pass ``query_embeddings``).
        scheduler: a ``DDIMScheduler``; default: rebuilt from the model's stored schedule.

    Every component must live in the model's embedding space (else ``EncoderMismatch``).
    """

    def __init__(self, model: RDMModel, source: ContextSource, text_encoder: Any = None, *, scheduler: Any = None):
        self.model = model.eval()
        self.source = source
        self.text_encoder = text_encoder
        self.scheduler = scheduler if scheduler is not None else model.ddim_scheduler()
        if getattr(source, "space_id", ""):
            model.check_space(source.space_id, what=f"{source.mode} context source")
        if text_encoder is not None:
            model.check_space(text_encoder.space_id, what="text encoder")

    def __call__(
        self,
        prompts: Sequence[str] | None = None,
        *,
        query_embeddings: np.ndarray | None = None,
        images_per_prompt: int = 1,
        guidance_scale: float = 2.0,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        seed: int | None = None,
        generator: Any = None,
        request_id: str | None = None,
        batch_size: int = 64,
        progress: bool = False,
    ) -> GenerationOutput:
        """Generate ``images_per_prompt`` images for each prompt (or query embedding row).

        Args:
            prompts: text prompts, one private query each.
            query_embeddings: (P, d) query embeddings instead of prompts.
            images_per_prompt: images drawn from each prompt's single context (no extra cost).
            guidance_scale: w in ε̂ = ε(∅) + w·(ε(C) − ε(∅)) (paper: 2.0; 1.25 on CIFAR-10).
            num_inference_steps: DDIM steps (paper: 100).
            eta: DDIM η (paper: 0).
            seed / generator: public randomness of x_T (give one, not both).
            request_id: passed to the ledger with the charge.
            batch_size: images per sampler batch (memory only; results do not depend on it).

        Raises:
            InvalidParameter, EncoderMismatch: bad input, checked before any charge.
            PrivacyBudgetExceeded: the prompts do not fit in the budget; nothing is produced.
        """
        import torch

        from privdiff.diffusion.sampling import ddim_sample
        from privdiff.report.images import to_uint8

        # 1. Validate everything before the (possibly charged) context query.
        images_per_prompt = check_int("images_per_prompt", images_per_prompt, 1)
        guidance_scale = check_nonnegative("guidance_scale", guidance_scale)
        num_inference_steps = check_int(
            "num_inference_steps", num_inference_steps, 1, self.scheduler.config.num_train_timesteps
        )
        eta = check_in_range("eta", eta, 0.0, 1.0, low_inclusive=True)
        batch_size = check_int("batch_size", batch_size, 1)
        if seed is not None and generator is not None:
            raise InvalidParameter("seed", seed, "None when a generator is given")
        if seed is not None:
            seed = check_int("seed", seed, 0)
        queries, prompt_list = self._queries(prompts, query_embeddings)

        # 2. One query per prompt, all in one call (DP-RDM: one ledger charge for P queries).
        cond: Conditioning = self.source.condition(queries, request_id=request_id)

        # 3. Post-processing: sample n images per context.
        cfg = self.model.config
        n_total = len(prompt_list) * images_per_prompt
        if generator is None:
            generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
        # All of x_T is drawn up front so images do not depend on batch_size.
        x_T = torch.randn((n_total, cfg.channels, cfg.sample_size, cfg.sample_size), generator=generator)
        contexts = torch.from_numpy(np.repeat(cond.contexts, images_per_prompt, axis=0))
        out = []
        batches = range(0, n_total, batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"generate ({cond.mode})", unit="batch")
        for start in batches:
            sl = slice(start, start + batch_size)
            denoiser = ClassifierFreeGuidance(self.model, contexts[sl], guidance_scale)
            x0 = ddim_sample(
                denoiser, self.scheduler, x_T[sl], num_inference_steps=num_inference_steps, eta=eta, generator=generator
            )
            out.append(to_uint8(x0))
        images = np.concatenate(out).reshape(len(prompt_list), images_per_prompt, cfg.sample_size, cfg.sample_size, cfg.channels)
        return GenerationOutput(
            images=images,
            prompts=prompt_list,
            mode=cond.mode,
            private=cond.private,
            privacy=dict(cond.privacy),
            settings={
                "images_per_prompt": images_per_prompt,
                "guidance_scale": guidance_scale,
                "num_inference_steps": num_inference_steps,
                "eta": eta,
                "seed": seed,
                "scheduler": "DDIM",
                "space_id": cfg.space_id,
                "context_tokens": int(cond.contexts.shape[1]),
            },
        )

    def _queries(self, prompts: Sequence[str] | None, query_embeddings: np.ndarray | None):
        if (prompts is None) == (query_embeddings is None):
            raise InvalidParameter("prompts", prompts, "either prompts or query_embeddings (exactly one)")
        if prompts is not None:
            if isinstance(prompts, str):
                prompts = [prompts]
            prompt_list = list(prompts)
            if not prompt_list or not all(isinstance(p, str) and p.strip() for p in prompt_list):
                raise InvalidParameter("prompts", prompts, "a non-empty list of non-empty strings")
            if self.text_encoder is None:
                raise InvalidParameter("text_encoder", None, "a TextEncoder when prompts are given")
            queries = np.asarray(self.text_encoder.encode_text(prompt_list), dtype=np.float32)
            return queries, prompt_list
        q = np.asarray(query_embeddings, dtype=np.float32)
        if q.ndim != 2 or q.shape[0] < 1 or q.shape[1] != self.model.embedding_dim:
            raise InvalidParameter(
                "query_embeddings", f"array of shape {q.shape}", f"(P >= 1, {self.model.embedding_dim})"
            )
        return q, [None] * q.shape[0]


# ---------------------------------------------------------------------------------------------
# Assembly from files (used by the CLI and the experiments)
# ---------------------------------------------------------------------------------------------

#: Generation settings used when neither the command line nor the model's ``config.json``
#: (``generation_defaults``) gives one. σ = 0.05 and k = 20 are the paper's MS-COCO regime
#: (z = σk/2 = 0.5, notes §4.6-4.7); q = 0.01 on the embedded private split (N = 49,320,
#: δ = 1/N) answers 543 queries within ε = 10 under the PLD accountant (``privdiff account
#: calibrate --solve queries``), with ≈ 490 private images in each subsample.
DEFAULT_GENERATION: dict[str, Any] = {
    "k": 20,
    "sigma": 0.05,
    "sample_rate": 0.01,
    "guidance_scale": 2.0,
    "num_inference_steps": 50,
    "lam": 1.0,
}

#: Where the shipped checkpoint lives, relative to the repository root.
SHIPPED_MODEL = Path("checkpoints") / "rdm" / "fashion-mnist"
MODEL_ENV_VAR = "PRIVDIFF_RDM_MODEL"


def resolve_model_dir(model: str | os.PathLike | None = None) -> Path:
    """The model directory: ``model`` if given, else ``$PRIVDIFF_RDM_MODEL``, else the shipped one."""
    from privdiff.errors import CheckpointError

    if model is not None:
        return Path(model)
    env = os.environ.get(MODEL_ENV_VAR)
    if env:
        return Path(env)
    # src/privdiff/rdm/pipeline.py → the repository root is three levels above the package.
    root = Path(__file__).resolve().parents[3]
    candidate = root / SHIPPED_MODEL
    if not (candidate / "config.json").is_file():
        raise CheckpointError(
            f"no shipped RDM checkpoint at {candidate}; pass --model DIR or set {MODEL_ENV_VAR} "
            "(train one with `privdiff train rdm --out DIR`)"
        )
    return candidate


def generation_defaults(model_dir: str | os.PathLike) -> dict[str, Any]:
    """:data:`DEFAULT_GENERATION` updated with the model's stored ``generation_defaults``."""
    from privdiff.rdm.model import read_model_info

    return DEFAULT_GENERATION | dict(read_model_info(model_dir).get("generation_defaults", {}))


def public_embeddings_for(spec: str, image_encoder: Any, private_index: Any = None) -> Any:
    """:class:`~privdiff.retrieval.PublicEmbeddings` of a public dataset spec (cached encoding).

    With ``private_index``, a set sharing any image with it is refused before encoding."""
    from privdiff.data import load_dataset
    from privdiff.rdm.train import cached_embeddings
    from privdiff.retrieval import PublicEmbeddings, check_public_disjoint

    ds = load_dataset(spec)
    if private_index is not None:
        check_public_disjoint(private_index, ds.images, name=spec)
    emb = cached_embeddings(ds, image_encoder, private=False)
    return PublicEmbeddings(emb, space_id=image_encoder.space_id, source=spec)


def make_pipeline(
    model_dir: str | os.PathLike,
    *,
    mode: str = "dp-rdm",
    index: str | os.PathLike | None = None,
    ledger: str | os.PathLike | None = None,
    k: int | None = None,
    sigma: float | None = None,
    sample_rate: float | None = None,
    lam: float = 1.0,
    mix_with: str = "query",
    public_data: str = "fashion-mnist:dprdm-public",
    private_data: str | None = None,
    encoder: str = "default",
) -> tuple[DPRDMPipeline, dict[str, Any]]:
    """Load a model, encoders and the context source for ``mode``; returns (pipeline, defaults).

    Everything that can fail (missing ledger, index of another space, bad σ/q/k) fails here,
    before any query is charged.
    """
    from privdiff.encoders import load_image_encoder, load_text_encoder
    from privdiff.rdm.conditioning import (
        DPRetrievalContext,
        NonPrivateRetrievalContext,
        PublicRetrievalContext,
        QueryOnlyContext,
    )

    defaults = generation_defaults(model_dir)
    k = check_int("k", k if k is not None else defaults["k"], 1)
    model = RDMModel.load(model_dir)
    text = load_text_encoder(encoder)
    model.check_space(text.space_id, what=f"text encoder {encoder!r}")

    def image_encoder():
        enc = load_image_encoder(encoder)
        model.check_space(enc.space_id, what=f"image encoder {encoder!r}")
        return enc

    if mode == "dp-rdm":
        from privdiff.accounting.ledger import Ledger
        from privdiff.retrieval import DPRetriever, PublicRetriever, load_index

        if index is None or ledger is None:
            raise InvalidParameter("index/ledger", (index, ledger), "both given in dp-rdm mode (--index DIR --ledger FILE)")
        sigma = sigma if sigma is not None else defaults["sigma"]
        sample_rate = sample_rate if sample_rate is not None else defaults["sample_rate"]
        idx = load_index(index, expected_space=model.space_id)
        retriever = DPRetriever(idx, k, sigma, sample_rate, Ledger.open(ledger), query_space=text.space_id)
        public = None
        if mix_with == "public" and lam < 1.0:
            public = PublicRetriever(public_embeddings_for(public_data, image_encoder(), idx), k)
        source: Any = DPRetrievalContext(retriever, lam=lam, mix_with=mix_with, public_retriever=public)
    elif mode == "public-retrieval":
        from privdiff.retrieval import PublicRetriever, load_index

        # With --index, the "public" set is checked to share no image with the private one.
        idx = None if index is None else load_index(index, expected_space=model.space_id, verify="size")
        source = PublicRetrievalContext(PublicRetriever(public_embeddings_for(public_data, image_encoder(), idx), k))
    elif mode == "non-private":
        from privdiff.data import load_dataset
        from privdiff.rdm.train import cached_embeddings

        if private_data is None:
            raise InvalidParameter("private_data", None, "a dataset spec for the non-private baseline (--private-data)")
        enc = image_encoder()
        emb = cached_embeddings(load_dataset(private_data), enc, private=True)
        source = NonPrivateRetrievalContext(emb, k, space_id=enc.space_id)
    elif mode == "no-retrieval":
        source = QueryOnlyContext(k, model.embedding_dim, model.space_id)
    else:
        raise InvalidParameter("mode", mode, "dp-rdm, public-retrieval, non-private or no-retrieval")
    return DPRDMPipeline(model, source, text), defaults


def generate_to_directory(
    pipeline: DPRDMPipeline,
    prompts: Sequence[str],
    out: str | os.PathLike,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run the pipeline and write ``p<i>_<j>.png`` per image, ``grid.png`` (one row per prompt)
    and ``generation.json``. Nothing is written unless generation succeeded (an over-budget
    request raises before any file exists)."""
    import json
    import shutil
    import tempfile

    from privdiff.report.images import save_grid, save_png

    result = pipeline(prompts, **kwargs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        p, n = result.images.shape[:2]
        for i in range(p):
            for j in range(n):
                save_png(result.images[i, j], tmp / f"p{i:02d}_{j:03d}.png")
        save_grid(result.flat_images(), tmp / "grid.png", ncols=n, scale=3)
        record = result.record() | {"files": {"grid": "grid.png", "images": "p<prompt>_<image>.png"}}
        (tmp / "generation.json").write_text(json.dumps(record, indent=2) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record
