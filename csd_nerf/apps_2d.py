"""The two 2D applications as jobs: read the input, build the particle scene, turn the latents back into media.

A job knows its media and its scene; the optimisation loop (:mod:`csd_nerf.edit_2d`) and the command line
(:mod:`csd_nerf.cli_2d`) are shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from csd_nerf import media
from csd_nerf.guidance.ip2p import IP2PGuidance
from csd_nerf.scenes.encoding import Tiling, decode, encode_sources, use_tiling
from csd_nerf.scenes.panorama import LATENT_SCALE, PanoramaScene
from csd_nerf.scenes.video import VideoScene, working_size


def round_to_latent(side: int) -> int:
    """The nearest multiple of 8 pixels (at least 8): the VAE's granularity."""
    return max(LATENT_SCALE, round(side / LATENT_SCALE) * LATENT_SCALE)


@dataclass
class PanoramaJob:
    """Edit one image of any aspect ratio through overlapping windows of one latent canvas.

    The image is LANCZOS-resized to the nearest multiple of 8 px per side (at most 4 px off), edited, and
    resized back to its own size; an image smaller than one window is refused.
    """

    image: np.ndarray
    window: int = 64
    stride: int = 16
    tiling: Tiling = "auto"
    working: np.ndarray = field(init=False)

    @classmethod
    def from_file(cls, path: str | Path, window: int = 64, stride: int = 16, tiling: Tiling = "auto") -> PanoramaJob:
        return cls(media.read_image(path), window, stride, tiling)

    def __post_init__(self) -> None:
        if self.window < 1 or self.stride < 1:
            raise ValueError(f"window ({self.window}) and stride ({self.stride}) must be at least 1 latent pixel")
        height, width = self.image.shape[:2]
        side = self.window * LATENT_SCALE
        if min(height, width) < side:
            raise ValueError(
                f"the image is {width}x{height} px, smaller than one window of {side}x{side} px: "
                f"use a larger image or a smaller --window (in latent pixels, 8 px each)"
            )
        self.working = media.resize(self.image, (round_to_latent(width), round_to_latent(height)))

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[0])

    def build_scene(self, guidance: IP2PGuidance) -> PanoramaScene:
        latents, conditioning = encode_sources(guidance, media.to_tensor(self.working), self.tiling)
        return PanoramaScene(latents, conditioning, self.window, self.stride)

    def render(self, guidance: IP2PGuidance, scene: PanoramaScene, original_size: bool = True) -> np.ndarray:
        """The edited image ``uint8 [H, W, 3]``, at the input's size unless ``original_size`` is False."""
        image = media.to_uint8(decode(guidance, scene.canvas, self.tiling))[0]
        return media.resize(image, self.size) if original_size else image

    def write(self, folder: Path, edited: np.ndarray) -> list[str]:
        media.write_image(folder / "edited.png", edited)
        media.write_image(folder / "comparison.png", media.comparison_image(self.image, edited))
        return ["edited.png", "comparison.png"]

    def write_preview(self, folder: Path, guidance: IP2PGuidance, scene: PanoramaScene, step: int) -> str:
        name = f"steps/step_{step:05d}.png"
        media.write_image(folder / name, self.render(guidance, scene))
        return name

    def info(self, scene: PanoramaScene | None = None) -> dict:
        height, width = self.working.shape[:2]
        out = {
            "size": list(self.size),
            "working_size": [width, height],
            "window_px": self.window * LATENT_SCALE,
            "stride_px": self.stride * LATENT_SCALE,
            "vae_tiling": use_tiling(self.tiling, height, width),
        }
        if scene is not None:
            out |= {"latent_size": [scene.width, scene.height], "windows": scene.num_particles}
        return out


@dataclass
class VideoJob:
    """Edit every frame of a video jointly: frames are particles, each with its own latent.

    Frames are resized to a working size (long side ``long_side``, aspect kept, multiples of 8) and the result
    is resized back to the input's size, with the same frame count and frame rate.
    """

    video: media.Video
    long_side: int = 512
    tiling: Tiling = "auto"
    vae_batch: int = 8
    working: np.ndarray = field(init=False)

    @classmethod
    def from_file(cls, path: str | Path, long_side: int = 512, folder_fps: float = 10.0, **kwargs) -> VideoJob:
        return cls(media.read_video(path, folder_fps), long_side, **kwargs)

    def __post_init__(self) -> None:
        size = working_size(*self.video.size, self.long_side)
        self.working = np.stack([media.resize(frame, size) for frame in self.video.frames])

    @property
    def size(self) -> tuple[int, int]:
        return self.video.size

    def build_scene(self, guidance: IP2PGuidance) -> VideoScene:
        latents, conditioning = encode_sources(guidance, media.to_tensor(self.working), self.tiling, self.vae_batch)
        return VideoScene(latents, conditioning)

    def render(self, guidance: IP2PGuidance, scene: VideoScene, original_size: bool = True) -> np.ndarray:
        """The edited frames ``uint8 [T, H, W, 3]``, at the input's size unless ``original_size`` is False."""
        frames = media.to_uint8(decode(guidance, scene.parameter, self.tiling, self.vae_batch))
        if not original_size:
            return frames
        return np.stack([media.resize(frame, self.size) for frame in frames])

    def output_name(self) -> str:
        return {"frames": "edited", "gif": "edited.gif"}.get(self.video.kind, "edited.mp4")

    def write(self, folder: Path, edited: np.ndarray) -> list[str]:
        name = self.output_name()
        media.write_video(folder / name, media.Video(edited, self.video.fps, self.video.kind, self.video.frame_names))
        grid = media.comparison_image(media.frame_grid(self.video.frames), media.frame_grid(edited))
        media.write_image(folder / "comparison.png", grid)
        return [name, "comparison.png"]

    def write_preview(self, folder: Path, guidance: IP2PGuidance, scene: VideoScene, step: int) -> str:
        name = f"steps/step_{step:05d}.png"
        media.write_image(folder / name, media.frame_grid(self.render(guidance, scene, original_size=False)))
        return name

    def info(self, scene: VideoScene | None = None) -> dict:
        height, width = self.working.shape[1:3]
        out = {
            "size": list(self.size),
            "working_size": [width, height],
            "frames": int(len(self.video.frames)),
            "fps": str(self.video.fps),
            "kind": self.video.kind,
            "vae_tiling": use_tiling(self.tiling, height, width),
        }
        if scene is not None:
            out["latent_size"] = list(scene.parameter.shape[-1:-3:-1])
        return out


def seed_everything(seed: int) -> None:
    """Seed torch's global generator: the editor draws from its own, this covers anything else that draws."""
    torch.manual_seed(seed)
