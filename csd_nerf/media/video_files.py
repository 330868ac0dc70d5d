"""Videos as frames and back: video files through PyAV, GIFs with their timing, and folders of frames.

A video is read upright (a phone's rotation metadata is applied to the pixels) and written back the way it
came: an MP4 for any video file (with the input's sound, :mod:`csd_nerf.media.audio`), a GIF with its own frame
durations and transparency, or a folder of PNG frames named after the input's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np

from csd_nerf.errors import first_line
from csd_nerf.media.audio import AudioTrack, find_audio
from csd_nerf.media.errors import MediaError, writing
from csd_nerf.media.images import IMAGE_SUFFIXES, MAX_MEGAPIXELS, check_pixels, read_image_alpha, write_image

__all__ = ["VIDEO_SUFFIXES", "Video", "frame_files", "read_frame_folder", "read_video", "write_video"]

VIDEO_SUFFIXES = (".mp4", ".gif", ".mov", ".webm", ".mkv", ".avi", ".m4v")
VideoKind = Literal["file", "gif", "frames"]
_ALPHA_FORMATS = re.compile(r"^(yuva|rgba|bgra|argb|abgr|gbrap|ya\d|pal8)")
"""Pixel formats that may carry transparency (GIFs decode as ``bgra``)."""


@dataclass
class Video:
    """Frames of a video and how to write them back the way they came."""

    frames: np.ndarray
    """``uint8 [T, H, W, 3]``, upright."""
    fps: Fraction
    kind: VideoKind
    frame_names: list[str] = field(default_factory=list)
    """For a folder of frames: the file names, in order."""
    durations_ms: list[int] | None = None
    """For a GIF: each frame's display time (GIFs need not have one frame rate)."""
    alpha: np.ndarray | None = None
    """``uint8 [T, H, W]`` transparency of a GIF or of a folder of frames, ``None`` when opaque."""
    audio: AudioTrack | None = None
    """The input's sound, put back into an edited MP4."""
    rotation: int = 0
    """Degrees (counterclockwise) the input's rotation metadata turned the frames by on reading."""
    notices: list[str] = field(default_factory=list)
    """What reading could not keep, for the user (e.g. transparency in a format written without it)."""

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def frame_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, in natural order (``frame_2`` before ``frame_10``); others ignored."""
    files = (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return sorted(files, key=lambda p: _natural_key(p.name))


def _check_one_size(frames: list[np.ndarray], names: list[str], origin: Path) -> None:
    for name, frame in zip(names, frames, strict=True):
        if frame.shape != frames[0].shape:
            raise MediaError(
                f"frames in {origin} differ in size: {name} is {frame.shape[1]}x{frame.shape[0]} but {names[0]} is "
                f"{frames[0].shape[1]}x{frames[0].shape[0]} (all frames must have one size)"
            )


def _check_unique_stems(names: list[str], folder: Path) -> None:
    """Edited frames are written as ``<stem>.png``: two inputs with one stem would write one file."""
    seen: dict[str, str] = {}
    for name in names:
        stem = Path(name).stem.casefold()
        if stem in seen:
            raise MediaError(
                f"frames {seen[stem]} and {name} in {folder} share the name {Path(name).stem!r}: the edited frames are "
                "written as <name>.png, so one would overwrite the other; rename or remove one of them"
            )
        seen[stem] = name


def read_frame_folder(
    folder: Path, fps: float = 10.0, what: str = "input folder", max_megapixels: float = MAX_MEGAPIXELS
) -> Video:
    """A folder of equally sized frames (sorted by name, numbers numerically), with their transparency."""
    files = frame_files(folder)
    if not files:
        raise MediaError(f"{what} {folder} holds no frames: expected image files ({', '.join(IMAGE_SUFFIXES)})")
    names = [p.name for p in files]
    pictures = [read_image_alpha(p, "frame", max_megapixels) for p in files]
    frames = [rgb for rgb, _ in pictures]
    _check_one_size(frames, names, folder)
    if not (np.isfinite(fps) and fps > 0):
        raise MediaError(f"fps = {fps}: use a positive frame rate")
    alpha = None
    if any(a is not None for _, a in pictures):
        opaque = np.full(frames[0].shape[:2], 255, np.uint8)
        alpha = np.stack([opaque if a is None else a for _, a in pictures])
    return Video(np.stack(frames), Fraction(fps).limit_denominator(1001), "frames", names, alpha=alpha)


def _read_gif(path: Path, max_megapixels: float) -> Video:
    """A GIF with PIL, which reads every frame composited, its own display time and its transparency (ffmpeg's
    demuxer merges frames that carry no delay)."""
    from PIL import Image, ImageSequence

    try:
        with Image.open(path) as gif:
            check_pixels(*gif.size, max_megapixels, f"input video {path}")
            pictures, durations = [], []
            for frame in ImageSequence.Iterator(gif):
                pictures.append(np.asarray(frame.convert("RGBA")))
                durations.append(int(frame.info.get("duration", 0) or 0))
    except MediaError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise MediaError(f"cannot read video {path}: {first_line(exc)} (corrupt, truncated or not a GIF?)") from None
    array = np.stack(pictures)
    alpha = array[..., 3] if array[..., 3].min() < 255 else None
    total = sum(durations)
    fps = Fraction(1000 * len(durations), total) if total else Fraction(10)  # no delays: browsers show 10 fps
    return Video(np.ascontiguousarray(array[..., :3]), fps, "gif", durations_ms=durations, alpha=alpha)


def _read_video_file(path: Path, max_megapixels: float) -> Video:
    import av

    if path.stat().st_size == 0:
        raise MediaError(f"cannot read video {path}: the file is empty")
    if path.suffix.lower() == ".gif":
        return _read_gif(path, max_megapixels)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path} has no video stream")
            stream = container.streams.video[0]
            context = stream.codec_context
            check_pixels(context.width, context.height, max_megapixels, f"input video {path}")
            decode_as = "rgba" if _ALPHA_FORMATS.match(str(context.pix_fmt or "")) else "rgb24"
            frames, rotation, start = [], 0, None
            for frame in container.decode(stream):
                if start is None:
                    start, rotation = frame.time or 0.0, int(getattr(frame, "rotation", 0) or 0)
                # The display matrix turns the stored picture counterclockwise by ``rotation`` degrees.
                frames.append(np.rot90(frame.to_ndarray(format=decode_as), k=round(rotation / 90) % 4))
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            audio = find_audio(container, path, start or 0.0)
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"cannot read video {path}: {first_line(exc)} (corrupt, truncated or not a video?)") from None
    if not frames:
        raise MediaError(f"video {path} has no frames")
    array = np.stack(frames)
    alpha = array[..., 3] if array.shape[-1] == 4 and array[..., 3].min() < 255 else None
    video = Video(np.ascontiguousarray(array[..., :3]), Fraction(rate) if rate else Fraction(10), "file")
    video.audio, video.rotation = audio, rotation % 360
    if alpha is not None:
        video.notices.append(
            f"the transparency of {path.name} is dropped: the edit is written as an MP4, without alpha"
        )
    return video


def read_video(path: str | Path, folder_fps: float = 10.0, max_megapixels: float = MAX_MEGAPIXELS) -> Video:
    """A video file (MP4, GIF, ...) or a folder of equally sized frames, upright, with what writing it back needs."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MediaError(f"input video {path} does not exist")
    if path.is_dir():
        video = read_frame_folder(path, folder_fps, max_megapixels=max_megapixels)
        _check_unique_stems(video.frame_names, path)
        return video
    return _read_video_file(path, max_megapixels)


def gif_durations(video: Video) -> list[int]:
    """Each frame's display time in ms (its own, or from the frame rate), rounded to the 10 ms a GIF can store."""
    if video.durations_ms is not None and len(video.durations_ms) == len(video.frames):
        durations = video.durations_ms
    else:
        durations = [float(Fraction(1000) / video.fps)] * len(video.frames)
    return [round(ms / 10) * 10 for ms in durations]


def _write_gif(path: Path, video: Video) -> None:
    from PIL import Image

    mode = "RGBA" if video.alpha is not None else "RGB"
    pictures = video.frames if video.alpha is None else np.concatenate([video.frames, video.alpha[..., None]], -1)
    images = [Image.fromarray(np.ascontiguousarray(p), mode) for p in pictures]
    # disposal 2: each frame replaces the last one whole, as the frames were decoded.
    images[0].save(path, save_all=True, append_images=images[1:], duration=gif_durations(video), loop=0, disposal=2)


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


def write_video(path: str | Path, video: Video) -> Path:
    """Write frames the way ``video.kind`` says: H.264 MP4 (pictures only; :func:`~csd_nerf.media.audio.add_audio`
    puts the sound back), GIF, or a folder of PNG frames. A failed write names its file. Returns the path."""
    path = Path(path)
    if video.kind == "frames":
        with writing(path):
            path.mkdir(parents=True, exist_ok=False)
        names = video.frame_names or [f"{i:05d}.png" for i in range(len(video.frames))]
        for i, (name, frame) in enumerate(zip(names, video.frames, strict=True)):
            alpha = None if video.alpha is None else video.alpha[i]
            write_image(path / (Path(name).stem + ".png"), frame, alpha)
    elif video.kind == "gif":
        with writing(path):
            _write_gif(path, video)
    else:
        with writing(path):
            _write_mp4(path, video.frames, video.fps)
    return path
