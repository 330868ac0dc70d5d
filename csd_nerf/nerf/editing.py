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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE

from csd_nerf.editor import CSDEditConfig
from csd_nerf.errors import SettingError
from csd_nerf.guidance.loading import DEFAULT_MODEL

__all__ = ["EditSettings", "EditControls", "EditingPipeline"]


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
    """Write a preview (source | render | the prior's one-step edit estimate) every K steps (0: never)."""


class EditControls:
    """The viewer's "CSD-Edit" group: the instruction first, then both guidance scales; they apply at the next step.

    Not an ``nn.Module`` attribute tree, so nerfstudio's generic "Custom Elements" panel does not pick the
    elements up; :meth:`install` puts them in their own folder at the top of the viewer's Control tab.
    """

    def __init__(self, settings: EditSettings) -> None:
        from nerfstudio.viewer.viewer_elements import ViewerNumber, ViewerText

        self.prompt = ViewerText("Edit instruction", settings.prompt, hint="applies at the next step")
        self.guidance_scale = ViewerNumber("Text guidance scale", settings.guidance_scale)
        self.image_guidance_scale = ViewerNumber("Image guidance scale", settings.image_guidance_scale)

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

    Subclasses provide :meth:`make_scene` (the :class:`~csd_nerf.editor.Scene` over the model) and set
    ``self.controls`` in training mode.
    """

    config: EditSettings
    editor: Any = None
    scene: Any = None
    controls: EditControls | None = None
    preview_dir: Path | None = None

    def _init_editing(self, test_mode: str) -> None:
        self.editor = None
        self.scene = None
        self.preview_dir = None
        self._rejected: set[tuple[str, Any]] = set()
        # Only a training run has anything to steer; a rendered or exported run builds no viewer controls.
        self.controls = EditControls(self.config) if test_mode == "val" else None

    @abstractmethod
    def make_scene(self, guidance: Any) -> Any:
        """The :class:`~csd_nerf.editor.Scene` whose views this pipeline's model renders for ``guidance``."""

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

        cfg = self.config
        edit_config = self.edit_config()
        edit_config.validate()  # before the (slow) model load
        if cfg.max_unet_batch < 0:
            raise SettingError(f"max_unet_batch = {cfg.max_unet_batch}: use 0 (all at once) or a positive number")
        if guidance is None:
            guidance = IP2PGuidance(
                GuidanceConfig(
                    model=cfg.ip2p_model,
                    device=str(torch.device(cfg.ip2p_device or self.device)),
                    dtype=cfg.ip2p_dtype,
                    max_unet_batch=cfg.max_unet_batch,
                )
            )
        self.editor = CSDEditor(guidance, edit_config)
        self.scene = self.make_scene(guidance)
        self.preview_dir = preview_dir
        views = self.scene.views
        CONSOLE.print(
            f"csd-edit: {len(views)} training views rendered at {views.width}x{views.height}, "
            f"{min(cfg.num_particles, len(views))} per step, prior {guidance.config.model!r} on {guidance.device}"
        )
        if guidance.notice:
            CONSOLE.print(f"[bold yellow]Note: {guidance.notice}")

    def _apply_viewer_controls(self) -> None:
        """Take the viewer's prompt and scales for this step; refuse (once, with a note) values out of range."""
        if self.controls is None:
            return
        current = self.editor.config
        wanted = self.controls.values()
        if all(getattr(current, k) == v for k, v in wanted.items()):
            return
        candidate = dataclasses.replace(current, **wanted)
        try:
            candidate.validate(self.editor.guidance.num_train_timesteps)
        except SettingError as exc:
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
        stats = self.editor.step(self.scene, keep_preview=preview)
        metrics = {
            "csd_timestep": float(stats.timestep),
            "csd_grad_norm": stats.grad_norm,
            "csd_residual_norm": stats.residual_norm,
        }
        metrics |= {f"time_{phase}_s": seconds for phase, seconds in stats.timings.items()}
        if preview:
            self._write_preview(step, stats)
        return dict(stats.losses), metrics

    @torch.no_grad()
    def _write_preview(self, step: int, stats: Any) -> None:
        from csd_nerf.nerf.preview import preview_strip, save_preview

        first = stats.ids[0]
        estimate = self.editor.guidance.decode_latents(stats.pred_original[:1])[0]
        source = self.scene.views.source_images([first])[0]
        strip = preview_strip(source, self.scene.last_renders[0], estimate)
        writer.put_image(name="CSD-Edit preview (source | render | prior's estimate)", image=strip, step=step)
        if self.preview_dir is not None:
            save_preview(strip, self.preview_dir / f"step-{step:06d}.png")

    def get_train_loss_dict(self, step: int):
        raise RuntimeError("csd-edit trains through CSDTrainer.train_iteration (edit_step), not get_train_loss_dict")
