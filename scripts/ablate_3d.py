"""The paper's 3D experiment as one command: CSD against plain SDS in 3D while varying the number of views.

    # with a real prior and CLIP (a GPU): a grid over representation, mode, N, coupling and baseline
    python scripts/ablate_3d.py --source-run outputs/bear/nerfacto/RUN outputs/bear/splatfacto/RUN \
        --prompt "Turn the bear into a grizzly bear" \
        --source-caption "a photo of a bear" --target-caption "a photo of a grizzly bear" --output ablation_bear

    # offline, on a CPU: the known-answer prior pulls every view toward a target scene; held-out PSNR to it
    python scripts/ablate_3d.py --known-answer data/source data/target --output ablation_ka \
        [--source-run RUN ...]          # else the sources are trained here (nerfacto, splatfacto-cpu)

Every cell of the grid representation (nerfacto, splat) x mode (distill, idu) x N (1, 2, 4, 8) x coupling (on,
off) x baseline (image: CSD-Edit; noise: SDS's residual, so ``noise`` with coupling off is plain SDS) runs the
real ``csd-edit``/``csd-edit-splat`` trainer on the given source run (in this process; the prior loaded once).
N is the number of views coupled in a CSD-Edit step: ``--pipeline.num-particles`` in distill mode,
``--pipeline.idu-views`` in idu mode. Cells that cannot differ run once: with one view, coupling does nothing.

With a real prior, the same camera path (``ns-render interpolate`` through the training poses, or
``--camera-path``) is rendered with stock ``ns-render`` from the source and from every edit, and each edit is
scored against the source's frames with ``csd-eval``'s metrics (CLIP directional similarity, CLIP image
similarity, the two consistency scores between consecutive frames, LPIPS). With ``--known-answer SOURCE TARGET``
the prior is the known-answer test prior (each view pulled toward the target dataset's image of its camera) and
the metric is the held-out PSNR to the target (the source run's eval split), as ``scripts/bench_convergence.py``
measures it; the baseline does nothing under that prior (its two baselines coincide), so that axis collapses.

Every cell also reports its step time (edit seconds over steps, amortised in idu mode, and the median step) and
its peak memory: on a GPU the peak allocated CUDA memory; on a CPU the peak growth of the process's resident
memory over the cell, sampled every 20 ms. Writes ``ablation.md``, ``ablation.csv`` and ``ablation.json``,
rewritten after every cell (an interrupted grid keeps its finished cells).
"""

from __future__ import annotations

import argparse
import copy
import csv
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REAL_METRICS = (
    ("clip_directional_similarity", "CLIP dir"),
    ("clip_image_similarity", "CLIP img sim"),
    ("clip_direction_consistency", "CLIP dir cons"),
    ("clip_image_consistency", "CLIP img cons"),
    ("lpips", "LPIPS"),
)
KNOWN_ANSWER_METRICS = (
    ("psnr_before", "held-out PSNR before"),
    ("psnr_after", "held-out PSNR after"),
    ("psnr_gain", "gain dB"),
    ("psnr_train_views_before", "train-view PSNR before"),
    ("psnr_train_views_after", "train-view PSNR after"),
)
COSTS = (("step_s", "s/step"), ("median_step_s", "median step s"), ("edit_s", "edit s"), ("peak_mb", "peak MB"))
REPRESENTATIONS = {"nerfacto": "nerfacto", "splatfacto": "splat", "splatfacto-cpu": "splat"}


@dataclass(frozen=True)
class Cell:
    """One configuration; ``coupling``/``baseline`` are ``None`` where they cannot matter."""

    representation: str
    mode: str
    num_views: int
    coupling: bool | None
    baseline: str | None

    @property
    def name(self) -> str:
        """A short, file-system-safe label, e.g. ``splat-idu-N4-svgd-image``."""
        parts = [self.representation, self.mode, f"N{self.num_views}"]
        if self.coupling is not None:
            parts.append("svgd" if self.coupling else "nosvgd")
        if self.baseline is not None:
            parts.append(self.baseline)
        return "-".join(parts)


def build_grid(
    representations: list[str],
    modes: list[str],
    views: list[int],
    couplings: list[bool],
    baselines: list[str],
    baseline_matters: bool = True,
) -> list[Cell]:
    """The factorial grid without duplicates (one view: no coupling; the known-answer prior: no baseline)."""
    cells: list[Cell] = []
    for rep, mode, n, coupling, baseline in itertools.product(representations, modes, views, couplings, baselines):
        cell = Cell(rep, mode, n, None if n == 1 else coupling, baseline if baseline_matters else None)
        if cell not in cells:
            cells.append(cell)
    return cells


class PeakMemory:
    """Peak memory of a block: CUDA's peak allocation on a GPU; else the peak growth of this process's resident
    memory, sampled every ``interval`` seconds by a thread (a lower bound of the true peak)."""

    def __init__(self, device: str, interval: float = 0.02) -> None:
        self.cuda = device.startswith("cuda")
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._base = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._rss() - self._base)
            time.sleep(self.interval)

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._base
            return
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._rss() - self._base)

    @property
    def description(self) -> str:
        if self.cuda:
            return "peak CUDA memory allocated during the cell, above what was allocated before it"
        return "peak growth of the process's resident memory during the cell (sampled every 20 ms; CPU)"


def _run_method(run: Path) -> str:
    import yaml

    text = (run / "config.yml").read_text()
    for line in text.splitlines():
        if line.startswith("method_name:"):
            return line.split(":", 1)[1].strip().strip("'\"")
    return getattr(yaml.load(text, Loader=yaml.Loader), "method_name", "?")


def source_runs(runs: list[Path]) -> dict[str, Path]:
    """The given source runs by representation (``nerfacto``/``splat``), from their config.yml's method."""
    from csd_nerf.errors import SettingError

    found: dict[str, Path] = {}
    for run in runs:
        run = Path(run)
        if run.name == "nerfstudio_models":
            run = run.parent
        if not (run / "config.yml").is_file():
            raise SettingError(
                f"--source-run {run} holds no config.yml: pass a run folder outputs/<scene>/<method>/<run>"
            )
        method = _run_method(run)
        if method not in REPRESENTATIONS:
            raise SettingError(
                f"--source-run {run} is a {method!r} run: pass nerfacto, splatfacto or splatfacto-cpu runs"
            )
        rep = REPRESENTATIONS[method]
        if rep in found:
            raise SettingError(f"--source-run: two {rep} runs ({found[rep]}, {run}): pass one per representation")
        found[rep] = run
    return found


# --- one cell ----------------------------------------------------------------------------------------------------


def _set_steps(config: Any, cell: Cell, args: argparse.Namespace) -> None:
    p = config.pipeline
    p.mode = cell.mode
    if cell.mode == "idu":
        p.idu_views = cell.num_views
    else:
        p.num_particles = cell.num_views
    p.coupling = bool(cell.coupling) if cell.coupling is not None else True
    if cell.baseline is not None:
        p.baseline = cell.baseline
    for name in ("idu_every", "idu_steps", "idu_lr"):
        if getattr(args, name) is not None:
            setattr(p, name, getattr(args, name))
    p.seed = args.seed


def run_known_answer_cell(cell: Cell, source: Path, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One known-answer edit (the bench's harness); the report's held-out PSNR to the target."""
    from csd_nerf.testing.convergence import ConvergenceConfig, run_known_answer_edit

    config = ConvergenceConfig(
        source_data=args.known_answer[0],
        target_data=args.known_answer[1],
        work_dir=folder,
        representation=cell.representation,
        steps=args.steps,
        num_particles=cell.num_views if cell.mode == "distill" else 4,
        render_resolution=args.render_resolution,
        coupling=bool(cell.coupling) if cell.coupling is not None else True,
        seed=args.seed,
        source_run=source,
        mode=cell.mode,
        idu_every=args.idu_every,
        idu_views=cell.num_views if cell.mode == "idu" else None,
        idu_steps=args.idu_steps,
        idu_lr=args.idu_lr,
    )
    with PeakMemory(args.device) as memory:
        report = run_known_answer_edit(config, log=lambda message: None)
    steps = max(1, report["steps"])
    return {
        "metrics": {key: report[key] for key, _ in KNOWN_ANSWER_METRICS},
        "timings": {
            "step_s": report["seconds"] / steps,
            "median_step_s": report.get("median_step_seconds"),
            "edit_s": report["seconds"],
            "peak_mb": memory.peak_bytes / 2**20,
        },
        "steps": report["steps"],
        "memory": memory.description,
        "report": {k: v for k, v in report.items() if k not in ("settings",)},
    }


def _edit_config(cell: Cell, source: Path, args: argparse.Namespace, folder: Path) -> Any:
    """The csd-edit (or csd-edit-splat) trainer config of a real-prior cell."""
    from csd_nerf.method_configs.csd_edit import csd_edit_method, csd_edit_splat_method

    splat = cell.representation == "splat"
    config = copy.deepcopy((csd_edit_splat_method if splat else csd_edit_method).config)
    config.load_dir = source / "nerfstudio_models"
    config.output_dir = folder
    config.experiment_name = "ablation"
    config.machine.device_type = "cuda" if args.device.startswith("cuda") else "cpu"
    config.vis = "tensorboard"
    config.logging.local_writer.enable = False
    config.max_num_iterations = args.steps
    config.steps_per_save = 10**9
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 10**9
    p = config.pipeline
    p.prompt = args.prompt
    p.ip2p_model = args.ip2p_model
    p.max_unet_batch = args.max_unet_batch
    p.preview_every = 0
    if args.render_resolution is not None:
        p.render_resolution = args.render_resolution
    if not splat and config.machine.device_type == "cpu":
        p.model.implementation = "torch"
    _set_steps(config, cell, args)
    config.set_timestamp()
    return config


def run_real_cell(
    cell: Cell, source: Path, args: argparse.Namespace, folder: Path, guidance: Any, score: Any
) -> dict[str, Any]:
    """One edit with the real prior, rendered along the camera path and scored against the source's frames."""
    config = _edit_config(cell, source, args, folder)
    from nerfstudio.utils import writer  # after nerfstudio's configs (they import each other)

    step_seconds: list[float] = []
    with PeakMemory(args.device) as memory:
        trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup(guidance=guidance)
        edit_step = trainer.pipeline.edit_step

        def timed(step: int):
            started = time.perf_counter()
            result = edit_step(step)
            step_seconds.append(time.perf_counter() - started)
            return result

        trainer.pipeline.edit_step = timed
        trainer.train()
    writer.EVENT_WRITERS.clear()  # nerfstudio's writers are global: the next cell logs to its own folder only
    frames = render_path(config.get_base_dir(), folder / "render", args)
    metrics = score(cell.representation, frames)
    return {
        "metrics": metrics,
        "timings": {
            "step_s": sum(step_seconds) / max(1, len(step_seconds)),
            "median_step_s": statistics.median(step_seconds) if step_seconds else None,
            "edit_s": sum(step_seconds),
            "peak_mb": memory.peak_bytes / 2**20,
        },
        "steps": len(step_seconds),
        "memory": memory.description,
        "run": str(config.get_base_dir()),
    }


def render_path(run: Path, output: Path, args: argparse.Namespace):
    """Render the camera path of ``run`` with stock ``ns-render`` into ``output`` (PNG frames); the frames."""
    from csd_nerf.errors import UserError
    from csd_nerf.media.io import read_frames
    from csd_nerf.testing.offline import offline_tool_env

    exe = str(Path(sys.executable).with_name("ns-render"))
    if args.camera_path:
        command = [exe, "camera-path", "--camera-path-filename", str(args.camera_path)]
    else:
        command = [exe, "interpolate", "--pose-source", "train", "--interpolation-steps", str(args.interpolation_steps)]
    command += ["--load-config", str(run / "config.yml"), "--output-path", str(output)]
    command += ["--output-format", "images", "--image-format", "png"]
    env = offline_tool_env(Path(args.output) / "tools")
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise UserError(f"ns-render on {run} failed: {tail}")
    return read_frames(output, "render")


# --- the grid --------------------------------------------------------------------------------------------------


def _stat(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(vals) if vals else None


def rows_of(runs: list[dict[str, Any]], metrics: tuple) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        cell = run["cell"]
        row = {
            "cell": run["name"],
            "representation": cell["representation"],
            "mode": cell["mode"],
            "N": cell["num_views"],
            "svgd": {None: "n/a", True: "on", False: "off"}[cell["coupling"]],
            "baseline": cell["baseline"] or "n/a",
            "steps": run["steps"],
        }
        row |= {key: run["metrics"].get(key) for key, _ in metrics}
        row |= {key: run["timings"].get(key) for key, _ in COSTS}
        rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def markdown(rows: list[dict[str, Any]], header: dict[str, Any], metrics: tuple) -> str:
    title = "known-answer edit" if header["known_answer"] else repr(header["prompt"])
    lines = [f"# CSD-Edit 3D ablation: {title}", ""]
    if header["warnings"]:
        lines += ["> **" + "; ".join(header["warnings"]) + "**", ""]
    lines += [f"- {key}: {value}" for key, value in header["summary"].items()]
    lines += [f"- note: {note}" for note in header["notes"]]
    names = ["cell", "rep", "mode", "N", "SVGD", "baseline", "steps"] + [label for _, label in metrics + COSTS]
    keys = ["cell", "representation", "mode", "N", "svgd", "baseline", "steps"] + [k for k, _ in metrics + COSTS]
    lines += ["", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k)) for k in keys) + " |")
    lines += ["", header["legend"]]
    return "\n".join(lines) + "\n"


def write_tables(out: Path, runs: list[dict[str, Any]], header: dict[str, Any]) -> list[dict[str, Any]]:
    metrics = KNOWN_ANSWER_METRICS if header["known_answer"] else REAL_METRICS
    rows = rows_of(runs, metrics)
    (out / "ablation.md").write_text(markdown(rows, header, metrics))
    fields = list(dict.fromkeys(k for r in rows for k in r)) or ["cell"]
    with (out / "ablation.csv").open("w", newline="") as f:
        table = csv.DictWriter(f, fieldnames=fields)
        table.writeheader()
        table.writerows(rows)
    doc = {"header": header, "rows": rows, "runs": runs}
    (out / "ablation.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source-run", type=Path, nargs="+", default=[], help="nerfacto and/or splat run folders")
    p.add_argument("--known-answer", type=Path, nargs=2, metavar=("SOURCE", "TARGET"), help="offline: datasets")
    p.add_argument("--output", type=Path, required=True, help="folder for ablation.md/.csv/.json and the runs")
    p.add_argument("--overwrite", action="store_true", help="replace the tables of an earlier grid in --output")
    p.add_argument("--prompt", default="", help="the edit instruction (real prior)")
    p.add_argument("--source-caption", default="", help="caption of the source (CLIP directional similarity)")
    p.add_argument("--target-caption", default="", help="caption of the intended edit")
    g = p.add_argument_group("grid")
    g.add_argument("--representation", choices=("nerfacto", "splat"), nargs="+", help="default: the given runs'")
    g.add_argument("--mode", choices=("distill", "idu"), nargs="+", default=["distill", "idu"])
    g.add_argument("--num-views", "--num-particles", dest="num_views", type=int, nargs="+", default=[1, 2, 4, 8])
    g.add_argument("--coupling", choices=("on", "off"), nargs="+", default=["on", "off"])
    g.add_argument("--baseline", choices=("image", "noise"), nargs="+", default=["image", "noise"])
    b = p.add_argument_group("each edit")
    b.add_argument("--steps", type=int, help="edit steps per cell (default 2000; --known-answer 200)")
    b.add_argument("--render-resolution", type=int, help="render size cap (default: the pipeline's; known-answer 64)")
    b.add_argument("--idu-every", type=int, help="idu: steps between updates (default: the pipeline's)")
    b.add_argument("--idu-steps", type=int, help="idu: CSD-Edit steps per update (default: the pipeline's)")
    b.add_argument("--idu-lr", type=float, help="idu: SGD lr on the latents (default: the pipeline's)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--source-steps", type=int, default=1000, help="known-answer: steps of sources trained here")
    c = p.add_argument_group("prior, metrics and rendering (real prior)")
    c.add_argument("--ip2p-model", default=None, help="InstructPix2Pix hub id, folder or 'tiny' (default: IP2P)")
    c.add_argument("--clip-model", default=None, help="CLIP for the metrics (default: csd-eval's)")
    c.add_argument("--tiny", action="store_true", help="random tiny IP2P and CLIP: a smoke run, meaningless scores")
    c.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    c.add_argument("--max-unet-batch", type=int, default=0)
    c.add_argument("--no-lpips", action="store_true")
    c.add_argument("--camera-path", type=Path, help="a viewer camera path (default: interpolate the training poses)")
    c.add_argument("--interpolation-steps", type=int, default=4, help="frames between training poses")
    c.add_argument("--quiet", action="store_true")
    return p


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    import torch

    from csd_nerf.errors import SettingError

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    known = args.known_answer is not None
    if args.tiny:
        args.ip2p_model, args.clip_model = "tiny", "tiny"
    if args.steps is None:
        args.steps = 200 if known else 2000
    if args.render_resolution is None and known:
        args.render_resolution = 64
    if args.steps < 1 or any(n < 1 for n in args.num_views):
        raise SettingError("--steps and --num-views values must be at least 1")
    for name in ("idu_every", "idu_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SettingError(f"--{name.replace('_', '-')} must be at least 1")
    if known:
        for path in args.known_answer:
            if not (path / "transforms.json").is_file():
                raise SettingError(f"--known-answer: {path} is not a nerfstudio dataset (no transforms.json)")
    else:
        if not args.source_run:
            raise SettingError(
                "pass --source-run (a trained nerfacto and/or splat run), or --known-answer SOURCE TARGET"
            )
        if not args.prompt.strip():
            raise SettingError('pass --prompt "the edit instruction"')
        from csd_nerf.eval.evaluate import check_captions

        check_captions(args.source_caption, args.target_caption)
    return args


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the grid; returns the table rows (also written to ``args.output``)."""
    from rich.console import Console

    from csd_nerf.errors import SettingError
    from csd_nerf.eval.report import library_versions

    console = Console(stderr=True, quiet=args.quiet)
    args = _resolve(args)
    out = args.output
    if (out / "ablation.json").exists() and not args.overwrite:
        raise SettingError(f"{out} already holds an ablation: pass --overwrite or another --output")
    out.mkdir(parents=True, exist_ok=True)
    known = args.known_answer is not None
    sources = source_runs(args.source_run)
    representations = args.representation or (sorted(sources) if sources else ["nerfacto"])
    if known:
        from csd_nerf.testing.convergence import train_source

        for rep in representations:
            if rep not in sources:
                method = "nerfacto" if rep == "nerfacto" else "splatfacto-cpu"
                console.print(f"training the {rep} source ({args.source_steps} steps of {method})")
                log = console.print
                sources[rep] = train_source(args.known_answer[0], out / "sources", args.source_steps, method, log)
    missing = [rep for rep in representations if rep not in sources]
    if missing:
        raise SettingError(f"--representation {' '.join(missing)}: pass a --source-run of that representation")
    couplings = [c == "on" for c in args.coupling]
    cells = build_grid(representations, args.mode, args.num_views, couplings, args.baseline, not known)
    notes = [
        "N: views coupled in one CSD-Edit step (distill: --pipeline.num-particles; idu: --pipeline.idu-views); "
        "a pipeline draws at most its training views",
        "baseline noise with SVGD off is plain SDS; with one view the coupling does nothing (run once)",
    ]
    if known:
        notes.append("the known-answer prior's two baselines coincide: the baseline axis is collapsed")
    warnings = []
    guidance = score = None
    if not known:
        guidance, score, warnings = _real_prior_and_metrics(args, sources, representations, console)
    header = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "known_answer": known,
        "prompt": args.prompt,
        "warnings": warnings,
        "notes": notes,
        "summary": {
            "sources": ", ".join(f"{rep} `{run}`" for rep, run in sorted(sources.items())),
            "what": (
                f"known-answer prior: `{args.known_answer[0]}` -> `{args.known_answer[1]}`, held-out PSNR to the target"
                if known
                else f"IP2P `{args.ip2p_model or 'default'}`, captions {args.source_caption!r} -> "
                f"{args.target_caption!r}, CLIP `{args.clip_model or 'default'}`"
            ),
            "edit": f"{args.steps} steps, render resolution {args.render_resolution or 'the pipeline default'}, "
            f"seed {args.seed}; idu every {args.idu_every or 'default'} steps, {args.idu_steps or 'default'} "
            f"CSD-Edit steps per update",
            "machine": f"{args.device}, {os.cpu_count()} CPU cores, torch threads {_threads()}",
        },
        "legend": "s/step: edit seconds over steps (amortised over an idu run's updates); median step s: the median "
        "step; peak MB: " + PeakMemory(args.device).description + ".",
        "versions": library_versions(),
    }
    runs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for k, cell in enumerate(cells, 1):
        console.print(f"[{k}/{len(cells)}] {cell.name}")
        folder = out / "runs" / cell.name
        if known:
            result = run_known_answer_cell(cell, sources[cell.representation], args, folder)
        else:
            result = run_real_cell(cell, sources[cell.representation], args, folder, guidance, score)
        runs.append({"name": cell.name, "cell": asdict(cell), **result})
        rows = write_tables(out, runs, header)  # after every cell: an interrupted grid keeps its results
    console.print(f"wrote {out / 'ablation.md'}, ablation.csv and ablation.json ({len(runs)} cells)")
    return rows


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _real_prior_and_metrics(args, sources, representations, console):
    """The prior (loaded once for every cell), the source renders, and a scorer of an edit's frames."""
    from csd_nerf.eval.clip import DEFAULT_CLIP_MODEL, load_clip, quiet_hub_logging
    from csd_nerf.eval.evaluate import evaluate
    from csd_nerf.eval.lpips import load_lpips
    from csd_nerf.guidance import DEFAULT_MODEL, GuidanceConfig

    args.ip2p_model = args.ip2p_model or DEFAULT_MODEL
    args.clip_model = args.clip_model or DEFAULT_CLIP_MODEL
    quiet_hub_logging()
    guidance = GuidanceConfig(args.ip2p_model, args.device, "auto", False, args.max_unet_batch).setup()
    clip = load_clip(args.clip_model, args.device)
    lpips, reason = (None, "disabled with --no-lpips") if args.no_lpips else load_lpips(clip.device)
    source_frames = {}
    for rep in representations:
        console.print(f"rendering the {rep} source along the camera path")
        source_frames[rep] = render_path(sources[rep], args.output / "renders" / f"source-{rep}", args)

    def score(representation: str, frames) -> dict[str, float | None]:
        source = source_frames[representation]
        return evaluate(source, frames, args.source_caption, args.target_caption, clip, lpips, reason).means()

    warnings = [w for w in (guidance.notice, clip.warning) if w]
    if warnings:
        warnings.insert(0, "MEANINGLESS NUMBERS")
    return guidance, score, warnings


def main(argv: list[str] | None = None) -> int:
    """Run the grid; a user error ends with one line on stderr and exit status 2."""
    from csd_nerf.errors import UserError

    args = build_parser().parse_args(argv)
    try:
        started = time.perf_counter()
        rows = run(args)
    except UserError as err:
        print(f"ablate_3d: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    if not args.quiet:
        print((args.output / "ablation.md").read_text())
        print(f"{len(rows)} cells in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
