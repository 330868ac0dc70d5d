"""CPU-sized settings shared by the demo, the tests and the benchmarks, as ``ns-train`` flags.

A nerfacto small enough to train and edit on a 2-core CPU: narrow MLPs, a small hash grid and fewer samples per
ray (16 per ray for the field, 32 and 16 for the two proposal levels, instead of 48 / 256, 96). ``csd-edit``
reads these model settings back from the source run's ``config.yml``, so only the source run needs them.
"""

from __future__ import annotations

__all__ = [
    "CPU_MACHINE",
    "CPU_NERFACTO_MODEL",
    "CPU_NERFACTO",
    "EXACT_POSES",
    "QUIET",
    "nerfacto_cpu_training",
    "as_flags",
]

CPU_MACHINE = ["--machine.device-type", "cpu", "--pipeline.model.implementation", "torch"]
"""nerfacto on a CPU: the torch implementation of its hash grid and MLPs."""

CPU_NERFACTO_MODEL: dict[str, object] = {
    "hidden_dim": 16,
    "hidden_dim_color": 16,
    "num_levels": 6,
    "log2_hashmap_size": 13,
    "max_res": 128,
    "num_nerf_samples_per_ray": 16,
    "num_proposal_samples_per_ray": (32, 16),
    "appearance_embed_dim": 8,
}
"""The model: a small field and fewer samples per ray (``NerfactoModelConfig`` fields)."""


def as_flags(fields: dict[str, object], prefix: str = "--pipeline.model.") -> list[str]:
    """``{"num_levels": 6, "x": (1, 2)}`` as ``ns-train`` flags: ``--pipeline.model.num-levels 6 ... 1 2``."""
    flags: list[str] = []
    for name, value in fields.items():
        values = value if isinstance(value, tuple | list) else (value,)
        flags += [prefix + name.replace("_", "-"), *(str(v) for v in values)]
    return flags


CPU_NERFACTO = as_flags(CPU_NERFACTO_MODEL)
""":data:`CPU_NERFACTO_MODEL` as ``ns-train`` flags."""

QUIET = ["--vis", "tensorboard", "--logging.local-writer.enable", "False"]
"""No viewer and no per-step table: for scripted runs."""


EXACT_POSES = ["--pipeline.model.camera-optimizer.mode", "off"]
"""The synthetic scenes' poses are exact (ray-traced): nerfacto's pose refinement (SO3xR3 by default) can only
drift them, and held-out cameras get no correction. Measured on the 48-view, 32 px scene: held-out PSNR 13.9 dB
after 1000 steps with it, 21.6 dB after 500 without (the edit inherits the mode from the source run)."""


def nerfacto_cpu_training(steps: int, rays_per_batch: int = 1024, exact_poses: bool = True) -> list[str]:
    """Flags of a CPU source run of ``steps`` steps (saved at its end); ``exact_poses``: no pose refinement (a
    synthetic scene; off: nerfacto's default, e.g. to test what an edit does to a source's pose corrections)."""
    return [
        *CPU_MACHINE,
        *CPU_NERFACTO,
        *(EXACT_POSES if exact_poses else []),
        "--max-num-iterations", str(steps),
        "--steps-per-save", str(steps),
        "--pipeline.datamanager.train-num-rays-per-batch", str(rays_per_batch),
    ]  # fmt: skip
