"""Shared tiny fixtures: a classifier that has memorised random labels on a handful of 8×8 images."""

from __future__ import annotations

import pytest
import torch

from privdiff.cpsample.training import ClassifierTrainConfig, train_classifier
from privdiff.diffusion.model import DDIM_SCHEDULE


@pytest.fixture(scope="session")
def alphas_cumprod() -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler(**DDIM_SCHEDULE).alphas_cumprod.clone()


@pytest.fixture(scope="session")
def tiny_train_set() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand((6, 1, 8, 8), generator=g) * 2 - 1


@pytest.fixture(scope="session")
def memorised(tiny_train_set, alphas_cumprod):
    """(classifier, labels) overfit on the tiny set at small t (t < 40)."""
    torch.manual_seed(0)
    cfg = ClassifierTrainConfig(
        steps=250,
        batch_size=6,
        lr=3e-3,
        small_t_fraction=1.0,
        small_t_max=40,
        label_seed=1,
        seed=0,
        block_out_channels=(8, 16),
        target_alpha=None,  # a fixed 250 steps: the fixture's memorisation strength is what the tests assume
    )
    clf, labels, _ = train_classifier(tiny_train_set, alphas_cumprod=alphas_cumprod, config=cfg, progress=False)
    return clf, labels
