"""Training views of a NeRF as CSD particles: the scene the shared CSD-Edit step works on."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from csd_nerf.guidance import IP2PGuidance, SourceCache
from csd_nerf.nerf.deferred import ViewRenderer
from csd_nerf.nerf.views import TrainViews

__all__ = ["NerfParticles", "StepTimings"]

Backprop = Literal["deferred", "direct"]


@dataclass
class StepTimings:
    """Seconds spent per phase of one step (UNet time is the editor's)."""

    render: float = 0.0
    vae: float = 0.0
    backward: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)


class NerfParticles:
    """The editor's :class:`~csd_nerf.editor.ParticleScene` for a nerfacto scene; particle id = camera index.

    ``latents(ids)`` renders the views and encodes them. With ``backprop="deferred"`` the renders carry no
    graph: the editor's ``latents.backward(g)`` only fills ``latents.grad``, and :meth:`backpropagate` then
    carries ``g`` through the VAE one view at a time and through the fields one ray chunk at a time.
    With ``backprop="direct"`` everything keeps one graph (the reference, for tests and benchmarks).

    Args:
        renderer: renders the training views of the model.
        views: cameras and source images at the render size.
        guidance: the IP2P prior (its VAE encodes renders and sources).
        backprop: ``deferred`` (memory flat in views and resolution) or ``direct``.
        preservation_weight: weight of an MSE towards the source images (0: off).
        seed: seeds the per-step render seeds.
    """

    def __init__(
        self,
        renderer: ViewRenderer,
        views: TrainViews,
        guidance: IP2PGuidance,
        backprop: Backprop = "deferred",
        preservation_weight: float = 0.0,
        seed: int = 0,
    ) -> None:
        if backprop not in ("deferred", "direct"):
            raise ValueError(f"backprop {backprop!r}: use 'deferred' or 'direct'")
        self.renderer, self.views, self.guidance = renderer, views, guidance
        self.backprop = backprop
        self.preservation_weight = preservation_weight
        self._generator = torch.Generator().manual_seed(seed)
        self._sources = SourceCache(self._encode_sources)
        self._pending: tuple[list[int], list[int], torch.Tensor, torch.Tensor] | None = None
        self.timings = StepTimings()
        self.last_renders: torch.Tensor | None = None

    @property
    def num_particles(self) -> int:
        return len(self.views)

    def _encode_sources(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.guidance.encode_source(self.views.source_images(ids).to(self.guidance.device))

    def sources(self, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Source latents and IP2P conditioning of these views, encoded once per view."""
        vae_before = self.guidance.stats.vae_seconds
        out = self._sources(ids)
        self.timings.vae += self.guidance.stats.vae_seconds - vae_before
        return out

    def _preservation(self, renders: torch.Tensor, ids: list[int]) -> torch.Tensor:
        sources = self.views.source_images(ids).to(renders.device)
        return self.preservation_weight * (renders - sources).square().mean()

    def latents(self, ids: Sequence[int]) -> torch.Tensor:
        """Render views ``ids`` and return their latents ``[n, 4, h/8, w/8]``, differentiable (see class doc)."""
        ids = [int(i) for i in ids]
        self.timings = StepTimings()
        seeds = torch.randint(0, 2**31 - 1, (len(ids),), generator=self._generator).tolist()
        start = time.perf_counter()
        direct = self.backprop == "direct"
        renders, regs = self.renderer.render(ids, seeds, with_graph=direct)
        self.timings.render = time.perf_counter() - start
        self.last_renders = renders.detach()
        if direct:
            # The regularisers and the preservation term share the render graph with the CSD gradient.
            extra = sum(regs.values(), torch.zeros((), device=renders.device))
            if self.preservation_weight > 0:
                regs["preservation_loss"] = self._preservation(renders, ids)
                extra = extra + regs["preservation_loss"]
            self.timings.losses = {k: float(v.detach()) for k, v in regs.items()}
            if extra.requires_grad:
                extra.backward(retain_graph=True)
        vae_before = self.guidance.stats.vae_seconds
        images = renders.to(self.guidance.device)
        if direct:
            latents = self.guidance.encode_images(images)
        else:
            with torch.no_grad():
                latents = self.guidance.encode_images(images)
            latents.requires_grad_(True)
            self._pending = (ids, seeds, renders, latents)
        self.timings.vae += self.guidance.stats.vae_seconds - vae_before
        return latents

    def backpropagate(self) -> StepTimings:
        """Carry the latent gradient the editor left in ``latents.grad`` into the model's parameters.

        A no-op for ``direct`` (the editor's backward already reached the parameters). Returns the step's timings.
        """
        if self.backprop == "direct":
            return self.timings
        if self._pending is None:
            raise RuntimeError("backpropagate() without latents(): call the editor step first")
        ids, seeds, renders, latents = self._pending
        self._pending = None
        if latents.grad is None:
            raise RuntimeError("the latents received no gradient: the editor step did not call backward")
        start = time.perf_counter()
        vae_before = self.guidance.stats.vae_seconds
        pixel_grads = torch.empty_like(renders)
        for i in range(len(ids)):  # one view's VAE graph at a time
            image = renders[i : i + 1].to(self.guidance.device).requires_grad_(True)
            self.guidance.encode_images(image).backward(latents.grad[i : i + 1])
            pixel_grads[i] = image.grad[0].to(renders.device)
        losses: dict[str, float] = {}
        if self.preservation_weight > 0:
            sources = self.views.source_images(ids).to(renders.device)
            diff = renders - sources
            losses["preservation_loss"] = float(self.preservation_weight * diff.square().mean())
            pixel_grads += (2.0 * self.preservation_weight / diff.numel()) * diff
        losses.update(self.renderer.backpropagate(ids, seeds, pixel_grads))
        vae = self.guidance.stats.vae_seconds - vae_before
        self.timings.vae += vae
        self.timings.backward = time.perf_counter() - start - vae
        self.timings.losses = losses
        return self.timings
