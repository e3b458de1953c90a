"""Random-weight decoder stacks built from configs, offline: for the tests and ``scripts/gpu-check.sh``.

Nothing here downloads. ``"tiny"`` components follow the sizes diffusers' own fast tests use for
these pipelines (``tests/pipelines/kandinsky2_2/test_kandinsky.py``,
``tests/pipelines/stable_unclip/test_stable_unclip_img2img.py``, the IP-Adapter tests: a few
thousand to ~1 M parameters, 32 px); ``"full"`` components have the shapes of the published
configs (``kandinsky-community/kandinsky-2-2-decoder`` + the ViT-bigG/14 towers of
``kandinsky-2-2-prior``; ``stabilityai/stable-diffusion-2-1-unclip`` with its ViT-H/14 image
encoder), written out here so the GPU check needs no network. The weights are random: these
stacks measure speed and memory and exercise the code path; their images are noise.

The CLIP tokenizer is byte-level with no BPE merges (every byte one token): the real vocabulary is
a 1.6 MB download, and a tokenizer only has to produce ids below the text tower's ``vocab_size``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from privdiff.errors import InvalidParameter

SIZES = ("tiny", "full")

#: CLIP towers. "full" = Kandinsky 2.2's prior (OpenCLIP ViT-bigG/14, 1280-d image_embeds).
CLIP_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "vision": dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=4,
            projection_dim=32,
        ),
        "text": dict(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32
        ),
    },
    "full": {
        "vision": dict(
            hidden_size=1664,
            intermediate_size=8192,
            num_hidden_layers=48,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            projection_dim=1280,
            hidden_act="gelu",
        ),
        "text": dict(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=20,
            projection_dim=1280,
            hidden_act="gelu",
        ),
    },
}

#: SD-2.1-unCLIP's image encoder (OpenCLIP ViT-H/14, 1024-d image_embeds) and text encoder.
VIT_H_VISION = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=16,
    image_size=224,
    patch_size=14,
    projection_dim=1024,
    hidden_act="gelu",
)
SD21_TEXT = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu"
)


def _check_size(size: str) -> str:
    if size not in SIZES:
        raise InvalidParameter("size", size, "one of " + ", ".join(SIZES))
    return size


def clip_tokenizer():
    """A byte-level CLIPTokenizer (514 ids: the two specials + 256 bytes × {inner, word-final})."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in chars:
            vocab.setdefault(c + suffix, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _text_config(spec: dict[str, Any], vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        **spec,
    )


def clip_towers(size: str = "tiny", *, vision: dict | None = None, text: dict | None = None) -> dict[str, Any]:
    """{"image_encoder", "text_encoder", "tokenizer"}: CLIP towers with projection (random weights)."""
    from transformers import CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIP_CONFIGS[_check_size(size)]
    tok = clip_tokenizer()
    return {
        "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**(vision or cfg["vision"]))).eval(),
        "text_encoder": CLIPTextModelWithProjection(_text_config(text or cfg["text"], len(tok))).eval(),
        "tokenizer": tok,
    }


def save_clip_folder(out: str | Path, size: str = "tiny", *, towers: dict | None = None) -> Path:
    """Write the Kandinsky-prior layout (``image_encoder/``, ``text_encoder/``, ``tokenizer/``)."""
    out = Path(out)
    towers = towers or clip_towers(size)
    for name, obj in towers.items():
        obj.save_pretrained(out / name)
    return out


def kandinsky22_components(size: str = "tiny", *, image_embed_dim: int | None = None) -> dict[str, Any]:
    """{"unet", "scheduler", "movq"} of ``KandinskyV22Pipeline`` (decoder only, no prior)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel, VQModel

    if _check_size(size) == "tiny":
        dim = image_embed_dim or CLIP_CONFIGS["tiny"]["vision"]["projection_dim"]
        unet = UNet2DConditionModel(
            in_channels=4,
            out_channels=8,  # mean and variance
            addition_embed_type="image",
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            block_out_channels=(32, 64),
            layers_per_block=1,
            encoder_hid_dim=dim,
            encoder_hid_dim_type="image_proj",
            cross_attention_dim=32,
            attention_head_dim=4,
            resnet_time_scale_shift="scale_shift",
            class_embed_type=None,
        )
        movq = VQModel(
            block_out_channels=[32, 64],
            down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
            in_channels=3,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=8,
            norm_type="spatial",
            num_vq_embeddings=12,
            out_channels=3,
            up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
            vq_embed_dim=4,
        )
    else:  # kandinsky-community/kandinsky-2-2-decoder unet/ and movq/ config.json
        unet = UNet2DConditionModel(
            addition_embed_type="image",
            addition_embed_type_num_heads=64,
            attention_head_dim=64,
            block_out_channels=(384, 768, 1152, 1536),
            cross_attention_dim=768,
            down_block_types=(
                "ResnetDownsampleBlock2D",
                "SimpleCrossAttnDownBlock2D",
                "SimpleCrossAttnDownBlock2D",
                "SimpleCrossAttnDownBlock2D",
            ),
            encoder_hid_dim=image_embed_dim or 1280,
            encoder_hid_dim_type="image_proj",
            in_channels=4,
            layers_per_block=3,
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            out_channels=8,
            resnet_time_scale_shift="scale_shift",
            sample_size=64,
            up_block_types=(
                "SimpleCrossAttnUpBlock2D",
                "SimpleCrossAttnUpBlock2D",
                "SimpleCrossAttnUpBlock2D",
                "ResnetUpsampleBlock2D",
            ),
        )
        movq = VQModel(
            block_out_channels=[128, 256, 256, 512],
            down_block_types=[
                "DownEncoderBlock2D",
                "DownEncoderBlock2D",
                "DownEncoderBlock2D",
                "AttnDownEncoderBlock2D",
            ],
            in_channels=3,
            latent_channels=4,
            layers_per_block=2,
            norm_num_groups=32,
            norm_type="spatial",
            num_vq_embeddings=16384,
            out_channels=3,
            sample_size=32,
            up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
            vq_embed_dim=4,
        )
    scheduler = DDPMScheduler(
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        num_train_timesteps=1000,
        prediction_type="epsilon",
        steps_offset=1,
        variance_type="fixed_small",
    )
    return {"unet": unet.eval(), "scheduler": scheduler, "movq": movq.eval()}


def kandinsky22_prior_components(size: str = "tiny", *, towers: dict | None = None) -> dict[str, Any]:
    """Components of ``KandinskyV22PriorPipeline``: the CLIP towers + a prior transformer
    (tiny: diffusers' test sizes; full: kandinsky-2-2-prior's ``prior/config.json``)."""
    import torch
    from diffusers import PriorTransformer, UnCLIPScheduler
    from transformers import CLIPImageProcessor

    size = _check_size(size)
    towers = towers or clip_towers(size)
    dim = int(towers["image_encoder"].config.projection_dim)
    if size == "tiny":
        prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=dim, num_layers=1)
    else:
        prior = PriorTransformer(num_attention_heads=32, attention_head_dim=64, embedding_dim=dim, num_layers=20)
    # The checkpoint stores the CLIP image-embedding statistics the prior un-normalises with;
    # their zero init would make every output the zero vector.
    with torch.no_grad():
        prior.clip_std.fill_(1.0)
    image_size = int(towers["image_encoder"].config.image_size)
    return {
        "prior": prior.eval(),
        "image_encoder": towers["image_encoder"],
        "text_encoder": towers["text_encoder"],
        "tokenizer": towers["tokenizer"],
        "scheduler": UnCLIPScheduler(
            variance_type="fixed_small_log",
            prediction_type="sample",
            num_train_timesteps=1000,
            clip_sample=True,
            clip_sample_range=10.0,
        ),
        "image_processor": CLIPImageProcessor(crop_size=image_size, size=image_size),
    }


def save_kandinsky22_prior(out: str | Path, size: str = "tiny", *, towers: dict | None = None) -> Path:
    """The ``kandinsky-2-2-prior`` layout: a prior pipeline that is also a CLIP folder (``clip:DIR``)."""
    from diffusers import KandinskyV22PriorPipeline

    KandinskyV22PriorPipeline(**kandinsky22_prior_components(size, towers=towers)).save_pretrained(out)
    return Path(out)


def _sd_vae(size: str):
    from diffusers import AutoencoderKL

    if size == "tiny":
        return AutoencoderKL(
            block_out_channels=(8, 16),
            norm_num_groups=8,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            layers_per_block=1,
            sample_size=32,
        ).eval()
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=768,
    ).eval()


def _sd_scheduler(prediction_type: str):
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        prediction_type=prediction_type,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def stable_unclip_components(size: str = "tiny", *, image_encoder: Any = None) -> dict[str, Any]:
    """Components of ``StableUnCLIPImg2ImgPipeline``; ``image_encoder`` defaults to a fresh tower
    (tiny CLIP, or ViT-H/14 for "full")."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import CLIPImageProcessor, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    size = _check_size(size)
    if image_encoder is None:
        spec = CLIP_CONFIGS["tiny"]["vision"] if size == "tiny" else VIT_H_VISION
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**spec)).eval()
    dim = int(image_encoder.config.projection_dim)
    tok = clip_tokenizer()
    if size == "tiny":
        text = CLIPTextModel(_text_config(CLIP_CONFIGS["tiny"]["text"], len(tok))).eval()
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            attention_head_dim=(2, 4),
            class_embed_type="projection",
            projection_class_embeddings_input_dim=2 * dim,  # image_embeds ⊕ noise-level embedding
            cross_attention_dim=32,
            layers_per_block=1,
            upcast_attention=True,
            use_linear_projection=True,
        )
    else:  # stabilityai/stable-diffusion-2-1-unclip unet/config.json
        text = CLIPTextModel(_text_config(SD21_TEXT, 49408)).eval()
        unet = UNet2DConditionModel(
            sample_size=96,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=(320, 640, 1280, 1280),
            attention_head_dim=(5, 10, 20, 20),
            class_embed_type="projection",
            projection_class_embeddings_input_dim=2 * dim,
            cross_attention_dim=1024,
            layers_per_block=2,
            use_linear_projection=True,
        )
    return {
        "feature_extractor": CLIPImageProcessor(
            crop_size=image_encoder.config.image_size, size=image_encoder.config.image_size
        ),
        "image_encoder": image_encoder,
        "image_normalizer": StableUnCLIPImageNormalizer(embedding_dim=dim),
        "image_noising_scheduler": DDPMScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000),
        "tokenizer": tok,
        "text_encoder": text,
        "unet": unet.eval(),
        "scheduler": _sd_scheduler("v_prediction"),
        "vae": _sd_vae(size),
    }


def sd_components(size: str = "tiny") -> dict[str, Any]:
    """Components of a tiny ``StableDiffusionPipeline`` (no safety checker, no image encoder)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    if _check_size(size) != "tiny":
        raise InvalidParameter("size", size, "'tiny' (the GPU check measures Kandinsky 2.2 and Stable unCLIP)")
    tok = clip_tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    return {
        "vae": _sd_vae("tiny"),
        "text_encoder": CLIPTextModel(_text_config(CLIP_CONFIGS["tiny"]["text"], len(tok))).eval(),
        "tokenizer": tok,
        "unet": unet.eval(),
        "scheduler": _sd_scheduler("epsilon"),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def ip_adapter_state_dict(unet: Any, image_embed_dim: int, *, seed: int = 0) -> dict[str, Any]:
    """Random IP-Adapter weights in the published file format (``image_proj.proj.*``,
    ``image_proj.norm.*``, ``ip_adapter.<id>.to_k_ip/to_v_ip.weight``; 4 image tokens) for a
    UNet, so ``pipeline.load_ip_adapter(folder, weight_name=...)`` can load them."""
    import torch

    g = torch.Generator().manual_seed(seed)
    cross = int(unet.config.cross_attention_dim)
    out = {
        "image_proj.proj.weight": torch.randn(4 * cross, image_embed_dim, generator=g) * 0.02,
        "image_proj.proj.bias": torch.zeros(4 * cross),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    # Numbering as diffusers' converter walks the processors: cross-attention ones get 1, 3, 5, ...
    key_id = 1
    blocks = list(unet.config.block_out_channels)
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(blocks))[int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        out[f"ip_adapter.{key_id}.to_k_ip.weight"] = torch.randn(hidden, cross, generator=g) * 0.02
        out[f"ip_adapter.{key_id}.to_v_ip.weight"] = torch.randn(hidden, cross, generator=g) * 0.02
        key_id += 2
    return out


def save_kandinsky22(out: str | Path, size: str = "tiny", *, image_embed_dim: int | None = None) -> Path:
    from diffusers import KandinskyV22Pipeline

    KandinskyV22Pipeline(**kandinsky22_components(size, image_embed_dim=image_embed_dim)).save_pretrained(out)
    return Path(out)


def save_stable_unclip(out: str | Path, size: str = "tiny", *, image_encoder: Any = None) -> Path:
    from diffusers import StableUnCLIPImg2ImgPipeline

    StableUnCLIPImg2ImgPipeline(**stable_unclip_components(size, image_encoder=image_encoder)).save_pretrained(out)
    return Path(out)


def save_sd_with_ip_adapter(out: str | Path, image_embed_dim: int, *, seed: int = 0) -> tuple[Path, Path]:
    """(pipeline folder, IP-Adapter weights file) of a tiny SD pipeline and random IP-Adapter weights."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    out = Path(out)
    comps = sd_components("tiny")
    StableDiffusionPipeline(**comps).save_pretrained(out / "sd")
    weights = out / "ip-adapter.safetensors"
    save_file(ip_adapter_state_dict(comps["unet"], image_embed_dim, seed=seed), str(weights))
    return out / "sd", weights
