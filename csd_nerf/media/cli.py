"""``csd-edit-2d``: CSD-Edit for panoramas and videos from the command line.

    csd-edit-2d panorama --input river.jpg --output out/river --prompt "Turn it into a Van Gogh painting"
    csd-edit-2d video --input break.mp4 --output out/break --prompt "Make it a Claude Monet painting"

A panorama is seen through crop cameras (windows of one latent canvas), a video through one camera per frame.
Defaults are the paper's and the official code's (``CSDEditConfig`` and ``OptimConfig`` define them once):
s_T 7.5, s_I 1.5, t in [20, 500], SGD with x0.9 every 20 steps; panoramas lr 2.0, 200 steps, 4 windows of
64 latents on a stride of 16; videos lr 0.5, 100 steps, up to 24 frames per step.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from csd_nerf.editor import CSDEditConfig, CSDEditor
from csd_nerf.errors import SettingError, UserError, first_line
from csd_nerf.guidance import DEFAULT_MODEL, GuidanceConfig
from csd_nerf.guidance.loading import resolve_dtype
from csd_nerf.media.jobs import PanoramaJob, VideoJob, seed_everything
from csd_nerf.media.optimise import OptimConfig, run_edit
from csd_nerf.media.output import StagedOutput

OUT_OF_MEMORY = (
    "out of memory: lower --num-particles or --max-unet-batch, use --dtype float16 on a GPU, or a smaller --size"
)
EDIT_DEFAULTS = CSDEditConfig()
OPTIM_DEFAULTS = OptimConfig()
APP_DEFAULTS = {
    "panorama": {"steps": OPTIM_DEFAULTS.steps, "lr": OPTIM_DEFAULTS.lr, "num_particles": EDIT_DEFAULTS.num_particles},
    # The official video script: lr 0.5, 100 steps, all 24 frames every step.
    "video": {"steps": 100, "lr": 0.5, "num_particles": 24},
}
"""What differs between the two applications; everything else comes from the two configs' defaults."""


def _add_common(parser: argparse.ArgumentParser, defaults: dict) -> None:
    io = parser.add_argument_group("input and output")
    io.add_argument("--input", required=True, default=argparse.SUPPRESS, help="the media to edit (only read)")
    io.add_argument(
        "--output",
        required=True,
        default=argparse.SUPPRESS,
        help="output folder (refused if it exists, unless --overwrite)",
    )
    io.add_argument("--overwrite", action="store_true", help="replace an existing output folder when the run succeeds")
    io.add_argument(
        "--save-every", type=int, default=0, metavar="N", help="also save the result every N steps (0: off)"
    )
    io.add_argument("--quiet", action="store_true", help="no progress bar")

    edit = parser.add_argument_group("CSD-Edit")
    edit.add_argument(
        "--prompt",
        required=True,
        default=argparse.SUPPRESS,
        help='the edit instruction, e.g. "Turn it into a Van Gogh painting"',
    )
    edit.add_argument("--model", default=DEFAULT_MODEL, help="IP2P hub id, local diffusers folder, or 'tiny' (random)")
    edit.add_argument("--steps", type=int, default=defaults["steps"], help="optimisation steps")
    edit.add_argument("--num-particles", type=int, default=defaults["num_particles"], help=defaults["particles_help"])
    edit.add_argument("--guidance-scale", type=float, default=EDIT_DEFAULTS.guidance_scale, help="text guidance s_T")
    edit.add_argument(
        "--image-guidance-scale", type=float, default=EDIT_DEFAULTS.image_guidance_scale, help="image guidance s_I"
    )
    edit.add_argument("--t-min", type=int, default=EDIT_DEFAULTS.t_min, help="smallest diffusion timestep (of 1000)")
    edit.add_argument("--t-max", type=int, default=EDIT_DEFAULTS.t_max, help="largest diffusion timestep (of 1000)")
    edit.add_argument("--lr", type=float, default=defaults["lr"], help="SGD learning rate on the latents")
    edit.add_argument(
        "--lr-decay", type=float, default=OPTIM_DEFAULTS.lr_decay, help="learning-rate factor every --lr-decay-every"
    )
    edit.add_argument(
        "--lr-decay-every", type=int, default=OPTIM_DEFAULTS.lr_decay_every, help="steps between learning-rate decays"
    )
    edit.add_argument("--seed", type=int, default=EDIT_DEFAULTS.seed, help="seed for timesteps, noise and view draws")

    ablation = parser.add_argument_group("ablations")
    ablation.add_argument("--no-svgd", action="store_true", help="no SVGD coupling: independent particles")
    ablation.add_argument(
        "--baseline",
        choices=("image", "noise"),
        default=EDIT_DEFAULTS.baseline,
        help="image: CSD-Edit; noise: plain SDS",
    )
    ablation.add_argument(
        "--bandwidth-multiplier",
        type=float,
        default=EDIT_DEFAULTS.bandwidth_multiplier,
        help="scales the kernel bandwidth",
    )
    ablation.add_argument(
        "--reference-conditioning",
        action="store_true",
        help="condition IP2P on the scaled source latent as the official CSD code does",
    )

    compute = parser.add_argument_group("compute")
    compute.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    compute.add_argument("--dtype", default="auto", help="float32 or float16 (auto: float16 on cuda, else float32)")
    compute.add_argument("--max-unet-batch", type=int, default=0, help="most samples per UNet call (0: all at once)")
    compute.add_argument(
        "--vae-tiling",
        choices=("auto", "on", "off"),
        default="auto",
        help="encode/decode with the VAE tile by tile (auto: images over 2 megapixels)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csd-edit-2d", description="Edit a panorama or a video with CSD-Edit (InstructPix2Pix prior)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{panorama,video}")

    shown = {"formatter_class": argparse.ArgumentDefaultsHelpFormatter}
    panorama = commands.add_parser(
        "panorama", help="edit an image of any size through overlapping 512 px windows", **shown
    )
    _add_common(panorama, APP_DEFAULTS["panorama"] | {"particles_help": "windows drawn per step"})
    geometry = panorama.add_argument_group("windows")
    geometry.add_argument("--window", type=int, default=64, help="window side in latent pixels (64 = 512 px)")
    geometry.add_argument("--stride", type=int, default=16, help="window stride in latent pixels (16 = 128 px)")

    video = commands.add_parser("video", help="edit the frames of an MP4/GIF or a folder of frames jointly", **shown)
    _add_common(video, APP_DEFAULTS["video"] | {"particles_help": "frames per step (all frames when there are fewer)"})
    frames = video.add_argument_group("frames")
    frames.add_argument(
        "--size",
        type=int,
        default=512,
        help="working long side in px (aspect kept, sides multiples of the VAE's factor, 8 for SD)",
    )
    frames.add_argument("--fps", type=float, default=10.0, help="frame rate of a folder of frames (files keep theirs)")
    frames.add_argument("--vae-batch", type=int, default=8, help="frames per VAE call")
    return parser


def resolve_device(device: str, dtype: str) -> tuple[str, str]:
    """``auto`` picks CUDA when present (float16 there, float32 on the CPU); a missing CUDA is a one-line error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise SettingError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise SettingError(f"device {device!r} asked for but CUDA is not available: use --device cpu")
    return device, str(resolve_dtype(dtype, kind)).removeprefix("torch.")


def edit_config(args: argparse.Namespace) -> CSDEditConfig:
    """The step's settings from the parsed arguments (``--no-svgd`` is the one flag named differently)."""
    return CSDEditConfig.from_settings(argparse.Namespace(**vars(args), coupling=not args.no_svgd))


def _check_args(args: argparse.Namespace) -> None:
    if args.save_every < 0:
        raise SettingError(f"--save-every {args.save_every}: use 0 (off) or a positive number of steps")
    if args.max_unet_batch < 0:
        raise SettingError(f"--max-unet-batch {args.max_unet_batch}: use 0 (all at once) or a positive number")
    if args.command == "video" and args.vae_batch < 1:
        raise SettingError(f"--vae-batch {args.vae_batch}: use at least 1")
    if args.command == "panorama" and (args.window < 1 or args.stride < 1):
        raise SettingError(f"--window {args.window} and --stride {args.stride}: use at least 1 latent pixel each")
    if args.command == "video" and args.size < 1:
        raise SettingError(f"--size {args.size}: use a positive number of pixels")


def _versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("csd-nerf", "torch", "diffusers", "transformers", "numpy", "av", "pillow"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def _device_info(device: str) -> dict:
    info = {"device": device, "threads": torch.get_num_threads()}
    if torch.device(device).type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
    else:
        info["name"] = platform.processor() or platform.machine()
        try:
            import resource

            # ru_maxrss is KiB on Linux: the process's peak resident memory.
            info["peak_rss_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        except ImportError:
            pass
    return info


def _quiet_loaders() -> None:
    """transformers draws a progress bar per checkpoint load; ours is the only bar the user needs."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def _make_job(args: argparse.Namespace):
    if args.command == "panorama":
        return PanoramaJob.from_file(args.input, args.window, args.stride, args.vae_tiling)
    return VideoJob.from_file(args.input, args.size, args.fps, tiling=args.vae_tiling, vae_batch=args.vae_batch)


class _Progress:
    """A rich progress bar with the step, the timestep and the time left (silent when ``quiet``)."""

    def __init__(self, total: int, quiet: bool, console) -> None:
        self.bar = None
        if quiet:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]CSD-Edit"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("t={task.fields[t]:>3}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.bar.add_task("edit", total=total, t="-")

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, step: int, stats) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, t=stats.timestep)


def run(args: argparse.Namespace, console, argv: list[str] | None = None) -> Path:
    """Do the whole job for parsed ``args``; returns the output folder. Raises :class:`UserError` on bad input."""
    started = time.perf_counter()
    config = edit_config(args)
    config.validate()
    optim = OptimConfig(args.steps, args.lr, args.lr_decay, args.lr_decay_every)
    optim.validate()
    _check_args(args)
    device, dtype = resolve_device(args.device, args.dtype)
    output = StagedOutput(args.output, args.overwrite, inputs=(args.input,))
    output.check()
    job = _make_job(args)
    seed_everything(args.seed)

    folder = output.open()
    try:
        timings: dict[str, float] = {}
        tic = time.perf_counter()
        _quiet_loaders()
        guidance = GuidanceConfig(args.model, device, dtype, args.reference_conditioning, args.max_unet_batch).setup()
        timings["load_s"] = time.perf_counter() - tic
        if guidance.notice:
            console.print(f"[yellow]warning:[/] {guidance.notice}", soft_wrap=True)

        tic = time.perf_counter()
        scene = job.build_scene(guidance)
        timings["encode_s"] = time.perf_counter() - tic
        editor = CSDEditor(guidance, config)
        previews: list[str] = []
        if args.save_every:
            (folder / "steps").mkdir()
            console.print(f"intermediate results go to {folder / 'steps'} until the run ends", soft_wrap=True)

        def save(step: int) -> None:
            previews.append(job.write_preview(folder, guidance, scene, step))

        with _Progress(optim.steps, args.quiet, console) as progress:
            log = run_edit(editor, scene, scene.parameters(), optim, progress.update, save, args.save_every)

        tic = time.perf_counter()
        edited = job.render(guidance, scene)
        timings["decode_s"] = time.perf_counter() - tic
        tic = time.perf_counter()
        files = job.write(folder, edited)
        timings["write_s"] = time.perf_counter() - tic
        timings["total_s"] = time.perf_counter() - started

        record = {
            "command": args.command,
            "argv": list(sys.argv[1:] if argv is None else argv),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "notice": guidance.notice,
            "seed": args.seed,
            "config": {
                "args": dict(vars(args)),
                "edit": asdict(config),
                "optim": asdict(optim),
                "guidance": asdict(guidance.config),
            },
            "input": {"path": str(Path(args.input).absolute())} | job.info(scene),
            "output": {"files": files + previews},
            "versions": _versions(),
            "device": _device_info(device),
            "timings": {k: round(v, 3) for k, v in timings.items()} | {"edit": log.summary()},
        }
        (folder / "run.json").write_text(json.dumps(record, indent=2) + "\n")
        return output.commit()
    except BaseException:
        output.discard()
        raise


def main(argv: list[str] | None = None) -> int:
    """Run ``csd-edit-2d``; returns the exit code (2 for a user error, with a one-line message)."""
    from rich.console import Console

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        folder = run(args, console, argv)
    except UserError as exc:
        print(f"csd-edit-2d: error: {first_line(exc, 1000)}", file=sys.stderr)
        return 2
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not isinstance(exc, torch.OutOfMemoryError) and "can't allocate memory" not in str(exc):
            raise
        print(f"csd-edit-2d: error: {OUT_OF_MEMORY}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("csd-edit-2d: interrupted: nothing written", file=sys.stderr)
        return 130
    print(folder)
    return 0


def entrypoint() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
