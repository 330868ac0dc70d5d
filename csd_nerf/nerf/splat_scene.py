"""Gaussian splats seen through their training cameras: the :class:`~csd_nerf.editor.Scene` of ``csd-edit-splat``.

A view id is a training camera's index. ``latents(views)`` renders all the step's views in one rasterisation
with a graph and encodes them with the prior's VAE; ``backward`` is one ``backward`` through VAE and rasteriser
into means, scales, rotations, opacities and colours. With an edit region, only the Gaussians inside it keep
their gradients: the rest of the scene is frozen. A Gaussian inside can still spread over pixels outside the
box, so the edit reaches a pixel as far as the region accounts for it, and a preservation loss holds the rest of
each pixel to its source (measured with the known-answer local edit: without it the outside lost 0.64 dB).

Why no deferred backpropagation here: a splat render's graph is per-Gaussian and per-intersection state, a few
MB for a 512 px view (against the GBs of a NeRF's per-sample MLP activations), and small beside the VAE encoder's
own graph. Rendering each view twice, as deferred backpropagation does, would only double the cheap part.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from csd_nerf.editor import Prior
from csd_nerf.nerf.region import Box, weight_gradient
from csd_nerf.nerf.splat_model import CSDSplatModel
from csd_nerf.nerf.view_scene import ViewScene
from csd_nerf.nerf.views import TrainViews

__all__ = ["SplatScene"]


class SplatScene(ViewScene):
    """Training views of a splat model as the views of the edit.

    Args:
        model: the splat model (training mode: densification statistics are gathered).
        views: cameras and source images at the render size.
        guidance: the prior (its VAE encodes renders and sources).
        preservation_weight: weight of an MSE towards the source images (0: off).
    """

    mode = "direct"

    model: CSDSplatModel

    def __init__(
        self, model: CSDSplatModel, views: TrainViews, guidance: Prior, preservation_weight: float = 0.0
    ) -> None:
        super().__init__(model, views, guidance, preservation_weight)
        self._step: tuple[list[int], torch.Tensor, dict, torch.Tensor | None, torch.Tensor | None] | None = None

    def set_region(self, box: Box | None, preservation_weight: float = 0.0) -> None:
        """Edit only the Gaussians inside ``box`` (the rest are frozen); ``preservation_weight`` holds the pixels
        the region does not account for to their sources."""
        super().set_region(box, preservation_weight)
        self.model.region = box

    def _camera(self, index: int):
        camera = self.views.camera(index)
        camera.metadata = {"cam_idx": index}  # which pose correction applies
        return camera

    def latents(self, views: Sequence[int]) -> torch.Tensor:
        """Render the views with a graph and return their latents ``[n, 4, h/f, w/f]``."""
        ids = [int(i) for i in views]
        cameras = [self._camera(i) for i in ids]
        renders, info = self.model.render_views(cameras, self.model.background_color)
        self.last_renders = renders.detach()
        inside = weight = None
        images = renders.to(self.guidance.device)
        if self.region is not None:  # the edit reaches a pixel as far as the region's Gaussians make it
            weight = self.region.weights(self.model.means.detach().float())
            inside = self.model.render_share(cameras, weight)
            images = weight_gradient(images, inside.to(images.device))
        self._step = (ids, renders, info, inside, weight)
        return self.guidance.encode_images(images)

    def backward(self, latents: torch.Tensor, grad: torch.Tensor) -> dict[str, float]:
        """One backward through the VAE and the rasteriser; returns the extra terms' values."""
        if self._step is None:
            raise RuntimeError("backward() without latents(): the editor renders the views first")
        ids, renders, info, inside, weight = self._step
        self._step = None
        loss = (latents * grad).sum()
        losses: dict[str, float] = {}
        preservation = self.preservation(renders, ids, None if inside is None else 1 - inside)
        if preservation is not None:
            loss = loss + self.loss_share * preservation
            losses["preservation_loss"] = float(preservation.detach())
        loss.backward()
        if weight is not None:
            self._freeze_outside(info, weight)
        return losses

    @torch.no_grad()
    def _freeze_outside(self, info: dict, weight: torch.Tensor) -> None:
        """Only Gaussians whose means lie inside the region (``weight`` ``[N]``, fading over its margin) keep their
        gradients; those outside neither move nor count toward densification (their screen-space gradients are
        dropped too)."""
        for param in self.model.gauss_params.values():
            if param.grad is not None:
                param.grad.mul_(weight.view(-1, *[1] * (param.dim() - 1)).to(param.grad.dtype))
        means2d = info.get("means2d")
        kept = means2d is not None and (means2d.is_leaf or means2d.retains_grad)  # densification asked for them
        for name in ("grad", "absgrad") if kept else ("absgrad",):
            stat = getattr(means2d, name, None)
            if stat is not None and stat.shape[-2] == weight.shape[0]:  # [cameras, Gaussians, 2] (unpacked)
                stat.mul_(weight.view(1, -1, 1).to(stat.dtype))
