"""The training cameras a 3D scene is seen through during the edit, and their source images, at the render size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datasets.base_dataset import InputDataset

from csd_nerf.sizes import fit_long_side

__all__ = ["render_size", "TrainViews"]


def render_size(height: int, width: int, max_side: int, latent_factor: int) -> tuple[int, int]:
    """The image size capped at ``max_side`` on the long side (never upscaled), sides snapped to multiples of
    the VAE's ``latent_factor``; ``max_side <= 0`` keeps the images' own resolution (snapped)."""
    new_width, new_height = fit_long_side(width, height, max_side, latent_factor, upscale=False)
    return new_height, new_width


class TrainViews:
    """Training cameras re-targeted to one render size, and their source images resized to it (cached).

    Args:
        dataset: the datamanager's training dataset (cameras in dataset order; index = camera index).
        max_side: render resolution cap on the long side (``<= 0``: the images' own size).
        latent_factor: the VAE's downscale factor; rendered sides are multiples of it.
        blend: turns an RGBA image into RGB the way the model does (its background); RGB passes through.
    """

    def __init__(self, dataset: InputDataset, max_side: int, latent_factor: int, blend=None) -> None:
        self.dataset = dataset
        cameras = dataset.cameras
        heights, widths = cameras.height.flatten().tolist(), cameras.width.flatten().tolist()
        # Views are stacked for the kernel, so every view shares one size: that of the first camera.
        self.height, self.width = render_size(int(heights[0]), int(widths[0]), max_side, latent_factor)
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
