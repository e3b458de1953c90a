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
    wrapped = CPSampleUNet(
        unet, CPSampleGuidance(clf, alpha=0.5, scale=5.0, mode="toward_opposite", gate_on="xt", step="gradient"), acp
    )
    with torch.no_grad():
        plain = _cfg_denoiser(unet, cond, uncond, 3.0)(z_t, t)
        protected = _cfg_denoiser(wrapped, cond, uncond, 3.0)(z_t, t)
    delta, fired = CPSampleGuidance(
        clf, alpha=0.5, scale=5.0, mode="toward_opposite", gate_on="xt", step="gradient"
    ).correction(z_t, t, acp[t])
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
    off = CPSampleUNet(
        unet, CPSampleGuidance(clf, alpha=0.5, scale=0.0, mode="toward_opposite", gate_on="xt", step="gradient"), acp
    )
    on = CPSampleUNet(
        unet, CPSampleGuidance(clf, alpha=0.5, scale=50.0, mode="toward_opposite", gate_on="xt", step="gradient"), acp
    )
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
    fired, _ = CPSampleGuidance(clf, alpha=0.05, scale=1.0, mode="toward_opposite", gate_on="xt", step="gradient").gate(
        latents, torch.zeros(4, dtype=torch.long)
    )
    assert fired.all()


def test_wrapped_conditional_unet_round_trips_through_save_pretrained(tiny_latent_parts, tmp_path):
    """The latent wrapper is saved whole (U-Net, classifier, ᾱ, settings) and samples identically after loading."""
    vae, unet, clf, acp = tiny_latent_parts
    wrapped = CPSampleUNet(
        unet,
        CPSampleGuidance(clf, alpha=0.5, scale=50.0, mode="away_from_predicted", gate_on="xt", step="gradient"),
        acp,
    )
    wrapped.save_pretrained(tmp_path / "unet")
    back = CPSampleUNet.from_pretrained(tmp_path / "unet")
    assert type(back.unet).__name__ == "UNet2DConditionModel"
    assert back.guidance.settings() == wrapped.guidance.settings()
    g = torch.Generator().manual_seed(4)
    z_T = torch.randn((2, 4, 8, 8), generator=g)
    cond, uncond = torch.randn((2, 3, 12), generator=g), torch.zeros((2, 3, 12))
    a = ddim_sample(_cfg_denoiser(wrapped, cond, uncond, 2.0), make_ddim_scheduler(), z_T, num_inference_steps=3)
    b = ddim_sample(_cfg_denoiser(back, cond, uncond, 2.0), make_ddim_scheduler(), z_T, num_inference_steps=3)
    assert torch.equal(a, b)


def test_latents_are_the_vae_mean_times_scaling_factor_and_grey_is_repeated(tiny_latent_parts, tmp_path):
    from diffusers import DDPMScheduler

    from privdiff.cpsample.latents import encode_latents, load_vae, scheduler_alphas_cumprod

    vae, *_ = tiny_latent_parts
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    loaded = load_vae(tmp_path / "pipe")  # a pipeline folder: its vae/ is used
    grey = torch.rand((3, 1, 16, 16), generator=torch.Generator().manual_seed(5)) * 2 - 1
    z = encode_latents(loaded, grey, batch_size=2)
    with torch.no_grad():
        ref = vae.encode(grey.repeat(1, 3, 1, 1)).latent_dist.mean * vae.config.scaling_factor
    assert z.shape == (3, 4, 8, 8)
    torch.testing.assert_close(z, ref, atol=1e-5, rtol=1e-5)
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(
        tmp_path / "pipe" / "scheduler"
    )
    acp = scheduler_alphas_cumprod(tmp_path / "pipe")
    assert acp.shape == (1000,) and float(acp[-1]) == pytest.approx(
        float(DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod[-1])
    )


@pytest.mark.integration
def test_protect_train_with_vae_trains_on_latents(tiny_latent_parts, tmp_path):
    from diffusers import DDPMScheduler

    from privdiff.cli import main
    from privdiff.cpsample import load_classifier
    from privdiff.data import load_dataset

    try:
        load_dataset("fashion-mnist:train[:2]", size=16)
    except Exception:  # noqa: BLE001
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    vae, unet, _, _ = tiny_latent_parts
    latent_model = tmp_path / "latent"
    vae.save_pretrained(latent_model / "vae")
    unet.save_pretrained(latent_model / "unet")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(
        latent_model / "scheduler"
    )
    out = tmp_path / "clf"
    args = ["protect", "train", "--data", "fashion-mnist:train[:4]", "--size", "16", "--model", str(latent_model)]
    code = main([*args, "--vae", str(latent_model), "--out", str(out), "--steps", "2", "--batch-size", "4", "--json"])
    assert code == 0
    pc = load_classifier(out)
    assert pc.classifier.config.in_channels == 4  # the VAE's latent channels, not the images' one
    assert pc.meta["vae"] == str(latent_model) and "--vae" in pc.meta["command"]
