"""Image and text encoders into one L2-normalised embedding space."""

from privdiff.encoders.base import ImageEncoder, TextEncoder, check_same_space, l2_normalize

__all__ = ["ImageEncoder", "TextEncoder", "check_same_space", "l2_normalize"]
