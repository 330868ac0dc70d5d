"""What the 3D scenes share: training views as particles, their cached sources, and the preservation loss.

:class:`NerfScene` and :class:`SplatScene` differ only in how they render their views and carry the gradient
back; the views, the sources the prior is conditioned on and the pull toward the source images are the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from csd_nerf.distributed import Share
from csd_nerf.editor import Prior
from csd_nerf.guidance.source_cache import SourceCache
from csd_nerf.nerf.region import Box
from csd_nerf.nerf.views import TrainViews

__all__ = ["ViewScene"]


class ViewScene:
    """Training views of a model as the particles of the edit.

    Args:
        model: the scene's model (its parameters receive the edit's gradients).
        views: cameras and source images at the render size.
        guidance: the prior (its VAE encodes renders and sources).
        preservation_weight: weight of an MSE between the renders and the source images (0: off).
    """

    def __init__(
        self, model: torch.nn.Module, views: TrainViews, guidance: Prior, preservation_weight: float = 0.0
    ) -> None:
        self.model, self.views, self.guidance = model, views, guidance
        self.preservation_weight = preservation_weight
        self.condition_on: TrainViews | None = None
        """Views whose images the prior is conditioned on, when not the source images (the known-answer test
        prior is conditioned on its targets); set before the first step."""
        self._sources = SourceCache(self._encode_sources)
        self.last_renders: torch.Tensor | None = None
        self.region: Box | None = None
        self.region_preservation = 0.0
        self.share: Share | None = None
        """The step's views and this process's part of them (set by the editor)."""

    @property
    def loss_share(self) -> float:
        """What this process's view-averaged extra losses (regularisers, preservation) are weighted by: its share
        of the step's views, so that their sum over processes is the one-process value (1 in one process)."""
        return self.share.fraction if self.share is not None else 1.0

    def set_region(self, box: Box | None, preservation_weight: float = 0.0) -> None:
        """Edit only inside ``box`` from the next step on (None: the whole scene); ``preservation_weight`` pulls
        what is rendered outside it toward the source, where a scene cannot freeze the outside."""
        self.region = box
        self.region_preservation = preservation_weight if box is not None else 0.0

    @property
    def num_views(self) -> int:
        return len(self.views)

    def parameters(self) -> Iterable[torch.Tensor]:
        return self.model.parameters()

    def _encode_sources(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.guidance.device
        latents, conditioning = self.guidance.encode_source(self.views.source_images(ids).to(device))
        if self.condition_on is not None:
            _, conditioning = self.guidance.encode_source(self.condition_on.source_images(ids).to(device))
        return latents, conditioning

    def sources(self, views: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Source latents and the prior's conditioning of these views, encoded once per view."""
        return self._sources(views)

    def preservation(
        self, renders: torch.Tensor, ids: list[int], outside: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The pull toward the source images, or None when off: ``weight * mean((render - source)^2)`` over the
        views' pixels, plus ``region_preservation * sum(outside * (render - source)^2) / n`` where ``outside``
        ``[n, 1, h, w]`` says how much of each pixel lies outside the region.

        The region's term is summed over pixels (averaged over views, as the CSD gradient is): its pull on a pixel
        does not fade with resolution, so it can hold the outside against an edit whose own per-pixel gradient
        does not either. nerfacto's field is shared by all space, and an edit of a few pixels would otherwise
        drag the rest along (measured with the known-answer edit)."""
        use_region = outside is not None and self.region_preservation > 0
        if self.preservation_weight <= 0 and not use_region:
            return None
        sources = self.views.source_images(ids).to(renders.device)
        error = (renders - sources).square()
        loss = renders.new_zeros(())
        if self.preservation_weight > 0:
            loss = loss + self.preservation_weight * error.mean()
        if use_region:
            loss = loss + self.region_preservation * (outside.to(renders.device) * error).sum() / len(ids)
        return loss
