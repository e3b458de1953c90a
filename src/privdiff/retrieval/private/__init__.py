"""The privacy boundary: the only package in privdiff that reads private embeddings.

Everything that touches private rows lives here: the on-disk index (``index``), the Poisson
subsampling (``subsample``) and subsampled top-k search (``search``, ``ivf``), the top-k backends
the mechanism is served by (``backends``, and ``sharded`` for an index split into shard files, in-process or
on Ray actors), the mechanism's noise and padding steps
(``strategies``), the DP mechanism itself (``mechanism``) and the domain statistic (``domain``).

What the rest of privdiff may use is exactly what this ``__init__`` exports (``__all__``): build,
load and describe an index (its manifest and fingerprint, never its rows), the mechanism
:class:`DPRetriever` with its release type :class:`PrivateRelease` and its backends and
strategies, the public-disjointness check and the domain-similarity scalar. Code outside the
package imports only ``privdiff.retrieval.private`` (or ``privdiff.retrieval``), never a submodule,
reads no underscore attribute of these objects and does not subclass them; the one way to read
private rows without DP is :func:`unsafe_nonprivate_rows`, allowed only where
``tests/test_privacy_boundary.py`` lists it (the ε = ∞ evaluation baseline). That test parses
every module of privdiff and enforces these rules.
"""

from privdiff.retrieval.private.backends import ExactTopK, IVFTopK, TopKBackend
from privdiff.retrieval.private.domain import domain_similarity, mean_max_similarity
from privdiff.retrieval.private.index import (
    EmbeddingIndex,
    IndexManifest,
    add_scan_copy,
    build_index,
    build_index_from_images,
    check_public_disjoint,
    load_index,
    read_manifest,
    shared_source_rows,
    unsafe_nonprivate_rows,
    validated_unit_rows,
)
from privdiff.retrieval.private.ivf import IVFLayout, PublicCoarseQuantizer
from privdiff.retrieval.private.mechanism import DPRetriever, PrivateRelease
from privdiff.retrieval.private.sharded import (
    RayShardedTopK,
    ShardedIndex,
    ShardedTopK,
    is_sharded_index,
    shard_index,
)
from privdiff.retrieval.private.strategies import (
    GaussianNoise,
    NoiseStrategy,
    PaddingStrategy,
    PadWithLastRecord,
    ZeroPadding,
)

__all__ = [
    "DPRetriever",
    "EmbeddingIndex",
    "ExactTopK",
    "GaussianNoise",
    "IVFLayout",
    "IVFTopK",
    "IndexManifest",
    "NoiseStrategy",
    "PadWithLastRecord",
    "PaddingStrategy",
    "PrivateRelease",
    "PublicCoarseQuantizer",
    "RayShardedTopK",
    "ShardedIndex",
    "ShardedTopK",
    "TopKBackend",
    "ZeroPadding",
    "add_scan_copy",
    "build_index",
    "build_index_from_images",
    "check_public_disjoint",
    "domain_similarity",
    "is_sharded_index",
    "load_index",
    "mean_max_similarity",
    "read_manifest",
    "shard_index",
    "shared_source_rows",
    "unsafe_nonprivate_rows",
    "validated_unit_rows",
]
