"""Preview strips of the edit: source | current render | what the prior asks for (its one-step estimate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["preview_strip", "save_preview"]


def preview_strip(source: torch.Tensor, render: torch.Tensor, estimate: torch.Tensor, gap: int = 2) -> torch.Tensor:
    """Three ``[3, h, w]`` images in ``[0, 1]`` side by side with white gaps, as ``[h, 3w + 2 gap, 3]``."""
    h = source.shape[-2]
    white = torch.ones(3, h, gap)
    parts = [source.cpu(), white, render.cpu(), white, estimate.cpu()]
    return torch.cat([p.float().clamp(0, 1) for p in parts], dim=-1).permute(1, 2, 0)


def save_preview(strip: torch.Tensor, path: Path, min_height: int = 128) -> Path:
    """Write ``strip`` ``[h, w, 3]`` as a PNG, upscaled (nearest) to at least ``min_height`` pixels high."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray((strip.numpy() * 255 + 0.5).astype(np.uint8))
    if image.height < min_height:
        factor = -(-min_height // image.height)
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    image.save(path)
    return path
