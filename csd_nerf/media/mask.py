"""Masks for local 2D edits: white = edit, black = keep, grey = blend.

A mask is a picture of the input's own size: one image for a panorama; for a video a video file, a folder of
frames (one per input frame) or one image for every frame. It is read by the package's own readers (upright,
every frame of a GIF, 16-bit scaled to 8) and its **luminance** is the weight, in 256 levels: Rec. 601 luma
``(299 R + 587 G + 114 B + 500) // 1000`` (PIL's ``L``), ``w = level / 255``. Its transparency is ignored, unless
its colour is uniform and it has an alpha channel (strokes painted on a transparent layer): then the alpha is the
mask.

It is used twice, as a weight on the scene's pixels (``docs/DESIGN.md``: the editor does not change):

- **in latent space**, on the gradient: :func:`latent_weight` resizes it to the working size (bilinear,
  antialiased) and average-pools it by the VAE's factor, so a latent pixel's weight is the mean of its
  ``factor x factor`` pixels; the scene multiplies its parameter's gradient by it (a panorama's canvas gradient,
  a video's per-frame latent gradient). Latents where the weight is 0 never move.
- **in pixels**, on the result: :func:`composite` blends the decoded edit with the source at the input's own size
  in integer arithmetic, ``(level * edit + (255 - level) * source + 127) // 255``: exactly the source where the
  mask is black (the VAE decoder spreads a latent's change over a few pixels across the mask's border: the
  composite takes them back), exactly the edit where it is white.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from csd_nerf.media.errors import MediaError
from csd_nerf.media.images import IMAGE_SUFFIXES, MAX_MEGAPIXELS, read_image_alpha
from csd_nerf.media.video_files import VIDEO_SUFFIXES, read_frame_folder, read_video

__all__ = [
    "Mask",
    "MaskError",
    "luminance",
    "mask_levels",
    "read_mask",
    "check_mask",
    "resize_weight",
    "latent_weight",
    "resize_levels",
    "composite",
]


class MaskError(MediaError):
    """A ``--mask`` that cannot be used (unreadable, another size or frame count, all black); one line."""


@dataclass
class Mask:
    """A mask as 8-bit weight levels ``uint8 [F, H, W]`` (0 keep .. 255 edit); ``F`` is 1 for one image."""

    levels: np.ndarray
    path: Path
    signal: str = "luminance"
    """Where the levels came from: ``luminance``, or ``alpha`` (uniform colour with transparency)."""

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return int(self.levels.shape[2]), int(self.levels.shape[1])

    @property
    def frames(self) -> int:
        return int(self.levels.shape[0])

    @property
    def coverage(self) -> float:
        """The fraction of the mask's pixels that are edited at all (level above 0)."""
        return float(np.count_nonzero(self.levels)) / self.levels.size

    def info(self) -> dict:
        """What run.json records of it."""
        return {
            "path": str(self.path.absolute()),
            "coverage": round(self.coverage, 6),
            "frames": self.frames,
            "from": self.signal,
        }


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of ``uint8 [..., 3]`` as ``uint8 [...]``, rounded as PIL's ``convert("L")``: black is 0 and
    white 255 exactly, a grey ``(g, g, g)`` is ``g``."""
    weights = np.array([299, 587, 114], np.uint32)
    return ((rgb.astype(np.uint32) @ weights + 500) // 1000).astype(np.uint8)


def mask_levels(rgb: np.ndarray, alpha: np.ndarray | None) -> tuple[np.ndarray, str]:
    """The weight levels of a mask's pixels ``uint8 [..., 3]`` and its alpha ``uint8 [...]`` (or ``None``): the
    luminance, or the alpha when the colour carries nothing (one luminance everywhere) and the alpha does."""
    levels = luminance(rgb)
    if alpha is not None and levels.min() == levels.max() and alpha.min() != alpha.max():
        return np.ascontiguousarray(alpha), "alpha"
    return levels, "luminance"


def _read(path: Path, video: bool, max_megapixels: float) -> tuple[np.ndarray, np.ndarray | None]:
    """The mask's pixels ``uint8 [F, H, W, 3]`` and alpha ``[F, H, W]`` (or ``None``)."""
    kinds = "an image, a video or a folder of frames" if video else "an image"
    if path.is_dir():
        if not video:
            raise MaskError(f"--mask {path} is a folder: a panorama's mask is one image ({', '.join(IMAGE_SUFFIXES)})")
        frames = read_frame_folder(path, what="--mask folder", max_megapixels=max_megapixels)
        return frames.frames, frames.alpha
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        rgb, alpha = read_image_alpha(path, "--mask", max_megapixels)
        return rgb[None], None if alpha is None else alpha[None]
    if suffix in VIDEO_SUFFIXES and video:
        clip = read_video(path, max_megapixels=max_megapixels)
        return clip.frames, clip.alpha
    raise MaskError(f"--mask {path}: unsupported file type {suffix!r}; use {kinds}")


def read_mask(path: str | Path, video: bool = False, max_megapixels: float = MAX_MEGAPIXELS) -> Mask:
    """Read a mask: one image, or (``video``) also a video file or a folder of frames. Unreadable: one line."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MaskError(f"--mask {path} does not exist")
    try:
        rgb, alpha = _read(path, video, max_megapixels)
    except MaskError:
        raise
    except MediaError as exc:  # the readers name the file; say that it is the mask
        message = str(exc)
        raise MaskError(
            message if message.startswith(("--mask", "cannot read --mask")) else f"--mask: {message}"
        ) from None
    levels, signal = mask_levels(rgb, alpha)
    return Mask(levels, path, signal)


def check_mask(mask: Mask, size: tuple[int, int], frames: int | None = None) -> None:
    """Refuse, in one line, a mask of another size than the input's ``(width, height)``, another frame count
    than ``frames`` (a video's; one image is fine), or one that is black everywhere."""
    if mask.size != tuple(size):
        what = "the input's frames are" if frames is not None else "the input is"
        raise MaskError(
            f"--mask {mask.path} is {mask.size[0]}x{mask.size[1]} but {what} {size[0]}x{size[1]}: "
            "make the mask at the input's own size (white = edit, black = keep)"
        )
    if frames is not None and mask.frames not in (1, frames):
        raise MaskError(
            f"--mask {mask.path} has {mask.frames} frames but the input has {frames}: give one mask frame per "
            "input frame, or one image for every frame"
        )
    if not mask.levels.any():
        raise MaskError(
            f"--mask {mask.path} is all black: nothing would be edited (white marks what to edit, black what to keep)"
        )


def resize_weight(levels: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Levels ``uint8 [F, H, W]`` as weights ``float32 [F, 1, h, w]`` in [0, 1] at ``size = (w, h)``: bilinear,
    antialiased when shrinking (an area-like average), so 0 stays 0 away from the mask's border."""
    weight = torch.from_numpy(np.ascontiguousarray(levels)).float().div_(255.0)[:, None]
    if (weight.shape[-1], weight.shape[-2]) != tuple(size):
        weight = F.interpolate(weight, size=(size[1], size[0]), mode="bilinear", antialias=True, align_corners=False)
        weight = weight.clamp_(0.0, 1.0)
    return weight


def latent_weight(levels: np.ndarray, working_size: tuple[int, int], factor: int) -> torch.Tensor:
    """The latent-space weight ``float32 [F, 1, h / factor, w / factor]``: the mask at the working size
    ``(w, h)``, average-pooled by the VAE's ``factor`` (a latent pixel weighs the mean of its pixels)."""
    width, height = working_size
    if width % factor or height % factor:
        raise ValueError(f"working size {width}x{height} is not a multiple of the VAE's factor {factor}")
    return F.avg_pool2d(resize_weight(levels, working_size), factor)


def resize_levels(levels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Levels ``uint8 [F, H, W]`` at ``size = (w, h)`` (for compositing a working-size preview)."""
    if (levels.shape[2], levels.shape[1]) == tuple(size):
        return levels
    return (resize_weight(levels, size)[:, 0] * 255.0).round_().to(torch.uint8).numpy()


def composite(source: np.ndarray, edited: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """``(level * edited + (255 - level) * source + 127) // 255`` per pixel, in integers: ``source`` exactly where
    the level is 0, ``edited`` exactly where it is 255, rounded blends between.

    ``source`` and ``edited`` are ``uint8 [H, W, 3]`` or ``[T, H, W, 3]``; ``levels`` ``uint8 [H, W]``, or
    ``[F, H, W]`` with ``F`` 1 (the same for every frame) or ``T``.
    """
    if source.shape != edited.shape:
        raise ValueError(f"source {source.shape} and edit {edited.shape} differ in size")
    if source.ndim == 3:
        return composite(source[None], edited[None], levels.reshape(1, *levels.shape[-2:]))[0]
    if levels.ndim == 2:
        levels = levels[None]
    if levels.shape[1:] != source.shape[1:3] or levels.shape[0] not in (1, source.shape[0]):
        raise ValueError(f"mask {levels.shape} does not fit frames {source.shape}")
    out = np.empty_like(source)
    for index in range(source.shape[0]):  # frame by frame: the uint16 arithmetic stays one frame large
        level = levels[index if levels.shape[0] > 1 else 0][..., None].astype(np.uint16)
        blend = level * edited[index] + (255 - level) * source[index] + 127  # at most 255 * 255 + 127
        out[index] = blend // 255
    return out
