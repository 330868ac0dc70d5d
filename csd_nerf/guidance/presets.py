"""Randomly initialised IP2P-architecture models of three sizes, for offline runs and benchmarks.

``tiny`` is the miniature used by tests; ``mid`` sits between it and the real model for CPU benchmarks;
``ip2p`` is InstructPix2Pix's real UNet/VAE configuration (SD 1.5 with 8 UNet input channels): timing and
memory do not depend on the weights, so random weights measure the real cost without a download.
"""

from __future__ import annotations

from typing import Literal

import torch

from csd_nerf.guidance.components import IP2PComponents

Preset = Literal["tiny", "mid", "ip2p"]

_UNET = {
    "tiny": dict(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    ),
    "mid": dict(
        block_out_channels=(64, 128, 256),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=256,
        attention_head_dim=8,
        norm_num_groups=32,
    ),
    "ip2p": dict(
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    ),
}
_VAE = {
    "tiny": dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8, sample_size=64),
    "mid": dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1, norm_num_groups=32, sample_size=512),
    "ip2p": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=512),
}


def build_components(preset: Preset, seed: int = 0) -> IP2PComponents:
    """Random-weight UNet, VAE, text encoder, byte-level tokenizer and SD noise schedule for ``preset``."""
    if preset not in _UNET:
        raise ValueError(f"unknown preset {preset!r}: use one of {', '.join(_UNET)}")
    unet_cfg = _UNET[preset]
    with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's random stream
        torch.manual_seed(seed)
        return _build(preset, unet_cfg)


def _build(preset: Preset, unet_cfg: dict) -> IP2PComponents:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from csd_nerf.byte_tokenizer import byte_level_clip_tokenizer

    tokenizer = byte_level_clip_tokenizer()
    # Prompt embeddings are computed once per prompt, so a two-layer text encoder of the right width suffices.
    width = unet_cfg["cross_attention_dim"]
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    # in_channels 8: IP2P concatenates the noisy latent with the image-conditioning latent.
    unet = UNet2DConditionModel(sample_size=64 if preset != "tiny" else 8, in_channels=8, out_channels=4, **unet_cfg)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        scaling_factor=0.18215,
        **_VAE[preset],
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    return IP2PComponents(unet, vae, text_encoder, tokenizer, scheduler, source=f"random:{preset}")
