"""privdiff: generate images with diffusion models without leaking the images behind them.

Two methods, one toolkit:

* **DP-RDM** (Lebensold et al., arXiv 2403.14421): a public retrieval-augmented diffusion model is
  adapted at sampling time to a private image collection; every prompt is one privacy-charged query
  of a Poisson-subsampled Gaussian mechanism (:mod:`privdiff.retrieval`, :mod:`privdiff.rdm`).
* **CPSample** (Kazdan et al., arXiv 2409.07025): a classifier overfit to random labels guides
  sampling away from training images (:mod:`privdiff.cpsample`).

The privacy maths lives in :mod:`privdiff.accounting`; the only code that reads private embeddings
is the package :mod:`privdiff.retrieval.private` (the privacy boundary, checked by
``tests/test_privacy_boundary.py``).
"""

__version__ = "0.1.0"
