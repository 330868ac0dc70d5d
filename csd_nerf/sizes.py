"""Image sizes the VAE accepts: sides snapped to multiples of its downscale factor.

The factor itself is read from the loaded VAE's config (:attr:`csd_nerf.guidance.IP2PGuidance.latent_factor`,
as diffusers computes ``vae_scale_factor``); this module only does the arithmetic.
"""

from __future__ import annotations

__all__ = ["snap", "fit_long_side"]


def snap(side: float, multiple: int) -> int:
    """The multiple of ``multiple`` nearest to ``side``, at least one ``multiple``."""
    if multiple < 1:
        raise ValueError(f"multiple must be positive, got {multiple}")
    return max(multiple, int(round(side / multiple)) * multiple)


def fit_long_side(width: int, height: int, long_side: int, multiple: int, upscale: bool = True) -> tuple[int, int]:
    """``(width, height)`` scaled so the long side is ``long_side``, aspect kept, both sides snapped.

    ``long_side <= 0`` keeps the size (snapped); ``upscale=False`` never enlarges.
    """
    if width < 1 or height < 1:
        raise ValueError(f"size {width}x{height} is empty")
    scale = 1.0 if long_side <= 0 else long_side / max(width, height)
    if not upscale:
        scale = min(scale, 1.0)
    return snap(width * scale, multiple), snap(height * scale, multiple)
