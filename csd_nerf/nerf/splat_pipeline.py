"""The ``csd-edit-splat`` pipeline: Gaussian splats seen through their training cameras, edited one CSD-Edit step
per training step (the shared machinery is :mod:`csd_nerf.nerf.editing`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from nerfstudio.data.datamanagers.base_datamanager import DataManagerConfig
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanagerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig

from csd_nerf.nerf.editing import EditingPipeline, EditSettings
from csd_nerf.nerf.splat_model import CSDSplatModelConfig

__all__ = ["CSDSplatPipelineConfig", "CSDSplatPipeline"]


@dataclass
class CSDSplatPipelineConfig(VanillaPipelineConfig, EditSettings):
    """CSD-Edit of a trained splatfacto scene with an InstructPix2Pix prior."""

    _target: type = field(default_factory=lambda: CSDSplatPipeline)
    datamanager: DataManagerConfig = field(
        default_factory=lambda: FullImageDatamanagerConfig(
            dataparser=NerfstudioDataParserConfig(load_3D_points=True), cache_images_type="uint8"
        )
    )
    model: ModelConfig = field(default_factory=CSDSplatModelConfig)


class CSDSplatPipeline(EditingPipeline, VanillaPipeline):
    """splatfacto pipeline whose training step is the shared CSD-Edit step over rendered training views."""

    config: CSDSplatPipelineConfig

    def make_scene(self, guidance: Any):
        from csd_nerf.nerf.splat_scene import SplatScene
        from csd_nerf.nerf.views import TrainViews

        cfg = self.config
        views = TrainViews(self.datamanager.train_dataset, cfg.render_resolution, guidance.latent_factor)
        return SplatScene(self.model, views, guidance, cfg.preservation_weight)

    @torch.no_grad()
    def render_training_views(self, ids: list[int]) -> torch.Tensor:
        """Training views at the render size, rasterised a few at a time without a graph."""
        views, cameras = self.scene.views, []
        for index in ids:
            camera = views.camera(index)
            camera.metadata = {"cam_idx": index}  # which pose correction applies
            cameras.append(camera)
        renders = [
            self.model.render_views(cameras[start : start + 4], self.model.background_color)[0]
            for start in range(0, len(cameras), 4)
        ]
        return torch.cat(renders)
