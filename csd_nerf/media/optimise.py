"""The optimisation loop of the 2D applications: CSD-Edit steps on a scene's latents with SGD and step decay."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from csd_nerf.editor import CSDEditor, StepStats
from csd_nerf.errors import SettingError


@dataclass
class OptimConfig:
    """SGD on the latents with ``lr * decay ** (step // decay_every)``, as the reference code does."""

    steps: int = 200
    lr: float = 2.0
    lr_decay: float = 0.9
    lr_decay_every: int = 20

    def validate(self) -> None:
        """Raise :class:`~csd_nerf.errors.SettingError` with a one-line fix for anything out of range, naming the
        command-line flag (``csd-edit-2d``'s) as the step's settings do."""
        if self.steps < 1:
            raise SettingError(f"--steps {self.steps}: use at least 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise SettingError(f"--lr {self.lr}: use a positive learning rate")
        if not (math.isfinite(self.lr_decay) and 0 < self.lr_decay <= 1):
            raise SettingError(f"--lr-decay {self.lr_decay}: use a factor in (0, 1]")
        if self.lr_decay_every < 1:
            raise SettingError(f"--lr-decay-every {self.lr_decay_every}: use at least 1")


@dataclass
class EditLog:
    """What a run did, step by step, for run.json."""

    timesteps: list[int] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    unet_seconds: float = 0.0
    unet_samples: int = 0
    seconds: float = 0.0

    def add(self, stats: StepStats, seconds: float) -> None:
        self.timesteps.append(stats.timestep)
        self.grad_norms.append(stats.grad_norm)
        self.step_seconds.append(seconds)
        self.unet_seconds += stats.unet_seconds
        self.unet_samples += stats.unet_samples

    def summary(self) -> dict:
        steps = len(self.step_seconds)
        return {
            "steps": steps,
            "seconds": round(self.seconds, 3),
            "seconds_per_step": round(self.seconds / steps, 4) if steps else None,
            "unet_seconds": round(self.unet_seconds, 3),
            "unet_samples": self.unet_samples,
            "timesteps": self.timesteps,
            "grad_norms": [round(g, 6) for g in self.grad_norms],
        }


def run_edit(
    editor: CSDEditor,
    scene,
    parameters: list[torch.nn.Parameter],
    optim: OptimConfig,
    on_step: Callable[[int, StepStats], None] | None = None,
    on_save: Callable[[int], None] | None = None,
    save_every: int = 0,
) -> EditLog:
    """Run ``optim.steps`` CSD-Edit steps on ``scene``, stepping SGD on ``parameters`` after each.

    ``on_step(step, stats)`` runs after every step (1-based), ``on_save(step)`` every ``save_every`` steps
    (never on the last step: the caller writes the final result itself).
    """
    optim.validate()
    optimizer = torch.optim.SGD(parameters, lr=optim.lr)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=optim.lr_decay_every, gamma=optim.lr_decay)
    log = EditLog()
    start = time.perf_counter()
    for step in range(1, optim.steps + 1):
        step_start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        stats = editor.step(scene)
        optimizer.step()
        schedule.step()
        log.add(stats, time.perf_counter() - step_start)
        if on_step is not None:
            on_step(step, stats)
        if on_save is not None and save_every > 0 and step % save_every == 0 and step < optim.steps:
            on_save(step)
    log.seconds = time.perf_counter() - start
    return log
