"""The known-answer edit, end to end: does a whole 3D edit converge to what a prior asks for?

Given two nerfstudio datasets with the same cameras and file names (the source scene, and the target: the
edited scene), it trains the source with stock ``ns-train`` (CPU preset), then runs the real ``csd-edit``
trainer (the same scene, editor, backpropagation, callbacks, optimisers and schedules as a user's edit) with
the known-answer prior pulling every training view toward the target's image of that camera, and measures the
PSNR of the held-out views (the dataparser's eval split) against the target's images before and after.
``scripts/bench_convergence.py`` is its command line; the tests run a short version.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from csd_nerf.errors import UserError
from csd_nerf.testing.offline import offline_tool_env
from csd_nerf.testing.presets import QUIET, nerfacto_cpu_training

__all__ = ["ConvergenceConfig", "train_source", "run_known_answer_edit", "psnr"]


@dataclass
class ConvergenceConfig:
    """One known-answer edit."""

    source_data: Path
    target_data: Path
    work_dir: Path
    """Where the source run and the edit run are written (a new folder of the caller's)."""
    representation: str = "nerfacto"
    steps: int = 200
    """Edit steps."""
    source_steps: int = 1000
    num_particles: int = 4
    render_resolution: int = 64
    coupling: bool = True
    backprop: str = "auto"
    freeze_appearance: bool = True
    encoder: str = "pixels"
    """``pixels`` (exact fixed point) or ``vae`` (the miniature IP2P's VAE: the real encoder path)."""
    seed: int = 0
    extra_pipeline: dict[str, Any] = field(default_factory=dict)
    """Further ``config.pipeline`` fields (e.g. ``densify`` for splats)."""
    source_run: Path | None = None
    """An existing source run to edit (default: the one in ``work_dir/outputs``, trained there if missing)."""
    held_out_fraction: float = 0.2
    """Views the source run holds out (its dataparser's eval split), on which the edit is measured."""
    source_flags: list[str] = field(default_factory=list)
    """Further ``ns-train`` flags of the source run (e.g. a model preset)."""


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in ``[0, 1]``."""
    mse = float((a.float() - b.float()).square().mean())
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def train_source(
    data: Path,
    outputs: Path,
    steps: int,
    method: str = "nerfacto",
    log: Callable[[str], None] = print,
    held_out_fraction: float = 0.2,
    extra: Sequence[str] = (),
) -> Path:
    """Train ``method`` on ``data`` with stock ``ns-train`` (CPU preset), holding out ``held_out_fraction`` of the
    views; returns the run folder."""
    if method == "nerfacto":
        flags = nerfacto_cpu_training(steps)
    else:  # splatfacto-cpu is CPU-sized already
        flags = ["--machine.device-type", "cpu", "--max-num-iterations", str(steps), "--steps-per-save", str(steps)]
    points = [] if method == "nerfacto" else ["--load-3D-points", "True"]  # splats start from the point cloud
    split = ["nerfstudio-data", *points, "--train-split-fraction", str(1.0 - held_out_fraction)]
    exe = Path(sys.executable).with_name("ns-train")
    command = [str(exe), method, "--data", str(data), "--output-dir", str(outputs), *QUIET, *flags, *extra, *split]
    started = time.perf_counter()
    proc = subprocess.run(command, env=offline_tool_env(outputs.parent / "tools"), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ns-train {method} failed: {proc.stderr.strip().splitlines()[-1:]}")
    runs = sorted(outputs.glob(f"*/{method}/*/config.yml"))
    log(f"trained the source ({method}, {steps} steps) in {time.perf_counter() - started:.0f} s")
    return runs[-1].parent


def _target_views(pipeline: Any, target_data: Path, split: str, max_side: int, factor: int):
    """The target's images of the same cameras, through the source run's dataparser (same split and order)."""
    from nerfstudio.data.datasets.base_dataset import InputDataset

    from csd_nerf.nerf.views import TrainViews

    parser_config = dataclasses.replace(pipeline.datamanager.config.dataparser, data=Path(target_data))
    outputs = parser_config.setup().get_dataparser_outputs(split=split)
    return TrainViews(InputDataset(outputs), max_side, factor)


@torch.no_grad()
def _render_eval(pipeline: Any) -> torch.Tensor:
    """The model's renders ``[n, 3, h, w]`` of the eval split at the images' size (as ns-render would)."""
    return _render_views(pipeline, pipeline.datamanager.eval_dataset.cameras)


@torch.no_grad()
def _render_views(pipeline: Any, cameras: Any) -> torch.Tensor:
    """The model's renders ``[n, 3, h, w]`` of ``cameras`` in eval mode (as ns-render would)."""
    cameras = cameras.to(pipeline.device)
    model = pipeline.model
    was_training = model.training
    model.eval()
    images = []
    for i in range(len(cameras)):
        outputs = model.get_outputs_for_camera(cameras[i : i + 1])
        images.append(outputs["rgb"].permute(2, 0, 1).float().cpu())
    model.train(was_training)
    return torch.stack(images)


def _parameters(model: Any, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if k.startswith(prefix)}


def _gaussian_count(model: Any) -> int | None:
    params = getattr(model, "gauss_params", None)
    return int(params["means"].shape[0]) if params is not None else None


def _relative_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    num = sum(float((after[k] - before[k]).square().sum()) for k in before)
    den = sum(float(before[k].square().sum()) for k in before)
    return math.sqrt(num / den) if den > 0 else 0.0


def _edit_config(cfg: ConvergenceConfig, source_run: Path) -> Any:
    from csd_nerf.method_configs.csd_edit import csd_edit_method, csd_edit_splat_method

    splat = cfg.representation == "splat"
    config = copy.deepcopy((csd_edit_splat_method if splat else csd_edit_method).config)
    config.load_dir = source_run / "nerfstudio_models"
    config.output_dir = cfg.work_dir / "outputs"
    config.experiment_name = "known-answer"
    config.machine.device_type = "cpu"
    config.vis = "tensorboard"
    config.logging.local_writer.enable = False
    config.max_num_iterations = cfg.steps
    config.steps_per_save = 10**9
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 10**9
    config.viewer.quit_on_train_completion = True
    p = config.pipeline
    p.prompt = "the known-answer target"  # required by the settings; the test prior ignores it
    p.num_particles, p.render_resolution, p.coupling, p.seed = (
        cfg.num_particles,
        cfg.render_resolution,
        cfg.coupling,
        cfg.seed,
    )
    p.preview_every = 0
    if not splat:
        p.backprop = cfg.backprop
        p.model.implementation = "torch"
        p.model.freeze_appearance = cfg.freeze_appearance
    for key, value in cfg.extra_pipeline.items():
        setattr(p, key, value)
    config.set_timestamp()
    return config


def run_known_answer_edit(cfg: ConvergenceConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the source (unless ``work_dir/outputs`` already holds a run of it), edit toward the target with the
    known-answer prior, and report held-out PSNR to the target before and after."""
    from csd_nerf.guidance.known_answer import KnownAnswerPrior
    from csd_nerf.guidance.presets import build_components

    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    method = "nerfacto" if cfg.representation == "nerfacto" else "splatfacto-cpu"
    outputs = cfg.work_dir / "outputs"
    existing = [] if cfg.source_run else sorted(outputs.glob(f"*/{method}/*/nerfstudio_models/step-*.ckpt"))
    if cfg.source_run is not None:
        source_run = cfg.source_run
    elif existing:
        source_run = existing[-1].parent.parent
    else:
        source_run = train_source(
            cfg.source_data, outputs, cfg.source_steps, method, log, cfg.held_out_fraction, cfg.source_flags
        )

    config = _edit_config(cfg, source_run)
    holder: dict[str, Any] = {}

    def targets(ids: list[int]) -> torch.Tensor:
        return holder["train_targets"].source_images(ids)

    vae = build_components("tiny").vae if cfg.encoder == "vae" else None
    prior = KnownAnswerPrior(targets, encoder=cfg.encoder, vae=vae)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup(guidance=prior)
    pipeline = trainer.pipeline
    views = pipeline.scene.views
    holder["train_targets"] = _target_views(
        pipeline, cfg.target_data, "train", cfg.render_resolution, prior.latent_factor
    )
    if len(pipeline.datamanager.eval_dataset) == 0:
        raise UserError(
            f"the source run {source_run} holds out no views to measure on: use more views or a larger held-out "
            "fraction (nerfstudio-data --train-split-fraction)"
        )
    eval_targets = _target_views(pipeline, cfg.target_data, "val", 0, 1)
    eval_target_images = eval_targets.source_images(list(range(len(eval_targets))))
    eval_source_images = torch.stack(
        [
            pipeline.datamanager.eval_dataset.get_image_float32(i)[..., :3].permute(2, 0, 1)
            for i in range(len(eval_targets))
        ]
    )

    def mean_psnr(renders: torch.Tensor, references: torch.Tensor) -> float:
        return sum(psnr(r, t) for r, t in zip(renders, references, strict=True)) / len(renders)

    train_ids = list(range(len(views)))

    def held_out() -> dict[str, float]:
        renders = _render_eval(pipeline)
        train = _render_views(pipeline, views.cameras)
        return {
            "to_target": mean_psnr(renders, eval_target_images),
            "to_source": mean_psnr(renders, eval_source_images),
            "train_to_target": mean_psnr(train, holder["train_targets"].source_images(train_ids)),
            "train_to_source": mean_psnr(train, views.source_images(train_ids)),
        }

    before = held_out()
    proposals_before = _parameters(pipeline.model, "proposal_networks.")
    fields_before = _parameters(pipeline.model, "field.")
    gaussians_before = _gaussian_count(pipeline.model)
    step_metrics: list[dict[str, float]] = []
    edit_step = pipeline.edit_step

    def recorded_step(step: int):
        losses, metrics = edit_step(step)
        step_metrics.append(metrics)
        return losses, metrics

    pipeline.edit_step = recorded_step
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    after = held_out()

    def mean(key: str) -> float | None:
        values = [m[key] for m in step_metrics if key in m]
        return round(sum(values) / len(values), 4) if values else None

    report = {
        "representation": cfg.representation,
        "psnr_before": round(before["to_target"], 3),
        "psnr_after": round(after["to_target"], 3),
        "psnr_gain": round(after["to_target"] - before["to_target"], 3),
        "psnr_to_source_before": round(before["to_source"], 3),
        "psnr_to_source_after": round(after["to_source"], 3),
        "psnr_train_views_before": round(before["train_to_target"], 3),
        "psnr_train_views_after": round(after["train_to_target"], 3),
        "psnr_train_views_to_source_before": round(before["train_to_source"], 3),
        "psnr_train_views_to_source_after": round(after["train_to_source"], 3),
        "steps": len(step_metrics),
        "seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(1, len(step_metrics)), 3),
        "phase_seconds_per_step": {
            phase: mean(f"time_{phase}_s") for phase in ("render", "vae", "unet", "backward", "total")
        },
        "backprop": getattr(pipeline.scene, "mode", None),
        "proposal_relative_change": round(
            _relative_change(proposals_before, _parameters(pipeline.model, "proposal_networks.")), 5
        )
        if proposals_before
        else None,
        "field_relative_change": round(_relative_change(fields_before, _parameters(pipeline.model, "field.")), 5)
        if fields_before
        else None,
        "gaussians_before": gaussians_before,
        "gaussians_after": _gaussian_count(pipeline.model),
        "train_views": len(views),
        "held_out_views": len(eval_target_images),
        "render_size": [views.width, views.height],
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
        "source_run": str(source_run),
        "same_target_as_source": Path(cfg.source_data).resolve() == Path(cfg.target_data).resolve(),
    }
    log(json.dumps({k: report[k] for k in ("psnr_before", "psnr_after", "psnr_gain", "steps", "seconds_per_step")}))
    return report
