"""Reading and writing media: images, video files (PyAV) and folders of frames; the one reader of the package.

Everything here works on ``uint8`` arrays ``[H, W, 3]`` (one image) or ``[T, H, W, 3]`` (frames), RGB. 16-bit
images are scaled to 8 bits and float images are read as ``[0, 1]``; alpha is dropped. Errors a user can cause
(missing, unreadable or inconsistent input) raise :class:`MediaError` with a one-line message naming the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from csd_nerf.errors import UserError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".gif", ".mov", ".webm", ".mkv", ".avi", ".m4v")
VideoKind = Literal["file", "gif", "frames"]


class MediaError(UserError):
    """An input or output file problem the user can fix; the message is one line."""


def _check_exists(path: Path, what: str) -> None:
    if not path.exists():
        raise MediaError(f"{what} {path} does not exist")


def to_rgb8(array: np.ndarray, origin: str | Path = "image") -> np.ndarray:
    """Any decoded picture (grey, grey+alpha, RGB, RGBA; 8/16-bit integers or floats in [0, 1]) as ``uint8 [H, W, 3]``."""
    a = np.asarray(array)
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16 or (np.issubdtype(a.dtype, np.integer) and a.size and a.max() > 255):
        a = np.round(a.astype(np.float64) / 257.0).clip(0, 255).astype(np.uint8)  # 16-bit: 65535 -> 255
    elif np.issubdtype(a.dtype, np.floating):
        a = np.round(np.nan_to_num(a.astype(np.float64)).clip(0.0, 1.0) * 255.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        a = a.clip(0, 255).astype(np.uint8) if a.dtype != np.bool_ else a.astype(np.uint8) * 255
    else:
        raise MediaError(f"{origin}: unsupported pixel type {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise MediaError(f"{origin}: unsupported image shape {a.shape}; expected an RGB(A) or greyscale image")
    if a.shape[-1] in (1, 2):
        a = np.repeat(a[..., :1], 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])


def _pil_to_rgb8(image: Image.Image, origin: Path) -> np.ndarray:
    # 16-bit and float modes must be scaled by us: PIL's convert("RGB") clips them to white.
    if image.mode.startswith(("I", "F")):
        return to_rgb8(np.asarray(image), origin)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def read_image(path: str | Path, what: str = "input image") -> np.ndarray:
    """An image file as ``uint8 [H, W, 3]``, turned as its EXIF orientation says (phone photos)."""
    path = Path(path).expanduser()
    _check_exists(path, what)
    if path.is_dir():
        raise MediaError(f"{what} {path} is a folder: pass an image file ({', '.join(IMAGE_SUFFIXES)})")
    if path.stat().st_size == 0:
        raise MediaError(f"cannot read {what} {path}: the file is empty")
    try:
        with Image.open(path) as image:
            image.load()
            return _pil_to_rgb8(ImageOps.exif_transpose(image), path)
    except UnidentifiedImageError:
        pass  # e.g. float TIFFs, which PIL cannot open and imageio's tifffile can
    except (OSError, ValueError, SyntaxError) as exc:
        raise MediaError(f"cannot read {what} {path}: {first_line(exc)} (corrupt or truncated?)") from None
    try:
        import imageio.v3 as iio

        return to_rgb8(iio.imread(path), path)
    except MediaError:
        raise
    except Exception:  # imageio's plugins raise many types for what is not an image
        raise MediaError(
            f"cannot read {what} {path}: not a readable image (corrupt, truncated, or not one of "
            f"{', '.join(IMAGE_SUFFIXES)})"
        ) from None


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write ``uint8 [H, W, 3]`` as PNG or JPEG (chosen by the suffix)."""
    path = Path(path)
    kwargs = {"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    Image.fromarray(image).save(path, **kwargs)


@dataclass
class Video:
    """Frames of a video and how to write them back the way they came."""

    frames: np.ndarray
    """``uint8 [T, H, W, 3]``."""
    fps: Fraction
    kind: VideoKind
    frame_names: list[str] = field(default_factory=list)
    """For a folder of frames: the file names, in order."""

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def read_video(path: str | Path, folder_fps: float = 10.0) -> Video:
    """A video file (MP4, GIF, ...) or a folder of equally sized frames (sorted by name, numbers numerically)."""
    path = Path(path)
    _check_exists(path, "input video")
    if path.is_dir():
        return _read_frame_folder(path, folder_fps)
    return _read_video_file(path)


def frame_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, in natural order (``frame_2`` before ``frame_10``); others ignored."""
    files = (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return sorted(files, key=lambda p: _natural_key(p.name))


def _read_frame_folder(folder: Path, fps: float, what: str = "input folder") -> Video:
    files = frame_files(folder)
    if not files:
        raise MediaError(f"{what} {folder} holds no frames: expected image files ({', '.join(IMAGE_SUFFIXES)})")
    frames = [read_image(p, "frame") for p in files]
    _check_one_size(frames, [p.name for p in files], folder)
    if not (np.isfinite(fps) and fps > 0):
        raise MediaError(f"fps = {fps}: use a positive frame rate")
    return Video(np.stack(frames), Fraction(fps).limit_denominator(1001), "frames", [p.name for p in files])


def _check_one_size(frames: list[np.ndarray], names: list[str], origin: Path) -> None:
    for name, frame in zip(names, frames, strict=True):
        if frame.shape != frames[0].shape:
            raise MediaError(
                f"frames in {origin} differ in size: {name} is {frame.shape[1]}x{frame.shape[0]} but {names[0]} is "
                f"{frames[0].shape[1]}x{frames[0].shape[0]} (all frames must have one size)"
            )


def _read_video_file(path: Path) -> Video:
    import av

    if path.stat().st_size == 0:
        raise MediaError(f"cannot read video {path}: the file is empty")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path} has no video stream")
            stream = container.streams.video[0]
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"cannot read video {path}: {first_line(exc)} (corrupt, truncated or not a video?)") from None
    if not frames:
        raise MediaError(f"video {path} has no frames")
    fps = Fraction(rate) if rate else Fraction(10)
    kind: VideoKind = "gif" if path.suffix.lower() == ".gif" else "file"
    return Video(np.stack(frames), fps, kind)


def read_frames(path: str | Path, what: str = "input") -> np.ndarray:
    """A sequence as ``uint8 [F, H, W, 3]``: a folder of frames, a video file, or one image (one frame)."""
    path = Path(path).expanduser()
    _check_exists(path, what)
    if path.is_dir():
        return _read_frame_folder(path, 10.0, what).frames
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return read_video(path).frames
    if suffix in IMAGE_SUFFIXES:
        return read_image(path, what)[None]
    known = ", ".join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)
    raise MediaError(f"{what} {path}: unsupported file type {suffix!r}; pass a folder of frames or one of {known}")


def write_video(path: str | Path, video: Video) -> Path:
    """Write frames the way ``video.kind`` says: H.264 MP4, GIF, or a folder of PNG frames. Returns the path."""
    path = Path(path)
    if video.kind == "frames":
        path.mkdir(parents=True, exist_ok=False)
        names = video.frame_names or [f"{i:05d}.png" for i in range(len(video.frames))]
        for name, frame in zip(names, video.frames, strict=True):
            write_image(path / (Path(name).stem + ".png"), frame)
    elif video.kind == "gif":
        import imageio.v3 as iio

        # GIF stores durations in 10 ms units: fps that do not divide 100 come back slightly off.
        iio.imwrite(path, video.frames, extension=".gif", duration=1000.0 / float(video.fps), loop=0)
    else:
        _write_mp4(path, video.frames, video.fps)
    return path


def _write_mp4(path: Path, frames: np.ndarray, fps: Fraction) -> None:
    import av

    height, width = frames.shape[1:3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        # yuv420p plays everywhere but needs even sides; odd sizes keep full chroma instead of being cropped.
        stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        stream.options = {"crf": "16"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


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
