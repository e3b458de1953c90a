"""Retrieval metrics for embedding spaces, and a feature cache for the calibration scripts.

The metrics are the ones the encoder choices are judged by (numbers in ``docs/results/encoders``):

* class precision@k: for each query, the fraction of its k nearest neighbours (by inner product
  of unit rows = cosine) that share its label - how well a DP-RDM query's k retrieved private
  embeddings (arXiv 2403.14421 §3) represent the class asked for;
* zero-shot top-1/top-5: classify each image by its most similar class-prompt embedding;
* text→image precision@k: for a text query, the fraction of its k nearest images of the right class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privdiff.utils.cache import ArrayCache, cache_key


def class_precision_at_k(
    queries: np.ndarray,
    query_labels: np.ndarray,
    database: np.ndarray | None = None,
    database_labels: np.ndarray | None = None,
    k: int = 10,
    chunk: int = 1024,
) -> float:
    """Mean fraction of the k nearest database rows sharing the query's label.

    Without ``database`` the queries are searched among themselves, leaving each query out.
    """
    loo = database is None
    if loo:
        database, database_labels = queries, query_labels
    hits = 0.0
    for s in range(0, queries.shape[0], chunk):
        sims = queries[s : s + chunk] @ database.T
        if loo:
            rows = np.arange(sims.shape[0])
            sims[rows, rows + s] = -np.inf
        top = np.argpartition(-sims, kth=k - 1, axis=1)[:, :k]
        hits += float((database_labels[top] == query_labels[s : s + chunk, None]).sum())
    return hits / (queries.shape[0] * k)


def zero_shot_topk(
    image_embeddings: np.ndarray,
    labels: np.ndarray,
    class_embeddings: np.ndarray,
    ks: tuple[int, ...] = (1, 5),
) -> dict[int, float]:
    """Top-k accuracy of classifying each image by its nearest class embedding (rows = classes)."""
    sims = image_embeddings @ class_embeddings.T
    order = np.argsort(-sims, axis=1)
    return {k: float((order[:, :k] == labels[:, None]).any(axis=1).mean()) for k in ks}


def text_to_image_precision(
    text_embeddings: np.ndarray,
    text_labels: np.ndarray,
    image_embeddings: np.ndarray,
    image_labels: np.ndarray,
    k: int = 10,
) -> float:
    """Mean fraction of each text query's k nearest images that have the query's class."""
    return class_precision_at_k(text_embeddings, text_labels, image_embeddings, image_labels, k=k)


def cached_features(
    encoder,
    images: np.ndarray,
    cache_dir: Path,
    tag: str,
    *,
    batch_size: int = 128,
    progress: bool = True,
) -> np.ndarray:
    """``encoder.features(images)`` memoised on disk under ``cache_dir`` (keyed by the encoder's
    input size, ``tag`` and a hash of the pixels), so calibration runs can be re-run cheaply."""
    cache = ArrayCache(cache_dir)
    key = cache_key("effnet-features", encoder.input_size, tag, np.asarray(images))
    hit = cache.load(key)
    if hit is not None and len(hit) == len(images):
        return hit
    feats = encoder.features(images, batch_size=batch_size, progress=progress)
    cache.save(key, feats)
    return feats
