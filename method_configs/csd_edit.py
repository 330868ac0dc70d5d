"""The ``csd-edit`` nerfstudio methods, registered through the ``nerfstudio.method_configs`` entry point.

nerfstudio imports this module in every ``ns-*`` command, for every method. So it must be light (no
diffusers, no model loading) and must never raise: if our code cannot be imported, the methods are still
registered, with a description that says why, and fail with that reason only when someone runs them.
It also lets stock nerfstudio read checkpoints under torch >= 2.6 (see ``csd_nerf.nerf.compat``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

__all__ = ["csd_edit_method", "csd_edit_small_method"]

_DESCRIPTION = "CSD-Edit: edit a trained nerfacto scene from a text instruction (Collaborative Score Distillation)."
_SMALL_DESCRIPTION = "CSD-Edit with lower memory (256 px renders, 2 views per step, smaller chunks and UNet batches)."


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
        config=UnavailableTrainerConfig(method_name=name), description=f"[unavailable: {reason}] {_DESCRIPTION}"
    )


def _build(small: bool) -> TrainerConfig:
    from nerfstudio.configs.base_config import ViewerConfig
    from nerfstudio.engine.optimizers import AdamOptimizerConfig
    from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig

    from csd_nerf.nerf.pipeline import CSDPipelineConfig
    from csd_nerf.nerf.trainer import CSDTrainerConfig

    steps = 2000
    pipeline = CSDPipelineConfig()
    if small:
        pipeline.render_resolution = 256
        pipeline.num_particles = 2
        pipeline.ray_chunk = 1024
        pipeline.max_unet_batch = 5

    def adam(lr: float, lr_final: float):
        return {
            "optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=lr_final, max_steps=steps),
        }

    return CSDTrainerConfig(
        method_name="csd-edit-small" if small else "csd-edit",
        steps_per_eval_batch=500,
        steps_per_eval_image=500,
        steps_per_eval_all_images=1_000_000,
        steps_per_save=250,
        max_num_iterations=steps,
        mixed_precision=False,
        save_only_latest_checkpoint=True,
        pipeline=pipeline,
        optimizers={
            "proposal_networks": adam(1e-2, 1e-3),
            "fields": adam(1e-2, 1e-3),
            "camera_opt": adam(1e-4, 1e-5),  # used only with --pipeline.model.optimize-cameras True
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


def _spec(small: bool) -> MethodSpecification:
    name = "csd-edit-small" if small else "csd-edit"
    try:
        description = f"{_SMALL_DESCRIPTION if small else _DESCRIPTION} {usage('nerfacto')}"
        return MethodSpecification(config=_build(small), description=description)
    except Exception as exc:  # a broken install of ours must not break ns-train for other methods
        return _broken_method(name, f"{type(exc).__name__}: {exc}")


csd_edit_method = _spec(small=False)
csd_edit_small_method = _spec(small=True)
