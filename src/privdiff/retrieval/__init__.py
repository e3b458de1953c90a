"""Retrieval for DP-RDM: the private boundary package, public retrieval and λ-mixing.

The privacy boundary (``DESIGN.md``) is the package :mod:`privdiff.retrieval.private`: the index,
the subsampled search and :class:`DPRetriever`, the only reader of private embeddings; it charges
the ledger before computing and releases a :class:`PrivateRelease` (noisy vectors and public
parameters only). This package re-exports what the boundary exports, so callers can keep
importing from ``privdiff.retrieval``. :class:`PublicRetriever` and :func:`mix_context` live
outside the boundary: post-processing over public data and the release, costing no privacy.

>>> from privdiff.retrieval import load_index, DPRetriever, mix_context   # doctest: +SKIP
>>> release = DPRetriever(load_index("idx"), k=20, sigma=0.05, sample_rate=0.01,
...                       ledger=ledger).query(text_embeddings)        # doctest: +SKIP
>>> context = mix_context(release, text_embeddings, lam=0.5, k=20)     # doctest: +SKIP
"""

from privdiff.retrieval.postprocess import mix_context
from privdiff.retrieval.private import (
    DPRetriever,
    EmbeddingIndex,
    ExactTopK,
    IndexManifest,
    IVFLayout,
    IVFTopK,
    PrivateRelease,
    PublicCoarseQuantizer,
    RayShardedTopK,
    ShardedIndex,
    ShardedTopK,
    TopKBackend,
    build_index,
    build_index_from_images,
    check_public_disjoint,
    domain_similarity,
    is_sharded_index,
    load_index,
    read_manifest,
    shard_index,
    shared_source_rows,
)
from privdiff.retrieval.public import PublicEmbeddings, PublicRetriever

__all__ = [
    "DPRetriever",
    "EmbeddingIndex",
    "ExactTopK",
    "IVFLayout",
    "IVFTopK",
    "IndexManifest",
    "PrivateRelease",
    "PublicCoarseQuantizer",
    "PublicEmbeddings",
    "PublicRetriever",
    "RayShardedTopK",
    "ShardedIndex",
    "ShardedTopK",
    "TopKBackend",
    "build_index",
    "domain_similarity",
    "build_index_from_images",
    "check_public_disjoint",
    "is_sharded_index",
    "load_index",
    "mix_context",
    "read_manifest",
    "shard_index",
    "shared_source_rows",
]
