"""A miniature InstructPix2Pix with the real diffusers/transformers architecture and random weights.

It is written with ``save_pretrained`` once per cache folder and then loaded through the same
``from_pretrained`` path as a real model, so offline runs and tests exercise the user's code path.
It edits nothing meaningful.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

TINY_MODEL_NAME = "tiny"
TINY_NOTICE = (
    "the 'tiny' InstructPix2Pix has random weights: it exercises the pipeline but makes no meaningful edit; "
    "pass a real model (e.g. timbrooks/instruct-pix2pix, or a local copy of it) for a real edit"
)
_TINY_VERSION = "v1"


def cache_root() -> Path:
    """Where csd-nerf keeps generated artefacts: ``$CSD_NERF_CACHE`` or ``~/.cache/csd_nerf``."""
    return Path(os.environ.get("CSD_NERF_CACHE", Path.home() / ".cache" / "csd_nerf"))


def tiny_ip2p_path() -> Path:
    """The folder of the miniature IP2P, built on first use."""
    path = cache_root() / f"tiny-ip2p-{_TINY_VERSION}"
    if not (path / "model_index.json").exists():
        build_tiny_ip2p(path)
    return path


def build_tiny_ip2p(path: Path, seed: int = 0) -> Path:
    """Build the miniature IP2P and save it as a diffusers pipeline folder at ``path``."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from csd_nerf.byte_tokenizer import byte_level_clip_tokenizer

    torch.manual_seed(seed)
    tokenizer = byte_level_clip_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=8,  # IP2P: noisy latent (4) + image-conditioning latent (4)
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    # Four blocks keep SD's 8x spatial downsampling, so latents have the real shape relations.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a concurrent or interrupted build never leaves half a model.
    staging = Path(tempfile.mkdtemp(prefix=".tiny-ip2p-", dir=path.parent))
    try:
        pipe.save_pretrained(staging)
        try:
            os.replace(staging, path)
        except OSError:
            if not (path / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
