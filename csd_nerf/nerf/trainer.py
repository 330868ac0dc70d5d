"""The csd-edit trainer: finds the source scene and loads its weights only, counts edit steps from 0, writes
clean checkpoints, and never loses finished steps to Ctrl-C."""

from __future__ import annotations

import functools
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils import profiler
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE

from csd_nerf.distributed import parameter_digest
from csd_nerf.editor import CSDEditConfig
from csd_nerf.errors import SettingError, UserError
from csd_nerf.nerf.compat import to_builtin
from csd_nerf.nerf.editing import validate_mode
from csd_nerf.nerf.launch import RUN_DIR_ENV, StopRequests, check_devices, launch, processes
from csd_nerf.nerf.source import (
    SourceError,
    data_path,
    find_source,
    inherit_source_config,
    load_model_weights,
    source_data,
)
from csd_nerf.signals import exit_status, install_terminate_as_interrupt, signal_name

__all__ = ["CSDTrainerConfig", "CSDTrainer", "resolve_source"]


def _exit_with(exc: BaseException) -> None:
    """Print the one-line message and stop (set CSD_NERF_DEBUG=1 for the traceback)."""
    if os.environ.get("CSD_NERF_DEBUG"):
        raise exc
    print(f"csd-edit{_process_tag()}: error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None


def _process_tag() -> str:
    """`` (process r of k)`` in a process other than the first of several, else nothing."""
    if dist.is_initialized() and dist.get_rank() != 0:
        return f" (process {dist.get_rank() + 1} of {dist.get_world_size()})"
    return ""


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
    CSDEditConfig.from_settings(pipeline).validate(flags="--pipeline.")
    pipeline.region.validate()
    validate_mode(pipeline)
    check_devices(config)
    if pipeline.max_unet_batch < 0:
        raise SettingError(
            f"--pipeline.max-unet-batch {pipeline.max_unet_batch}: use 0 (all at once) or a positive number"
        )
    if config.machine.device_type == "cuda" and not torch.cuda.is_available():
        torch_flag = " --pipeline.model.implementation torch" if hasattr(pipeline.model, "implementation") else ""
        raise SettingError(f"no CUDA device is available: pass --machine.device-type cpu{torch_flag}")
    source = find_source(
        config.load_dir,
        config.load_step,
        config.load_checkpoint,
        data=data_path(config.pipeline.datamanager),
        output_dir=config.output_dir,
        methods=config.source_methods,
        announce=CONSOLE.print,
    )
    if config.inherit_source_config:
        changed = inherit_source_config(config, source, source_method=config.source_methods[0])
        if changed:
            CONSOLE.print(f"csd-edit: model settings from {source.config_path}: {', '.join(changed)}")
        src_data = source_data(source.checkpoint.parent.parent, source.config) if source.config else None
        data = data_path(config.pipeline.datamanager)
        if src_data is not None and data is not None and data.resolve() != src_data.resolve():
            CONSOLE.print(f"[yellow]csd-edit: --data {data} differs from the source run's data {src_data}")
    if data_path(config.pipeline.datamanager) is None:
        raise SourceError(
            f"no config.yml next to {source.checkpoint.parent} tells which data the scene was trained on: pass --data"
        )
    config.source_checkpoint = source.checkpoint.absolute()  # config.yml is read from other folders
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

    def print_to_terminal(self) -> None:
        """``ns-train`` prints its config dump first: check what can be checked (prompt, source run, prior) before
        it, so that an error is the last thing a user sees; and from here on SIGTERM stops the run as Ctrl-C."""
        install_terminate_as_interrupt()
        try:
            resolve_source(self)
            _check_prior(self)
            super().print_to_terminal()
        except UserError as exc:
            _exit_with(exc)
        except KeyboardInterrupt as exc:
            _interrupted(exc, "before the edit started; nothing written")

    def save_config(self, *, launch_processes: bool = True) -> None:
        """Resolve the source first: ``ns-train`` saves the config before anything else runs, and the saved
        config.yml must describe the model that ``ns-render``/``ns-export`` will rebuild. Nothing is written when
        the source cannot be used. The run folder is created exclusively (a run started in the same second into
        the same folder gets the next free name).

        With ``--machine.num-devices k > 1``, ``ns-train``'s call then runs the edit in k processes of its own
        (:mod:`csd_nerf.nerf.launch`) and exits with their status; inside them only rank 0 writes.
        """
        try:
            resolve_source(self)
            if dist.is_initialized() and dist.get_rank() != 0:
                return
            base = self.get_base_dir().resolve()
            if os.environ.get(RUN_DIR_ENV) == str(base):
                _CLAIMED.add(base)  # created by the launching process, for this process to fill
            if base not in _CLAIMED:
                _claim_run_folder(self)
            super().save_config()
        except UserError as exc:
            _exit_with(exc)
        except KeyboardInterrupt as exc:
            _remove_unfinished_run(self.get_base_dir())
            _interrupted(exc, "before the edit started; nothing kept")
        if launch_processes and processes(self) > 1 and not dist.is_initialized():
            os.environ[RUN_DIR_ENV] = str(self.get_base_dir().resolve())
            CONSOLE.print(
                f"csd-edit: {processes(self)} processes ({self.machine.device_type}), "
                f"{self.pipeline.num_particles} views per step shared among them"
            )
            status = launch(self)
            if status:
                _remove_unfinished_run(self.get_base_dir())  # unless a checkpoint was saved
            raise SystemExit(status)

    def setup(self, **kwargs: Any) -> Any:
        """The trainer (``ns-train`` calls this between saving the config and the trainer's own setup)."""
        try:
            return super().setup(**kwargs)
        except KeyboardInterrupt as exc:
            removed = _remove_unfinished_run(self.get_base_dir())
            _interrupted(
                exc, f"while setting up; {'removed ' + str(self.get_base_dir()) if removed else 'nothing saved'}"
            )


_CLAIMED: set[Path] = set()
"""Run folders this process created (the only ones it may remove)."""


def _claim_run_folder(config: TrainerConfig) -> None:
    stamp = config.timestamp
    for attempt in range(2, 1000):
        base = config.get_base_dir()
        base.parent.mkdir(parents=True, exist_ok=True)
        try:
            base.mkdir()
        except FileExistsError:
            config.timestamp = f"{stamp}-{attempt}"
            continue
        _CLAIMED.add(base.resolve())
        if config.timestamp != stamp:
            CONSOLE.print(f"csd-edit: {base.parent / stamp} is another run's: this run writes to {base}")
        return
    raise SettingError(f"cannot create a new run folder under {config.get_base_dir().parent}: pass --timestamp NAME")


def _remove_unfinished_run(base: Path) -> bool:
    """Remove a run folder this process created and that holds no checkpoint; True when removed."""
    base = base.resolve()
    if base not in _CLAIMED or not base.is_dir() or any(base.glob("nerfstudio_models/step-*.ckpt")):
        return False
    shutil.rmtree(base, ignore_errors=True)
    _CLAIMED.discard(base)
    return True


def _interrupted(exc: KeyboardInterrupt, what: str) -> None:
    """One line (from the first process of several) and the exit status of the signal (130 for Ctrl-C, 143 for
    SIGTERM)."""
    if not _process_tag():
        print(f"csd-edit: interrupted ({signal_name(exc)}) {what}", file=sys.stderr)
    raise SystemExit(exit_status(exc)) from None


def _check_prior(config: CSDTrainerConfig) -> None:
    from csd_nerf.guidance.loading import check_ip2p_model

    check_ip2p_model(config.pipeline.ip2p_model)


class CSDTrainer(Trainer):
    """Trainer whose iteration is one CSD-Edit step."""

    config: CSDTrainerConfig

    def __init__(self, config: CSDTrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        super().__init__(config, local_rank, world_size)
        # Our backward passes are not scaled, so a scaler would only unscale unscaled gradients.
        self.use_grad_scaler = False
        self.grad_scaler = torch.amp.GradScaler(enabled=False)
        self.finished_step: int | None = None

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val", guidance: Any = None) -> None:
        """nerfstudio's setup, then the editor; ``guidance`` replaces the configured prior (benchmarks' presets,
        the known-answer test prior). Interrupted here, the run folder (no checkpoint yet) is removed."""
        try:
            # Resolves the source first; programmatic callers may not have saved it.
            self.config.save_config(launch_processes=False)
            # Saving may have given the run a free folder name (another run had this one).
            self.base_dir, self.checkpoint_dir = self.config.get_base_dir(), self.config.get_checkpoint_dir()
            super().setup(test_mode)
            self.pipeline.setup_editing(self.base_dir / "previews", guidance=guidance)
            # Viewer changes reach config.yml.
            self.pipeline.on_settings_changed = functools.partial(self.config.save_config, launch_processes=False)
            self._continue_idu()
        except UserError as exc:
            _remove_unfinished_run(self.base_dir)
            _exit_with(exc)
        except KeyboardInterrupt as exc:
            removed = _remove_unfinished_run(self.base_dir)
            _interrupted(exc, f"while setting up; {'removed ' + str(self.base_dir) if removed else 'nothing saved'}")
        if self.viewer_state is not None and self.pipeline.controls is not None:
            try:
                self.pipeline.controls.install(self.viewer_state)
            except Exception as exc:  # the legacy viewer, another viser: the edit runs on without controls
                CONSOLE.print(f"[yellow]csd-edit: viewer controls unavailable ({type(exc).__name__}: {exc})")

    def _continue_idu(self) -> None:
        """idu mode on a source that is itself an idu edit (its run folder holds ``edited_images/``): its edited
        training images become this run's current training images, as the source run left them."""
        from csd_nerf.nerf.idu import edited_images_folder

        if self.config.pipeline.mode != "idu" or self.config.source_checkpoint is None:
            return
        source_run = Path(self.config.source_checkpoint).parent.parent
        folder = edited_images_folder(source_run)
        if not folder.is_dir():
            return
        taken = self.pipeline.load_edited_images(source_run)
        CONSOLE.print(
            f"csd-edit: continuing an idu edit: {taken} edited training images taken from {folder} "
            f"(the source images stay the prior's conditioning)"
        )

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
        """As nerfstudio's, but Ctrl-C or SIGTERM keeps every finished step: a checkpoint, one line, exit status
        130 (143 for SIGTERM). Stopped before the first step ends, the run folder is removed."""
        try:
            super().train()
            self._check_processes_agree()
        except KeyboardInterrupt as exc:
            done = 0 if self.finished_step is None else self.finished_step + 1
            if self.finished_step is not None:
                self.save_checkpoint(self.finished_step)
                what = f"after {done} edit steps; saved {self.checkpoint_dir / f'step-{self.finished_step:09d}.ckpt'}"
            else:
                removed = _remove_unfinished_run(self.base_dir)
                what = f"before the first edit step; {'removed ' + str(self.base_dir) if removed else 'nothing saved'}"
            _interrupted(exc, what)

    def _check_processes_agree(self) -> None:
        """Several processes: say (rank 0) whether they ended with the same parameters, as they must."""
        group = self.pipeline.editor.group
        if group.world_size == 1:
            return
        digests = group.gather_objects(parameter_digest(self.pipeline.model))
        if group.is_main:
            if len(set(digests)) == 1:
                CONSOLE.print(
                    f"csd-edit: the {group.world_size} processes ended with identical parameters "
                    f"(sha256 {digests[0][:16]})"
                )
            else:
                CONSOLE.print(f"[bold red]csd-edit: the processes' parameters differ: {[d[:16] for d in digests]}")

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
        self.pipeline.save_edited_images(self.base_dir)  # idu: the training images this checkpoint was fitted to
        if self.config.save_only_latest_checkpoint:
            for old in self.checkpoint_dir.glob("*.ckpt"):
                if old != ckpt_path:
                    old.unlink()

    @profiler.time_function
    def train_iteration(self, step: int):
        """One edit step: the pipeline accumulates gradients itself (chunk by chunk), then one optimiser step.
        Over several processes, a signal any of them got stops all of them here, at the same step."""
        group = self.pipeline.editor.group if self.pipeline.editor is not None else None
        if group is not None and group.world_size > 1:
            stop = StopRequests.agreed(group)
            if stop is not None:
                raise KeyboardInterrupt(*(() if stop == "SIGINT" else (stop,)))
        self.optimizers.zero_grad_all()
        losses, metrics = self.pipeline.edit_step(step)
        self.optimizers.optimizer_step_all()
        self.optimizers.scheduler_step_all(step)
        self.finished_step = step
        loss = torch.tensor(sum(losses.values()), dtype=torch.float32)
        return loss, {k: torch.tensor(v) for k, v in losses.items()}, metrics
