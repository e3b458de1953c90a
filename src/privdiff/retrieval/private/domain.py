"""How far a private index lies from a model's public domain, as one number (for a warning).

DP-RDM retrieves private neighbours of a public text query; if the private set has nothing in
common with what the model was trained on, every context is noise around unrelated images and
the output is meaningless, however much ε it costs. :func:`domain_similarity` measures this
inside the privacy boundary (``privdiff.retrieval.private``): it reads a fixed, evenly spaced sample of
private rows and returns only the mean over them of the largest cosine similarity to a *public*
reference set. No row, id or per-row value leaves; the scalar goes to the operator running the
command (who holds the index anyway) as a warning, and is not written into released outputs.
"""

from __future__ import annotations

import numpy as np

from privdiff.errors import InvalidParameter, check_int
from privdiff.retrieval.private.index import EmbeddingIndex, rows_for_mechanism

#: Private rows read for the statistic: 1,000 × 1,000 references × d = 1280 is ~1.3 GFLOP,
#: well under a second on two cores.
DOMAIN_SAMPLE = 1000


def mean_max_similarity(rows: np.ndarray, reference: np.ndarray) -> float:
    """Mean over ``rows`` of max_j cos(row, reference_j) (both L2-normalised here)."""
    a = np.asarray(rows, dtype=np.float32)
    b = np.asarray(reference, dtype=np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not len(a) or not len(b):
        raise InvalidParameter("reference", f"arrays {a.shape} and {b.shape}", "two (n, d) arrays of one d")
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float((a @ b.T).max(axis=1).mean())


def domain_similarity(index: EmbeddingIndex, reference: np.ndarray, *, sample: int = DOMAIN_SAMPLE) -> float:
    """Mean max-similarity of ≤ ``sample`` evenly spaced rows of ``index`` to ``reference``."""
    from privdiff.retrieval.private.sharded import ShardedIndex, sampled_shard_rows

    if not isinstance(index, (EmbeddingIndex, ShardedIndex)):
        raise InvalidParameter("index", type(index).__name__, "an EmbeddingIndex or a ShardedIndex")
    sample = check_int("sample", sample, 1)
    rows_idx = np.unique(np.linspace(0, index.count - 1, num=min(sample, index.count)).round().astype(np.int64))
    if isinstance(index, ShardedIndex):
        rows = sampled_shard_rows(index, rows_idx)  # ≤ `sample` rows read from the shard files
    else:
        rows = np.asarray(rows_for_mechanism(index)[rows_idx], dtype=np.float32)  # read stays inside the boundary
    return mean_max_similarity(rows, reference)
