"""Image and text encoders into one L2-normalised embedding space.

Call :func:`load_image_encoder` / :func:`load_text_encoder` (``"default"`` = the shipped RDM's space,
``fmnist-public-cnn/v1``: a small CNN trained on public Fashion-MNIST, and MiniLM projected into it;
EfficientNet-Lite0 64 px centred features stay available as ``"effnet-lite0-64px-c/v1"``). Heavy
libraries (torch, sentence-transformers) are imported only when an encoder is built.
"""

from privdiff.encoders.base import ImageEncoder, TextEncoder, check_same_space, l2_normalize
from privdiff.encoders.registry import (
    DEFAULT_SPACE_ID,
    EFFNET_SPACE_ID,
    encoder_for_model,
    load_image_encoder,
    load_text_encoder,
)

__all__ = [
    "DEFAULT_SPACE_ID",
    "EFFNET_SPACE_ID",
    "encoder_for_model",
    "ImageEncoder",
    "TextEncoder",
    "check_same_space",
    "l2_normalize",
    "load_image_encoder",
    "load_text_encoder",
]


def __getattr__(name: str):
    # Implementation classes load lazily so `import privdiff.encoders` stays light.
    if name == "EfficientNetLite0Encoder":
        from privdiff.encoders.efficientnet import EfficientNetLite0Encoder

        return EfficientNetLite0Encoder
    if name == "MiniLMProjectionTextEncoder":
        from privdiff.encoders.text import MiniLMProjectionTextEncoder

        return MiniLMProjectionTextEncoder
    if name == "CLIPEncoder":
        from privdiff.encoders.hfclip import CLIPEncoder

        return CLIPEncoder
    if name == "OpenCLIPEncoder":
        from privdiff.encoders.openclip import OpenCLIPEncoder

        return OpenCLIPEncoder
    raise AttributeError(f"module 'privdiff.encoders' has no attribute {name!r}")
