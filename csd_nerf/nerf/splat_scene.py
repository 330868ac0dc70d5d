"""Gaussian splats seen through their training cameras: the :class:`~csd_nerf.editor.Scene` of ``csd-edit-splat``.

A view id is a training camera's index. ``latents(views)`` renders all the step's views in one rasterisation
with a graph and encodes them with the prior's VAE; ``backward`` is one ``backward`` through VAE and rasteriser
into means, scales, rotations, opacities and colours.

Why no deferred backpropagation here: a splat render's graph is per-Gaussian and per-intersection state, a few
MB for a 512 px view (against the GBs of a NeRF's per-sample MLP activations), and small beside the VAE encoder's
own graph. Rendering each view twice, as deferred backpropagation does, would only double the cheap part.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from csd_nerf.guidance import IP2PGuidance, SourceCache
from csd_nerf.nerf.splat_model import CSDSplatModel
from csd_nerf.nerf.views import TrainViews

__all__ = ["SplatScene"]


class SplatScene:
    """Training views of a splat model as the views of the edit.

    Args:
        model: the splat model (training mode: densification statistics are gathered).
        views: cameras and source images at the render size.
        guidance: the prior (its VAE encodes renders and sources).
        preservation_weight: weight of an MSE towards the source images (0: off).
    """

    mode = "direct"

    def __init__(
        self, model: CSDSplatModel, views: TrainViews, guidance: IP2PGuidance, preservation_weight: float = 0.0
    ) -> None:
        self.model, self.views, self.guidance = model, views, guidance
        self.preservation_weight = preservation_weight
        self._sources = SourceCache(self._encode_sources)
        self._step: tuple[list[int], torch.Tensor] | None = None
        self.last_renders: torch.Tensor | None = None

    @property
    def num_views(self) -> int:
        return len(self.views)

    def _encode_sources(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.guidance.encode_source(self.views.source_images(ids).to(self.guidance.device), views=ids)

    def sources(self, views: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Source latents and IP2P conditioning of these views, encoded once per view."""
        return self._sources(views)

    def _camera(self, index: int):
        camera = self.views.camera(index)
        camera.metadata = {"cam_idx": index}  # which pose correction applies
        return camera

    def latents(self, views: Sequence[int]) -> torch.Tensor:
        """Render the views with a graph and return their latents ``[n, 4, h/f, w/f]``."""
        ids = [int(i) for i in views]
        renders, _ = self.model.render_views([self._camera(i) for i in ids], self.model.background_color)
        self.last_renders = renders.detach()
        self._step = (ids, renders)
        return self.guidance.encode_images(renders.to(self.guidance.device))

    def backward(self, latents: torch.Tensor, grad: torch.Tensor) -> dict[str, float]:
        """One backward through the VAE and the rasteriser; returns the extra terms' values."""
        if self._step is None:
            raise RuntimeError("backward() without latents(): the editor renders the views first")
        ids, renders = self._step
        self._step = None
        loss = (latents * grad).sum()
        losses: dict[str, float] = {}
        if self.preservation_weight > 0:
            sources = self.views.source_images(ids).to(renders.device)
            preservation = self.preservation_weight * (renders - sources).square().mean()
            loss = loss + preservation
            losses["preservation_loss"] = float(preservation.detach())
        loss.backward()
        return losses
