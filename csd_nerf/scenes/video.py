"""A video as a particle scene: one latent per frame, each frame a particle (DESIGN §2).

The scene itself is :class:`~csd_nerf.scenes.latent_set.LatentSetScene`; this module adds the frame geometry.
Each step the editor draws ``num_particles`` frames, i.e. all frames when the video has no more than that.
"""

from __future__ import annotations

import torch

from csd_nerf.scenes.latent_set import LatentSetScene

DEFAULT_LONG_SIDE = 512
"""IP2P's training resolution; the reference resizes every frame to 512x512 regardless of aspect."""


def working_size(width: int, height: int, long_side: int = DEFAULT_LONG_SIDE) -> tuple[int, int]:
    """``(width, height)`` with the long side ``long_side`` and the aspect kept, both sides multiples of 8 (>= 8)."""
    if width < 1 or height < 1:
        raise ValueError(f"frame size {width}x{height} is empty")
    if long_side < 8:
        raise ValueError(f"working size {long_side} px: use at least 8 (one latent pixel)")
    scale = long_side / max(width, height)
    return tuple(max(8, round(side * scale / 8) * 8) for side in (width, height))  # type: ignore[return-value]


class VideoScene(LatentSetScene):
    """Particles are frames: rows of one latent tensor ``[T, 4, h, w]`` initialised from the frames' sources."""

    def __init__(self, source_latents: torch.Tensor, conditioning: torch.Tensor) -> None:
        if source_latents.ndim != 4:
            raise ValueError(f"video latents must be [T, C, h, w], got {tuple(source_latents.shape)}")
        super().__init__(source_latents, conditioning)

    @property
    def num_frames(self) -> int:
        return self.num_particles

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.parameter]
