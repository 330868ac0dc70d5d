"""The parts of InstructPix2Pix that score distillation needs, however they were obtained."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["IP2PComponents"]


@dataclass
class IP2PComponents:
    """UNet, VAE, text encoder, tokenizer and noise schedule (no safety checker, no sampler loop)."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    source: str
    """Where they came from: a hub id, a folder, or ``random:<preset>``."""
