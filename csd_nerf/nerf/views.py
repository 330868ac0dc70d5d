"""The training views the edit works on: cameras and source images at the render resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datasets.base_dataset import InputDataset

__all__ = ["render_size", "TrainViews"]

LATENT_FACTOR = 8
"""The SD VAE downsamples by 8, so rendered sides must be multiples of 8."""


def render_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The image size capped at ``max_side`` on the long side (never upscaled), sides rounded to multiples of 8.

    ``max_side <= 0`` keeps the images' own resolution (still rounded to multiples of 8).
    """
    scale = 1.0 if max_side <= 0 else min(1.0, max_side / max(height, width))

    def snap(side: int) -> int:
        return max(LATENT_FACTOR, int(round(side * scale / LATENT_FACTOR)) * LATENT_FACTOR)

    return snap(height), snap(width)


class TrainViews:
    """Training cameras re-targeted to one render size, and their source images resized to it (cached).

    Args:
        dataset: the datamanager's training dataset (cameras in dataset order; index = camera index).
        max_side: render resolution cap on the long side (``<= 0``: the images' own size).
        blend: turns an RGBA image into RGB the way the model does (its background); RGB passes through.
    """

    def __init__(self, dataset: InputDataset, max_side: int, blend=None) -> None:
        self.dataset = dataset
        cameras = dataset.cameras
        heights, widths = cameras.height.flatten().tolist(), cameras.width.flatten().tolist()
        # Particles are stacked for the kernel, so every view shares one size: that of the first camera.
        self.height, self.width = render_size(int(heights[0]), int(widths[0]), max_side)
        self.cameras = _resized_cameras(cameras, self.height, self.width)
        self._blend = blend
        self._images: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.cameras)

    def camera(self, index: int) -> Cameras:
        """The camera of training view ``index`` at the render size (index kept for embeddings and poses)."""
        return self.cameras[index : index + 1]

    def source_images(self, indices: list[int]) -> torch.Tensor:
        """Source images ``[n, 3, h, w]`` in ``[0, 1]`` (float32, CPU) at the render size."""
        for i in indices:
            if i not in self._images:
                image = self.dataset.get_image_float32(i)
                if image.shape[-1] == 4 and self._blend is not None:
                    image = self._blend(image)
                image = image[..., :3].permute(2, 0, 1)[None]
                if tuple(image.shape[-2:]) != (self.height, self.width):
                    image = F.interpolate(image, (self.height, self.width), mode="bilinear", antialias=True)
                self._images[i] = image[0].clamp(0.0, 1.0)
        return torch.stack([self._images[i] for i in indices])


def _resized_cameras(cameras: Cameras, height: int, width: int) -> Cameras:
    """Cameras whose intrinsics map the same field of view onto ``height x width`` pixels."""
    sx = width / cameras.width.float()
    sy = height / cameras.height.float()
    return Cameras(
        camera_to_worlds=cameras.camera_to_worlds,
        fx=cameras.fx * sx,
        fy=cameras.fy * sy,
        cx=cameras.cx * sx,
        cy=cameras.cy * sy,
        width=torch.full_like(cameras.width, width),
        height=torch.full_like(cameras.height, height),
        distortion_params=cameras.distortion_params,
        camera_type=cameras.camera_type,
        times=cameras.times,
        metadata=cameras.metadata,
    )
