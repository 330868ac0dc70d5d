"""A video as a scene seen through one camera per frame: each frame is a view with its own latent.

The scene itself is :class:`~csd_nerf.media.latents.LatentSetScene`; this module adds the frame geometry.
Each step the editor draws ``num_particles`` frames, i.e. all frames when the video has no more than that.
"""

from __future__ import annotations

import torch

from csd_nerf.errors import SettingError
from csd_nerf.media.latents import LatentSetScene
from csd_nerf.sizes import fit_long_side


def working_size(width: int, height: int, long_side: int, latent_factor: int) -> tuple[int, int]:
    """``(width, height)`` with the long side ``long_side`` and the aspect kept, both sides multiples of the
    VAE's ``latent_factor``."""
    if long_side < latent_factor:
        raise SettingError(f"--size {long_side} px: use at least {latent_factor} (one latent pixel of the VAE)")
    return fit_long_side(width, height, long_side, latent_factor)


class VideoScene(LatentSetScene):
    """Views are frames: rows of one latent tensor ``[T, 4, h, w]`` initialised from the frames' sources.

    ``weight`` (``[T or 1, 1, h, w]``: a mask in latent space, one for every frame when it has one) multiplies each
    frame's latent gradient.
    """

    def __init__(
        self, source_latents: torch.Tensor, conditioning: torch.Tensor, weight: torch.Tensor | None = None
    ) -> None:
        if source_latents.ndim != 4:
            raise ValueError(f"video latents must be [T, C, h, w], got {tuple(source_latents.shape)}")
        super().__init__(source_latents, conditioning, weight)

    @property
    def num_frames(self) -> int:
        return self.num_views
