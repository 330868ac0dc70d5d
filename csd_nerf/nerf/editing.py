"""What every ``csd-edit`` method shares, whatever represents the scene (nerfacto or Gaussian splats).

The settings (:class:`EditSettings`: the CSD-Edit step's, the prior's, render size and previews), the viewer's
"CSD-Edit" controls, and the step itself (:class:`EditingPipeline`): each training step draws
``num_particles`` training views, lets the scene render and encode them, runs the shared CSD-Edit step and leaves
the gradients in the model's parameters. A pipeline only says how its scene is built (``make_scene``).

The diffusion prior is loaded only when the trainer asks for it (:meth:`EditingPipeline.setup_editing`), so
``ns-viewer``, ``ns-render`` and ``ns-export`` on an edited run build the pipeline without it.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import nerfstudio.configs.base_config  # noqa: F401  (before its writer: they import each other)
import torch
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE

from csd_nerf.editor import CSDEditConfig
from csd_nerf.errors import SettingError
from csd_nerf.guidance.loading import DEFAULT_MODEL
from csd_nerf.nerf.region import RegionConfig

__all__ = ["EditSettings", "EditControls", "EditingPipeline", "validate_mode"]


@dataclass
class EditSettings(CSDEditConfig):
    """The settings of every csd-edit method: the CSD-Edit step's (inherited) and these."""

    ip2p_model: str = DEFAULT_MODEL
    """InstructPix2Pix: a Hugging Face hub id, a local diffusers folder, or 'tiny' (random, offline smoke runs)."""
    ip2p_dtype: Literal["auto", "float32", "float16"] = "auto"
    """Precision of the prior; auto: float16 on CUDA, float32 on the CPU."""
    ip2p_device: str | None = None
    """Device of the prior (default: the model's)."""
    max_unet_batch: int = 0
    """Most samples per UNet call (0: all 5N at once); lower it to save GPU memory."""
    render_resolution: int = 512
    """Render size cap on the long side in pixels (the images' own size if smaller; 0: always the images' size)."""
    preservation_weight: float = 0.0
    """Weight of an MSE towards the source images (0: off)."""
    preview_every: int = 50
    """Write a preview every K steps (0: never): source | render | the prior's one-step edit estimate (distill), or
    source | render | the view's latest edited training image (idu)."""
    region: RegionConfig = field(default_factory=RegionConfig)
    """Edit only inside an oriented box, in nerfstudio's crop-box convention (the viewer's crop box numbers)."""
    mode: Literal["distill", "idu"] = "distill"
    """distill: every step distils CSD-Edit into the scene through the renderer (the default). idu: iterative
    dataset update, the CSD authors' 3D recipe (after Instruct-NeRF2NeRF): every --pipeline.idu-every steps,
    --pipeline.idu-views training views are edited jointly on their latents and written back into the training
    images, and the scene trains on its own loss in between."""
    idu_every: int = 160
    """idu: steps between dataset updates. 16 views every 160 steps edits views at Instruct-NeRF2NeRF's rate (one
    view every 10 steps: edit_rate 10, edit_count 1), which the CSD authors followed (CSD issue 5: "with intervals
    following Instruct-NeRF2NeRF"); 13 updates, 208 view edits in a default 2000-step edit. (Our notes read the
    paper as 16 views every 2000 NeRF steps of Instruct-NeRF2NeRF's 15000-step runs: one single update in a
    2000-step edit.)"""
    idu_views: int = 16
    """idu: training views edited jointly per update (drawn without replacement over an epoch; at most all of
    them). 16: the CSD authors' subset size for 3D. Each CSD-Edit step couples all of them, 5 UNet evaluations per
    view (80 at 16 views, in calls of at most --pipeline.max-unet-batch samples)."""
    idu_steps: int = 20
    """idu: CSD-Edit steps per update, SGD on the views' latents starting from the renders' latents. 20 steps at
    lr 2.0 move each of 16 views by sum(lr / views) = 2.5 residual units, about one whole official video edit per
    view (100 steps at lr 0.5 over 24 frames: 2.1), and 20 is the official decay period, so an update runs at the
    official starting lr. It costs 1600 UNet evaluations per update: 10 per step amortised over 160 steps, half
    of a distill step at 4 views."""
    idu_lr: float = 2.0
    """idu: SGD learning rate on the latents (the official 2D code: lr 2.0, x0.9 every 20 steps; csd-edit-2d's
    loop)."""


def validate_mode(settings: EditSettings) -> None:
    """Raise :class:`~csd_nerf.errors.SettingError` with a one-line fix for a bad ``--pipeline.mode`` or idu setting
    (the step's own settings are :meth:`CSDEditConfig.validate`'s)."""
    import math

    if settings.mode not in ("distill", "idu"):
        raise SettingError(f"--pipeline.mode {settings.mode!r}: use 'distill' or 'idu'")
    for name in ("idu_every", "idu_views", "idu_steps"):
        value = getattr(settings, name)
        if not isinstance(value, int) or value < 1:
            raise SettingError(f"--pipeline.{name.replace('_', '-')} {value}: use a whole number of at least 1")
    if not (math.isfinite(settings.idu_lr) and settings.idu_lr > 0):
        raise SettingError(f"--pipeline.idu-lr {settings.idu_lr}: use a positive learning rate")
    if settings.mode == "idu":
        if settings.region.enabled:
            raise SettingError(
                "--pipeline.region works with --pipeline.mode distill only (idu edits whole training images): "
                "drop the region or use distill"
            )
        if settings.preservation_weight > 0:
            raise SettingError(
                "--pipeline.preservation-weight works with --pipeline.mode distill only (in idu mode the scene fits "
                "its training images): drop it"
            )


class EditControls:
    """The viewer's "CSD-Edit" group: the instruction first, then both guidance scales; they apply at the next step.

    Not an ``nn.Module`` attribute tree, so nerfstudio's generic "Custom Elements" panel does not pick the
    elements up; :meth:`install` puts them in their own folder at the top of the viewer's Control tab.
    """

    def __init__(self, settings: EditSettings) -> None:
        from nerfstudio.viewer.viewer_elements import ViewerNumber, ViewerText

        from csd_nerf.nerf.region_controls import RegionControls

        self.prompt = ViewerText("Edit instruction", settings.prompt, hint="applies at the next step")
        self.guidance_scale = ViewerNumber("Text guidance scale", settings.guidance_scale)
        self.image_guidance_scale = ViewerNumber("Image guidance scale", settings.image_guidance_scale)
        self.region = RegionControls(settings.region)

    @property
    def elements(self) -> list[Any]:
        return [self.prompt, self.guidance_scale, self.image_guidance_scale]

    def values(self) -> dict[str, Any]:
        return {
            "prompt": str(self.prompt.value),
            "guidance_scale": float(self.guidance_scale.value),
            "image_guidance_scale": float(self.image_guidance_scale.value),
        }

    def install(self, viewer: Any) -> None:
        """Add the group to a running nerfstudio viewer (``trainer.viewer_state``), above its own controls.

        Falls back to the viewer's current container (the panel's root), with viser's default order, when the
        Control tab cannot be found (another nerfstudio or viser).
        """
        server = viewer.viser_server
        tab, order = _control_tab(viewer)
        if tab is None:
            folder = server.gui.add_folder("CSD-Edit", order=order)
        else:
            with tab:  # viser adds new elements to the container entered last (in this thread)
                folder = server.gui.add_folder("CSD-Edit", order=order)
        with folder:
            for element in self.elements:  # default orders increase: the instruction first
                element.install(server)
            with server.gui.add_folder("Edit region"):
                self.region.install(viewer)


def _spread(group: Any, n: int) -> str:
    """How a step's ``n`` views are spread over processes (nothing for one process)."""
    if group.world_size == 1:
        return ""
    return f" ({'/'.join(map(str, group.sizes(n)))} in each of {group.world_size} processes)"


def _describe(region: RegionConfig) -> str:
    if not region.enabled:
        return "editing the whole scene (no region)"
    numbers = ", ".join(
        f"{name} {tuple(round(v, 3) for v in value)}"
        for name, value in (("centre", region.center), ("rotation", region.rotation), ("scale", region.scale))
    )
    return f"editing inside the box {numbers} only (margin {region.margin:g})"


def _control_tab(viewer: Any) -> tuple[Any, float | None]:
    """The viewer's Control tab (a viser tab handle, usable as a context) and an order below all it holds.

    viser 0.2.7 internals, because nerfstudio keeps neither the tab nor its tab group (only ``control_panel``,
    whose elements were created inside the tab) and viser has no public way to look a container up. From a
    control's handle, follow the server's container table (``gui._container_handle_from_id``) up through its
    folders to the tab, then take the smallest ``order`` of the tab's children (``_children``: nerfstudio's
    controls, its folders ("Render Options", ...) and any "Custom Elements"). The order alone is not enough:
    ``control_panel``'s attributes are mostly nerfstudio ``ViewerElement`` wrappers, not viser handles, and its
    first element ("Train Speed") is not the tab's smallest order in general. Returns (None, None) when any of
    this is missing.
    """
    panel = getattr(viewer, "control_panel", None)
    server = getattr(viewer, "viser_server", None)
    containers = getattr(getattr(server, "gui", None), "_container_handle_from_id", None)
    if panel is None or not isinstance(containers, dict):
        return None, None
    parents = []
    for value in vars(panel).values():
        handle = getattr(value, "gui_handle", value)  # a nerfstudio ViewerElement wraps its viser handle
        parent = getattr(getattr(handle, "_impl", None), "parent_container_id", None)
        if isinstance(parent, str):
            parents.append(parent)
    for parent in parents:
        container, seen = containers.get(parent), set()
        while container is not None and id(container) not in seen:
            seen.add(id(container))
            if hasattr(container, "_parent") and hasattr(container, "_children"):  # a GuiTabHandle
                orders = [getattr(c, "order", None) for c in container._children.values()]
                orders = [o for o in orders if isinstance(o, (int, float))]
                return container, (min(orders) - 1.0 if orders else None)
            container = containers.get(getattr(container, "_parent_container_id", None))  # a folder's parent
    return None, None


class EditingPipeline(ABC):
    """Mixin of a nerfstudio pipeline whose training step is the shared CSD-Edit step over training views.

    Put it before nerfstudio's pipeline class; subclasses provide :meth:`make_scene` (the
    :class:`~csd_nerf.editor.Scene` over the model).
    """

    config: EditSettings
    editor: Any = None
    scene: Any = None
    updater: Any = None
    """The iterative dataset update (:class:`~csd_nerf.nerf.idu.DatasetUpdater`) in idu mode, else None."""
    controls: EditControls | None = None
    preview_dir: Path | None = None
    skipped_steps: int = 0

    on_settings_changed: Callable[[], None] | None = None
    """Called after the viewer changed a setting (the trainer rewrites config.yml)."""

    def __init__(
        self,
        config: Any,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Any = None,
    ) -> None:
        # nerfstudio's pipeline, as in one process: its DDP wrapper would not see the deferred backward (which calls
        # the model directly) nor splatfacto's replaced parameters; the editor sums gradients over the processes.
        super().__init__(config, device, test_mode, 1, local_rank, grad_scaler)
        self.editor = None
        self.scene = None
        self.updater = None
        self.preview_dir = None
        self._rejected: set[tuple[str, Any]] = set()
        # Only a training run has anything to steer; a rendered or exported run builds no viewer controls.
        self.controls = EditControls(self.config) if test_mode == "val" else None

    @abstractmethod
    def make_scene(self, guidance: Any) -> Any:
        """The :class:`~csd_nerf.editor.Scene` whose views this pipeline's model renders for ``guidance``."""

    @abstractmethod
    def render_training_views(self, ids: list[int]) -> torch.Tensor:
        """Training views ``ids`` rendered at the render size as the edit sees them (training mode, no graph):
        ``[n, 3, h, w]`` in ``[0, 1]``. What an idu update edits, and the previews' middle image there."""

    def edit_config(self) -> CSDEditConfig:
        """The CSD-Edit step's settings, read off this pipeline's config (they are the same fields)."""
        return CSDEditConfig.from_settings(self.config)

    def setup_editing(self, preview_dir: Path | None = None, guidance: Any = None) -> None:
        """Load the prior (unless a guidance is given: a preset, or the known-answer test prior) and build the
        editor and the scene.

        Raises:
            UserError: with a one-line message (bad settings, a prior that cannot be loaded).
        """
        from csd_nerf.editor import CSDEditor
        from csd_nerf.guidance import GuidanceConfig, IP2PGuidance

        cfg = self.config  # validated by the trainer before the config dump; the editor validates it too
        if guidance is None:
            guidance = IP2PGuidance(
                GuidanceConfig(
                    model=cfg.ip2p_model,
                    device=str(torch.device(cfg.ip2p_device or self.device)),
                    dtype=cfg.ip2p_dtype,
                    max_unet_batch=cfg.max_unet_batch,
                )
            )
        cfg.region.validate()
        validate_mode(cfg)
        self.editor = CSDEditor(guidance, self.edit_config(), log=CONSOLE.print)
        self.scene = self.make_scene(guidance)
        self.scene.set_region(cfg.region.box(), cfg.region.preservation_weight)
        self.preview_dir = preview_dir
        views = self.scene.views
        if cfg.mode == "idu":
            from csd_nerf.nerf.idu import DatasetUpdater, TrainingImages

            self.updater = DatasetUpdater(
                self.editor,
                self.scene,
                TrainingImages(self.datamanager),
                self.render_training_views,
                every=cfg.idu_every,
                views=cfg.idu_views,
                steps=cfg.idu_steps,
                lr=cfg.idu_lr,
            )
            CONSOLE.print(
                f"csd-edit: iterative dataset update: every {cfg.idu_every} steps, {self.updater.views} of "
                f"{len(views)} training views rendered at {views.width}x{views.height} and edited jointly for "
                f"{cfg.idu_steps} CSD-Edit steps (SGD lr {cfg.idu_lr:g}), then written into the training images; "
                f"the scene trains on its own loss in between; prior {guidance.name!r} on {guidance.device}"
            )
        else:
            CONSOLE.print(
                f"csd-edit: {len(views)} training views rendered at {views.width}x{views.height}, "
                f"{min(cfg.num_particles, len(views))} per step{_spread(self.editor.group, min(cfg.num_particles, len(views)))}, prior {guidance.name!r} on "
                f"{guidance.device}"
            )
        if guidance.notice:
            CONSOLE.print(f"[bold yellow]Note: {guidance.notice}")
        if cfg.region.enabled:
            CONSOLE.print(f"csd-edit: {_describe(cfg.region)}")

    def _apply_viewer_controls(self) -> None:
        """Take the viewer's prompt, scales and region for this step; refuse (once, with a note) bad values.

        What is taken is also written into the run's config.yml (``on_settings_changed``), so the file describes
        the edit as it was done.
        """
        if self.controls is None:
            return
        group = self.editor.group
        # The viewer runs with the first process: its values reach the others.
        wanted = group.broadcast((self.controls.values(), self.controls.region.region()) if group.is_main else None)
        changed = self._apply_step_settings(wanted[0])
        changed |= self._apply_region(wanted[1])
        if changed and self.on_settings_changed is not None:
            self.on_settings_changed()

    def _refuse_once(self, key: Any, exc: Exception) -> None:
        if key not in self._rejected:
            self._rejected.add(key)
            CONSOLE.print(f"[yellow]csd-edit: viewer setting ignored ({exc})")

    def _apply_step_settings(self, wanted: dict[str, Any]) -> bool:
        current = self.editor.config
        if all(getattr(current, k) == v for k, v in wanted.items()):
            return False
        try:
            self.editor.config = dataclasses.replace(current, **wanted)  # validated on assignment
        except SettingError as exc:
            self._refuse_once(tuple(sorted(wanted.items())), exc)
            return False
        changes = ", ".join(f"{k}={v!r}" for k, v in wanted.items() if getattr(current, k) != v)
        CONSOLE.print(f"csd-edit: from the viewer: {changes}")
        for name, value in wanted.items():
            setattr(self.config, name, value)
        return True

    def _apply_region(self, wanted: RegionConfig) -> bool:
        if wanted == self.config.region:
            return False
        try:
            wanted.validate()
            if self.config.mode == "idu" and wanted.enabled:
                raise SettingError("an edit region works with --pipeline.mode distill only")
        except SettingError as exc:
            self._refuse_once(("region", dataclasses.astuple(wanted)), exc)
            return False
        self.config.region = wanted
        self.scene.set_region(wanted.box(), wanted.preservation_weight)
        CONSOLE.print(f"csd-edit: from the viewer: {_describe(wanted)}")
        return True

    def edit_step(self, step: int) -> tuple[dict[str, float], dict[str, float]]:
        """One training step of the edit; leaves the gradients in the model's parameters. Returns (losses, metrics).

        distill: one CSD-Edit step through the renderer. idu: a dataset update when one is due, then one step of
        the scene's own loss on the current training images.
        """
        if self.editor is None:
            self.setup_editing(self.preview_dir)
        self.train()
        self._apply_viewer_controls()
        if self.updater is not None:
            return self._idu_step(step)
        preview = self.config.preview_every > 0 and step % self.config.preview_every == 0
        stats = self.editor.step(self.scene, keep_preview=preview)
        metrics = {
            "csd_skipped_steps": float(self.editor.skipped_steps),
            "csd_timestep": float(stats.timestep),
            "csd_grad_norm": stats.grad_norm,
            "csd_residual_norm": stats.residual_norm,
        }
        metrics |= {f"time_{phase}_s": seconds for phase, seconds in stats.timings.items()}
        if preview:
            self._write_preview(step, stats)
        return dict(stats.losses), metrics

    def _idu_step(self, step: int) -> tuple[dict[str, float], dict[str, float]]:
        """An idu step: the update when due (the views' latents only: no parameter gradient), then the scene's own
        training loss (nerfacto: ray batches and its regularisers; splats: one image, densified as configured)."""
        updater = self.updater
        metrics: dict[str, float] = {}
        if updater.due(step):
            record = updater.update(step)
            metrics |= {
                "idu_update_s": record.seconds,
                "idu_render_s": record.render_seconds,
                "idu_edit_s": record.edit_seconds,
                "idu_unet_s": record.unet_seconds,
                "idu_grad_norm": record.grad_norm,
            }
        metrics["idu_updates"] = float(len(updater.records))
        metrics["idu_edited_views"] = float(len(updater.edited))
        metrics["csd_skipped_steps"] = float(self.editor.skipped_steps)
        _, loss_dict, train_metrics = self.get_train_loss_dict(step)
        loss = sum(loss_dict.values(), torch.zeros((), device=self.device))
        if loss.requires_grad:
            loss.backward()
        values = {k: torch.as_tensor(v).detach().float().cpu() for k, v in loss_dict.items()}
        metrics |= {
            k: float(torch.as_tensor(v).detach()) for k, v in train_metrics.items() if torch.as_tensor(v).numel() == 1
        }
        if self.config.preview_every > 0 and step % self.config.preview_every == 0 and updater.last_ids:
            self._write_idu_preview(step, updater.last_ids[0])
        return {k: float(v) for k, v in values.items()}, metrics

    @torch.no_grad()
    def _write_idu_preview(self, step: int, view: int) -> None:
        from csd_nerf.nerf.preview import preview_strip, save_preview

        source = self.scene.views.source_images([view])[0]
        render = self.render_training_views([view])[0].cpu()
        edited = self.updater.images.get(view)[None]
        if tuple(edited.shape[-2:]) != tuple(render.shape[-2:]):
            edited = torch.nn.functional.interpolate(edited, render.shape[-2:], mode="bilinear", antialias=True)
        strip = preview_strip(source, render, edited[0])
        writer.put_image(name="CSD-Edit preview (source | render | edited training image)", image=strip, step=step)
        if self.preview_dir is not None:
            save_preview(strip, self.preview_dir / f"step-{step:06d}.png")

    def save_edited_images(self, run: Path) -> int:
        """idu: write the edited training images into ``run/edited_images`` (those changed since the last call);
        returns how many were written (0 in distill mode)."""
        if self.updater is None:
            return 0
        from csd_nerf.nerf.idu import edited_images_folder

        return self.updater.save(edited_images_folder(run))

    def load_edited_images(self, run: Path) -> int:
        """idu: take the edited training images an earlier idu run kept in ``run/edited_images`` as the current
        training images; returns how many were taken (0 in distill mode or when there are none)."""
        if self.updater is None:
            return 0
        from csd_nerf.nerf.idu import edited_images_folder

        return self.updater.load(edited_images_folder(run))

    @torch.no_grad()
    def _write_preview(self, step: int, stats: Any) -> None:
        from csd_nerf.nerf.preview import preview_strip, save_preview

        if not self.editor.group.is_main:  # rank 0 renders the step's first view
            return
        first = stats.ids[0]
        estimate = self.editor.guidance.decode_latents(stats.pred_original[:1])[0]
        source = self.scene.views.source_images([first])[0]
        strip = preview_strip(source, self.scene.last_renders[0], estimate, outline=self._region_outline(first))
        writer.put_image(name="CSD-Edit preview (source | render | prior's estimate)", image=strip, step=step)
        if self.preview_dir is not None:
            save_preview(strip, self.preview_dir / f"step-{step:06d}.png")

    def _region_outline(self, view: int) -> list | None:
        """The region's edges as pixel segments in training view ``view`` (those in front of the camera)."""
        from csd_nerf.nerf.preview import project_points
        from csd_nerf.nerf.region import Box

        box = self.scene.region
        if box is None:
            return None
        camera = self.scene.views.camera(view)
        projected = project_points(box.corners(), camera.camera_to_worlds[0].cpu(), camera.get_intrinsics_matrices()[0])
        return [
            (tuple(projected[a, :2].tolist()), tuple(projected[b, :2].tolist()))
            for a, b in Box.EDGES
            if projected[a, 2] > 0 and projected[b, 2] > 0
        ]

    def get_train_loss_dict(self, step: int):
        """The scene's own training loss on the current training images: idu mode only (between dataset updates).
        A distill edit never trains on its images: it trains through CSDTrainer.train_iteration (edit_step)."""
        if self.config.mode != "idu":
            raise RuntimeError(
                "csd-edit trains through CSDTrainer.train_iteration (edit_step), not get_train_loss_dict"
            )
        return super().get_train_loss_dict(step)
