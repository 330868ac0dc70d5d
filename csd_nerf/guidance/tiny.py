"""A miniature InstructPix2Pix: the ``tiny`` random-weight preset, saved to disk as a diffusers pipeline.

It is written with ``save_pretrained`` once per cache folder and then loaded through the same
``from_pretrained`` path as a real model, so offline runs and tests exercise the user's code path.
It edits nothing meaningful.
"""

from __future__ import annotations

from pathlib import Path

from csd_nerf.cache import build_once, cache_root
from csd_nerf.guidance.components import IP2PComponents
from csd_nerf.guidance.presets import build_components

TINY_MODEL_NAME = "tiny"
TINY_NOTICE = (
    "the 'tiny' InstructPix2Pix has random weights: it exercises the pipeline but makes no meaningful edit; "
    "pass a real model (e.g. timbrooks/instruct-pix2pix, or a local copy of it) for a real edit"
)
_TINY_VERSION = "v1"


def tiny_ip2p_path() -> Path:
    """The folder of the miniature IP2P, built on first use."""
    return build_once(cache_root() / f"tiny-ip2p-{_TINY_VERSION}", "model_index.json", build_tiny_ip2p)


def tiny_components(seed: int = 0) -> IP2PComponents:
    """The miniature model's parts (random init): the ``tiny`` preset."""
    return build_components("tiny", seed=seed)


def build_tiny_ip2p(path: Path, seed: int = 0) -> Path:
    """Build the miniature IP2P and save it as a diffusers pipeline folder at ``path``."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    parts = tiny_components(seed)
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=parts.unet,
        scheduler=parts.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return Path(path)
