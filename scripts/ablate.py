"""Ablation of CSD-Edit on a video: particles N, SVGD coupling, baseline and kernel bandwidth, with CLIP metrics.

    # offline smoke run (random tiny models, meaningless numbers, a few minutes on a CPU):
    python scripts/ablate.py --tiny --output outputs/ablation_tiny

    # the real study (IP2P + CLIP ViT-L/14 weights, a GPU):
    python scripts/ablate.py --input data/break --output outputs/ablation_break \
        --prompt "Make it a Claude Monet painting" \
        --source-caption "a photo of a man breakdancing" --target-caption "a Claude Monet painting of a man breakdancing"

Every cell of the grid runs the 2D editor's Python API (the same objects ``csd-edit-2d video`` drives) on the
same source latents, then scores the edit with :mod:`csd_nerf.eval`. Cells that cannot differ are run once:
with one particle, coupling and bandwidth do nothing; without coupling, the bandwidth does nothing.

By default every cell gives each frame the same number of updates (``--updates-per-frame``): a cell with N
particles runs ``ceil(U * F / N)`` steps and decays its learning rate every ``lr_decay_every * F / N`` steps,
so the schedule per frame update matches the all-frames run. ``--steps`` fixes the step count instead.

Writes ``ablation.md`` and ``ablation.csv`` (one row per cell, metrics averaged over ``--seeds``) and
``ablation.json`` (every run, its configuration and per-frame metrics), rewritten after each cell.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

METRICS = (
    ("clip_directional_similarity", "CLIP dir"),
    ("clip_image_similarity", "CLIP img sim"),
    ("clip_direction_consistency", "CLIP dir cons"),
    ("clip_image_consistency", "CLIP img cons"),
    ("psnr", "PSNR"),
    ("lpips", "LPIPS"),
    ("lpips_consecutive", "LPIPS cons"),
)
TIMINGS = (("step_s", "step s"), ("unet_s_per_step", "UNet s/step"), ("edit_s", "edit s"))
TINY_DEFAULTS = {"updates_per_frame": 2, "size": 64}


@dataclass(frozen=True)
class Cell:
    """One configuration of the grid; ``coupling``/``bandwidth`` are ``None`` where they cannot matter."""

    num_particles: int
    coupling: bool | None
    baseline: str
    bandwidth: float | None

    @property
    def name(self) -> str:
        """A short, file-system-safe label, e.g. ``N4-svgd-bw1-image``."""
        parts = [f"N{self.num_particles}"]
        if self.coupling is not None:
            parts.append("svgd" if self.coupling else "nosvgd")
        if self.bandwidth is not None:
            parts.append(f"bw{self.bandwidth:g}")
        parts.append(self.baseline)
        return "-".join(parts)


def build_grid(
    particles: list[int], couplings: list[bool], baselines: list[str], bandwidths: list[float], num_frames: int
) -> list[Cell]:
    """The full factorial grid without duplicates; N is clamped to the frame count (the editor draws at most F)."""
    cells: list[Cell] = []
    for n in particles:
        n_eff = min(n, num_frames)
        for coupling in couplings:
            for baseline in baselines:
                for bw in bandwidths:
                    if n_eff == 1:  # K = [1] and no repulsion: coupling and bandwidth are inert
                        cell = Cell(1, None, baseline, None)
                    elif not coupling:
                        cell = Cell(n_eff, False, baseline, None)
                    else:
                        cell = Cell(n_eff, True, baseline, bw)
                    if cell not in cells:
                        cells.append(cell)
    return cells


def cell_schedule(cell: Cell, num_frames: int, args: argparse.Namespace) -> tuple[int, int]:
    """``(steps, lr_decay_every)`` of a cell: equal updates per frame unless ``--steps`` fixes the count."""
    if args.steps:
        return args.steps, args.lr_decay_every
    ratio = num_frames / cell.num_particles
    return math.ceil(args.updates_per_frame * ratio), max(1, round(args.lr_decay_every * ratio))


def synthetic_video(folder: Path, frames: int = 8, size: int = 64) -> Path:
    """Write ``frames`` PNGs of a disc moving over a colour gradient (a tiny, deterministic test input)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    for k in range(frames):
        img = np.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y, np.full_like(x, 0.5)], axis=-1)
        cx, cy = 0.25 + 0.5 * k / max(1, frames - 1), 0.5
        disc = (x - cx) ** 2 + (y - cy) ** 2 < 0.04
        img[disc] = (0.9, 0.8, 0.1)
        Image.fromarray((img * 255).round().astype(np.uint8)).save(folder / f"frame_{k:03d}.png")
    return folder


def _stat(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.pstdev(vals) if len(vals) > 1 else 0.0)


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell: metrics and timings averaged over seeds (``*_std`` columns when there are several)."""
    rows: list[dict[str, Any]] = []
    for name in dict.fromkeys(r["cell"] for r in runs):
        group = [r for r in runs if r["cell"] == name]
        first = group[0]
        row: dict[str, Any] = {
            "cell": name,
            "N": first["config"]["num_particles"],
            "svgd": {None: "n/a", True: "on", False: "off"}[first["config"]["coupling"]],
            "bandwidth": "n/a" if first["config"]["bandwidth"] is None else first["config"]["bandwidth"],
            "baseline": first["config"]["baseline"],
            "seeds": len(group),
            "steps": first["steps"],
        }
        for key, _ in METRICS + TIMINGS:
            source = "means" if key not in dict(TIMINGS) else "timings"
            mean, std = _stat([r[source][key] for r in group])
            row[key] = mean
            if len(group) > 1:
                row[f"{key}_std"] = std
        rows.append(row)
    return rows


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    """The Markdown report: a header block and one table row per cell."""
    lines = [f"# CSD-Edit ablation: {header['prompt']!r}", ""]
    if header["meaningless"]:
        lines += ["> **MEANINGLESS NUMBERS**: " + "; ".join(header["warnings"]), ""]
    lines += [
        f"- input: `{header['input']}` ({header['frames']} frames, {header['size'][0]}x{header['size'][1]} px, "
        f"working {header['working_size'][0]}x{header['working_size'][1]})",
        f"- IP2P: `{header['model']}`, CLIP: `{header['clip_model']}`, device {header['device']} ({header['dtype']})",
        f"- captions: {header['source_caption']!r} -> {header['target_caption']!r}; seeds {header['seeds']}",
        f"- budget: {header['budget']}; s_T {header['guidance_scale']}, s_I {header['image_guidance_scale']}, "
        f"lr {header['lr']}",
    ]
    for note in header["notes"]:
        lines.append(f"- note: {note}")
    multi = any(k.endswith("_std") for r in rows for k in r)
    cols = ["cell", "N", "svgd", "bandwidth", "baseline", "steps"] + [k for k, _ in METRICS + TIMINGS]
    names = ["cell", "N", "SVGD", "bw", "baseline", "steps"] + [label for _, label in METRICS + TIMINGS]
    lines += ["", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for r in rows:
        cells = []
        for c in cols:
            text = _fmt(r.get(c))
            if multi and r.get(f"{c}_std") is not None:
                text += f" ± {_fmt(r[f'{c}_std'], 2)}"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Higher is better for the CLIP columns and PSNR (PSNR and CLIP img sim: closeness to the source); lower is "
        "better for LPIPS. `step s` is the median wall time of one CSD-Edit step, `UNet s/step` its UNet share.",
    ]
    return "\n".join(lines) + "\n"


def write_tables(folder: Path, runs: list[dict[str, Any]], header: dict[str, Any]) -> list[dict[str, Any]]:
    """(Re)write ablation.md, ablation.csv and ablation.json from the runs so far; returns the table rows."""
    rows = aggregate(runs)
    (folder / "ablation.md").write_text(markdown_table(rows, header))
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with (folder / "ablation.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    doc = {"header": header, "rows": rows, "runs": runs}
    (folder / "ablation.json").write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return rows


def build_parser() -> argparse.ArgumentParser:
    """Command-line options; lists take several values (``--num-particles 1 2 4 8``)."""
    from csd_nerf.eval.clip import DEFAULT_CLIP_MODEL
    from csd_nerf.guidance import DEFAULT_MODEL
    from csd_nerf.media.cli import APP_DEFAULTS, EDIT_DEFAULTS, OPTIM_DEFAULTS

    video = APP_DEFAULTS["video"]

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", help="video file or folder of frames (default: a synthetic 8-frame 64 px video)")
    p.add_argument("--output", required=True, help="folder for ablation.md/.csv/.json (and --save-media)")
    p.add_argument("--overwrite", action="store_true", help="replace the tables of an earlier run in --output")
    p.add_argument("--prompt", default="Turn it into a Van Gogh painting", help="edit instruction")
    p.add_argument("--source-caption", default="a photo", help="caption of the source (CLIP directional)")
    p.add_argument("--target-caption", default="a Van Gogh painting", help="caption of the intended edit")
    p.add_argument("--ip2p-model", "--model", dest="model", default=DEFAULT_MODEL, help="IP2P hub id, folder or 'tiny'")
    p.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help="CLIP for the metrics (see csd-eval)")
    p.add_argument("--tiny", action="store_true", help="random tiny IP2P and CLIP, small budget: a smoke run")

    g = p.add_argument_group("grid")
    g.add_argument("--num-particles", type=int, nargs="+", default=[1, 2, 4, 8])
    g.add_argument("--coupling", choices=("on", "off"), nargs="+", default=["on", "off"])
    g.add_argument("--baseline", choices=("image", "noise"), nargs="+", default=["image", "noise"])
    g.add_argument("--bandwidth", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="kernel bandwidth multipliers")
    g.add_argument("--seeds", type=int, nargs="+", default=[0])

    b = p.add_argument_group("budget and optimiser (video defaults of csd-edit-2d)")
    b.add_argument(
        "--updates-per-frame",
        type=int,
        default=None,
        help=f"updates each frame gets (default {video['steps']}; --tiny 2)",
    )
    b.add_argument("--steps", type=int, default=0, help="fixed steps per cell instead (0: equal updates per frame)")
    b.add_argument("--lr", type=float, default=video["lr"])
    b.add_argument("--lr-decay", type=float, default=OPTIM_DEFAULTS.lr_decay)
    b.add_argument(
        "--lr-decay-every",
        type=int,
        default=OPTIM_DEFAULTS.lr_decay_every,
        help="in all-frames steps; scaled by F/N per cell",
    )
    b.add_argument("--guidance-scale", type=float, default=EDIT_DEFAULTS.guidance_scale)
    b.add_argument("--image-guidance-scale", type=float, default=video["image_guidance_scale"])
    b.add_argument("--t-min", type=int, default=EDIT_DEFAULTS.t_min)
    b.add_argument("--t-max", type=int, default=EDIT_DEFAULTS.t_max)

    c = p.add_argument_group("compute and output")
    c.add_argument(
        "--size", type=int, default=None, help="working long side in px (default: the model's, 512 for SD; --tiny 64)"
    )
    c.add_argument("--device", default="auto")
    c.add_argument("--dtype", default="auto")
    c.add_argument("--max-unet-batch", type=int, default=0)
    c.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    c.add_argument("--save-media", action="store_true", help="write each cell's edited frames under runs/<cell>/")
    c.add_argument("--quiet", action="store_true")
    return p


def _resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    if args.tiny:
        args.model, args.clip_model = "tiny", "tiny"
    from csd_nerf.media.cli import APP_DEFAULTS

    full = {"updates_per_frame": APP_DEFAULTS["video"]["steps"]}  # the size: the model's own (VideoJob)
    defaults = TINY_DEFAULTS if args.tiny else full
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    from csd_nerf.errors import SettingError

    if args.updates_per_frame < 1 or args.steps < 0 or (args.size is not None and args.size < 8):
        raise SettingError("--updates-per-frame must be >= 1, --steps >= 0 and --size >= 8")
    if any(n < 1 for n in args.num_particles) or any(not (bw > 0 and math.isfinite(bw)) for bw in args.bandwidth):
        raise SettingError("--num-particles values must be >= 1 and --bandwidth values positive")
    return args


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the whole grid; returns the table rows (also written to ``args.output``)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from csd_nerf.editor import CSDEditConfig, CSDEditor
    from csd_nerf.eval.clip import load_clip, quiet_hub_logging
    from csd_nerf.eval.evaluate import check_captions, evaluate
    from csd_nerf.eval.lpips import load_lpips
    from csd_nerf.eval.report import library_versions
    from csd_nerf.guidance import GuidanceConfig
    from csd_nerf.media.cli import resolve_device
    from csd_nerf.media.jobs import VideoJob, seed_everything
    from csd_nerf.media.optimise import OptimConfig, run_edit
    from csd_nerf.media.output import OutputError
    from csd_nerf.media.video import VideoScene

    console = Console(stderr=True, quiet=args.quiet)
    args = _resolve_args(args)
    check_captions(args.source_caption, args.target_caption)
    out = Path(args.output)
    if (out / "ablation.json").exists() and not args.overwrite:
        raise OutputError(f"{out} already holds an ablation: pass --overwrite or another --output")
    out.mkdir(parents=True, exist_ok=True)
    device, dtype = resolve_device(args.device, args.dtype)
    input_path = Path(args.input) if args.input else synthetic_video(out / "input_frames")

    job = VideoJob.from_file(input_path, args.size)
    frames = job.video.frames
    num_frames = len(frames)
    couplings = [c == "on" for c in args.coupling]
    cells = build_grid(args.num_particles, couplings, args.baseline, args.bandwidth, num_frames)
    notes = []
    if any(n > num_frames for n in args.num_particles):
        notes.append(f"N above the {num_frames} frames is clamped to {num_frames} (the editor draws at most F)")

    quiet_hub_logging()
    with console.status("loading models"):
        guidance = GuidanceConfig(args.model, device, dtype, False, args.max_unet_batch).setup()
        clip = load_clip(args.clip_model, device)
        lpips, lpips_reason = (None, "disabled with --no-lpips") if args.no_lpips else load_lpips(clip.device)
        # Encode once: every cell starts from the same source latents and conditioning.
        base_scene = job.build_scene(guidance)
    warnings = [w for w in (guidance.notice, clip.warning) if w]
    if lpips is None:
        notes.append(f"LPIPS unavailable: {lpips_reason}")
    header = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "prompt": args.prompt,
        "input": str(input_path),
        "frames": num_frames,
        "size": list(job.size),
        "working_size": job.info()["working_size"],
        "model": args.model,
        "clip_model": args.clip_model,
        "device": device,
        "dtype": dtype,
        "source_caption": args.source_caption,
        "target_caption": args.target_caption,
        "seeds": args.seeds,
        "budget": f"{args.steps} steps per cell" if args.steps else f"{args.updates_per_frame} updates per frame",
        "guidance_scale": args.guidance_scale,
        "image_guidance_scale": args.image_guidance_scale,
        "lr": args.lr,
        "meaningless": bool(warnings),
        "warnings": warnings,
        "notes": notes,
        "versions": library_versions(),
    }
    for w in warnings:
        console.print(f"[yellow]warning:[/] {w}", soft_wrap=True)

    runs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    total_steps = sum(cell_schedule(c, num_frames, args)[0] for c in cells) * len(args.seeds)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        overall = bar.add_task("ablation steps", total=total_steps)
        for cell in cells:
            steps, decay_every = cell_schedule(cell, num_frames, args)
            for seed in args.seeds:
                bar.update(overall, description=f"{cell.name} seed {seed}")
                seed_everything(seed)
                scene = VideoScene(base_scene.source_latents, base_scene.conditioning)
                config = CSDEditConfig(
                    prompt=args.prompt,
                    guidance_scale=args.guidance_scale,
                    image_guidance_scale=args.image_guidance_scale,
                    num_particles=cell.num_particles,
                    t_min=args.t_min,
                    t_max=args.t_max,
                    coupling=bool(cell.coupling),
                    baseline=cell.baseline,
                    bandwidth_multiplier=cell.bandwidth or 1.0,
                    seed=seed,
                )
                optim = OptimConfig(steps, args.lr, args.lr_decay, decay_every)
                log = run_edit(
                    CSDEditor(guidance, config), scene, scene.parameters(), optim, lambda *_: bar.advance(overall)
                )
                edited = job.render(guidance, scene)
                result = evaluate(frames, edited, args.source_caption, args.target_caption, clip, lpips, lpips_reason)
                if args.save_media:
                    job.write(out / "runs" / f"{cell.name}-seed{seed}", edited)
                runs.append(
                    {
                        "cell": cell.name,
                        "seed": seed,
                        "config": {**asdict(cell), "lr_decay_every": decay_every},
                        "steps": steps,
                        "means": result.means(),
                        "per_frame": {k: m.per_frame() for k, m in result.metrics.items()},
                        "timings": {
                            "step_s": statistics.median(log.step_seconds),
                            "unet_s_per_step": log.unet_seconds / steps,
                            "edit_s": log.seconds,
                            "eval_s": sum(result.timings_s.values()),
                        },
                        "unet_samples": log.unet_samples,
                    }
                )
                rows = write_tables(out, runs, header)  # after every run: an interrupted study keeps its results
    console.print(f"wrote {out / 'ablation.md'}, ablation.csv and ablation.json ({len(runs)} runs)")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the ablation; user errors end with one line on stderr and exit status 2."""
    from csd_nerf.errors import UserError

    args = build_parser().parse_args(argv)
    try:
        started = time.perf_counter()
        rows = run(args)
    except UserError as err:
        print(f"ablate: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    if not args.quiet:
        print((Path(args.output) / "ablation.md").read_text())
        print(f"{len(rows)} cells in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
