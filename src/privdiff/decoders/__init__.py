"""DP-RDM on unCLIP-class decoders: a released CLIP image embedding → Kandinsky 2.2, Stable unCLIP or IP-Adapter.

DP-RDM's release is a noisy mean of unit CLIP image embeddings of the private set (arXiv
2403.14421 §3), which is exactly the conditioning these public decoders take, so a data owner
with such a model adapts it to a private collection with no training at all:

* :mod:`~privdiff.decoders.adapters`: one adapter per family (the argument that takes the
  embedding, the family's negative embedding), loaded from local folders only;
* :mod:`~privdiff.decoders.pipeline`: :class:`DecoderDPRDMPipeline` (prompt → CLIP text query →
  charged DP release → λ-mixing → rescale to the decoder's norm → images) and
  :func:`make_decoder_pipeline`, the assembly the CLI uses (``privdiff generate --pipeline DIR
  --pipeline-type ...``);
* :mod:`~privdiff.decoders.prior`: queries from Kandinsky 2.2's prior (the prompt's predicted
  image embedding) instead of the CLIP text tower;
* :mod:`~privdiff.decoders.synthetic`: random-weight stacks from configs (tests, GPU check).

The CLIP encoder of the space is :class:`privdiff.encoders.hfclip.CLIPEncoder` (``clip:<folder>``
in the encoder registry). Heavy libraries load only when something is built.
"""

from privdiff.decoders.adapters import (
    FAMILIES,
    IPAdapterDecoder,
    Kandinsky22Decoder,
    StableUnCLIPDecoder,
    load_decoder,
)
from privdiff.decoders.pipeline import (
    DecoderDPRDMPipeline,
    DecoderOutput,
    make_decoder_pipeline,
    public_embed_norm,
    rescale_to_norm,
)

__all__ = [
    "FAMILIES",
    "DecoderDPRDMPipeline",
    "DecoderOutput",
    "IPAdapterDecoder",
    "Kandinsky22Decoder",
    "StableUnCLIPDecoder",
    "load_decoder",
    "make_decoder_pipeline",
    "public_embed_norm",
    "rescale_to_norm",
]
