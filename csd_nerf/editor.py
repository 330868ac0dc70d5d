"""The one CSD-Edit step shared by 3D scenes, panoramas and videos (``docs/DESIGN.md`` §1).

The idea the whole package rests on: a *particle* is a **view of a scene through a camera**. A 3D scene is seen
through its training cameras, a panorama through crop cameras over one latent canvas, a video through one camera
per frame. Whatever the scene, it hands the step the latents of some of its views (differentiable in its own
parameters) and the cached latents of the same views of the source; the step does the rest.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import torch

from csd_nerf.csd import csd_gradient
from csd_nerf.errors import SettingError
from csd_nerf.guidance.ip2p import IP2PGuidance

__all__ = ["MAX_SCALE", "Scene", "CSDEditConfig", "ViewSampler", "StepStats", "CSDEditor"]

MAX_SCALE = 100.0


@runtime_checkable
class Scene(Protocol):
    """A scene seen through ``num_views`` cameras; a view id is a camera index.

    ``backward`` is optional: a scene without it gets ``latents.backward(grad)``. A scene whose latents carry
    no graph (deferred backpropagation) implements it to carry ``grad`` into its parameters its own way, and
    may return the values of extra loss terms it added (regularisers) for logging.
    """

    num_views: int

    def sources(self, views: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached source latents ``zs`` and IP2P image conditioning ``c`` of these views, ``[n, 4, h, w]`` each."""
        ...

    def latents(self, views: Sequence[int]) -> torch.Tensor:
        """The views' current latents ``z`` ``[n, 4, h, w]``, differentiable w.r.t. the scene's parameters."""
        ...


@dataclass
class CSDEditConfig:
    """The CSD-Edit step's settings, defined here once; the 3D pipelines and the 2D command derive theirs.

    Defaults are the paper's (arXiv 2307.04787 §4, official code): s_T 7.5, s_I 1.5, t ~ U{20..500}.
    """

    prompt: str = ""
    """The edit instruction, e.g. "Turn the bear into a grizzly bear" (required)."""
    guidance_scale: float = 7.5
    """Text guidance scale s_T: higher follows the instruction more strongly."""
    image_guidance_scale: float = 1.5
    """Image guidance scale s_I: higher stays closer to the source."""
    num_particles: int = 4
    """Views coupled per step (training views, panorama windows or video frames), drawn without replacement."""
    t_min: int = 20
    """Smallest diffusion timestep drawn (of 1000)."""
    t_max: int = 500
    """Largest diffusion timestep drawn (of 1000)."""
    coupling: bool = True
    """SVGD coupling between the views (off: independent per-view updates, for ablations)."""
    baseline: Literal["image", "noise"] = "image"
    """image: CSD-Edit's image-conditional baseline; noise: plain SDS (ablation)."""
    bandwidth_multiplier: float = 1.0
    """Multiplies the median-heuristic kernel bandwidth (ablation)."""
    seed: int = 0
    """Seed of the timesteps, noise and view draws."""

    def validate(self, num_train_timesteps: int = 1000) -> None:
        """Raise :class:`~csd_nerf.errors.SettingError` with a one-line fix for anything out of range."""
        if not self.prompt or not self.prompt.strip():
            raise SettingError('the edit prompt is empty: pass an instruction, e.g. --prompt "Turn it into a painting"')
        for name in ("guidance_scale", "image_guidance_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= MAX_SCALE):
                raise SettingError(f"{name} = {value} is out of range: use a value in [0, {MAX_SCALE:g}]")
        if not 1 <= self.t_min <= self.t_max < num_train_timesteps:
            raise SettingError(
                f"timestep range [{self.t_min}, {self.t_max}] is invalid: need 1 <= t_min <= t_max < {num_train_timesteps}"
            )
        if self.num_particles < 1:
            raise SettingError(f"num_particles = {self.num_particles}: use at least 1")
        if not (math.isfinite(self.bandwidth_multiplier) and self.bandwidth_multiplier > 0):
            raise SettingError(f"bandwidth_multiplier = {self.bandwidth_multiplier}: use a positive number")
        if self.baseline not in ("image", "noise"):
            raise SettingError(f"baseline {self.baseline!r}: use 'image' or 'noise'")

    @classmethod
    def from_settings(cls, settings: object) -> CSDEditConfig:
        """The step's settings read off any object that carries them (a pipeline config, parsed arguments)."""
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


class ViewSampler:
    """Draws view ids without replacement over an epoch (every view once before any repeats)."""

    def __init__(self, num_views: int, generator: torch.Generator) -> None:
        if num_views < 1:
            raise ValueError("a scene needs at least one view")
        self.num_views = num_views
        self._generator = generator
        self._queue: list[int] = []

    def draw(self, count: int) -> list[int]:
        count = min(count, self.num_views)
        ids: list[int] = []
        while len(ids) < count:
            if not self._queue:
                self._queue = torch.randperm(self.num_views, generator=self._generator).tolist()
            candidate = self._queue.pop(0)
            if candidate not in ids:
                ids.append(candidate)
            else:  # an epoch boundary can repeat an id within one draw; defer it to the next draw
                self._queue.append(candidate)
        return ids


@dataclass
class StepStats:
    """What one step did: its views, timestep, sizes, per-phase seconds, and optionally the prior's estimate."""

    ids: list[int]
    timestep: int
    weight: float
    residual_norm: float
    grad_norm: float
    unet_samples: int
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per phase: ``render`` (the scene making its latents, VAE excluded), ``vae``, ``unet``,
    ``backward`` (the scene's backward, VAE excluded) and ``total``."""
    losses: dict[str, float] = field(default_factory=dict)
    """Extra loss terms the scene's backward added (e.g. nerfacto's regularisers)."""
    noisy_latents: torch.Tensor | None = None
    pred_original: torch.Tensor | None = None
    """``(z_t - sqrt(1 - a_t) E_tgt) / sqrt(a_t)``: the latent the prior is pulling each view towards."""

    @property
    def unet_seconds(self) -> float:
        return self.timings.get("unet", 0.0)

    @property
    def step_seconds(self) -> float:
        return self.timings.get("total", 0.0)


class CSDEditor:
    """Runs CSD-Edit steps for any :class:`Scene` with one guidance prior."""

    def __init__(self, guidance: IP2PGuidance, config: CSDEditConfig) -> None:
        config.validate(guidance.num_train_timesteps)
        self.guidance = guidance
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)
        self._samplers: dict[int, ViewSampler] = {}

    def sample_ids(self, scene: Scene) -> list[int]:
        """The next ``num_particles`` view ids of the scene, without replacement over an epoch."""
        sampler = self._samplers.get(id(scene))
        if sampler is None or sampler.num_views != scene.num_views:
            sampler = self._samplers[id(scene)] = ViewSampler(scene.num_views, self.generator)
        return sampler.draw(self.config.num_particles)

    def step(self, scene: Scene, ids: Sequence[int] | None = None, keep_preview: bool = False) -> StepStats:
        """One CSD-Edit step: the CSD gradient ends up in the scene's parameters' ``.grad``.

        The optimiser step is the caller's, so applications keep their own optimisers and schedules.
        """
        cfg = self.config
        cfg.validate(self.guidance.num_train_timesteps)  # viewer edits can change the config between steps
        counters = self.guidance.stats
        start, vae0, unet0 = time.perf_counter(), counters.vae_seconds, counters.unet_seconds
        ids = list(ids) if ids is not None else self.sample_ids(scene)
        source_latents, conditioning = scene.sources(ids)
        latents = scene.latents(ids)
        latents_done, vae_latents = time.perf_counter(), counters.vae_seconds

        # 1. One timestep for all views, one noise per view, shared by target and source.
        timestep = int(torch.randint(cfg.t_min, cfg.t_max + 1, (1,), generator=self.generator))
        noise = torch.randn(latents.shape, generator=self.generator).to(latents.device)
        alpha = self.guidance.alphas_cumprod[timestep]
        with torch.no_grad():
            # 2. Noise the views and their sources alike.
            noisy = alpha.sqrt() * latents.detach().float() + (1 - alpha).sqrt() * noise
            noisy_source = alpha.sqrt() * source_latents.float() + (1 - alpha).sqrt() * noise
            # 3. Guided residuals, 5 UNet evaluations per view.
            out = self.guidance.residuals(
                noisy,
                noisy_source,
                conditioning,
                timestep,
                noise,
                prompt=cfg.prompt,
                guidance_scale=cfg.guidance_scale,
                image_guidance_scale=cfg.image_guidance_scale,
                baseline=cfg.baseline,
            )
            # 4. SVGD coupling on the noisy latents.
            weight = float(1 - alpha)
            grad = csd_gradient(noisy, out.residual, weight, cfg.coupling, cfg.bandwidth_multiplier)
        # 5. Into the scene's parameters, without a loss value.
        backward_start, vae_backward = time.perf_counter(), counters.vae_seconds
        backward = getattr(scene, "backward", None)
        if backward is None:
            latents.backward(gradient=grad.to(latents.dtype))
            losses = None
        else:
            losses = backward(latents, grad.to(latents.dtype))
        end = time.perf_counter()

        vae_seconds = counters.vae_seconds - vae0
        timings = {
            "render": (latents_done - start) - (vae_latents - vae0),
            "vae": vae_seconds,
            "unet": counters.unet_seconds - unet0,
            "backward": (end - backward_start) - (counters.vae_seconds - vae_backward),
            "total": end - start,
        }
        pred_original = None
        if keep_preview:
            pred_original = (noisy - (1 - alpha).sqrt() * out.target_eps) / alpha.sqrt()
        return StepStats(
            ids=ids,
            timestep=timestep,
            weight=weight,
            residual_norm=float(out.residual.norm()),
            grad_norm=float(grad.float().norm()),
            unet_samples=out.unet_samples,
            timings=timings,
            losses=dict(losses or {}),
            noisy_latents=noisy if keep_preview else None,
            pred_original=pred_original,
        )
