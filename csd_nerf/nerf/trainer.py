"""The csd-edit trainer: loads the source scene's weights only, counts edit steps from 0, writes clean checkpoints."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Literal

import torch
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils import profiler
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE

from csd_nerf.nerf.compat import to_builtin
from csd_nerf.nerf.errors import CSDEditError
from csd_nerf.nerf.source import find_source, inherit_source_config, load_model_weights

__all__ = ["CSDTrainerConfig", "CSDTrainer", "resolve_source"]


def _user_error_types() -> tuple[type[BaseException], ...]:
    from csd_nerf.guidance import GuidanceLoadError

    return (CSDEditError, GuidanceLoadError)


def _exit_with(exc: BaseException) -> None:
    """Print the one-line message and stop (set CSD_NERF_DEBUG=1 for the traceback)."""
    if os.environ.get("CSD_NERF_DEBUG"):
        raise exc
    print(f"csd-edit: error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None


def resolve_source(config: CSDTrainerConfig) -> None:
    """Check the prompt, find the source run and take its model hyper-parameters and dataparser (once)."""
    if getattr(config, "_csd_source_resolved", False):
        return
    pipeline = config.pipeline
    model_prompt = getattr(pipeline.model, "prompt", None)
    if not pipeline.prompt.strip() and model_prompt:  # nerfstudio routes --prompt to pipeline.model.prompt
        pipeline.prompt = model_prompt
    if not pipeline.prompt.strip():
        raise CSDEditError('the edit prompt is empty: pass --pipeline.prompt "Turn the bear into a grizzly bear"')
    if config.machine.device_type == "cuda" and not torch.cuda.is_available():
        raise CSDEditError(
            "no CUDA device is available: pass --machine.device-type cpu --pipeline.model.implementation torch"
        )
    source = find_source(config.load_dir, config.load_step, config.load_checkpoint)
    if config.inherit_source_config:
        changed = inherit_source_config(config, source)
        if changed:
            CONSOLE.print(f"csd-edit: model settings from {source.config_path}: {', '.join(changed)}")
        src_data = getattr(getattr(getattr(source.config, "pipeline", None), "datamanager", None), "data", None)
        data = config.pipeline.datamanager.data
        if src_data is not None and data is not None and data.resolve() != src_data.resolve():
            CONSOLE.print(f"[yellow]csd-edit: --data {data} differs from the source run's data {src_data}")
    object.__setattr__(config, "_csd_source_resolved", True)


@dataclass
class CSDTrainerConfig(TrainerConfig):
    """nerfstudio TrainerConfig for csd-edit; ``--load-dir``/``--load-checkpoint`` name the scene to edit."""

    _target: type = field(default_factory=lambda: CSDTrainer)
    inherit_source_config: bool = True
    """Take model hyper-parameters and the dataparser from the source run's config.yml (flags given still win)."""

    def save_config(self) -> None:
        """Resolve the source run first: ``ns-train`` saves the config before anything else runs, and the saved
        config.yml must describe the model that ``ns-render``/``ns-export`` will rebuild."""
        try:
            resolve_source(self)
        except _user_error_types() as exc:
            _exit_with(exc)
        super().save_config()


class CSDTrainer(Trainer):
    """Trainer whose iteration is one CSD-Edit step with deferred backpropagation."""

    config: CSDTrainerConfig

    def __init__(self, config: CSDTrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        super().__init__(config, local_rank, world_size)
        # Our backward passes are not scaled, so a scaler would only unscale unscaled gradients.
        self.use_grad_scaler = False
        self.grad_scaler = torch.amp.GradScaler(enabled=False)
        if world_size > 1:
            _exit_with(CSDEditError("csd-edit runs on one device: pass --machine.num-devices 1"))

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        try:
            self.config.save_config()  # resolves the source first; programmatic callers may not have saved it
            super().setup(test_mode)
            self.pipeline.setup_editing(self.base_dir / "previews")
        except _user_error_types() as exc:
            _exit_with(exc)

    def _load_checkpoint(self) -> None:
        """Load the source model's weights only; optimisers are rebuilt afterwards and the step starts at 0."""
        source = find_source(self.config.load_dir, self.config.load_step, self.config.load_checkpoint)
        source_step = load_model_weights(self.pipeline.model, source.checkpoint)
        self.optimizers = self.setup_optimizers()
        self._start_step = 0
        CONSOLE.print(f"csd-edit: loaded the model weights of {source.checkpoint} (source step {source_step})")

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        """As nerfstudio's, with numpy scalars turned into Python numbers so any torch can load it."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        state = {
            "step": step,
            "pipeline": self.pipeline.state_dict(),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        torch.save(to_builtin(state), ckpt_path)
        if self.config.save_only_latest_checkpoint:
            for old in self.checkpoint_dir.glob("*.ckpt"):
                if old != ckpt_path:
                    old.unlink()

    @profiler.time_function
    def train_iteration(self, step: int):
        """One edit step: the pipeline accumulates gradients itself (chunk by chunk), then one optimiser step."""
        self.optimizers.zero_grad_all()
        losses, metrics = self.pipeline.edit_step(step)
        self.optimizers.optimizer_step_all()
        self.optimizers.scheduler_step_all(step)
        loss = torch.tensor(sum(losses.values()), dtype=torch.float32)
        return loss, {k: torch.tensor(v) for k, v in losses.items()}, metrics
