"""The two 2D applications as jobs: read the input, plan and build its scene, turn the latents back into media.

A job knows its media and how its scene sees them (crop cameras over a panorama's canvas, one camera per video
frame); the optimisation loop (:mod:`csd_nerf.media.optimise`) and the command line (:mod:`csd_nerf.media.cli`)
are shared. Sizes depend on the model (its training size, its VAE's downscale factor), so a job is planned
once the prior is loaded (:meth:`plan`, which refuses bad geometry before anything is written), then built.
What a job cannot keep of its input, or did to it, goes to ``notices`` for the user. A job with a mask
(:mod:`csd_nerf.media.mask`, read and checked by ``use_mask`` before anything is written) weights its scene's
latent gradient by it and composites its results with the source at the input's own size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from csd_nerf.errors import SettingError
from csd_nerf.guidance.ip2p import IP2PGuidance
from csd_nerf.media import io
from csd_nerf.media.audio import add_audio
from csd_nerf.media.encoding import Tiling, decode, encode_sources, use_tiling
from csd_nerf.media.errors import writing
from csd_nerf.media.images import MAX_MEGAPIXELS
from csd_nerf.media.mask import Mask, check_mask, composite, latent_weight, read_mask, resize_levels
from csd_nerf.media.panorama import PanoramaScene, check_windows, default_stride
from csd_nerf.media.video import VideoScene, working_size
from csd_nerf.sizes import snap

__all__ = [
    "MAX_ENLARGED_WINDOWS",
    "PanoramaJob",
    "VideoJob",
    "panorama_working_size",
    "trained_latent_size",
    "trained_image_size",
    "saved_previews",
    "seed_everything",
    "write_preview",
]

MAX_ENLARGED_WINDOWS = 16
"""An image smaller than one window is enlarged until it holds one, but to at most this many windows' area
(4.2 MP for SD, e.g. 8192x512): beyond it the input is a sliver (480x4 would become 61440x512, minutes of VAE
work and GBs for a 2 kB picture) and is refused in one line instead."""


def trained_latent_size(guidance: IP2PGuidance) -> int:
    """The UNet's training size in latent pixels (``unet.config.sample_size``: 64 for SD), as diffusers pipelines
    take their default size from it."""
    size = guidance.unet.config.sample_size
    return int(min(size) if isinstance(size, list | tuple) else size)


def trained_image_size(guidance: IP2PGuidance) -> int:
    """The training size in image pixels: ``sample_size * vae_scale_factor`` (512 for IP2P)."""
    return trained_latent_size(guidance) * guidance.latent_factor


def panorama_working_size(width: int, height: int, window_px: int, factor: int) -> tuple[int, int]:
    """The size a panorama is edited at: its own, or enlarged (aspect kept) until its short side holds one window;
    both sides snapped to the VAE's ``factor``. An enlargement beyond :data:`MAX_ENLARGED_WINDOWS` windows' area
    is refused (:class:`SettingError`)."""
    scale = max(1.0, window_px / min(width, height))
    size = max(window_px, snap(width * scale, factor)), max(window_px, snap(height * scale, factor))
    limit = MAX_ENLARGED_WINDOWS * window_px**2
    if scale > 1.0 and size[0] * size[1] > limit:
        raise SettingError(
            f"the input is {width}x{height} px: to hold one {window_px} px window it would be enlarged "
            f"{scale:.0f}x to {size[0]}x{size[1]} px, more than the {MAX_ENLARGED_WINDOWS} windows' area "
            f"({limit / 1e6:.1f} MP) an enlargement may produce; crop it to a less elongated shape first"
        )
    return size


@dataclass
class PanoramaJob:
    """Edit one image of any size through overlapping windows of one latent canvas.

    The image is LANCZOS-resized to the nearest multiple of the VAE's factor per side (a few pixels at most),
    or enlarged until its short side holds one window, edited, and resized back to its own size; its alpha
    channel, if any, is put back unchanged. With a ``mask`` only the canvas under it moves and the result is the
    source where the mask is black, to the byte.
    """

    image: np.ndarray
    window: int | None = None
    """Window side in latent pixels; ``None``: the model's training size (64 = 512 px for IP2P)."""
    stride: int | None = None
    """Window stride in latent pixels; ``None``: a quarter window (:func:`default_stride`)."""
    tiling: Tiling = "auto"
    alpha: np.ndarray | None = None
    """``uint8 [H, W]`` transparency of the input, written back with the edit."""
    mask: Mask | None = None
    """What to edit (white), keep (black) or blend (grey), of the input's size (:meth:`use_mask`)."""
    working_size: tuple[int, int] | None = field(default=None, init=False)
    factor: int | None = field(default=None, init=False)
    working: np.ndarray | None = field(default=None, init=False)
    notices: list[str] = field(default_factory=list, init=False)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        window: int | None = None,
        stride: int | None = None,
        tiling: Tiling = "auto",
        max_megapixels: float = MAX_MEGAPIXELS,
        mask: str | Path | None = None,
    ) -> PanoramaJob:
        image, alpha = io.read_image_alpha(path, max_megapixels=max_megapixels)
        job = cls(image, window, stride, tiling, alpha)
        return job if mask is None else job.use_mask(mask, max_megapixels)

    def use_mask(self, path: str | Path, max_megapixels: float = MAX_MEGAPIXELS) -> PanoramaJob:
        """Read the mask image at ``path``; one line if it is unreadable, of another size, or all black."""
        mask = read_mask(path, video=False, max_megapixels=max_megapixels)
        check_mask(mask, self.size)
        self.mask = mask
        return self

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[0])

    def plan(self, guidance: IP2PGuidance) -> None:
        """Fix window, stride and working size for this model; a :class:`SettingError` if they cannot work."""
        self.factor = guidance.latent_factor
        self.window = self.window if self.window is not None else trained_latent_size(guidance)
        self.stride = self.stride if self.stride is not None else default_stride(self.window)
        check_windows(self.window, self.stride)
        self.working_size = panorama_working_size(*self.size, self.window * self.factor, self.factor)

    def describe(self) -> str:
        """What encoding works on, for the user."""
        width, height = self.working_size or self.size
        small = self.window is not None and self.factor is not None and min(self.size) < self.window * self.factor
        return f"{width}x{height} px" + (f" (enlarged from {self.size[0]}x{self.size[1]})" if small else "")

    def build_scene(self, guidance: IP2PGuidance) -> PanoramaScene:
        if self.working_size is None:
            self.plan(guidance)
        self.working = io.resize(self.image, self.working_size)
        latents, conditioning = encode_sources(guidance, io.to_tensor(self.working), self.tiling)
        weight = None
        if self.mask is not None:
            weight = latent_weight(self.mask.levels, self.working_size, guidance.latent_factor)[0, 0]
        return PanoramaScene(latents, conditioning, self.window, self.stride, weight=weight)

    def render(self, guidance: IP2PGuidance, scene: PanoramaScene, original_size: bool = True) -> np.ndarray:
        """The edited image ``uint8 [H, W, 3]``, at the input's size unless ``original_size`` is False; with a
        mask, composited with the source (at the input's size: its own pixels where the mask is black)."""
        image = io.to_uint8(decode(guidance, scene.canvas, self.tiling))[0]
        if original_size:
            image = io.resize(image, self.size)
            return image if self.mask is None else composite(self.image, image, self.mask.levels[0])
        if self.mask is None:
            return image
        return composite(self.working, image, resize_levels(self.mask.levels, self.working_size)[0])

    def write(self, folder: Path, edited: np.ndarray) -> list[str]:
        io.write_image(folder / "edited.png", edited, self.alpha)
        io.write_image(folder / "comparison.png", io.comparison_image(self.image, edited))
        return ["edited.png", "comparison.png"]

    def write_preview(self, folder: Path, guidance: IP2PGuidance, scene: PanoramaScene, step: int) -> str:
        return write_preview(folder, step, self.render(guidance, scene), self.alpha)

    def info(self, scene: PanoramaScene | None = None) -> dict:
        out: dict = {"size": list(self.size), "alpha": self.alpha is not None}
        out["mask"] = None if self.mask is None else self.mask.info()
        if self.working_size is not None and self.factor is not None:
            width, height = self.working_size
            out |= {
                "working_size": [width, height],
                "window": self.window,
                "stride": self.stride,
                "window_px": self.window * self.factor,
                "stride_px": self.stride * self.factor,
                "vae_tiling": use_tiling(self.tiling, height, width),
            }
        if scene is not None:
            out |= {"latent_size": [scene.width, scene.height], "windows": scene.num_views}
            if scene.num_views != scene.windows_total:
                out["windows_outside_mask"] = scene.windows_total - scene.num_views  # never drawn
        return out


@dataclass
class VideoJob:
    """Edit every frame of a video jointly: each frame is a view with its own latent.

    Frames are resized to a working size (long side ``long_side``, aspect kept, sides multiples of the VAE's
    factor) and the result is resized back to the input's size, with the same frame count and timing, upright,
    with the input's sound and transparency where the output format holds them. With a ``mask`` only the latents
    under it move and every frame is the source where its mask is black, to the byte before encoding.
    """

    video: io.Video
    long_side: int | None = None
    """Working long side in px; ``None``: the model's training size (512 for IP2P)."""
    tiling: Tiling = "auto"
    vae_batch: int = 8
    mask: Mask | None = None
    """What to edit (white), keep (black) or blend (grey): one frame for every frame, or one per frame."""
    working_size: tuple[int, int] | None = field(default=None, init=False)
    working: np.ndarray | None = field(default=None, init=False)
    notices: list[str] = field(default_factory=list, init=False)
    sound: str | None = field(default=None, init=False)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        long_side: int | None = None,
        folder_fps: float = 10.0,
        max_megapixels: float = MAX_MEGAPIXELS,
        mask: str | Path | None = None,
        **kwargs,
    ) -> VideoJob:
        job = cls(io.read_video(path, folder_fps, max_megapixels), long_side, **kwargs)
        return job if mask is None else job.use_mask(mask, max_megapixels)

    def __post_init__(self) -> None:
        self.notices.extend(self.video.notices)
        if self.video.rotation:
            self.notices.append(
                f"the input's rotation metadata ({self.video.rotation} degrees) was applied: it is edited and "
                "written upright"
            )

    @property
    def size(self) -> tuple[int, int]:
        return self.video.size

    def use_mask(self, path: str | Path, max_megapixels: float = MAX_MEGAPIXELS) -> VideoJob:
        """Read the mask (a video, a folder of frames, or one image for every frame) at ``path``; one line if it
        is unreadable, of another size or frame count, or all black."""
        mask = read_mask(path, video=True, max_megapixels=max_megapixels)
        check_mask(mask, self.size, len(self.video.frames))
        self.mask = mask
        if self.video.kind != "frames":
            self.notices.append(
                f"outside the mask the frames are the input's until the {self.output_name()} is encoded, which "
                "changes them slightly; a folder of frames as input is written as PNG frames, kept to the byte"
            )
        return self

    def plan(self, guidance: IP2PGuidance) -> None:
        """Fix the working size for this model (a :class:`SettingError` if ``long_side`` is too small)."""
        if self.long_side is None:
            self.long_side = trained_image_size(guidance)
        self.working_size = working_size(*self.video.size, self.long_side, guidance.latent_factor)

    def describe(self) -> str:
        width, height = self.working_size or self.size
        return f"{len(self.video.frames)} frames at {width}x{height} px"

    def build_scene(self, guidance: IP2PGuidance) -> VideoScene:
        if self.working_size is None:
            self.plan(guidance)
        self.working = np.stack([io.resize(frame, self.working_size) for frame in self.video.frames])
        latents, conditioning = encode_sources(guidance, io.to_tensor(self.working), self.tiling, self.vae_batch)
        weight = None
        if self.mask is not None:
            weight = latent_weight(self.mask.levels, self.working_size, guidance.latent_factor).to(latents.device)
        return VideoScene(latents, conditioning, weight)

    def render(self, guidance: IP2PGuidance, scene: VideoScene, original_size: bool = True) -> np.ndarray:
        """The edited frames ``uint8 [T, H, W, 3]``, at the input's size unless ``original_size`` is False; with a
        mask, composited with the source frames (at the input's size: their own pixels where the mask is black)."""
        frames = io.to_uint8(decode(guidance, scene.parameter, self.tiling, self.vae_batch))
        if not original_size:
            if self.mask is None:
                return frames
            return composite(self.working, frames, resize_levels(self.mask.levels, self.working_size))
        frames = np.stack([io.resize(frame, self.size) for frame in frames])
        return frames if self.mask is None else composite(self.video.frames, frames, self.mask.levels)

    def output_name(self) -> str:
        return {"frames": "edited", "gif": "edited.gif"}.get(self.video.kind, "edited.mp4")

    def write(self, folder: Path, edited: np.ndarray) -> list[str]:
        name = self.output_name()
        source = self.video
        result = io.Video(edited, source.fps, source.kind, source.frame_names, source.durations_ms, source.alpha)
        path = io.write_video(folder / name, result)
        if source.kind == "file" and source.audio is not None:
            with writing(path):  # a full disk while muxing the sound is the one error that stops the run
                notice = add_audio(path, source.audio)
            self.sound = notice or f"{source.audio.codec} track kept"
            if notice:
                self.notices.append(notice)
        grid = io.comparison_image(io.frame_grid(source.frames), io.frame_grid(edited))
        io.write_image(folder / "comparison.png", grid)
        return [name, "comparison.png"]

    def write_preview(self, folder: Path, guidance: IP2PGuidance, scene: VideoScene, step: int) -> str:
        return write_preview(folder, step, io.frame_grid(self.render(guidance, scene, original_size=False)))

    def info(self, scene: VideoScene | None = None) -> dict:
        out: dict = {
            "size": list(self.size),
            "frames": int(len(self.video.frames)),
            "fps": str(self.video.fps),
            "kind": self.video.kind,
            "rotation_applied": self.video.rotation,
            "alpha": self.video.alpha is not None,
            "sound": self.sound,
            "mask": None if self.mask is None else self.mask.info(),
        }
        if self.working_size is not None:
            width, height = self.working_size
            out |= {"working_size": [width, height], "vae_tiling": use_tiling(self.tiling, height, width)}
        if scene is not None:
            out["latent_size"] = list(scene.parameter.shape[-1:-3:-1])
        return out


def write_preview(folder: Path, step: int, image: np.ndarray, alpha: np.ndarray | None = None) -> str:
    """Write the result after ``step`` as ``steps/step_NNNNN.png`` in ``folder``, whole or not at all (a signal may
    stop the run mid-write); returns its name relative to ``folder``."""
    name = f"steps/step_{step:05d}.png"
    partial = folder / f"steps/.step_{step:05d}.partial.png"
    io.write_image(partial, image, alpha)
    os.replace(partial, folder / name)
    return name


def saved_previews(folder: Path) -> list[str]:
    """The whole previews in ``folder/steps`` (names relative to ``folder``, in step order); a partial one that a
    signal left behind is removed."""
    steps = folder / "steps"
    for partial in steps.glob(".step_*.partial.png"):
        partial.unlink(missing_ok=True)
    return sorted(f"steps/{path.name}" for path in steps.glob("step_*.png"))


def seed_everything(seed: int) -> None:
    """Seed torch's global generator: the editor draws from its own, this covers anything else that draws."""
    torch.manual_seed(seed)
