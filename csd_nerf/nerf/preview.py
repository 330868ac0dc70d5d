"""Preview strips of the edit: source | current render | what the prior asks for (its one-step estimate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["preview_strip", "save_preview", "project_points", "draw_segments"]

OUTLINE = (1.0, 0.55, 0.0)
"""The region's colour in previews (the viewer draws it in the same orange)."""


def preview_strip(
    source: torch.Tensor,
    render: torch.Tensor,
    estimate: torch.Tensor,
    gap: int = 2,
    outline: list[tuple[tuple[float, float], tuple[float, float]]] | None = None,
    min_height: int = 128,
) -> torch.Tensor:
    """Three ``[3, h, w]`` images in ``[0, 1]`` side by side with white gaps, as ``[H, 3W + 2 gap, 3]``, each
    enlarged (nearest) to at least ``min_height`` pixels high and with ``outline`` (pixel segments at the images'
    own size, e.g. the edit region's edges) drawn over it."""
    factor = max(1, -(-min_height // source.shape[-2]))
    images = []
    for image in (source, render, estimate):
        image = image.cpu().float().clamp(0, 1)
        if factor > 1:
            image = image.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
        if outline:
            scaled = [((a[0] * factor, a[1] * factor), (b[0] * factor, b[1] * factor)) for a, b in outline]
            image = draw_segments(image, scaled, OUTLINE)
        images.append(image)
    white = torch.ones(3, images[0].shape[-2], gap)
    return torch.cat([images[0], white, images[1], white, images[2]], dim=-1).permute(1, 2, 0)


def save_preview(strip: torch.Tensor, path: Path) -> Path:
    """Write ``strip`` ``[h, w, 3]`` in ``[0, 1]`` as a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((strip.numpy() * 255 + 0.5).astype(np.uint8)).save(path)
    return path


def project_points(points: torch.Tensor, camera_to_world: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates ``[n, 2]`` (x right, y down) and depth ``[n]`` in front of the camera, as ``[n, 3]``.

    nerfstudio's cameras look down their -z axis with +y up (OpenGL): a point at camera coordinates ``(X, Y, Z)``
    lands at ``(cx + fx X / -Z, cy - fy Y / -Z)``, depth ``-Z``.
    """
    rotation, origin = camera_to_world[:3, :3].float(), camera_to_world[:3, 3].float()
    local = (points.float() - origin) @ rotation
    depth = -local[:, 2]
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    safe = depth.clamp(min=1e-6)
    return torch.stack([cx + fx * local[:, 0] / safe, cy - fy * local[:, 1] / safe, depth], dim=-1)


def draw_segments(
    image: torch.Tensor, segments: list[tuple[tuple[float, float], tuple[float, float]]], colour: tuple[float, ...]
) -> torch.Tensor:
    """``image`` ``[3, h, w]`` with 1-px lines between pixel positions (PIL clips what leaves the image)."""
    from PIL import ImageDraw

    picture = Image.fromarray((image.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    pen = ImageDraw.Draw(picture)
    for a, b in segments:
        pen.line([a, b], fill=tuple(int(c * 255) for c in colour), width=1)
    return torch.from_numpy(np.asarray(picture)).permute(2, 0, 1).float() / 255.0
