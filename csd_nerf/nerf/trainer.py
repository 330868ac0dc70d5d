"""The csd-edit trainer: finds the source scene and loads its weights only, counts edit steps from 0, writes
clean checkpoints, and never loses finished steps to Ctrl-C."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils import profiler
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE

from csd_nerf.errors import SettingError, UserError
from csd_nerf.nerf.compat import to_builtin
from csd_nerf.nerf.source import SourceError, find_source, inherit_source_config, load_model_weights

__all__ = ["CSDTrainerConfig", "CSDTrainer", "resolve_source"]

INTERRUPTED_EXIT = 130
"""What a shell reports for a process stopped by Ctrl-C (128 + SIGINT)."""


def _exit_with(exc: BaseException) -> None:
    """Print the one-line message and stop (set CSD_NERF_DEBUG=1 for the traceback)."""
    if os.environ.get("CSD_NERF_DEBUG"):
        raise exc
    print(f"csd-edit: error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None


def resolve_source(config: CSDTrainerConfig) -> None:
    """Check the prompt, find the source run and take its model hyper-parameters and dataparser (once).

    Afterwards the config names the source by ``source_checkpoint`` only: ``load_dir``/``load_step`` are cleared,
    so that stock ``ns-render``/``ns-viewer``/``ns-export`` on the edited run load the edited run's own checkpoint.
    """
    if config.source_checkpoint is not None and config.load_dir is None and config.load_checkpoint is None:
        return
    pipeline = config.pipeline
    model_prompt = getattr(pipeline.model, "prompt", None)
    if not pipeline.prompt.strip() and model_prompt:  # nerfstudio routes --prompt to pipeline.model.prompt
        pipeline.prompt = model_prompt
    if not pipeline.prompt.strip():
        raise SettingError('the edit prompt is empty: pass --pipeline.prompt "Turn the bear into a grizzly bear"')
    if config.machine.device_type == "cuda" and not torch.cuda.is_available():
        torch_flag = " --pipeline.model.implementation torch" if hasattr(pipeline.model, "implementation") else ""
        raise SettingError(f"no CUDA device is available: pass --machine.device-type cpu{torch_flag}")
    source = find_source(
        config.load_dir,
        config.load_step,
        config.load_checkpoint,
        data=config.pipeline.datamanager.data,
        output_dir=config.output_dir,
        methods=config.source_methods,
        announce=CONSOLE.print,
    )
    if config.inherit_source_config:
        changed = inherit_source_config(config, source, source_method=config.source_methods[0])
        if changed:
            CONSOLE.print(f"csd-edit: model settings from {source.config_path}: {', '.join(changed)}")
        src_data = getattr(getattr(getattr(source.config, "pipeline", None), "datamanager", None), "data", None)
        data = config.pipeline.datamanager.data
        if src_data is not None and data is not None and Path(data).resolve() != Path(src_data).resolve():
            CONSOLE.print(f"[yellow]csd-edit: --data {data} differs from the source run's data {src_data}")
    datamanager = config.pipeline.datamanager
    if datamanager.data is None and getattr(datamanager.dataparser, "data", None) in (None, Path()):
        raise SourceError(
            f"no config.yml next to {source.checkpoint.parent} tells which data the scene was trained on: pass --data"
        )
    config.source_checkpoint = source.checkpoint
    config.load_dir = config.load_step = config.load_checkpoint = None


@dataclass
class CSDTrainerConfig(TrainerConfig):
    """nerfstudio TrainerConfig for csd-edit; the scene to edit is ``--load-dir``/``--load-checkpoint``, or the
    latest source run of ``--data``."""

    _target: type = field(default_factory=lambda: CSDTrainer)
    inherit_source_config: bool = True
    """Take model hyper-parameters and the dataparser from the source run's config.yml (flags given still win)."""
    source_methods: tuple[str, ...] = ("nerfacto",)
    """Methods whose runs this method edits (searched under --output-dir when only --data is given)."""
    source_checkpoint: Path | None = None
    """The checkpoint being edited (set from --load-dir/--load-checkpoint/--data; recorded in config.yml)."""

    def save_config(self) -> None:
        """Resolve the source first: ``ns-train`` saves the config before anything else runs, and the saved
        config.yml must describe the model that ``ns-render``/``ns-export`` will rebuild. Nothing is written when
        the source cannot be used."""
        try:
            resolve_source(self)
        except UserError as exc:
            _exit_with(exc)
        super().save_config()


class CSDTrainer(Trainer):
    """Trainer whose iteration is one CSD-Edit step."""

    config: CSDTrainerConfig

    def __init__(self, config: CSDTrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        super().__init__(config, local_rank, world_size)
        # Our backward passes are not scaled, so a scaler would only unscale unscaled gradients.
        self.use_grad_scaler = False
        self.grad_scaler = torch.amp.GradScaler(enabled=False)
        self.finished_step: int | None = None
        if world_size > 1:
            _exit_with(SettingError("csd-edit runs on one device: pass --machine.num-devices 1"))

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val", guidance: Any = None) -> None:
        """nerfstudio's setup, then the editor; ``guidance`` replaces the configured prior (benchmarks' presets,
        the known-answer test prior)."""
        try:
            self.config.save_config()  # resolves the source first; programmatic callers may not have saved it
            super().setup(test_mode)
            self.pipeline.setup_editing(self.base_dir / "previews", guidance=guidance)
        except UserError as exc:
            _exit_with(exc)
        if self.viewer_state is not None and self.pipeline.controls is not None:
            try:
                self.pipeline.controls.install(self.viewer_state)
            except Exception as exc:  # the legacy viewer, another viser: the edit runs on without controls
                CONSOLE.print(f"[yellow]csd-edit: viewer controls unavailable ({type(exc).__name__}: {exc})")

    def _load_checkpoint(self) -> None:
        """Load the source model's weights only; optimisers are rebuilt afterwards and the step starts at 0."""
        if self.config.source_checkpoint is None:
            raise SourceError("no source scene was resolved: pass --data or --load-dir")
        source_step = load_model_weights(self.pipeline.model, self.config.source_checkpoint)
        self.optimizers = self.setup_optimizers()
        self._start_step = 0
        CONSOLE.print(
            f"csd-edit: loaded the model weights of {self.config.source_checkpoint} (source step {source_step})"
        )

    def train(self) -> None:
        """As nerfstudio's, but Ctrl-C keeps every finished step: a checkpoint, one line, exit status 130."""
        try:
            super().train()
        except KeyboardInterrupt:
            saved = None
            if self.finished_step is not None:
                self.save_checkpoint(self.finished_step)
                saved = self.checkpoint_dir / f"step-{self.finished_step:09d}.ckpt"
            print(
                f"csd-edit: interrupted after {0 if self.finished_step is None else self.finished_step + 1} edit "
                f"steps; " + (f"saved {saved}" if saved else "nothing to save yet"),
                file=sys.stderr,
            )
            raise SystemExit(INTERRUPTED_EXIT) from None

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
        # Written beside and renamed into place: a Ctrl-C during the write never leaves a truncated checkpoint.
        partial = ckpt_path.with_suffix(".ckpt.partial")
        torch.save(to_builtin(state), partial)
        os.replace(partial, ckpt_path)
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
        self.finished_step = step
        loss = torch.tensor(sum(losses.values()), dtype=torch.float32)
        return loss, {k: torch.tensor(v) for k, v in losses.items()}, metrics
