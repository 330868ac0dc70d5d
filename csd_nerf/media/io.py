"""Reading and writing media, the package's one reader: images, video files and folders of frames.

Everything here works on ``uint8`` arrays ``[H, W, 3]`` (one image) or ``[T, H, W, 3]`` (frames), RGB. Single
images are :mod:`~csd_nerf.media.images` (alpha kept apart, a size limit), videos and frame folders
:mod:`~csd_nerf.media.video_files` (upright, GIF timing, sound); this module adds reading any of them as a
sequence (``csd-eval``) and the array conversions. Errors a user can cause (a missing, unreadable or
inconsistent input, a failed write) raise :class:`MediaError` with a one-line message naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from csd_nerf.media.errors import MediaError
from csd_nerf.media.images import (
    IMAGE_SUFFIXES,
    MAX_MEGAPIXELS,
    read_image,
    read_image_alpha,
    to_rgb8,
    write_image,
)
from csd_nerf.media.video_files import VIDEO_SUFFIXES, Video, frame_files, read_frame_folder, read_video, write_video

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "MAX_MEGAPIXELS",
    "MediaError",
    "Video",
    "read_image",
    "read_image_alpha",
    "write_image",
    "to_rgb8",
    "frame_files",
    "read_video",
    "write_video",
    "read_frames",
    "resize",
    "to_tensor",
    "to_uint8",
    "comparison_image",
    "frame_grid",
]


def read_frames(path: str | Path, what: str = "input", max_megapixels: float = MAX_MEGAPIXELS) -> np.ndarray:
    """A sequence as ``uint8 [F, H, W, 3]``: a folder of frames, a video file, or one image (one frame)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MediaError(f"{what} {path} does not exist")
    if path.is_dir():
        return read_frame_folder(path, 10.0, what, max_megapixels).frames
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return read_video(path, max_megapixels=max_megapixels).frames
    if suffix in IMAGE_SUFFIXES:
        return read_image(path, what, max_megapixels)[None]
    known = ", ".join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)
    raise MediaError(f"{what} {path}: unsupported file type {suffix!r}; pass a folder of frames or one of {known}")


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """LANCZOS-resize ``uint8 [H, W, 3]`` to ``size = (width, height)``; a no-op when the size already matches."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """``uint8 [..., H, W, 3]`` -> float ``[B, 3, H, W]`` in ``[0, 1]``."""
    array = images if images.ndim == 4 else images[None]
    return (
        torch.from_numpy(np.array(array, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255.0
    )  # copy: PIL arrays are read-only


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float ``[B, 3, H, W]`` in ``[0, 1]`` -> ``uint8 [B, H, W, 3]``."""
    array = (images.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return array.permute(0, 2, 3, 1).cpu().numpy()


def comparison_image(source: np.ndarray, edited: np.ndarray, gap: int = 8) -> np.ndarray:
    """Source and edit next to each other with a white gap: stacked for wide images, side by side otherwise."""
    if source.shape != edited.shape:
        raise ValueError(f"source {source.shape} and edit {edited.shape} differ in size")
    wide = source.shape[1] > source.shape[0]
    axis = 0 if wide else 1
    spacer_shape = list(source.shape)
    spacer_shape[axis] = gap
    return np.concatenate([source, np.full(spacer_shape, 255, np.uint8), edited], axis=axis)


def frame_grid(frames: np.ndarray, count: int = 8, gap: int = 4) -> np.ndarray:
    """Up to ``count`` evenly spaced frames in one row, for comparisons and intermediate results."""
    picks = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))
    height = frames.shape[1]
    spacer = np.full((height, gap, 3), 255, np.uint8)
    tiles: list[np.ndarray] = []
    for index in picks:
        tiles += [frames[index], spacer]
    return np.concatenate(tiles[:-1], axis=1)
