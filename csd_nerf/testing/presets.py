"""CPU-sized settings shared by the demo, the tests and the benchmarks, as ``ns-train`` flags.

A nerfacto small enough to train and edit on a 2-core CPU: narrow MLPs, a small hash grid and fewer samples per
ray (16 per ray for the field, 32 and 16 for the two proposal levels, instead of 48 / 256, 96). ``csd-edit``
reads these model settings back from the source run's ``config.yml``, so only the source run needs them.
"""

from __future__ import annotations

__all__ = ["CPU_MACHINE", "CPU_NERFACTO", "QUIET", "nerfacto_cpu_training"]

CPU_MACHINE = ["--machine.device-type", "cpu", "--pipeline.model.implementation", "torch"]
"""nerfacto on a CPU: the torch implementation of its hash grid and MLPs."""

CPU_NERFACTO = [
    "--pipeline.model.hidden-dim", "16",
    "--pipeline.model.hidden-dim-color", "16",
    "--pipeline.model.num-levels", "6",
    "--pipeline.model.log2-hashmap-size", "13",
    "--pipeline.model.max-res", "128",
    "--pipeline.model.num-nerf-samples-per-ray", "16",
    "--pipeline.model.num-proposal-samples-per-ray", "32", "16",
    "--pipeline.model.appearance-embed-dim", "8",
]  # fmt: skip
"""The model: a small field and fewer samples per ray."""

QUIET = ["--vis", "tensorboard", "--logging.local-writer.enable", "False"]
"""No viewer and no per-step table: for scripted runs."""


def nerfacto_cpu_training(steps: int, rays_per_batch: int = 1024) -> list[str]:
    """Flags of a CPU source run of ``steps`` steps (saved at its end)."""
    return [
        *CPU_MACHINE,
        *CPU_NERFACTO,
        "--max-num-iterations", str(steps),
        "--steps-per-save", str(steps),
        "--pipeline.datamanager.train-num-rays-per-batch", str(rays_per_batch),
    ]  # fmt: skip
