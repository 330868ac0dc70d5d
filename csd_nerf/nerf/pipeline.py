"""The csd-edit pipeline: every step renders N training views as particles and applies one CSD-Edit step.

The diffusion prior is loaded only when the trainer asks for it (:meth:`CSDPipeline.setup_editing`), so
``ns-viewer``, ``ns-render`` and ``ns-export`` on an edited run build this pipeline without IP2P.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from nerfstudio.data.datamanagers.base_datamanager import DataManagerConfig, VanillaDataManagerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE

from csd_nerf.nerf.errors import CSDEditError
from csd_nerf.nerf.model import CSDNerfactoModelConfig

__all__ = ["CSDPipelineConfig", "CSDPipeline"]

DEFAULT_IP2P = "timbrooks/instruct-pix2pix"


@dataclass
class CSDPipelineConfig(VanillaPipelineConfig):
    """CSD-Edit of a trained nerfacto scene with an InstructPix2Pix prior."""

    _target: type = field(default_factory=lambda: CSDPipeline)
    datamanager: DataManagerConfig = field(
        default_factory=lambda: VanillaDataManagerConfig(dataparser=NerfstudioDataParserConfig())
    )
    model: ModelConfig = field(default_factory=CSDNerfactoModelConfig)
    prompt: str = ""
    """The edit instruction, e.g. "Turn the bear into a grizzly bear" (required)."""
    ip2p_model: str = DEFAULT_IP2P
    """InstructPix2Pix: a Hugging Face hub id, a local diffusers folder, or 'tiny' (random, offline smoke runs)."""
    ip2p_dtype: Literal["auto", "float32", "float16"] = "auto"
    """Precision of the prior; auto: float16 on CUDA, float32 on the CPU."""
    ip2p_device: str | None = None
    """Device of the prior (default: the model's)."""
    num_particles: int = 4
    """Training views rendered and coupled per step (without replacement over an epoch)."""
    guidance_scale: float = 7.5
    """Text guidance scale s_T (changeable from the viewer)."""
    image_guidance_scale: float = 1.5
    """Image guidance scale s_I (changeable from the viewer)."""
    t_min: int = 20
    """Smallest diffusion timestep sampled (of 1000)."""
    t_max: int = 500
    """Largest diffusion timestep sampled (of 1000)."""
    coupling: bool = True
    """SVGD coupling between the particles (off: independent per-view updates, for ablations)."""
    baseline: Literal["image", "noise"] = "image"
    """image: CSD-Edit's image-conditional baseline; noise: plain SDS (ablation)."""
    render_resolution: int = 512
    """Render size cap on the long side in pixels (the images' own size if smaller; 0: always the images' size)."""
    ray_chunk: int = 4096
    """Rays per re-rendered chunk in the backward pass; bounds the memory of the NeRF graph."""
    backprop: Literal["deferred", "direct"] = "deferred"
    """deferred: memory flat in resolution and views; direct: one graph (reference, needs much more memory)."""
    regulariser_weight: float = 1.0
    """Weight of nerfacto's interlevel and distortion regularisers relative to their nerfacto multipliers."""
    preservation_weight: float = 0.0
    """Weight of an MSE towards the source images (0: off)."""
    max_unet_batch: int = 0
    """Most samples per UNet call (0: all 5N at once); lower it to save GPU memory."""
    preview_every: int = 50
    """Write a preview (source | render | the prior's one-step edit estimate) every K steps (0: never)."""
    seed: int = 0


class CSDPipeline(VanillaPipeline):
    """nerfacto pipeline whose training step is the shared CSD-Edit step over rendered training views."""

    config: CSDPipelineConfig

    def __init__(
        self,
        config: CSDPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Any = None,
    ) -> None:
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        self.editor: Any = None
        self.particles: Any = None
        self.preview_dir: Path | None = None
        self._rejected: set[tuple[str, Any]] = set()
        if test_mode == "val":  # training only: a rendered or exported run has nothing to steer
            from nerfstudio.viewer.viewer_elements import ViewerNumber, ViewerText

            self.viewer_prompt = ViewerText("Edit instruction", config.prompt, hint="applies at the next step")
            self.viewer_guidance_scale = ViewerNumber("Text guidance scale", config.guidance_scale)
            self.viewer_image_guidance_scale = ViewerNumber("Image guidance scale", config.image_guidance_scale)

    def setup_editing(self, preview_dir: Path | None = None, guidance: Any = None) -> None:
        """Load the prior (unless an ``IP2PGuidance`` is given) and build the editor.

        Raises:
            CSDEditError, GuidanceLoadError: with one-line messages.
        """
        from csd_nerf.editor import CSDEditor
        from csd_nerf.guidance import GuidanceConfig, IP2PGuidance
        from csd_nerf.nerf.deferred import ViewRenderer
        from csd_nerf.nerf.particles import NerfParticles
        from csd_nerf.nerf.views import TrainViews

        cfg = self.config
        edit_config = self._edit_config()
        try:
            edit_config.validate()  # before the (slow) model load
        except ValueError as exc:
            raise CSDEditError(str(exc)) from None
        device = torch.device(cfg.ip2p_device or self.device)
        if guidance is None:
            guidance = IP2PGuidance(
                GuidanceConfig(
                    model=cfg.ip2p_model,
                    device=str(device),
                    dtype=cfg.ip2p_dtype,
                    max_unet_batch=cfg.max_unet_batch,
                )
            )
        self.editor = CSDEditor(guidance, edit_config)
        views = TrainViews(
            self.datamanager.train_dataset, cfg.render_resolution, self.model.renderer_rgb.blend_background
        )
        renderer = ViewRenderer(
            self.model, views.cameras, chunk=cfg.ray_chunk, regulariser_weight=cfg.regulariser_weight
        )
        self.particles = NerfParticles(renderer, views, guidance, cfg.backprop, cfg.preservation_weight, seed=cfg.seed)
        self.preview_dir = preview_dir
        CONSOLE.print(
            f"csd-edit: {len(views)} training views rendered at {views.width}x{views.height}, "
            f"{min(cfg.num_particles, len(views))} per step, prior {guidance.config.model!r} on {guidance.device}"
        )
        if guidance.notice:
            CONSOLE.print(f"[bold yellow]Note: {guidance.notice}")

    def _edit_config(self):
        from csd_nerf.editor import CSDEditConfig

        cfg = self.config
        return CSDEditConfig(
            prompt=cfg.prompt,
            guidance_scale=cfg.guidance_scale,
            image_guidance_scale=cfg.image_guidance_scale,
            num_particles=cfg.num_particles,
            t_min=cfg.t_min,
            t_max=cfg.t_max,
            coupling=cfg.coupling,
            baseline=cfg.baseline,
            seed=cfg.seed,
        )

    def _apply_viewer_controls(self) -> None:
        """Take the viewer's prompt and scales for this step; refuse (once, with a note) values out of range."""
        if not hasattr(self, "viewer_prompt"):
            return
        current = self.editor.config
        wanted = {
            "prompt": str(self.viewer_prompt.value),
            "guidance_scale": float(self.viewer_guidance_scale.value),
            "image_guidance_scale": float(self.viewer_image_guidance_scale.value),
        }
        if all(getattr(current, k) == v for k, v in wanted.items()):
            return
        candidate = dataclasses.replace(current, **wanted)
        try:
            candidate.validate(self.editor.guidance.num_train_timesteps)
        except ValueError as exc:
            key = tuple(sorted(wanted.items()))
            if key not in self._rejected:
                self._rejected.add(key)
                CONSOLE.print(f"[yellow]csd-edit: viewer setting ignored ({exc})")
            return
        changes = ", ".join(f"{k}={v!r}" for k, v in wanted.items() if getattr(current, k) != v)
        CONSOLE.print(f"csd-edit: from the viewer: {changes}")
        self.editor.config = candidate

    def edit_step(self, step: int) -> tuple[dict[str, float], dict[str, float]]:
        """One CSD-Edit step; leaves the gradients in the model's parameters. Returns (losses, metrics)."""
        if self.editor is None:
            self.setup_editing(self.preview_dir)
        self.train()
        self._apply_viewer_controls()
        preview = self.config.preview_every > 0 and step % self.config.preview_every == 0
        stats = self.editor.step(self.particles, keep_preview=preview)
        timings = self.particles.backpropagate()
        metrics = {
            "csd_timestep": float(stats.timestep),
            "csd_grad_norm": stats.grad_norm,
            "csd_residual_norm": stats.residual_norm,
            "time_render_s": timings.render,
            "time_vae_s": timings.vae,
            "time_unet_s": stats.unet_seconds,
            "time_backward_s": timings.backward,
        }
        if preview:
            self._write_preview(step, stats)
        return dict(timings.losses), metrics

    @torch.no_grad()
    def _write_preview(self, step: int, stats: Any) -> None:
        from csd_nerf.nerf.preview import preview_strip, save_preview

        first = stats.ids[0]
        estimate = self.editor.guidance.decode_latents(stats.pred_original[:1])[0]
        source = self.particles.views.source_images([first])[0]
        strip = preview_strip(source, self.particles.last_renders[0], estimate)
        writer.put_image(name="CSD-Edit preview (source | render | prior's estimate)", image=strip, step=step)
        if self.preview_dir is not None:
            save_preview(strip, self.preview_dir / f"step-{step:06d}.png")

    def get_train_loss_dict(self, step: int):
        raise RuntimeError("csd-edit trains through CSDTrainer.train_iteration (edit_step), not get_train_loss_dict")
