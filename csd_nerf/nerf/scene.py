"""A nerfacto scene seen through its training cameras: the :class:`~csd_nerf.editor.Scene` of ``csd-edit``.

A view id is a training camera's index. ``latents(views)`` renders those views at the render size and encodes
them with the prior's VAE; ``backward(latents, grad)`` carries the CSD gradient into the fields, either through
one graph (``direct``) or by deferred backpropagation (``deferred``: renders without a graph, then per-view VAE
backward and chunked re-rendering, so memory does not grow with resolution or views). ``auto`` measures the graph
a ray holds on its first (deferred) step and goes direct when the whole step's graph fits the memory budget.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import torch

from csd_nerf.editor import Prior
from csd_nerf.nerf.deferred import ViewRenderer, saved_tensor_bytes
from csd_nerf.nerf.region import Box, weight_gradient
from csd_nerf.nerf.view_scene import ViewScene
from csd_nerf.nerf.views import TrainViews

__all__ = ["NerfScene", "Backprop", "default_memory_budget"]

Backprop = Literal["auto", "deferred", "direct"]


def default_memory_budget(device: torch.device) -> int:
    """Bytes a direct-backpropagation graph may take: half the free GPU memory, or a quarter of the free RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.5 * free)
    try:
        return int(0.25 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):  # not Linux
        return 1 << 30


class NerfScene(ViewScene):
    """Training views of a nerfacto model as the views of the edit.

    Args:
        renderer: renders the training views of the model in chunks.
        views: cameras and source images at the render size.
        guidance: the prior (its VAE encodes renders and sources).
        backprop: ``deferred``, ``direct`` or ``auto`` (see the module doc).
        preservation_weight: weight of an MSE towards the source images (0: off).
        seed: seeds the per-step render seeds.
        memory_budget: bytes the ``auto`` mode lets a direct step's graph take (``None``: :func:`default_memory_budget`).
        log: where ``auto`` says what it chose (``print`` by default).
    """

    def __init__(
        self,
        renderer: ViewRenderer,
        views: TrainViews,
        guidance: Prior,
        backprop: Backprop = "auto",
        preservation_weight: float = 0.0,
        seed: int = 0,
        memory_budget: int | None = None,
        log=print,
    ) -> None:
        if backprop not in ("auto", "deferred", "direct"):
            raise ValueError(f"backprop {backprop!r}: use 'auto', 'deferred' or 'direct'")
        super().__init__(renderer.model, views, guidance, preservation_weight)
        self.renderer = renderer
        self.backprop = backprop
        self.memory_budget = memory_budget
        self._log = log
        self._generator = torch.Generator().manual_seed(seed)
        self._step: tuple[list[int], int, torch.Tensor, dict[str, torch.Tensor], bool] | None = None
        self._vae_graph_bytes: int | None = None
        self._chosen: str | None = None if backprop == "auto" else backprop

    @property
    def mode(self) -> str:
        """The backpropagation this step uses (``auto`` runs deferred until it has measured the graph)."""
        return self._chosen or "deferred"

    def latents(self, views: Sequence[int]) -> torch.Tensor:
        """Render views and return their latents ``[n, 4, h/f, w/f]``; :meth:`backward` completes the step."""
        ids = [int(i) for i in views]
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self._generator))
        direct = self.mode == "direct"
        renders, regs, inside = self.renderer.render(ids, seed, with_graph=direct)
        self.last_renders = renders.detach()
        images = renders.to(self.guidance.device)
        if direct:
            if inside is not None:  # the edit reaches a pixel as far as its ray lies inside the region
                images = weight_gradient(images, inside.to(images.device))
            latents = self.guidance.encode_images(images)
        else:
            with torch.no_grad():
                latents = self.guidance.encode_images(images)
        self._step = (ids, seed, renders, regs, direct, inside)
        return latents

    def set_region(self, box: Box | None, preservation_weight: float = 0.0) -> None:
        super().set_region(box, preservation_weight)
        self.renderer.region = box

    def backward(self, latents: torch.Tensor, grad: torch.Tensor) -> dict[str, float]:
        """Carry the latent gradient ``grad`` into the model's parameters; returns the extra terms' values."""
        if self._step is None:
            raise RuntimeError("backward() without latents(): the editor renders the views first")
        ids, seed, renders, regs, direct, inside = self._step
        self._step = None
        outside = None if inside is None else 1 - inside
        if direct:
            losses = dict(regs)
            extra = sum(regs.values(), torch.zeros((), device=latents.device))
            preservation = self.preservation(renders, ids, outside)
            if preservation is not None:
                losses["preservation_loss"] = preservation
                extra = extra + preservation
            ((latents * grad).sum() + self.loss_share * extra).backward()
        else:
            losses = self._deferred_backward(ids, seed, renders, grad, inside)
        self._choose(len(ids), renders.shape[-2] * renders.shape[-1])
        # One host sync for all the step's values.
        names = list(losses)
        values = torch.stack([torch.as_tensor(losses[k], dtype=torch.float32).detach().cpu() for k in names]).tolist()
        return dict(zip(names, values, strict=True))

    def _deferred_backward(
        self, ids: list[int], seed: int, renders: torch.Tensor, grad: torch.Tensor, inside: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        pixel_grads = torch.empty_like(renders)
        for i in range(len(ids)):  # one view's VAE graph at a time
            image = renders[i : i + 1].to(self.guidance.device).requires_grad_(True)
            measure = [0]
            with saved_tensor_bytes(measure):
                latent = self.guidance.encode_images(image)
            latent.backward(grad[i : i + 1])
            self._vae_graph_bytes = measure[0]
            pixel_grads[i] = image.grad[0].to(renders.device)
        if inside is not None:  # the edit reaches a pixel as far as its ray lies inside the region
            pixel_grads *= inside.to(pixel_grads.device)
        losses: dict[str, torch.Tensor] = {}
        held = renders.detach().requires_grad_(True)
        preservation = self.preservation(held, ids, None if inside is None else 1 - inside)
        if preservation is not None:  # its pixel gradient joins the cached one: no second graph
            losses["preservation_loss"] = preservation
            pixel_grads += self.loss_share * torch.autograd.grad(preservation, held)[0]
        losses.update(self.renderer.backpropagate(ids, seed, pixel_grads, self.loss_share))
        return losses

    def direct_graph_bytes(self, num_views: int, pixels: int) -> int | None:
        """The graph a direct step of ``num_views`` views of ``pixels`` pixels would hold (once measured)."""
        if self.renderer.graph_bytes_per_ray is None or self._vae_graph_bytes is None:
            return None
        return int(num_views * (pixels * self.renderer.graph_bytes_per_ray + self._vae_graph_bytes))

    def _choose(self, num_views: int, pixels: int) -> None:
        if self._chosen is not None:
            return
        estimate = self.direct_graph_bytes(num_views, pixels)
        if estimate is None:
            return
        device = torch.device(self.renderer.model.device)
        budget = self.memory_budget if self.memory_budget is not None else default_memory_budget(device)
        self._chosen = "direct" if estimate <= budget else "deferred"
        why = "fits" if self._chosen == "direct" else "exceeds"
        self._log(
            f"csd-edit: backprop auto -> {self._chosen} (a direct step's graph, about {estimate / 2**20:.0f} MiB, "
            f"{why} the budget of {budget / 2**20:.0f} MiB; --pipeline.backprop and --pipeline.memory-budget-gb "
            f"choose)"
        )
