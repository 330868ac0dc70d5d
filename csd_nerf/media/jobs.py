"""The two 2D applications as jobs: read the input, build its scene, turn the latents back into media.

A job knows its media and how its scene sees them (crop cameras over a panorama's canvas, one camera per video
frame); the optimisation loop (:mod:`csd_nerf.media.optimise`) and the command line (:mod:`csd_nerf.media.cli`)
are shared. Working sizes depend on the VAE's downscale factor, so they are fixed when the prior is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from csd_nerf.guidance.ip2p import IP2PGuidance
from csd_nerf.media import io
from csd_nerf.media.encoding import Tiling, decode, encode_sources, use_tiling
from csd_nerf.media.panorama import PanoramaScene
from csd_nerf.media.video import VideoScene, working_size
from csd_nerf.sizes import snap

__all__ = ["PanoramaJob", "VideoJob", "panorama_working_size", "seed_everything"]


def panorama_working_size(width: int, height: int, window_px: int, factor: int) -> tuple[int, int]:
    """The size a panorama is edited at: its own, or enlarged (aspect kept) until its short side holds one window;
    both sides snapped to the VAE's ``factor``."""
    scale = max(1.0, window_px / min(width, height))
    return max(window_px, snap(width * scale, factor)), max(window_px, snap(height * scale, factor))


@dataclass
class PanoramaJob:
    """Edit one image of any size through overlapping windows of one latent canvas.

    The image is LANCZOS-resized to the nearest multiple of the VAE's factor per side (a few pixels at most),
    or enlarged until its short side holds one window, edited, and resized back to its own size.
    """

    image: np.ndarray
    window: int = 64
    """Window side in latent pixels (64 = 512 px for SD's VAE, IP2P's training size)."""
    stride: int = 16
    tiling: Tiling = "auto"
    working: np.ndarray | None = field(default=None, init=False)
    factor: int | None = field(default=None, init=False)

    @classmethod
    def from_file(cls, path: str | Path, window: int = 64, stride: int = 16, tiling: Tiling = "auto") -> PanoramaJob:
        return cls(io.read_image(path), window, stride, tiling)

    def __post_init__(self) -> None:
        if self.window < 1 or self.stride < 1:
            raise ValueError(f"window ({self.window}) and stride ({self.stride}) must be at least 1 latent pixel")

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[0])

    def build_scene(self, guidance: IP2PGuidance) -> PanoramaScene:
        self.factor = guidance.latent_factor
        size = panorama_working_size(*self.size, self.window * self.factor, self.factor)
        self.working = io.resize(self.image, size)
        latents, conditioning = encode_sources(guidance, io.to_tensor(self.working), self.tiling)
        return PanoramaScene(latents, conditioning, self.window, self.stride)

    def render(self, guidance: IP2PGuidance, scene: PanoramaScene, original_size: bool = True) -> np.ndarray:
        """The edited image ``uint8 [H, W, 3]``, at the input's size unless ``original_size`` is False."""
        image = io.to_uint8(decode(guidance, scene.canvas, self.tiling))[0]
        return io.resize(image, self.size) if original_size else image

    def write(self, folder: Path, edited: np.ndarray) -> list[str]:
        io.write_image(folder / "edited.png", edited)
        io.write_image(folder / "comparison.png", io.comparison_image(self.image, edited))
        return ["edited.png", "comparison.png"]

    def write_preview(self, folder: Path, guidance: IP2PGuidance, scene: PanoramaScene, step: int) -> str:
        name = f"steps/step_{step:05d}.png"
        io.write_image(folder / name, self.render(guidance, scene))
        return name

    def info(self, scene: PanoramaScene | None = None) -> dict:
        out: dict = {"size": list(self.size)}
        if self.working is not None and self.factor is not None:
            height, width = self.working.shape[:2]
            out |= {
                "working_size": [width, height],
                "window_px": self.window * self.factor,
                "stride_px": self.stride * self.factor,
                "vae_tiling": use_tiling(self.tiling, height, width),
            }
        if scene is not None:
            out |= {"latent_size": [scene.width, scene.height], "windows": scene.num_views}
        return out


@dataclass
class VideoJob:
    """Edit every frame of a video jointly: each frame is a view with its own latent.

    Frames are resized to a working size (long side ``long_side``, aspect kept, sides multiples of the VAE's
    factor) and the result is resized back to the input's size, with the same frame count and frame rate.
    """

    video: io.Video
    long_side: int = 512
    tiling: Tiling = "auto"
    vae_batch: int = 8
    working: np.ndarray | None = field(default=None, init=False)

    @classmethod
    def from_file(cls, path: str | Path, long_side: int = 512, folder_fps: float = 10.0, **kwargs) -> VideoJob:
        return cls(io.read_video(path, folder_fps), long_side, **kwargs)

    @property
    def size(self) -> tuple[int, int]:
        return self.video.size

    def build_scene(self, guidance: IP2PGuidance) -> VideoScene:
        size = working_size(*self.video.size, self.long_side, guidance.latent_factor)
        self.working = np.stack([io.resize(frame, size) for frame in self.video.frames])
        latents, conditioning = encode_sources(guidance, io.to_tensor(self.working), self.tiling, self.vae_batch)
        return VideoScene(latents, conditioning)

    def render(self, guidance: IP2PGuidance, scene: VideoScene, original_size: bool = True) -> np.ndarray:
        """The edited frames ``uint8 [T, H, W, 3]``, at the input's size unless ``original_size`` is False."""
        frames = io.to_uint8(decode(guidance, scene.parameter, self.tiling, self.vae_batch))
        if not original_size:
            return frames
        return np.stack([io.resize(frame, self.size) for frame in frames])

    def output_name(self) -> str:
        return {"frames": "edited", "gif": "edited.gif"}.get(self.video.kind, "edited.mp4")

    def write(self, folder: Path, edited: np.ndarray) -> list[str]:
        name = self.output_name()
        io.write_video(folder / name, io.Video(edited, self.video.fps, self.video.kind, self.video.frame_names))
        grid = io.comparison_image(io.frame_grid(self.video.frames), io.frame_grid(edited))
        io.write_image(folder / "comparison.png", grid)
        return [name, "comparison.png"]

    def write_preview(self, folder: Path, guidance: IP2PGuidance, scene: VideoScene, step: int) -> str:
        name = f"steps/step_{step:05d}.png"
        io.write_image(folder / name, io.frame_grid(self.render(guidance, scene, original_size=False)))
        return name

    def info(self, scene: VideoScene | None = None) -> dict:
        out: dict = {
            "size": list(self.size),
            "frames": int(len(self.video.frames)),
            "fps": str(self.video.fps),
            "kind": self.video.kind,
        }
        if self.working is not None:
            height, width = self.working.shape[1:3]
            out |= {"working_size": [width, height], "vae_tiling": use_tiling(self.tiling, height, width)}
        if scene is not None:
            out["latent_size"] = list(scene.parameter.shape[-1:-3:-1])
        return out


def seed_everything(seed: int) -> None:
    """Seed torch's global generator: the editor draws from its own, this covers anything else that draws."""
    torch.manual_seed(seed)
