"""Private retrieval for DP-RDM: the embedding index, subsampled search and the DP mechanism.

The privacy boundary (``DESIGN.md``): :class:`DPRetriever` is the only reader of private
embeddings; it charges the ledger before computing and releases a :class:`PrivateRelease` (noisy
vectors and public parameters only). :class:`PublicRetriever` and :func:`mix_context` are
post-processing over public data and the release, and cost no privacy.

>>> from privdiff.retrieval import load_index, DPRetriever, mix_context   # doctest: +SKIP
>>> release = DPRetriever(load_index("idx"), k=20, sigma=0.05, sample_rate=0.01,
...                       ledger=ledger).query(text_embeddings)        # doctest: +SKIP
>>> context = mix_context(release, text_embeddings, lam=0.5, k=20)     # doctest: +SKIP
"""

from privdiff.retrieval.domain import domain_similarity
from privdiff.retrieval.index import (
    EmbeddingIndex,
    IndexManifest,
    build_index,
    build_index_from_images,
    load_index,
    read_manifest,
    shared_source_rows,
)
from privdiff.retrieval.ivf import IVFLayout, PublicCoarseQuantizer
from privdiff.retrieval.mechanism import DPRetriever, PrivateRelease
from privdiff.retrieval.postprocess import mix_context
from privdiff.retrieval.public import PublicEmbeddings, PublicRetriever, check_public_disjoint

__all__ = [
    "DPRetriever",
    "EmbeddingIndex",
    "IVFLayout",
    "IndexManifest",
    "PrivateRelease",
    "PublicCoarseQuantizer",
    "PublicEmbeddings",
    "PublicRetriever",
    "build_index",
    "domain_similarity",
    "build_index_from_images",
    "check_public_disjoint",
    "load_index",
    "mix_context",
    "read_manifest",
    "shared_source_rows",
]
