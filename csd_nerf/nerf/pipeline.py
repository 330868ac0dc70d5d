"""The ``csd-edit`` pipeline: a nerfacto scene seen through its training cameras, edited one CSD-Edit step per
training step (the shared machinery is :mod:`csd_nerf.nerf.editing`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from nerfstudio.data.datamanagers.base_datamanager import DataManagerConfig, VanillaDataManagerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE

from csd_nerf.nerf.editing import EditingPipeline, EditSettings
from csd_nerf.nerf.model import CSDNerfactoModelConfig

__all__ = ["CSDPipelineConfig", "CSDPipeline"]


@dataclass
class CSDPipelineConfig(VanillaPipelineConfig, EditSettings):
    """CSD-Edit of a trained nerfacto scene with an InstructPix2Pix prior."""

    _target: type = field(default_factory=lambda: CSDPipeline)
    datamanager: DataManagerConfig = field(
        default_factory=lambda: VanillaDataManagerConfig(
            dataparser=NerfstudioDataParserConfig(), train_num_rays_per_batch=4096
        )
    )
    """The training images and their ray batches: read in idu mode only (nerfacto's 4096 rays per batch); a
    distill edit renders whole views instead."""
    model: ModelConfig = field(default_factory=CSDNerfactoModelConfig)
    ray_chunk: int = 4096
    """Rays per rendered chunk; bounds the memory of the NeRF graph in deferred backpropagation."""
    backprop: Literal["auto", "deferred", "direct"] = "auto"
    """deferred: memory flat in resolution and views (views rendered twice); direct: one graph, faster where it
    fits; auto: direct when the measured graph of a step fits --pipeline.memory-budget-gb, else deferred."""
    memory_budget_gb: float = 0.0
    """Memory a direct step's graph may take in auto mode (0: half the free GPU memory, or a quarter of free RAM)."""
    regulariser_weight: float = 1.0
    """Weight of nerfacto's interlevel and distortion regularisers relative to their nerfacto multipliers."""


class CSDPipeline(EditingPipeline, VanillaPipeline):
    """nerfacto pipeline whose training step is the shared CSD-Edit step over rendered training views."""

    config: CSDPipelineConfig

    def make_scene(self, guidance: Any):
        from csd_nerf.nerf.deferred import ViewRenderer
        from csd_nerf.nerf.scene import NerfScene
        from csd_nerf.nerf.views import TrainViews

        cfg = self.config
        views = TrainViews(
            self.datamanager.train_dataset,
            cfg.render_resolution,
            guidance.latent_factor,
            self.model.renderer_rgb.blend_background,
        )
        renderer = ViewRenderer(
            self.model, views.cameras, chunk=cfg.ray_chunk, regulariser_weight=cfg.regulariser_weight
        )
        budget = int(cfg.memory_budget_gb * 2**30) if cfg.memory_budget_gb > 0 else None
        self._render_seeds = torch.Generator().manual_seed(cfg.seed)
        return NerfScene(
            renderer,
            views,
            guidance,
            cfg.backprop,
            cfg.preservation_weight,
            seed=cfg.seed,
            memory_budget=budget,
            log=CONSOLE.print,
        )

    def render_training_views(self, ids: list[int]) -> torch.Tensor:
        """Training views at the render size, in training mode and without a graph (the scene's ray chunks)."""
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self._render_seeds))
        renders, _, _ = self.scene.renderer.render(ids, seed, with_graph=False)
        return renders.detach()
