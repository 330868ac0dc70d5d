"""Reading an image sequence: a folder of frames, a video file (mp4, gif, ...) or a single image."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from csd_nerf.eval.errors import EvalInputError

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "load_frames", "list_frame_files", "check_pair", "resize_frames"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".gif", ".avi", ".mov", ".webm", ".mkv", ".m4v"})


def _natural_key(path: Path) -> list[object]:
    # frame_2.png must sort before frame_10.png
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", path.name)]


def list_frame_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, in natural order (other files are ignored)."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=_natural_key)


def _to_rgb_uint8(frame: np.ndarray, origin: str) -> np.ndarray:
    """Any decoded frame (gray, gray+alpha, RGB, RGBA; uint8/uint16/float) as ``[H, W, 3]`` uint8."""
    a = np.asarray(frame)
    if a.dtype == np.uint16:
        a = (a.astype(np.float64) / 257.0).round()
    elif np.issubdtype(a.dtype, np.floating):
        # float images are assumed in [0, 1], as imageio returns them for float TIFFs
        a = np.clip(a, 0.0, 1.0) * 255.0
    a = np.clip(a, 0, 255).astype(np.uint8) if a.dtype != np.uint8 else a
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise EvalInputError(f"{origin}: unsupported frame shape {a.shape}; expected an RGB(A) or grayscale image")
    if a.shape[-1] in (1, 2):
        a = np.repeat(a[..., :1], 3, axis=-1)
    # The alpha channel is dropped, not composited: edits are evaluated on the colour the editor wrote.
    return np.ascontiguousarray(a[..., :3])


def _read_image(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    try:
        return _to_rgb_uint8(
            iio.imread(path, index=0) if path.suffix.lower() in VIDEO_SUFFIXES else iio.imread(path), str(path)
        )
    except EvalInputError:
        raise
    except Exception as err:  # imageio raises many types for unreadable files
        raise EvalInputError(f"cannot read image {path}: {type(err).__name__}: {err}") from err


def _read_video(path: Path) -> list[np.ndarray]:
    import imageio.v3 as iio

    try:
        return [_to_rgb_uint8(f, str(path)) for f in iio.imiter(path)]
    except EvalInputError:
        raise
    except Exception as err:
        raise EvalInputError(f"cannot read video {path}: {type(err).__name__}: {err}") from err


def load_frames(path: str | Path, what: str = "input") -> np.ndarray:
    """Load a sequence as ``[F, H, W, 3]`` uint8.

    Args:
        path: a folder of frames (natural order), a video (``VIDEO_SUFFIXES``) or a single image.
        what: the name used in error messages (e.g. ``"--source"``).

    Raises:
        EvalInputError: missing path, no frames, unreadable file, or frames of different sizes.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise EvalInputError(f"{what}: path does not exist: {p}")
    if p.is_dir():
        files = list_frame_files(p)
        if not files:
            exts = ", ".join(sorted(IMAGE_SUFFIXES))
            raise EvalInputError(f"{what}: no image files ({exts}) in folder {p}")
        frames = [_read_image(f) for f in files]
        names = [f.name for f in files]
    elif p.suffix.lower() in VIDEO_SUFFIXES:
        frames = _read_video(p)
        names = [f"{p.name}[{i}]" for i in range(len(frames))]
    elif p.suffix.lower() in IMAGE_SUFFIXES:
        frames, names = [_read_image(p)], [p.name]
    else:
        known = ", ".join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))
        raise EvalInputError(
            f"{what}: unsupported file type '{p.suffix}' for {p}; use a folder of frames or one of {known}"
        )
    if not frames:
        raise EvalInputError(f"{what}: no frames could be decoded from {p}")
    first = frames[0].shape
    for name, f in zip(names, frames, strict=True):
        if f.shape != first:
            raise EvalInputError(
                f"{what}: frame {name} is {f.shape[1]}x{f.shape[0]} but {names[0]} is {first[1]}x{first[0]} (all frames must share one size)"
            )
    return np.stack(frames)


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
