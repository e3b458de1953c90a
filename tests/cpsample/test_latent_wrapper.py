"""CPSample on latents: a wrapper around a tiny diffusers UNet2DConditionModel inside a CFG latent loop."""

from __future__ import annotations

import pytest
import torch

from privdiff.cpsample import CPSampleGuidance, CPSampleUNet, NoiseAwareClassifier
from privdiff.diffusion import ddim_sample, make_ddim_scheduler


@pytest.fixture(scope="module")
def tiny_latent_parts():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    ).eval()
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12,
        attention_head_dim=4,
        norm_num_groups=8,
    ).eval()
    clf = NoiseAwareClassifier(in_channels=4, block_out_channels=(8, 16), norm_num_groups=4, time_embed_dim=16).eval()
    acp = make_ddim_scheduler().alphas_cumprod
    return vae, unet, clf, acp


def _cfg_denoiser(unet, cond, uncond, w):
    """Classifier-free guidance as a denoiser: one batched call on [uncond; cond], as SD pipelines do."""

    def eps(z_t, t):
        n = z_t.shape[0]
        out = unet(
            torch.cat([z_t, z_t]),
            torch.cat([t, t]),
            encoder_hidden_states=torch.cat([uncond, cond]),
        ).sample
        e_u, e_c = out[:n], out[n:]
        return e_u + w * (e_c - e_u)

    return eps


def test_wrapper_adds_the_same_correction_to_the_cfg_combined_epsilon(tiny_latent_parts):
    vae, unet, clf, acp = tiny_latent_parts
    g = torch.Generator().manual_seed(1)
    z_t = torch.randn((2, 4, 8, 8), generator=g)
    t = torch.tensor([400, 400])
    cond, uncond = torch.randn((2, 3, 12), generator=g), torch.zeros((2, 3, 12))
    # α = 0.5 fires wherever p ≠ 1/2 exactly, i.e. everywhere for an untrained classifier.
    wrapped = CPSampleUNet(unet, CPSampleGuidance(clf, alpha=0.5, scale=5.0), acp)
    with torch.no_grad():
        plain = _cfg_denoiser(unet, cond, uncond, 3.0)(z_t, t)
        protected = _cfg_denoiser(wrapped, cond, uncond, 3.0)(z_t, t)
    delta, fired = CPSampleGuidance(clf, alpha=0.5, scale=5.0).correction(z_t, t, acp[t])
    assert fired.all()
    assert torch.allclose(protected, plain + delta, atol=1e-5)
    assert wrapped.config.in_channels == 4  # diffusers attributes pass through to the wrapped U-Net
    assert wrapped.guidance.stats.per_step[-1]["batch"] == 2  # the CFG copy is gated once, not twice


def test_latent_cpsample_sampling_runs_end_to_end_and_scale_zero_is_plain(tiny_latent_parts):
    vae, unet, clf, acp = tiny_latent_parts
    g = torch.Generator().manual_seed(2)
    z_T = torch.randn((2, 4, 8, 8), generator=g)
    cond, uncond = torch.randn((2, 3, 12), generator=g), torch.zeros((2, 3, 12))
    plain = ddim_sample(_cfg_denoiser(unet, cond, uncond, 2.0), make_ddim_scheduler(), z_T, num_inference_steps=3)
    off = CPSampleUNet(unet, CPSampleGuidance(clf, alpha=0.5, scale=0.0), acp)
    on = CPSampleUNet(unet, CPSampleGuidance(clf, alpha=0.5, scale=50.0), acp)
    same = ddim_sample(_cfg_denoiser(off, cond, uncond, 2.0), make_ddim_scheduler(), z_T, num_inference_steps=3)
    moved = ddim_sample(_cfg_denoiser(on, cond, uncond, 2.0), make_ddim_scheduler(), z_T, num_inference_steps=3)
    assert torch.equal(plain, same)
    assert not torch.allclose(plain, moved)
    assert on.guidance.stats.firing_rate == 1.0 and len(on.guidance.stats.per_step) == 3
    with torch.no_grad():
        images = vae.decode(moved / vae.config.scaling_factor).sample
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_classifier_trained_on_vae_latents_gates_its_training_latents(tiny_latent_parts):
    from privdiff.cpsample import ClassifierTrainConfig, train_classifier

    vae, _, _, acp = tiny_latent_parts
    images = torch.rand((4, 3, 16, 16), generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
    cfg = ClassifierTrainConfig(
        steps=150,
        batch_size=4,
        lr=3e-3,
        small_t_fraction=1.0,
        small_t_max=20,
        block_out_channels=(8, 16),
        label_seed=2,
    )
    clf, labels, _ = train_classifier(latents, alphas_cumprod=acp, config=cfg, progress=False)
    fired, _ = CPSampleGuidance(clf, alpha=0.05, scale=1.0).gate(latents, torch.zeros(4, dtype=torch.long))
    assert fired.all()
