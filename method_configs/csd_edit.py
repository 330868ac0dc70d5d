"""The nerfstudio methods of csd-nerf, registered through the ``nerfstudio.method_configs`` entry point:
``csd-edit`` and ``csd-edit-small`` (nerfacto scenes), ``csd-edit-splat`` (splat scenes) and ``splatfacto-cpu``
(splatfacto that trains on a CPU, for small scenes).

nerfstudio imports this module in every ``ns-*`` command, for every method. So it must be light (no
diffusers, no model loading) and must never raise: if our code cannot be imported, the methods are still
registered, with a description that says why, and fail with that reason only when someone runs them.
It also lets stock nerfstudio read checkpoints under torch >= 2.6 (see ``csd_nerf.nerf.compat``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

__all__ = ["csd_edit_method", "csd_edit_small_method", "csd_edit_splat_method", "splatfacto_cpu_method"]

EDIT_STEPS = 2000
"""Default length of an edit (``--max-num-iterations``); learning-rate schedules span it."""

_DESCRIPTIONS = {
    "csd-edit": "CSD-Edit: edit a trained nerfacto scene from a text instruction (Collaborative Score Distillation).",
    "csd-edit-small": "CSD-Edit with lower memory (256 px renders, 2 views per step, smaller chunks and UNet batches).",
    "csd-edit-splat": "CSD-Edit of a trained Gaussian-splat scene (splatfacto or splatfacto-cpu) from a text "
    "instruction; on a CPU it rasterises with csd-nerf's pure-torch rasteriser.",
    "splatfacto-cpu": "splatfacto that also trains on a CPU (csd-nerf's pure-torch rasteriser; small scenes, slow): "
    "the source scene for csd-edit-splat on a machine without a GPU. With a GPU, use splatfacto.",
}


def usage(source_method: str) -> str:
    """The three options a user needs, for the top of ``ns-train <method> --help``."""
    from csd_nerf.guidance.loading import DEFAULT_MODEL

    return (
        f'The options you need: --pipeline.prompt "Turn the bear into a grizzly bear" (the instruction); '
        f"--load-dir outputs/SCENE/{source_method}/RUN/nerfstudio_models (the scene to edit; default: the latest "
        f"{source_method} run of --data); --pipeline.ip2p-model (InstructPix2Pix: hub id, local folder or 'tiny'; "
        f"default {DEFAULT_MODEL})."
    )


try:
    from csd_nerf.nerf.compat import register_safe_globals

    register_safe_globals()
except Exception as exc:  # never break ns-* for other methods
    print(f"csd-nerf: could not register checkpoint compatibility ({exc})", file=sys.stderr)


def _broken_method(name: str, reason: str) -> MethodSpecification:
    """A placeholder that keeps ns-train working and says why ``name`` is unavailable when it is chosen."""

    def fail(*_args, **_kwargs):
        raise SystemExit(f"{name} is unavailable: {reason}: reinstall csd-nerf (pip install -e .) and retry")

    @dataclass
    class UnavailableTrainerConfig(TrainerConfig):
        _target: type = field(default_factory=lambda: fail)

    return MethodSpecification(
        config=UnavailableTrainerConfig(method_name=name),
        description=f"[unavailable: {reason}] {_DESCRIPTIONS[name]}",
    )


def _edit_trainer(name: str, pipeline, optimizers: dict, source_methods: tuple[str, ...]) -> TrainerConfig:
    from nerfstudio.configs.base_config import ViewerConfig

    from csd_nerf.nerf.trainer import CSDTrainerConfig

    return CSDTrainerConfig(
        method_name=name,
        steps_per_eval_batch=500,
        steps_per_eval_image=500,
        steps_per_eval_all_images=1_000_000,
        steps_per_save=250,
        max_num_iterations=EDIT_STEPS,
        mixed_precision=False,
        save_only_latest_checkpoint=True,
        pipeline=pipeline,
        optimizers=optimizers,
        source_methods=source_methods,
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


def _nerfacto_edit(small: bool) -> TrainerConfig:
    from nerfstudio.engine.optimizers import AdamOptimizerConfig
    from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig

    from csd_nerf.nerf.pipeline import CSDPipelineConfig

    pipeline = CSDPipelineConfig()
    if small:
        pipeline.render_resolution = 256
        pipeline.num_particles = 2
        pipeline.ray_chunk = 1024
        pipeline.max_unet_batch = 5

    def adam(lr: float, lr_final: float):
        return {
            "optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=lr_final, max_steps=EDIT_STEPS),
        }

    optimizers = {
        "proposal_networks": adam(1e-2, 1e-3),
        "fields": adam(1e-2, 1e-3),
        "camera_opt": adam(1e-4, 1e-5),  # used only with --pipeline.model.optimize-cameras True
    }
    return _edit_trainer("csd-edit-small" if small else "csd-edit", pipeline, optimizers, ("nerfacto",))


def splatfacto_optimizers(max_steps: int) -> dict:
    """splatfacto's optimisers (nerfstudio 1.1.5's ``method_configs["splatfacto"]``), decaying over ``max_steps``.

    Written out because that module cannot be imported from here (it discovers plugins, this module among them,
    at import); a test holds these to nerfstudio's own, so a renamed group fails loudly, not silently.
    """
    from nerfstudio.engine.optimizers import AdamOptimizerConfig
    from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig

    warmup = min(1000, max_steps // 10)

    def adam(lr: float, scheduler=None) -> dict:
        return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": scheduler}

    return {
        "means": adam(1.6e-4, ExponentialDecaySchedulerConfig(lr_final=1.6e-6, max_steps=max_steps)),
        "features_dc": adam(0.0025),
        "features_rest": adam(0.0025 / 20),
        "opacities": adam(0.05),
        "scales": adam(0.005),
        "quats": adam(0.001),
        "camera_opt": adam(
            1e-4,
            ExponentialDecaySchedulerConfig(lr_final=5e-7, max_steps=max_steps, warmup_steps=warmup, lr_pre_warmup=0),
        ),
        "bilateral_grid": adam(
            2e-3,
            ExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=max_steps, warmup_steps=warmup, lr_pre_warmup=0),
        ),
    }


def _splat_edit() -> TrainerConfig:
    from csd_nerf.nerf.splat_pipeline import CSDSplatPipelineConfig

    optimizers = splatfacto_optimizers(EDIT_STEPS)
    return _edit_trainer("csd-edit-splat", CSDSplatPipelineConfig(), optimizers, ("splatfacto", "splatfacto-cpu"))


def _splatfacto_cpu() -> TrainerConfig:
    """splatfacto's trainer config (nerfstudio 1.1.5) with the CPU model, sized for small scenes."""
    from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
    from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanagerConfig
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
    from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig

    from csd_nerf.nerf.splat_model import SplatfactoCPUModelConfig

    steps = 3000
    return TrainerConfig(
        method_name="splatfacto-cpu",
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=500,
        steps_per_eval_all_images=1000,
        max_num_iterations=steps,
        mixed_precision=False,
        machine=MachineConfig(device_type="cpu"),
        pipeline=VanillaPipelineConfig(
            datamanager=FullImageDatamanagerConfig(
                dataparser=NerfstudioDataParserConfig(load_3D_points=True), cache_images_type="uint8"
            ),
            model=SplatfactoCPUModelConfig(),
        ),
        optimizers=splatfacto_optimizers(steps),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


def _spec(name: str, build: Callable[[], TrainerConfig], source_method: str | None) -> MethodSpecification:
    try:
        description = _DESCRIPTIONS[name] + (f" {usage(source_method)}" if source_method else "")
        return MethodSpecification(config=build(), description=description)
    except Exception as exc:  # a broken install of ours must not break ns-train for other methods
        return _broken_method(name, f"{type(exc).__name__}: {exc}")


csd_edit_method = _spec("csd-edit", lambda: _nerfacto_edit(small=False), "nerfacto")
csd_edit_small_method = _spec("csd-edit-small", lambda: _nerfacto_edit(small=True), "nerfacto")
csd_edit_splat_method = _spec("csd-edit-splat", _splat_edit, "splatfacto")
splatfacto_cpu_method = _spec("splatfacto-cpu", _splatfacto_cpu, None)
