"""The one CSD-Edit step shared by panoramas, videos and 3D scenes (DESIGN §1)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from csd_nerf.csd import csd_gradient
from csd_nerf.guidance.ip2p import IP2PGuidance

MAX_SCALE = 100.0


class ParticleScene(Protocol):
    """What the editor needs from an application: particles are ids; latents are differentiable."""

    num_particles: int

    def sources(self, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached source latents ``zs`` and image conditioning ``c`` of these particles, ``[n, 4, h, w]`` each."""
        ...

    def latents(self, ids: Sequence[int]) -> torch.Tensor:
        """The particles' current latents ``z`` ``[n, 4, h, w]``, differentiable w.r.t. the scene's parameters."""
        ...


@dataclass
class CSDEditConfig:
    """Parameters of the CSD-Edit step (defaults: the paper's, DESIGN §1)."""

    prompt: str = ""
    """The edit instruction y, e.g. "Turn the bear into a grizzly bear"."""
    guidance_scale: float = 7.5
    """Text guidance scale s_T."""
    image_guidance_scale: float = 1.5
    """Image guidance scale s_I (paper panoramas and reference video: 1.5)."""
    num_particles: int = 4
    """Particles coupled per step (views, windows or frames)."""
    t_min: int = 20
    t_max: int = 500
    coupling: bool = True
    """SVGD coupling between particles; off gives independent per-particle updates (ablation)."""
    baseline: Literal["image", "noise"] = "image"
    """``image``: CSD-Edit's image-conditional baseline; ``noise``: plain SDS (ablation)."""
    bandwidth_multiplier: float = 1.0
    """Multiplies the median-heuristic kernel bandwidth (ablation)."""
    seed: int = 0

    def validate(self, num_train_timesteps: int = 1000) -> None:
        """Raise ``ValueError`` with a one-line fix for anything out of range."""
        if not self.prompt or not self.prompt.strip():
            raise ValueError('the edit prompt is empty: pass an instruction, e.g. --prompt "Turn it into a painting"')
        for name in ("guidance_scale", "image_guidance_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= MAX_SCALE):
                raise ValueError(f"{name} = {value} is out of range: use a value in [0, {MAX_SCALE:g}]")
        if not 1 <= self.t_min <= self.t_max < num_train_timesteps:
            raise ValueError(
                f"timestep range [{self.t_min}, {self.t_max}] is invalid: need 1 <= t_min <= t_max < {num_train_timesteps}"
            )
        if self.num_particles < 1:
            raise ValueError(f"num_particles = {self.num_particles}: use at least 1")
        if not (math.isfinite(self.bandwidth_multiplier) and self.bandwidth_multiplier > 0):
            raise ValueError(f"bandwidth_multiplier = {self.bandwidth_multiplier}: use a positive number")
        if self.baseline not in ("image", "noise"):
            raise ValueError(f"baseline {self.baseline!r}: use 'image' or 'noise'")


class ParticleSampler:
    """Draws particle ids without replacement over an epoch (every particle once before any repeats)."""

    def __init__(self, num_particles: int, generator: torch.Generator) -> None:
        if num_particles < 1:
            raise ValueError("a scene needs at least one particle")
        self.num_particles = num_particles
        self._generator = generator
        self._queue: list[int] = []

    def draw(self, count: int) -> list[int]:
        count = min(count, self.num_particles)
        ids: list[int] = []
        while len(ids) < count:
            if not self._queue:
                self._queue = torch.randperm(self.num_particles, generator=self._generator).tolist()
            candidate = self._queue.pop(0)
            if candidate not in ids:
                ids.append(candidate)
            else:  # an epoch boundary can repeat an id within one draw; defer it to the next draw
                self._queue.append(candidate)
        return ids


@dataclass
class StepStats:
    """What one step did: its timestep, sizes and timings, and optionally the one-step edit estimate."""

    ids: list[int]
    timestep: int
    weight: float
    residual_norm: float
    grad_norm: float
    unet_samples: int
    unet_seconds: float
    step_seconds: float
    noisy_latents: torch.Tensor | None = None
    pred_original: torch.Tensor | None = None
    """``(z_t - sqrt(1 - a_t) E_tgt) / sqrt(a_t)``: the latent the prior is pulling each particle towards."""


class CSDEditor:
    """Runs CSD-Edit steps for any :class:`ParticleScene` with one IP2P guidance."""

    def __init__(self, guidance: IP2PGuidance, config: CSDEditConfig) -> None:
        config.validate(guidance.num_train_timesteps)
        self.guidance = guidance
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)
        self._samplers: dict[int, ParticleSampler] = {}

    def sample_ids(self, scene: ParticleScene) -> list[int]:
        """The next ``num_particles`` ids of the scene, without replacement over an epoch."""
        sampler = self._samplers.get(id(scene))
        if sampler is None or sampler.num_particles != scene.num_particles:
            sampler = self._samplers[id(scene)] = ParticleSampler(scene.num_particles, self.generator)
        return sampler.draw(self.config.num_particles)

    def step(self, scene: ParticleScene, ids: Sequence[int] | None = None, keep_preview: bool = False) -> StepStats:
        """One CSD-Edit step: writes ``g`` into the scene's parameters' ``.grad`` via ``latents.backward``.

        The optimiser step is the caller's, so applications keep their own optimisers and schedules.
        """
        cfg = self.config
        cfg.validate(self.guidance.num_train_timesteps)  # viewer edits can change the config between steps
        start = time.perf_counter()
        unet_before = self.guidance.stats.unet_seconds
        ids = list(ids) if ids is not None else self.sample_ids(scene)
        source_latents, conditioning = scene.sources(ids)
        latents = scene.latents(ids)

        timestep = int(torch.randint(cfg.t_min, cfg.t_max + 1, (1,), generator=self.generator))
        noise = torch.randn(latents.shape, generator=self.generator).to(latents.device)
        alpha = self.guidance.alphas_cumprod[timestep]
        with torch.no_grad():
            noisy = alpha.sqrt() * latents.detach().float() + (1 - alpha).sqrt() * noise
            noisy_source = alpha.sqrt() * source_latents.float() + (1 - alpha).sqrt() * noise
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
            weight = float(1 - alpha)
            grad = csd_gradient(noisy, out.residual, weight, cfg.coupling, cfg.bandwidth_multiplier)
        latents.backward(gradient=grad.to(latents.dtype))

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
            unet_seconds=self.guidance.stats.unet_seconds - unet_before,
            step_seconds=time.perf_counter() - start,
            noisy_latents=noisy if keep_preview else None,
            pred_original=pred_original,
        )
