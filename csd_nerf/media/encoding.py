"""Encoding sources and decoding results of the 2D scenes, in chunks and with the VAE's tiling for large images."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

from csd_nerf.guidance.ip2p import IP2PGuidance

Tiling = Literal["auto", "on", "off"]
TILING_AUTO_PIXELS = 2048 * 1024
"""``auto`` tiles images with more pixels than this (2 MP: 4096x1024 is tiled, 1920x1080 and the reference's
1920x653 are not): beyond it a whole-image pass of SD's VAE needs many GiB (its mid-block attention is quadratic
in the latent pixels); below it one pass is exact, as the reference code does by default, and affordable."""


def use_tiling(tiling: Tiling, height: int, width: int) -> bool:
    """Whether an image of ``height x width`` pixels is encoded and decoded tile by tile."""
    if tiling not in ("auto", "on", "off"):
        raise ValueError(f"vae tiling {tiling!r}: use auto, on or off")
    return tiling == "on" or (tiling == "auto" and height * width > TILING_AUTO_PIXELS)


@contextmanager
def vae_tiling(guidance: IP2PGuidance, enabled: bool) -> Iterator[None]:
    """Turn diffusers' VAE tiling on or off for the duration, restoring the previous state.

    diffusers only tiles inputs larger than the VAE's ``sample_size`` (512 px for SD, 64 px for ``tiny``), with
    25 % overlap blended linearly.
    """
    vae = guidance.vae
    before = bool(getattr(vae, "use_tiling", False))
    if enabled:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
    try:
        yield
    finally:
        vae.enable_tiling() if before else vae.disable_tiling()


def encode_sources(
    guidance: IP2PGuidance, images: torch.Tensor, tiling: Tiling = "auto", chunk: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source latents and IP2P conditioning (on the guidance's device) of images ``[B, 3, H, W]`` in ``[0, 1]``.

    ``chunk`` images go through the VAE per call, so a long video does not need one huge batch.
    """
    height, width = images.shape[-2:]
    latents, conditioning = [], []
    with vae_tiling(guidance, use_tiling(tiling, height, width)):
        for part in images.split(max(1, chunk)):
            z, c = guidance.encode_source(part)
            latents.append(z)
            conditioning.append(c)
    return torch.cat(latents), torch.cat(conditioning)


@torch.no_grad()
def decode(guidance: IP2PGuidance, latents: torch.Tensor, tiling: Tiling = "auto", chunk: int = 8) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in ``[0, 1]`` (on the CPU) from latents ``[B, 4, h, w]``."""
    height, width = (side * guidance.latent_factor for side in latents.shape[-2:])
    images = []
    with vae_tiling(guidance, use_tiling(tiling, height, width)):
        for part in latents.detach().split(max(1, chunk)):
            images.append(guidance.decode_latents(part).cpu())
    return torch.cat(images)
