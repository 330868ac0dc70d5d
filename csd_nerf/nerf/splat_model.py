"""Gaussian splats: splatfacto on a CPU (``splatfacto-cpu``) and the splat model ``csd-edit-splat`` edits.

gsplat has only CUDA kernels and stock splatfacto calls ``.cuda()`` itself, so neither trains nor renders on a
CPU. On a CPU these models rasterise with :func:`csd_nerf.nerf.rasterize.rasterize` (a pure-torch drop-in for
``gsplat.rendering.rasterization``, for small scenes) and keep their tensors where they are; on a GPU they are
stock splatfacto with gsplat's kernels. Nothing here changes stock splatfacto.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models import splatfacto
from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig, get_viewmat

from csd_nerf.nerf.model import lazy_lpips
from csd_nerf.nerf.poses import SourcePoses
from csd_nerf.nerf.region import Box

__all__ = [
    "SplatfactoCPUModelConfig",
    "SplatfactoCPUModel",
    "CSDSplatModelConfig",
    "CSDSplatModel",
    "rasterizer_for",
]


def rasterizer_for(device: torch.device) -> Callable[..., Any]:
    """gsplat's CUDA rasteriser on a GPU, our pure-torch one elsewhere (same arguments, same results)."""
    if device.type == "cuda":
        from gsplat.rendering import rasterization

        return rasterization
    from csd_nerf.nerf.rasterize import rasterize

    return rasterize


@contextmanager
def _cpu_splatfacto() -> Iterator[None]:
    """Run stock splatfacto code on a CPU: its ``rasterization`` is ours and its ``.cuda()`` calls keep tensors
    where they are. Entered only around our own models' calls on a CPU, where no ``.cuda()`` could succeed."""
    from csd_nerf.nerf.rasterize import rasterize

    original_rasterization, original_cuda = splatfacto.rasterization, torch.Tensor.cuda
    splatfacto.rasterization = rasterize
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        splatfacto.rasterization = original_rasterization
        torch.Tensor.cuda = original_cuda  # type: ignore[method-assign]


@dataclass
class SplatfactoCPUModelConfig(SplatfactoModelConfig):
    """splatfacto that also trains and renders on a CPU (small scenes), with settings sized for one."""

    _target: type = field(default_factory=lambda: SplatfactoCPUModel)
    num_downscales: int = 0
    """CPU scenes are small already: train at the images' own size from the first step."""
    warmup_length: int = 100
    """Steps before densification starts (splatfacto: 500; CPU runs are short)."""
    refine_every: int = 50
    """Steps between densifications (splatfacto: 100)."""
    sh_degree_interval: int = 250
    """Steps between raising the SH degree (splatfacto: 1000)."""


class SplatfactoCPUModel(SplatfactoModel):
    """splatfacto whose construction and rendering also work without CUDA."""

    config: SplatfactoCPUModelConfig

    def populate_modules(self) -> None:
        # No LPIPS download at construction (offline machines); on a CPU, splatfacto's .cuda() must not run.
        with lazy_lpips(), _cpu_splatfacto() if not torch.cuda.is_available() else nullcontext():
            super().populate_modules()

    def get_outputs(self, camera: Cameras) -> dict[str, Any]:
        if self.device.type == "cuda":
            return super().get_outputs(camera)
        with _cpu_splatfacto():
            return super().get_outputs(camera)


@dataclass
class CSDSplatModelConfig(SplatfactoCPUModelConfig):
    """The splat model of an edit: any splatfacto run's weights, poses frozen, full SH degree from the start."""

    _target: type = field(default_factory=lambda: CSDSplatModel)
    source_config: ClassVar[type] = SplatfactoModelConfig
    """The model config of the runs this one edits (splatfacto and splatfacto-cpu runs)."""
    optimize_cameras: bool = False
    """Keep refining the source run's camera poses while editing (off: edits are not consistent targets)."""
    densify: bool = False
    """Densify and prune the Gaussians during the edit with splatfacto's strategy (off: chosen by the known-answer
    edit, docs/DESIGN.md)."""
    settled_sh: bool = True
    """Use the source run's full SH degree from the first edit step: the source converged, so the edit must not
    restart splatfacto's degree schedule (which would drop view-dependent colour for 1000 steps)."""


class CSDSplatModel(SourcePoses, SplatfactoCPUModel):
    """Splats rendered many views at a time for the edit, densified (or not) as the pipeline says."""

    config: CSDSplatModelConfig
    region: Box | None = None
    """The edit region (set by the pipeline): densification stays inside it."""

    def populate_modules(self) -> None:
        super().populate_modules()
        self.freeze_source_poses()

    def _sh_degree(self) -> int | None:
        if self.config.sh_degree <= 0:
            return None
        if self.config.settled_sh:
            return self.config.sh_degree
        return min(self.step // self.config.sh_degree_interval, self.config.sh_degree)

    def get_outputs(self, camera: Cameras) -> dict[str, Any]:
        if not self.config.settled_sh:
            return super().get_outputs(camera)
        step = self.step
        # splatfacto reads the SH degree off its step: past the schedule's end, it is the full degree.
        self.step = max(step, self.config.sh_degree * self.config.sh_degree_interval)
        try:
            return super().get_outputs(camera)
        finally:
            self.step = step

    def _get_downscale_factor(self) -> int:
        """Full resolution throughout: the source run finished splatfacto's resolution schedule, and an edit (whose
        steps count from 0) must not restart it (idu mode trains on the training images through this)."""
        return 1

    def render_views(self, cameras: Sequence[Cameras], background: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Render several training views in one rasterisation, with a graph: ``[n, 3, h, w]`` in ``[0, 1]``.

        ``cameras`` are single cameras of one size whose ``metadata["cam_idx"]`` names the training camera (its
        pose correction). The rasteriser's meta goes to the densification strategy, which then sees every view of
        the step rather than the last one only.
        """
        colors = torch.cat((self.features_dc[:, None, :], self.features_rest), dim=1)
        sh_degree = self._sh_degree()
        if sh_degree is None:
            colors = torch.sigmoid(colors).squeeze(1)
        render, alpha, info = self._rasterize(cameras, colors, sh_degree)
        if self.training and self.config.densify and torch.is_grad_enabled():  # not an idu update's render
            self.info = info
            self.strategy.step_pre_backward(self.gauss_params, self.optimizers, self.strategy_state, self.step, info)
        rgb = (render[..., :3] + (1 - alpha) * background.to(self.device)).clamp(0.0, 1.0)
        return rgb.permute(0, 3, 1, 2), info

    @torch.no_grad()
    def render_share(self, cameras: Sequence[Cameras], weights: torch.Tensor) -> torch.Tensor:
        """How much of each pixel the Gaussians account for, each counted by its ``weights`` ``[N]`` in [0, 1]:
        ``sum_i T_i alpha_i weights_i`` (the region's share of a pixel), ``[n, 1, h, w]``; the views as
        :meth:`render_views` takes them."""
        share, _, _ = self._rasterize(cameras, weights.to(self.means)[:, None], None)
        return share.clamp(0.0, 1.0).permute(0, 3, 1, 2)

    def _rasterize(
        self, cameras: Sequence[Cameras], colors: torch.Tensor, sh_degree: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        device = self.device
        c2w = torch.cat([self.camera_optimizer.apply_to_camera(cam.to(device)) for cam in cameras])
        Ks = torch.cat([cam.get_intrinsics_matrices() for cam in cameras]).to(device)
        width, height = int(cameras[0].width.item()), int(cameras[0].height.item())
        return rasterizer_for(device)(
            means=self.means,
            quats=self.quats,
            scales=torch.exp(self.scales),
            opacities=torch.sigmoid(self.opacities).squeeze(-1),
            colors=colors,
            viewmats=get_viewmat(c2w),
            Ks=Ks,
            width=width,
            height=height,
            packed=False,
            near_plane=0.01,
            far_plane=1e10,
            render_mode="RGB",
            sh_degree=sh_degree,
            sparse_grad=False,
            absgrad=self.strategy.absgrad,
            rasterize_mode=self.config.rasterize_mode,
        )

    def step_post_backward(self, step: int) -> None:
        if not self.config.densify:
            return
        info = getattr(self, "info", None) or {}
        grad = getattr(info.get("means2d"), "grad", None)
        if grad is not None and not bool(torch.isfinite(grad).all()):  # a skipped (overflowed) step adds nothing
            return
        with self._densify_inside_only():
            super().step_post_backward(step)

    @contextmanager
    def _densify_inside_only(self) -> Iterator[None]:
        """With an edit region, splatfacto's strategy acts inside it only: the scene's split and duplication
        statistics outside are zero already (their gradients are dropped), pruning is limited to Gaussians
        inside, and the periodic opacity reset, which would touch every Gaussian, is skipped."""
        region = getattr(self, "region", None)
        if region is None:
            yield
            return
        from gsplat.strategy.ops import remove

        strategy = self.strategy
        prune, reset_every = strategy._prune_gs, strategy.reset_every

        def prune_inside(params, optimizers, state, step) -> int:
            """gsplat's ``DefaultStrategy._prune_gs`` (opacity and 3D size), for Gaussians inside the region."""
            is_prune = torch.sigmoid(params["opacities"].flatten()) < strategy.prune_opa
            if step > reset_every:
                scale = torch.exp(params["scales"]).max(dim=-1).values
                is_prune |= scale > strategy.prune_scale3d * state["scene_scale"]
            is_prune &= region.weights(params["means"].detach().float()) > 0
            count = int(is_prune.sum())
            if count:
                remove(params=params, optimizers=optimizers, state=state, mask=is_prune)
            return count

        strategy._prune_gs, strategy.reset_every = prune_inside, 1 << 62
        try:
            yield
        finally:
            strategy._prune_gs, strategy.reset_every = prune, reset_every
