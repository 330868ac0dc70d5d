"""The source run being edited: finding it, its config.yml, and loading its weights into our model.

The source is ``--load-dir``/``--load-checkpoint``, or else the latest run of the source method (nerfacto,
splatfacto) of ``--data`` under the output folder, in nerfstudio's layout
``<output-dir>/<experiment>/<method>/<timestamp>/``. Only the model weights are taken from the checkpoint (no
optimiser, scheduler or step). The source run's model hyper-parameters and dataparser come from the
``config.yml`` beside ``nerfstudio_models/`` so users do not repeat them; flags given on the command line win.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from csd_nerf.errors import UserError
from csd_nerf.nerf.compat import CheckpointError, load_checkpoint

__all__ = [
    "SourceError",
    "SourceRun",
    "find_source",
    "latest_run",
    "data_path",
    "source_data",
    "cli_overrides",
    "inherit_source_config",
    "model_state_from_checkpoint",
    "load_model_weights",
]

# Never inherited: runtime settings of this run, and our own fields.
_NOT_INHERITED = {
    "_target",
    "eval_num_rays_per_chunk",
    "prompt",
    "optimize_cameras",
    "settled_proposals",
    "freeze_appearance",
}


class SourceError(UserError):
    """The source run cannot be used; the message is one line naming the fix."""


@dataclass
class SourceRun:
    """Where the scene to edit lives."""

    checkpoint: Path
    config_path: Path | None
    config: Any | None
    """The source run's TrainerConfig, when its config.yml was found and readable."""


def _latest_step(load_dir: Path) -> int:
    steps = []
    for name in os.listdir(load_dir):
        if name.startswith("step-") and name.endswith(".ckpt"):
            try:
                steps.append(int(name[len("step-") : -len(".ckpt")]))
            except ValueError:
                continue
    if not steps:
        raise SourceError(
            f"no checkpoint (step-*.ckpt) in {load_dir}: pass the nerfstudio_models folder of a finished run"
        )
    return max(steps)


def _read_config(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(), Loader=yaml.Loader)
    except Exception as exc:  # a config of a method whose plugin is not installed, or a damaged file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(
            f"cannot read the source run's {path} ({reason[:160]}): install the method it was trained "
            f"with, or move the file away and give the model flags yourself"
        ) from None


def _same_path(a: Path | None, b: Path | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False


def data_path(datamanager: Any) -> Path | None:
    """The data folder a datamanager config names, wherever nerfstudio keeps it: ``--data`` on ``ns-train``
    (``datamanager.data``) or on the dataparser subcommand (``dataparser.data``; its default ``Path()`` is none)."""
    data = getattr(datamanager, "data", None)
    if data is not None:
        return Path(data)
    data = getattr(getattr(datamanager, "dataparser", None), "data", None)
    return Path(data) if data is not None and Path(data) != Path() else None


def _training_folder(run: Path, config: Any) -> Path | None:
    """The working folder ``ns-train`` ran in when it made ``run``, read off the run folder's own path.

    nerfstudio writes a run to ``<output_dir>/<experiment>/<method>/<timestamp>`` relative to its working folder;
    with a relative ``output_dir`` that folder is what remains of the run's absolute path without those parts.
    """
    try:
        base = (
            Path(str(config.output_dir)) / str(config.experiment_name) / str(config.method_name) / str(config.timestamp)
        )
    except AttributeError:
        return None
    if base.is_absolute():
        return None
    run = run.resolve()
    parts = base.parts
    if len(run.parts) <= len(parts) or run.parts[-len(parts) :] != parts:
        return None
    return run.parents[len(parts) - 1]


def source_data(run: Path, config: Any) -> Path | None:
    """The data folder the source run at ``run`` was trained on, resolved as nerfstudio resolved it then.

    A relative data path is relative to the folder ``ns-train`` ran in, which is not the current one when a user
    edits from elsewhere: it is taken from there (:func:`_training_folder`), else from here; None if not named.
    """
    data = data_path(getattr(getattr(config, "pipeline", None), "datamanager", None))
    if data is None or data.expanduser().is_absolute():
        return data.expanduser() if data is not None else None
    folder = _training_folder(run, config)
    if folder is not None and (folder / data).exists():
        return folder / data
    return data


def _runs_of(output_dir: Path, data: Path, methods: Sequence[str]) -> list[tuple[Path, bool]]:
    """Run folders of ``methods`` trained on ``data`` under ``output_dir``, each with whether it has a checkpoint."""
    runs = []
    for method in methods:
        for config_path in Path(output_dir).glob(f"*/{method}/*/config.yml"):
            run = config_path.parent
            try:
                config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
            except Exception:  # an unreadable run is simply not a candidate
                continue
            if _same_path(source_data(run, config), data):
                runs.append((run, any((run / "nerfstudio_models").glob("step-*.ckpt"))))
    return runs


def latest_run(output_dir: Path, data: Path, methods: Sequence[str]) -> Path | None:
    """The newest run folder of one of ``methods`` trained on ``data`` under ``output_dir`` (with a checkpoint)."""
    runs = [(run.name, run.stat().st_mtime, run) for run, finished in _runs_of(output_dir, data, methods) if finished]
    return max(runs)[2] if runs else None


OFFLINE_NERFACTO_HINT = (
    "offline, ns-train nerfacto stops while fetching AlexNet for its LPIPS metric: see the README, "
    "'Training the source scene offline' (Troubleshooting)"
)


def find_source(
    load_dir: Path | None,
    load_step: int | None,
    load_checkpoint_path: Path | None,
    data: Path | None = None,
    output_dir: Path | None = None,
    methods: Sequence[str] = ("nerfacto",),
    announce=None,
) -> SourceRun:
    """Locate the checkpoint and config.yml of the source run: ``--load-dir``/``--load-checkpoint``, or the latest
    run of ``methods`` on ``data`` under ``output_dir`` (``announce`` is told which run was taken)."""
    if load_dir is None and load_checkpoint_path is None and data is not None and output_dir is not None:
        run = latest_run(output_dir, data, methods)
        if run is None:
            unfinished = [r for r, finished in _runs_of(output_dir, data, methods) if not finished]
            why = (
                f"{len(unfinished)} {methods[0]} run(s) of {data} under {output_dir} stopped before their first "
                f"checkpoint ({OFFLINE_NERFACTO_HINT}); "
                if unfinished
                else f"no {' or '.join(methods)} run of {data} under {output_dir}: "
            )
            raise SourceError(
                f"{why}train it first (ns-train {methods[0]} --data {data}), or pass --load-dir .../nerfstudio_models"
            )
        load_dir = run / "nerfstudio_models"
        if announce is not None:
            announce(
                f"csd-edit: editing the latest {run.parent.name} run of {data}: {run} (--load-dir chooses another)"
            )
    if load_dir is not None:
        load_dir = Path(load_dir)
        if not load_dir.is_dir():
            raise SourceError(
                f"--load-dir {load_dir} is not a folder: pass outputs/<scene>/nerfacto/<run>/nerfstudio_models"
            )
        step = _latest_step(load_dir) if load_step is None else load_step
        checkpoint = load_dir / f"step-{step:09d}.ckpt"
        if not checkpoint.is_file():
            raise SourceError(f"checkpoint {checkpoint} does not exist: drop --load-step or pick an existing step")
    elif load_checkpoint_path is not None:
        checkpoint = Path(load_checkpoint_path)
        if not checkpoint.is_file():
            raise SourceError(f"--load-checkpoint {checkpoint} does not exist: pass an existing step-*.ckpt file")
    else:
        raise SourceError(
            f"csd-edit edits a trained scene: pass --data of a scene trained with ns-train {methods[0]}, or "
            f"--load-dir outputs/<scene>/{methods[0]}/<run>/nerfstudio_models"
        )
    config_path = checkpoint.parent.parent / "config.yml"
    config = _read_config(config_path) if config_path.is_file() else None
    return SourceRun(checkpoint=checkpoint, config_path=config_path if config else None, config=config)


def cli_overrides(argv: Sequence[str] | None = None) -> set[str]:
    """Dotted config paths given explicitly on the command line, e.g. ``{"pipeline.model.hidden_dim"}``.

    tyro cannot tell a default from an explicit value equal to it, so the command line itself is the record.
    """
    argv = sys.argv[1:] if argv is None else argv
    names = set()
    for token in argv:
        if token.startswith("--"):
            names.add(token[2:].split("=", 1)[0].replace("-", "_"))
    return names


def _dataparser_named_on_cli(argv: Sequence[str]) -> bool:
    try:
        from nerfstudio.configs.dataparser_configs import all_dataparsers
    except Exception:  # pragma: no cover - nerfstudio always has it
        return False
    return any(token in all_dataparsers for token in argv)


def inherit_source_config(
    config: Any, source: SourceRun, argv: Sequence[str] | None = None, source_method: str = "nerfacto"
) -> list[str]:
    """Copy the source run's model hyper-parameters and dataparser into ``config`` (in place).

    A field is not copied when it was given on the command line. The dataparser (with its options) is copied
    unless a dataparser subcommand was named; the data path is the user's ``--data`` or else the source's.
    The source's model must be of the kind ``config``'s model edits (its ``source_config`` class).

    Returns the names of the model fields whose value changed.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if source.config is None:
        return []
    expected = config.pipeline.model.source_config
    src_model = getattr(getattr(source.config, "pipeline", None), "model", None)
    if not isinstance(src_model, expected):
        method = getattr(source.config, "method_name", "?")
        raise SourceError(
            f"the source run is {method!r} ({type(src_model).__name__}); {config.method_name} edits "
            f"{source_method} runs: train the scene with ns-train {source_method} first"
        )
    given = cli_overrides(argv)
    model = config.pipeline.model
    changed = []
    for f in dataclasses.fields(model):
        if f.name in _NOT_INHERITED or f"pipeline.model.{f.name}" in given or not hasattr(src_model, f.name):
            continue
        value = getattr(src_model, f.name)
        if f.name == "camera_optimizer":
            # Keep the source's pose corrections (same mode, so they load); whether they train is ours.
            if value.mode != model.camera_optimizer.mode and "pipeline.model.camera_optimizer.mode" not in given:
                model.camera_optimizer.mode = value.mode
                changed.append("camera_optimizer.mode")
            continue
        if getattr(model, f.name) != value:
            setattr(model, f.name, value)
            changed.append(f.name)

    datamanager = config.pipeline.datamanager
    src_datamanager = source.config.pipeline.datamanager
    user_data = data_path(datamanager)
    if not _dataparser_named_on_cli(argv) and hasattr(src_datamanager, "dataparser"):
        datamanager.dataparser = src_datamanager.dataparser
    if user_data is None:
        data = source_data(source.checkpoint.parent.parent, source.config)
        if data is not None and not data.exists():
            raise SourceError(
                f"the source run was trained on {data_path(src_datamanager)}, which is not found from here or from "
                f"the folder it was trained in: pass --data with where that scene is now"
            )
        datamanager.data = data
    else:
        datamanager.data = user_data
    return changed


def model_state_from_checkpoint(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's own weights from a checkpoint's pipeline state (no ``_model.`` prefix, no LPIPS network)."""
    model_state = {}
    for key, value in state["pipeline"].items():
        key = key[len("module.") :] if key.startswith("module.") else key
        if not key.startswith("_model."):
            continue
        key = key[len("_model.") :]
        if key.startswith("lpips."):  # stock nerfacto and splatfacto save their LPIPS AlexNet; we never build it
            continue
        model_state[key] = value
    return model_state


def _uses_tcnn(keys: Sequence[str]) -> bool:
    return any(key.endswith(".params") and ("mlp" in key or "encoding" in key) for key in keys)


def _same_shape(key: str, own: torch.Tensor, loaded: torch.Tensor) -> bool:
    if key.startswith("gauss_params."):  # splats: any number of Gaussians, the per-Gaussian shape must match
        return tuple(own.shape[1:]) == tuple(loaded.shape[1:])
    return tuple(own.shape) == tuple(loaded.shape)


def _mismatch_message(own: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], checkpoint: Path) -> str | None:
    """One line saying how the checkpoint differs from the model, or None when they match."""
    missing = [k for k in own if k not in loaded]
    unexpected = [k for k in loaded if k not in own]
    shapes = [k for k in own if k in loaded and not _same_shape(k, own[k], loaded[k])]
    if not (missing or unexpected or shapes):
        return None
    if _uses_tcnn(loaded) != _uses_tcnn(own):
        ckpt_impl = "tcnn" if _uses_tcnn(loaded) else "torch"
        return (
            f"{checkpoint} was trained with the {ckpt_impl} implementation and this run builds the "
            f"{'torch' if ckpt_impl == 'tcnn' else 'tcnn'} one: pass --pipeline.model.implementation {ckpt_impl}"
            + (" on a CUDA machine with tiny-cuda-nn" if ckpt_impl == "tcnn" else "")
        )
    parts = []
    for key in shapes[:3]:
        parts.append(f"{key} is {list(loaded[key].shape)} in the checkpoint but {list(own[key].shape)} here")
    if missing:
        parts.append(f"{len(missing)} weights missing from the checkpoint (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected weights (e.g. {unexpected[0]})")
    hint = "use the source run's --data and dataparser options and drop --pipeline.model.* flags that differ from it"
    if any("embedding_appearance" in k or "pose_adjustment" in k for k in shapes):
        hint = "the number of training images differs: use the same --data and dataparser options as the source run"
    return f"checkpoint {checkpoint} does not fit this model: {'; '.join(parts)}: {hint}"


def load_model_weights(model: torch.nn.Module, checkpoint: Path) -> int:
    """Load only the model weights of ``checkpoint`` into ``model`` (strict); returns the source's step.

    Raises:
        SourceError: unreadable checkpoint, or weights that do not fit the model (one line saying what differs).
    """
    try:
        state = load_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise SourceError(str(exc)) from None
    loaded = model_state_from_checkpoint(state)
    own = model.state_dict()
    message = _mismatch_message(own, loaded, checkpoint)
    if message:
        raise SourceError(message)
    model.load_state_dict(loaded, strict=True)
    return int(state.get("step", 0))
