"""Rendering whole views for score distillation with memory that does not grow with resolution or views.

Deferred backpropagation: render every view without a graph, let the caller turn the images into a pixel
gradient, then re-render the same rays chunk by chunk with a graph and backpropagate each chunk's share of
that gradient. Only one chunk's graph is alive at a time. Each chunk is rendered under its own fixed seed so
the re-render draws exactly the samples of the first pass (nerfacto jitters its samples while training),
which makes the result identical to backpropagating through one big graph.

nerfacto's own regularisers (interlevel, distortion, and the normal losses when normals are predicted) are
computed per chunk and weighted by the chunk's share of all rendered rays, which equals their mean over
every rendered ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.model_components.losses import distortion_loss, interlevel_loss
from nerfstudio.models.nerfacto import NerfactoModel

__all__ = ["ViewRenderer", "regularisers"]


def regularisers(model: NerfactoModel, outputs: dict) -> dict[str, torch.Tensor]:
    """nerfacto's training regularisers of one ray batch, with its multipliers (means over the batch's rays)."""
    cfg = model.config
    terms = {
        "interlevel_loss": cfg.interlevel_loss_mult
        * interlevel_loss(outputs["weights_list"], outputs["ray_samples_list"]),
        "distortion_loss": cfg.distortion_loss_mult
        * distortion_loss(outputs["weights_list"], outputs["ray_samples_list"]),
    }
    if cfg.predict_normals:
        terms["orientation_loss"] = cfg.orientation_loss_mult * outputs["rendered_orientation_loss"].mean()
        terms["pred_normal_loss"] = cfg.pred_normal_loss_mult * outputs["rendered_pred_normal_loss"].mean()
    return terms


@dataclass
class ViewRenderer:
    """Renders training views of a nerfacto model in ray chunks, reproducibly.

    Args:
        model: the nerfacto model (in training mode, so pose corrections and regularisers apply).
        cameras: all training cameras at the render size; a view's index is its camera index.
        chunk: rays per chunk (one chunk's graph is the memory high-water mark of the backward pass).
        regulariser_weight: multiplies nerfacto's regularisers (0 switches them off).
    """

    model: NerfactoModel
    cameras: Cameras
    chunk: int = 4096
    regulariser_weight: float = 1.0

    def __post_init__(self) -> None:
        self.cameras = self.cameras.to(self.model.device)

    def rays(self, index: int):
        """The flattened ray bundle of camera ``index`` on the model's device (its indices name that camera)."""
        return self.cameras.generate_rays(camera_indices=index, keep_shape=True).flatten()

    def _render_chunk(self, rays, start: int, stop: int, seed: int) -> dict:
        device = rays.origins.device
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return self.model(rays[start:stop])

    def _chunks(self, num_rays: int) -> list[tuple[int, int]]:
        return [(s, min(s + self.chunk, num_rays)) for s in range(0, num_rays, self.chunk)]

    def render(
        self, indices: Sequence[int], seeds: Sequence[int], with_graph: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Render views ``[n, 3, h, w]`` in ``[0, 1]`` and the regularisers (scaled by ``regulariser_weight``).

        ``with_graph=False`` keeps no graph (the first pass of deferred backpropagation); ``True`` keeps the
        whole graph (direct backpropagation, whose memory grows with views and resolution).
        """
        h, w = int(self.cameras.height[0]), int(self.cameras.width[0])
        total = len(indices) * h * w
        images, reg_totals = [], {}
        with torch.set_grad_enabled(with_graph):
            for index, seed in zip(indices, seeds, strict=True):
                rays = self.rays(int(index))
                pixels = []
                for k, (start, stop) in enumerate(self._chunks(len(rays))):
                    outputs = self._render_chunk(rays, start, stop, seed + k)
                    pixels.append(outputs["rgb"].float())
                    for name, value in regularisers(self.model, outputs).items():
                        scaled = value * (self.regulariser_weight * (stop - start) / total)
                        reg_totals[name] = reg_totals.get(name, 0.0) + scaled
                images.append(torch.cat(pixels).reshape(h, w, 3).permute(2, 0, 1))
        return torch.stack(images), reg_totals

    def backpropagate(
        self, indices: Sequence[int], seeds: Sequence[int], pixel_grads: torch.Tensor
    ) -> dict[str, float]:
        """Second pass: re-render chunk by chunk with a graph and backpropagate ``pixel_grads`` ``[n, 3, h, w]``
        together with the regularisers into the model's parameters' ``.grad``. Returns the regularisers' values.
        """
        h, w = int(self.cameras.height[0]), int(self.cameras.width[0])
        total = len(indices) * h * w
        reg_totals: dict[str, float] = {}
        for i, (index, seed) in enumerate(zip(indices, seeds, strict=True)):
            rays = self.rays(int(index))
            grads = pixel_grads[i].permute(1, 2, 0).reshape(-1, 3).to(self.model.device)
            for k, (start, stop) in enumerate(self._chunks(len(rays))):
                outputs = self._render_chunk(rays, start, stop, seed + k)
                loss = (outputs["rgb"].float() * grads[start:stop]).sum()
                for name, value in regularisers(self.model, outputs).items():
                    scaled = value * (self.regulariser_weight * (stop - start) / total)
                    loss = loss + scaled
                    reg_totals[name] = reg_totals.get(name, 0.0) + float(scaled.detach())
                if loss.requires_grad:
                    loss.backward()
        return reg_totals
