"""Rendering whole views of a nerfacto model for score distillation, with memory that does not grow with
resolution or views.

Deferred backpropagation: render every view without a graph, let the caller turn the images into a pixel
gradient, then re-render the same rays chunk by chunk with a graph and backpropagate each chunk's share of that
gradient. Only one chunk's graph is alive at a time. Each view is rendered under a seed of its own (the step's
and the view's) and its chunks are visited in the same order in both passes, so the re-render draws exactly the
samples of the first pass (nerfacto jitters its samples while training), which makes the result identical to
backpropagating through one big graph; and a view renders the same whichever process renders it.

nerfacto's own regularisers (interlevel, distortion, and the normal losses when normals are predicted) are
computed per chunk and weighted by the chunk's share of all rendered rays, which equals their mean over every
rendered ray. Whether the proposal networks train on a step is decided once per step, as one nerfacto forward
pass would (see :meth:`~csd_nerf.nerf.model.CSDNerfactoModel.proposal_updates`), and every re-rendered chunk of
such a step trains them. Values stay on the device until the step ends: one host sync per step, not per chunk.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.model_components.losses import distortion_loss, interlevel_loss
from nerfstudio.models.nerfacto import NerfactoModel

from csd_nerf.nerf.region import Box, ray_inside_fraction

__all__ = ["ViewRenderer", "regularisers", "saved_tensor_bytes"]


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


@contextmanager
def saved_tensor_bytes(total: list[int]) -> Iterator[None]:
    """Add to ``total[0]`` the bytes of every tensor autograd saves for backward inside (each storage once):
    the memory a graph holds, measured the same way on any device."""
    seen: set[int] = set()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total[0] += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield


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
    region: Box | None = None
    """An edit region: :meth:`render` also returns each pixel's share of rendered weight inside it."""

    def __post_init__(self) -> None:
        self.cameras = self.cameras.to(self.model.device)
        self.graph_bytes_per_ray: float | None = None
        """Measured on the first re-render: what one ray's graph holds (for choosing direct backpropagation)."""

    @property
    def size(self) -> tuple[int, int]:
        return int(self.cameras.height[0]), int(self.cameras.width[0])

    def rays(self, index: int):
        """The flattened ray bundle of camera ``index`` on the model's device (its indices name that camera)."""
        return self.cameras.generate_rays(camera_indices=index, keep_shape=True).flatten()

    def _chunks(self, num_rays: int) -> list[tuple[int, int]]:
        return [(s, min(s + self.chunk, num_rays)) for s in range(0, num_rays, self.chunk)]

    @contextmanager
    def _pass(self, proposals_train: bool) -> Iterator[None]:
        """One pass over the step's views: the proposal networks with or without a graph."""
        updates = getattr(self.model, "proposal_updates", None)
        with updates(proposals_train) if updates is not None else nullcontext():
            yield

    @contextmanager
    def _view(self, seed: int, index: int) -> Iterator[None]:
        """The RNG of one view's render, seeded by the step's seed and the view (forked, so the caller's streams
        are untouched): a view's samples do not depend on which other views are rendered, in which order or in
        which process."""
        device = self.model.device
        devices = [device.index or 0] if torch.device(device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed((seed * 1_000_003 + int(index)) % (1 << 62))
            yield

    def _proposal_update_due(self) -> bool:
        due = getattr(self.model, "proposal_update_due", None)
        return bool(due()) if due is not None else True

    def _finish(self, updated: bool) -> None:
        finish = getattr(self.model, "finish_proposal_step", None)
        if finish is not None:
            finish(updated)

    def render(
        self, indices: Sequence[int], seed: int, with_graph: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
        """Render views ``[n, 3, h, w]`` in ``[0, 1]``, the regularisers (scaled by ``regulariser_weight``) and,
        with a region, each pixel's share of rendered weight inside it ``[n, 1, h, w]`` (no graph; else None),
        from the samples the render already has.

        ``with_graph=False`` keeps no graph (the first pass of deferred backpropagation; it never spends the step's
        proposal update); ``True`` keeps the whole graph (direct backpropagation, whose memory grows with views
        and resolution) and is the step's one pass.
        """
        h, w = self.size
        total = len(indices) * h * w
        images, insides, reg_totals = [], [], {}
        update = with_graph and self._proposal_update_due()
        with torch.set_grad_enabled(with_graph), self._pass(update):
            for index in indices:
                rays = self.rays(int(index))
                pixels, inside = [], []
                with self._view(seed, index):
                    for start, stop in self._chunks(len(rays)):
                        outputs = self.model(rays[start:stop])
                        pixels.append(outputs["rgb"].float())
                        if self.region is not None:
                            inside.append(self._inside(outputs))
                        for name, value in regularisers(self.model, outputs).items():
                            scaled = value * (self.regulariser_weight * (stop - start) / total)
                            reg_totals[name] = reg_totals.get(name, 0.0) + scaled
                images.append(torch.cat(pixels).reshape(h, w, 3).permute(2, 0, 1))
                if inside:
                    insides.append(torch.cat(inside).reshape(h, w, 1).permute(2, 0, 1))
        if with_graph:
            self._finish(update)
        return torch.stack(images), reg_totals, (torch.stack(insides) if insides else None)

    @torch.no_grad()
    def _inside(self, outputs: dict) -> torch.Tensor:
        """Each ray's share of rendered weight inside the region ``[R, 1]``, from the final sampling level."""
        samples = outputs["ray_samples_list"][-1]
        points = samples.frustums.get_positions().detach()
        return ray_inside_fraction(outputs["weights_list"][-1].detach().float(), self.region.weights(points.float()))

    def backpropagate(
        self, indices: Sequence[int], seed: int, pixel_grads: torch.Tensor, regulariser_share: float = 1.0
    ) -> dict[str, torch.Tensor]:
        """Second pass: re-render chunk by chunk with a graph and backpropagate ``pixel_grads`` ``[n, 3, h, w]``
        together with the regularisers (their gradient times ``regulariser_share``: this process's share of a
        step spread over several) into the model's parameters' ``.grad``.

        Returns the regularisers' values (detached, on the device).
        """
        h, w = self.size
        total = len(indices) * h * w
        reg_totals: dict[str, torch.Tensor] = {}
        update = self._proposal_update_due()
        measure = [0] if self.graph_bytes_per_ray is None else None
        with self._pass(update):
            for i, index in enumerate(indices):
                rays = self.rays(int(index))
                grads = pixel_grads[i].permute(1, 2, 0).reshape(-1, 3).to(self.model.device)
                with self._view(seed, index):
                    for start, stop in self._chunks(len(rays)):
                        with saved_tensor_bytes(measure) if measure is not None else nullcontext():
                            outputs = self.model(rays[start:stop])
                            loss = (outputs["rgb"].float() * grads[start:stop]).sum()
                            for name, value in regularisers(self.model, outputs).items():
                                scaled = value * (self.regulariser_weight * (stop - start) / total)
                                loss = loss + regulariser_share * scaled
                                reg_totals[name] = reg_totals.get(name, 0.0) + scaled.detach()
                        if measure is not None:
                            self.graph_bytes_per_ray = measure[0] / (stop - start)
                            measure = None
                        if loss.requires_grad:
                            loss.backward()
        self._finish(update)
        return reg_totals
