"""Pairing an edited sequence with its source: same frame count, same size (or resampled to it).

Reading the sequences is :func:`csd_nerf.media.io.read_frames`, the package's one reader.
"""

from __future__ import annotations

import numpy as np

from csd_nerf.eval.errors import EvalInputError

__all__ = ["check_pair", "resize_frames"]


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of ``[F, H, W, 3]`` uint8 frames to ``height x width``."""
    from PIL import Image

    if frames.shape[1:3] == (height, width):
        return frames
    out = [np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BICUBIC)) for f in frames]
    return np.stack(out)


def check_pair(source: np.ndarray, edited: np.ndarray, resize_hint: bool = True) -> None:
    """Raise ``EvalInputError`` unless both sequences have the same frame count and frame size."""
    if source.shape[0] != edited.shape[0]:
        raise EvalInputError(
            f"--source has {source.shape[0]} frame(s) but --edited has {edited.shape[0]}: "
            "the sequences are compared frame by frame and must have the same length"
        )
    if source.shape[1:3] != edited.shape[1:3]:
        hint = " (pass --resize-edited to resample the edited frames to the source size)" if resize_hint else ""
        raise EvalInputError(
            f"--source frames are {source.shape[2]}x{source.shape[1]} but --edited frames are "
            f"{edited.shape[2]}x{edited.shape[1]}{hint}"
        )
