"""The known-answer edit, end to end: does a whole 3D edit converge to what a prior asks for?

Given two nerfstudio datasets with the same cameras and file names (the source scene, and the target: the
edited scene), it trains the source with stock ``ns-train`` (CPU preset), then runs the real ``csd-edit``
trainer (the same scene, editor, backpropagation, callbacks, optimisers and schedules as a user's edit) with
the known-answer prior pulling every training view toward the target's image of that camera, and measures the
PSNR of the held-out views (the dataparser's eval split) against the target's images before and after.
``scripts/bench_convergence.py`` is its command line; the tests run a short version.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from csd_nerf.editor import CSDEditConfig
from csd_nerf.errors import UserError
from csd_nerf.testing.offline import offline_tool_env
from csd_nerf.testing.presets import QUIET, nerfacto_cpu_training

__all__ = ["ConvergenceConfig", "train_source", "run_known_answer_edit", "psnr", "psnr_where"]


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
    num_particles: int = CSDEditConfig.num_particles
    render_resolution: int = 64
    coupling: bool = True
    backprop: str = "auto"
    freeze_appearance: bool = True
    encoder: str = "pixels"
    """``pixels`` (exact fixed point) or ``vae`` (the miniature IP2P's VAE: the real encoder path)."""
    seed: int = 0
    extra_pipeline: dict[str, Any] = field(default_factory=dict)
    """Further ``config.pipeline`` fields, dotted below it (e.g. ``model.densify`` for splats)."""
    source_run: Path | None = None
    """An existing source run to edit (default: the one in ``work_dir/outputs``, trained there if missing)."""
    held_out_fraction: float = 0.2
    """Views the source run holds out (its dataparser's eval split), on which the edit is measured."""
    source_flags: list[str] = field(default_factory=list)
    """Further ``ns-train`` flags of the source run (e.g. a model preset)."""
    region: tuple[float, float, float, float, float, float] | None = None
    """Edit only inside an axis-aligned box ``(cx, cy, cz, hx, hy, hz)`` (centre, half-sizes) in the datasets' own
    coordinates; converted with the source run's dataparser transform into the pipeline's."""
    region_margin: float = 0.0
    """Soft edge of the region, in the pipeline's world units."""
    region_preservation: float | None = None
    """nerfacto: weight of the pull toward the source outside the region (None: the pipeline's default)."""
    local_target_data: Path | None = None
    """The local target (the source with only the region's object edited): adds ``psnr_local_*`` (held-out PSNR
    to it), ``psnr_outside_source_*`` (held-out PSNR to the source where the local target equals it) and
    ``psnr_protected_source_*`` (the same over those of these pixels that the full target changes: what an edit
    without a region moves and a region must keep)."""
    references: dict[str, Path] = field(default_factory=dict)
    """Further datasets of the same cameras to measure the held-out renders against, by name: the report gains
    ``psnr_to_<name>_before``/``_after`` (e.g. the real target, for a control run whose target is the source)."""
    mode: str = "distill"
    """``distill`` (CSD-Edit through the renderer every step) or ``idu`` (iterative dataset update: the prior edits
    a subset of views' latents toward their targets, written into the training images the scene then fits)."""
    idu_every: int | None = None
    """idu: steps between updates (None: the pipeline's default)."""
    idu_views: int | None = None
    """idu: views per update (None: the pipeline's default)."""
    idu_steps: int | None = None
    """idu: CSD-Edit steps per update (None: the pipeline's default)."""
    idu_lr: float | None = None
    """idu: SGD learning rate on the latents (None: the pipeline's default)."""
    train_rays_per_batch: int = 1024
    """nerfacto, idu: rays per training step (the CPU source preset's)."""
    eval_every: int = 0
    """Also measure the held-out PSNR to the target every K edit steps (0: before and after only), to find the
    step and the time at which the held-out gain first reaches ``gain_threshold``."""
    gain_threshold: float = 3.0
    """The held-out gain (dB) whose first step and time the report gives (with ``eval_every``)."""


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in ``[0, 1]``."""
    mse = float((a.float() - b.float()).square().mean())
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def psnr_where(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR in dB of images ``[n, 3, h, w]`` over the pixels where ``mask`` ``[n, 1, h, w]`` holds (all views)."""
    error = (a.float() - b.float()).square() * mask
    mse = float(error.sum() / (mask.sum() * a.shape[1]).clamp(min=1))
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
    """The model's renders ``[n, 3, h, w]`` of ``cameras`` in eval mode (as ns-render would).

    Leaves the run as it found it, so that measuring during an edit does not change the edit: the random streams
    are forked, nerfacto's proposal schedule is held (a forward pass would spend its next update), and a splat
    model's rasteriser meta (what densification reads after the step) is restored.
    """
    cameras = cameras.to(pipeline.device)
    model = pipeline.model
    was_training = model.training
    hold = getattr(model, "proposal_updates", None)
    info = getattr(model, "info", None)
    model.eval()
    images = []
    devices = [torch.device(pipeline.device).index or 0] if torch.device(pipeline.device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), hold(False) if hold is not None else contextlib.nullcontext():
        for i in range(len(cameras)):
            outputs = model.get_outputs_for_camera(cameras[i : i + 1])
            images.append(outputs["rgb"].permute(2, 0, 1).float().cpu())
    model.train(was_training)
    if info is not None:
        model.info = info
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
    p.mode = cfg.mode
    for name in ("idu_every", "idu_views", "idu_steps", "idu_lr"):
        if getattr(cfg, name) is not None:
            setattr(p, name, getattr(cfg, name))
    if not splat:
        p.datamanager.train_num_rays_per_batch = cfg.train_rays_per_batch
        p.backprop = cfg.backprop
        p.model.implementation = "torch"
        p.model.freeze_appearance = cfg.freeze_appearance
    if cfg.region is not None:
        from csd_nerf.nerf.region import RegionConfig

        transforms = json.loads((source_run / "dataparser_transforms.json").read_text())
        options = {"margin": cfg.region_margin}
        if cfg.region_preservation is not None:
            options["preservation_weight"] = cfg.region_preservation
        p.region = RegionConfig.from_dataset_box(
            tuple(cfg.region[:3]),
            tuple(cfg.region[3:]),
            torch.tensor(transforms["transform"]),
            transforms["scale"],
            **options,
        )
    for key, value in cfg.extra_pipeline.items():
        *parents, name = key.split(".")
        owner = p
        for parent in parents:
            owner = getattr(owner, parent)
        setattr(owner, name, value)
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
    vae = build_components("tiny").vae if cfg.encoder == "vae" else None
    prior = KnownAnswerPrior(encoder=cfg.encoder, vae=vae)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup(guidance=prior)
    pipeline = trainer.pipeline
    views = pipeline.scene.views
    train_targets = _target_views(pipeline, cfg.target_data, "train", cfg.render_resolution, prior.latent_factor)
    pipeline.scene.condition_on = train_targets  # the prior pulls each view toward the image it is conditioned on
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

    local: dict[str, torch.Tensor] = {}
    if cfg.local_target_data is not None:
        local["images"] = _target_views(pipeline, cfg.local_target_data, "val", 0, 1).source_images(
            list(range(len(eval_targets)))
        )
        # Outside the edited object: the pixels the local target shares with the source.
        local["outside"] = (local["images"] - eval_source_images).abs().amax(dim=1, keepdim=True) < 1e-6
        # Of those, the pixels the full target changes: what an edit without a region moves and a region must keep.
        changed = (eval_target_images - eval_source_images).abs().amax(dim=1, keepdim=True) > 1e-6
        local["protected"] = local["outside"] & changed

    def mean_psnr(renders: torch.Tensor, references: torch.Tensor) -> float:
        return sum(psnr(r, t) for r, t in zip(renders, references, strict=True)) / len(renders)

    train_ids = list(range(len(views)))

    references = {
        name: _target_views(pipeline, data, "val", 0, 1).source_images(list(range(len(eval_targets))))
        for name, data in cfg.references.items()
    }

    def held_out() -> dict[str, float]:
        renders = _render_eval(pipeline)
        train = _render_views(pipeline, views.cameras)
        return (
            {
                "to_target": mean_psnr(renders, eval_target_images),
                "to_source": mean_psnr(renders, eval_source_images),
                "train_to_target": mean_psnr(train, train_targets.source_images(train_ids)),
                "train_to_source": mean_psnr(train, views.source_images(train_ids)),
            }
            | {f"to_{name}": mean_psnr(renders, images) for name, images in references.items()}
            | (
                {
                    "local": mean_psnr(renders, local["images"]),
                    "outside_source": psnr_where(renders, eval_source_images, local["outside"]),
                    "protected_source": psnr_where(renders, eval_source_images, local["protected"]),
                }
                if local
                else {}
            )
        )

    before = held_out()
    proposals_before = _parameters(pipeline.model, "proposal_networks.")
    fields_before = _parameters(pipeline.model, "field.")
    gaussians_before = _gaussian_count(pipeline.model)
    step_metrics: list[dict[str, float]] = []
    edit_step = pipeline.edit_step

    step_seconds: list[float] = []

    def recorded_step(step: int):
        begun = time.perf_counter()
        losses, metrics = edit_step(step)
        step_seconds.append(time.perf_counter() - begun)
        step_metrics.append(metrics)
        return losses, metrics

    pipeline.edit_step = recorded_step
    curve: list[dict[str, float]] = []
    measuring = [0.0]  # seconds spent measuring during the edit, not counted as the edit's

    def measure(step: int) -> None:
        done = step + 1
        if not cfg.eval_every or (done % cfg.eval_every and done != cfg.steps):
            return
        begun = time.perf_counter()
        edit_seconds = begun - started - measuring[0]
        value = mean_psnr(_render_eval(pipeline), eval_target_images)
        measuring[0] += time.perf_counter() - begun
        curve.append({"step": done, "seconds": round(edit_seconds, 2), "psnr": round(value, 3)})

    if cfg.eval_every:
        from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

        # After the model's own callbacks (densification reads the step's rasteriser meta first).
        trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], measure))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started - measuring[0]
    after = held_out()
    reached = next((point for point in curve if point["psnr"] - before["to_target"] >= cfg.gain_threshold), None)
    updater = getattr(pipeline, "updater", None)

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
        **{
            f"psnr_to_{name}_{when}": round(values[f"to_{name}"], 3)
            for name in references
            for when, values in (("before", before), ("after", after))
        },
        **{
            f"psnr_{name}_{when}": round(values[name], 3)
            for name in ("local", "outside_source", "protected_source")
            if local
            for when, values in (("before", before), ("after", after))
        },
        "region": dataclasses.asdict(pipeline.config.region) if pipeline.config.region.enabled else None,
        "mode": cfg.mode,
        "steps": len(step_metrics),
        "seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(1, len(step_metrics)), 3),
        "median_step_seconds": round(statistics.median(step_seconds), 3) if step_seconds else None,
        "curve": [{**point, "gain": round(point["psnr"] - before["to_target"], 3)} for point in curve],
        f"first_step_gain_{cfg.gain_threshold:g}db": reached["step"] if reached else None,
        f"first_seconds_gain_{cfg.gain_threshold:g}db": reached["seconds"] if reached else None,
        "idu": {
            "updates": len(updater.records),
            "views_per_update": updater.views,
            "steps_per_update": updater.steps,
            "every": updater.every,
            "lr": updater.lr,
            "views_edited": len(updater.edited),
            "update_seconds": round(sum(r.seconds for r in updater.records), 2),
        }
        if updater is not None
        else None,
        "phase_seconds_per_step": {
            phase: mean(f"time_{phase}_s") for phase in ("render", "vae", "unet", "backward", "total")
        },
        "backprop": getattr(pipeline.scene, "mode", None) if cfg.mode == "distill" else None,
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
