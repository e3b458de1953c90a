"""CPSample (Kazdan et al., arXiv 2409.07025): classifier-protected sampling.

A noise-aware classifier overfits random binary labels on the training images
(:mod:`~privdiff.cpsample.classifier`, :mod:`~privdiff.cpsample.training`); at sampling time a
guidance object steers x_t away from where it is confident (:mod:`~privdiff.cpsample.guidance`),
so the sampler stops reproducing training images.
"""

from privdiff.cpsample.classifier import NoiseAwareClassifier, confidence, random_labels
from privdiff.cpsample.guidance import CPSampleGuidance, CPSampleUNet, GateStats, protected_denoiser
from privdiff.cpsample.pipeline import CPSamplePipeline, CPSamplePipelineOutput
from privdiff.cpsample.training import (
    ClassifierTrainConfig,
    ProtectionClassifier,
    evaluate_classifier,
    load_classifier,
    train_classifier,
)

__all__ = [
    "CPSampleGuidance",
    "CPSamplePipeline",
    "CPSamplePipelineOutput",
    "CPSampleUNet",
    "ClassifierTrainConfig",
    "GateStats",
    "NoiseAwareClassifier",
    "ProtectionClassifier",
    "confidence",
    "evaluate_classifier",
    "load_classifier",
    "protected_denoiser",
    "random_labels",
    "train_classifier",
]
