"""The one CSD-Edit step shared by 3D scenes, panoramas and videos (``docs/DESIGN.md`` §1).

The idea the whole package rests on: a *particle* is a **view of a scene through a camera**. A 3D scene is seen
through its training cameras, a panorama through crop cameras over one latent canvas, a video through one camera
per frame. Whatever the scene, it hands the step the latents of some of its views (differentiable in its own
parameters) and the cached latents of the same views of the source; the step does the rest.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import torch

from csd_nerf.csd import csd_gradient
from csd_nerf.distributed import ParticleGroup, Share
from csd_nerf.errors import SettingError, check_text
from csd_nerf.guidance.stats import GuidanceOutput, GuidanceStats

__all__ = ["MAX_SCALE", "Scene", "Prior", "CSDEditConfig", "ViewSampler", "StepStats", "CSDEditor"]

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

    def parameters(self) -> Iterable[torch.Tensor]:
        """The tensors the edit's gradients reach (checked for overflow before the caller's optimiser step)."""
        ...


# A scene may also declare an attribute ``share`` (a :class:`~csd_nerf.distributed.Share`, None by default): the
# editor then sets it before asking for latents, so that the scene knows the whole step's views when this
# process renders only some of them (a panorama's overlap counts, the weight of view-averaged extra losses).


@runtime_checkable
class Prior(Protocol):
    """A diffusion prior as the step and the scenes use it: InstructPix2Pix, or the known-answer test prior.

    Latents are the prior's (SD VAE latents times its scaling factor for IP2P); images are ``[B, 3, H, W]`` in
    ``[0, 1]`` with sides multiples of ``latent_factor``.
    """

    name: str
    """What to call the prior in logs (a hub id, a folder, ``tiny``, ``known-answer``)."""
    device: torch.device
    num_train_timesteps: int
    alphas_cumprod: torch.Tensor
    """The noise schedule ``a_t`` (float32, on ``device``)."""
    latent_factor: int
    """Image pixels per latent pixel on a side (8 for SD's VAE)."""
    stats: GuidanceStats

    @property
    def notice(self) -> str | None:
        """A warning every output made with this prior must carry (random weights, a test prior), or None."""
        ...

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable latents of images; gradients reach ``images``."""
        ...

    def encode_source(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source latents ``zs`` and the prior's image conditioning ``c`` of images (no graph)."""
        ...

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in ``[0, 1]`` from latents."""
        ...

    def residuals(
        self,
        noisy_target: torch.Tensor,
        noisy_source: torch.Tensor,
        image_conditioning: torch.Tensor,
        timestep: int,
        noise: torch.Tensor,
        prompt: str,
        guidance_scale: float,
        image_guidance_scale: float,
        baseline: Literal["image", "noise"] = "image",
    ) -> GuidanceOutput:
        """The CSD-Edit residuals ``d_i = E_tgt_i - E_src_i`` of N particles (float32)."""
        ...

    def back_off(self) -> str | None:
        """A step's gradients overflowed: make the next one safer (lower a gradient scale); says what it did."""
        ...


@dataclass
class CSDEditConfig:
    """The CSD-Edit step's settings, defined here once; the 3D pipelines and the 2D command derive theirs.

    Defaults: s_T 7.5 and t ~ U{20..500} as the official code. s_I 1.5 is the 3D default: the authors edited 3D
    scenes as Instruct-NeRF2NeRF does (subin-kim-cv/CSD issue 5), whose s_I is 1.5, and it is the official video
    value; the official image and panorama scripts use 5.0, which ``csd-edit-2d panorama`` takes.
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
    """image: CSD-Edit's image-conditional baseline; noise: the noise as baseline, i.e. SVGD with an SDS residual
    (plain SDS is noise with coupling off). For ablations."""
    bandwidth_multiplier: float = 1.0
    """Multiplies the median-heuristic kernel bandwidth (ablation)."""
    seed: int = 0
    """Seed of the timesteps, noise and view draws."""

    def validate(self, num_train_timesteps: int = 1000, flags: str = "--") -> None:
        """Raise :class:`~csd_nerf.errors.SettingError` with a one-line fix for anything out of range; messages
        name the command-line flags with the ``flags`` prefix (``--`` for csd-edit-2d, ``--pipeline.`` for 3D)."""

        def flag(name: str) -> str:
            return flags + name.replace("_", "-")

        check_text(self.prompt, flag("prompt"))
        if not self.prompt or not self.prompt.strip():
            raise SettingError(f'the edit prompt is empty: pass an instruction, e.g. {flag("prompt")} "Turn it red"')
        for name in ("guidance_scale", "image_guidance_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= MAX_SCALE):
                raise SettingError(f"{flag(name)} {value} is out of range: use a value in [0, {MAX_SCALE:g}]")
        if not 1 <= self.t_min <= self.t_max < num_train_timesteps:
            raise SettingError(
                f"timestep range {flag('t_min')} {self.t_min} .. {flag('t_max')} {self.t_max} is invalid: "
                f"need 1 <= t-min <= t-max < {num_train_timesteps}"
            )
        if self.num_particles < 1:
            raise SettingError(f"{flag('num_particles')} {self.num_particles}: use at least 1")
        if not (math.isfinite(self.bandwidth_multiplier) and self.bandwidth_multiplier > 0):
            raise SettingError(f"{flag('bandwidth_multiplier')} {self.bandwidth_multiplier}: use a positive number")
        if self.baseline not in ("image", "noise"):
            raise SettingError(f"{flag('baseline')} {self.baseline!r}: use 'image' or 'noise'")

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
    skipped: bool = False
    """The step's gradients were not finite (a float16 overflow): they were dropped, so the caller's optimiser
    step leaves every parameter as it was."""
    noisy_latents: torch.Tensor | None = None
    pred_original: torch.Tensor | None = None
    """``(z_t - sqrt(1 - a_t) E_tgt) / sqrt(a_t)``: the latent the prior is pulling each view towards."""

    @property
    def unet_seconds(self) -> float:
        return self.timings.get("unet", 0.0)

    @property
    def step_seconds(self) -> float:
        return self.timings.get("total", 0.0)


def _all_finite(tensors: Iterable[torch.Tensor | None]) -> bool:
    """Whether every given tensor is finite, with one host sync."""
    checks = [torch.isfinite(t).all() for t in tensors if t is not None]
    return bool(torch.stack([c.cpu() for c in checks]).all()) if checks else True


class CSDEditor:
    """Runs CSD-Edit steps for any :class:`Scene` with one :class:`Prior`.

    A step whose gradients are not finite (float16 overflow in the prior's VAE or UNet) is skipped as
    mixed-precision training does: its gradients are dropped before the caller's optimiser step, the prior
    backs off (a lower gradient scale), the first skip is said once through ``log``, and ``skipped_steps``
    counts them. No NaN or inf ever reaches a parameter.
    """

    def __init__(
        self,
        guidance: Prior,
        config: CSDEditConfig,
        log: Callable[[str], None] | None = None,
        group: ParticleGroup | None = None,
    ) -> None:
        self.guidance = guidance
        self.config = config
        self.group = group or ParticleGroup()
        """The processes the step's particles are spread over (this one alone by default)."""
        self.generator = torch.Generator().manual_seed(config.seed)  # the same draws on every rank
        self.skipped_steps = 0
        self._log = log or (lambda message: print(message, file=sys.stderr))
        self._samplers: dict[int, ViewSampler] = {}

    @property
    def config(self) -> CSDEditConfig:
        """The step's settings; assigning new ones (the viewer does, between steps) validates them."""
        return self._config

    @config.setter
    def config(self, config: CSDEditConfig) -> None:
        config.validate(self.guidance.num_train_timesteps)
        self._config = config

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
        counters = self.guidance.stats
        start, vae0, unet0 = time.perf_counter(), counters.vae_seconds, counters.unet_seconds
        ids = list(ids) if ids is not None else self.sample_ids(scene)
        share = self._share(scene, ids)
        try:
            return self._step(scene, ids, share, keep_preview, start, vae0, unet0)
        finally:
            if hasattr(scene, "share"):
                scene.share = None

    def _step(
        self, scene: Scene, ids: list[int], share: Share, keep_preview: bool, start: float, vae0: float, unet0: float
    ) -> StepStats:
        cfg, counters = self.config, self.guidance.stats
        mine = share.own_ids
        source_latents, conditioning = scene.sources(mine)
        latents = scene.latents(mine)
        latents_done, vae_latents = time.perf_counter(), counters.vae_seconds

        # 1. One timestep for all views, one noise per view, shared by target and source (drawn for every view
        #    of the step on every rank; each keeps its own rows).
        timestep = int(torch.randint(cfg.t_min, cfg.t_max + 1, (1,), generator=self.generator))
        noise = torch.randn((len(ids), *latents.shape[1:]), generator=self.generator)[share.own].to(latents.device)
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
            # 4. SVGD coupling on the noisy latents of all the step's views (gathered from every rank).
            weight = float(1 - alpha)
            every_noisy = self.group.gather(noisy, len(ids))
            every_residual = self.group.gather(out.residual, len(ids))
            grad = csd_gradient(every_noisy, every_residual, weight, cfg.coupling, cfg.bandwidth_multiplier)
            every_grad_norm = grad.float().norm()
            grad = grad[share.own]
        # 5. Into the scene's parameters, without a loss value.
        backward_start, vae_backward = time.perf_counter(), counters.vae_seconds
        backward = getattr(scene, "backward", None)
        if backward is None:
            latents.backward(gradient=grad.to(latents.dtype))
            losses = None
        else:
            losses = backward(latents, grad.to(latents.dtype))
        self.group.sum_gradients(scene.parameters())  # every rank then holds the whole step's gradient
        parameters = [p for p in scene.parameters() if p.grad is not None]
        skipped = not _all_finite([p.grad for p in parameters])
        if skipped:
            self._skip(parameters)
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
            ids=ids,  # the whole step's views; this rank rendered ``share.own_ids``
            timestep=timestep,
            weight=weight,
            residual_norm=float(every_residual.norm()),
            grad_norm=float(every_grad_norm),
            unet_samples=out.unet_samples,
            timings=timings,
            losses=dict(losses or {}),
            skipped=skipped,
            noisy_latents=noisy if keep_preview else None,
            pred_original=pred_original,
        )

    def _share(self, scene: Scene, ids: list[int]) -> Share:
        share = self.group.share(ids)
        if not share.own_ids:
            raise SettingError(
                f"{len(ids)} views per step cannot be spread over {self.group.world_size} processes: draw at least "
                f"one view per process (--num-particles {self.group.world_size} or more)"
            )
        if hasattr(scene, "share"):
            scene.share = share
        return share

    def _skip(self, parameters: Sequence[torch.Tensor]) -> None:
        """Drop a step's non-finite gradients; the optimiser then leaves these parameters as they were."""
        for p in parameters:
            p.grad = None
        self.skipped_steps += 1
        action = self.guidance.back_off()
        if self.skipped_steps == 1:
            self._log(
                "csd-edit: a step's gradients were not finite (float16 overflow): the step was skipped, no "
                f"parameter changed{f', {action}' if action else ''}; later skips are counted (csd_skipped_steps)"
            )
