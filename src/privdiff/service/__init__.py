"""``privdiff serve``: DP-RDM generation as an HTTP service (FastAPI + uvicorn).

The app (:mod:`privdiff.service.app`) only assembles library parts: the pipeline comes from
:func:`privdiff.rdm.pipeline.make_pipeline`, budgets from :class:`privdiff.accounting.Ledger`
(the dataset's, and one per API key for its quota), keys from :mod:`privdiff.service.keys`.
fastapi/uvicorn are imported lazily (the ``serve`` extra), so ``privdiff keys`` works without them.
"""

from privdiff.service.keys import KeyInfo, KeyStore, KeyStoreError

__all__ = ["KeyInfo", "KeyStore", "KeyStoreError"]
