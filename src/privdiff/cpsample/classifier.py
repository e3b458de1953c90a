"""CPSample's noise-aware classifier p_φ(y | x_t, t) of random binary labels.

Kazdan et al., *CPSample* (arXiv 2409.07025), abstract and §3.1: attach i.i.d. Bernoulli(1/2) labels
to the training images and train a classifier that **overfits** them. A network can only fit random
labels by memorising individual points, so its confidence max(p, 1−p) is high only in small
neighbourhoods of the training images and ≈ 1/2 elsewhere (methods/cpsample.md §2).

The paper's architecture is unknown ([U] in the spec); this is the natural choice for a ddim fork,
an ADM-style *encoder U-Net* built from diffusers blocks: sinusoidal timestep embedding
(``Timesteps`` + ``TimestepEmbedding``), time-conditioned ``ResnetBlock2D`` levels with stride-2
``Downsample2D``, global average pooling and one logit z = f_φ(x_t, t), p = σ(z) = p_φ(y=1 | x_t, t).
It is a diffusers ``ModelMixin`` so it saves/loads with ``save_pretrained``/``from_pretrained``
(config + safetensors).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import Downsample2D, ResnetBlock2D
from torch import nn


class NoiseAwareClassifier(ModelMixin, ConfigMixin):
    """One-logit, time-conditioned image classifier (an encoder U-Net).

    Args:
        in_channels: image (or latent) channels C.
        block_out_channels: channels per level; every level but the last halves H and W.
        layers_per_block: ``ResnetBlock2D`` per level.
        norm_num_groups: GroupNorm groups (must divide every channel count).
        time_embed_dim: width of the timestep embedding MLP.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        block_out_channels: tuple[int, ...] = (32, 64, 128),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        time_embed_dim: int = 128,
    ):
        super().__init__()
        ch0 = block_out_channels[0]
        self.time_proj = Timesteps(ch0, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(ch0, time_embed_dim)
        self.conv_in = nn.Conv2d(in_channels, ch0, kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        prev = ch0
        for level, ch in enumerate(block_out_channels):
            resnets = nn.ModuleList()
            for _ in range(layers_per_block):
                resnets.append(
                    ResnetBlock2D(
                        in_channels=prev,
                        out_channels=ch,
                        temb_channels=time_embed_dim,
                        groups=norm_num_groups,
                    )
                )
                prev = ch
            self.blocks.append(resnets)
            last = level == len(block_out_channels) - 1
            self.downsamplers.append(nn.Identity() if last else Downsample2D(ch, use_conv=True, padding=1, name="op"))
        self.norm_out = nn.GroupNorm(norm_num_groups, prev)
        self.head = nn.Linear(prev, 1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Return the logit z = f_φ(x_t, t), shape (B,)."""
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        temb = self.time_embedding(self.time_proj(t).to(x_t.dtype))
        h = self.conv_in(x_t)
        for resnets, down in zip(self.blocks, self.downsamplers):
            for resnet in resnets:
                h = resnet(h, temb)
            h = down(h)
        h = torch.nn.functional.silu(self.norm_out(h)).mean(dim=(2, 3))
        return self.head(h).squeeze(1)


def random_labels(n: int, seed: int) -> torch.Tensor:
    """Fixed i.i.d. Bernoulli(1/2) labels y_i (CPSample abstract: "random binary labels"), as float."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.bernoulli(torch.full((n,), 0.5), generator=g)


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """max(p, 1−p) with p = σ(z), computed as σ(|z|) so it stays exact near 1 (no 1 − p cancellation)."""
    return torch.sigmoid(logits.abs())
