"""``csd-edit-2d``: CSD-Edit for panoramas and videos from the command line.

    csd-edit-2d panorama --input river.jpg --output out/river --prompt "Turn it into a Van Gogh painting"
    csd-edit-2d video --input break.mp4 --output out/break --prompt "Make it a Claude Monet painting"

A panorama is seen through crop cameras (windows of one latent canvas), a video through one camera per frame.
Defaults are the official code's for each application (``APP_DEFAULTS``; the rest from ``CSDEditConfig`` and
``OptimConfig``): s_T 7.5, t in [20, 500], SGD with x0.9 every 20 steps; panoramas s_I 5.0, lr 2.0, 200 steps,
4 windows per step; videos s_I 1.5, lr 0.5, 100 steps, up to 24 frames per step. Sizes come from the model:
windows of its training size (64 latents = 512 px for IP2P) on a stride of a quarter window, video frames at a
long side of its training size (512 px).

``--mask`` edits a region: white = edit, black = keep, grey = blend (:mod:`csd_nerf.media.mask`); the result is
the input's own pixels where the mask is black.

Everything is checked before anything is written (settings, output folder, input and mask, the model and the
geometry it implies). Ctrl-C or SIGTERM stops a run cleanly: nothing half-written, what ``--save-every`` saved is
kept, one line says where, and the exit status is 128 + the signal.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from csd_nerf.distributed import ParticleGroup
from csd_nerf.editor import CSDEditConfig, CSDEditor
from csd_nerf.errors import SettingError, UserError, first_line
from csd_nerf.guidance import DEFAULT_MODEL, GuidanceConfig
from csd_nerf.guidance.loading import resolve_dtype
from csd_nerf.media.images import MAX_MEGAPIXELS
from csd_nerf.media.jobs import PanoramaJob, VideoJob, saved_previews, seed_everything
from csd_nerf.media.optimise import OptimConfig, run_edit
from csd_nerf.media.output import StagedOutput
from csd_nerf.media.panorama import check_windows
from csd_nerf.media.progress import Progress
from csd_nerf.media.ranks import is_follower, join, leave, local_device, release, wait_for_release
from csd_nerf.media.record import device_info, run_record, write_record
from csd_nerf.signals import exit_status, signal_name, terminate_as_interrupt

OUT_OF_MEMORY = (
    "out of memory: lower --num-particles or --max-unet-batch, use --dtype float16 on a GPU, or a smaller --size"
)
EDIT_DEFAULTS = CSDEditConfig()
OPTIM_DEFAULTS = OptimConfig()
APP_DEFAULTS = {
    # The official image/panorama script (csdedit_image.py): lr 2.0, 200 steps, 4 windows, s_I 5.0.
    "panorama": {
        "steps": OPTIM_DEFAULTS.steps,
        "lr": OPTIM_DEFAULTS.lr,
        "num_particles": EDIT_DEFAULTS.num_particles,
        "image_guidance_scale": 5.0,
    },
    # The official video command (its README): lr 0.5, 100 steps, all 24 frames every step, s_I 1.5.
    "video": {"steps": 100, "lr": 0.5, "num_particles": 24, "image_guidance_scale": 1.5},
}
"""What differs between the two applications; everything else comes from the two configs' defaults."""


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` ones: those are "from the model", which their help says."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def _add_common(parser: argparse.ArgumentParser, defaults: dict) -> None:
    io = parser.add_argument_group("input and output")
    io.add_argument("--input", required=True, default=argparse.SUPPRESS, help="the media to edit (only read)")
    io.add_argument(
        "--output",
        required=True,
        default=argparse.SUPPRESS,
        help="output folder (refused if it exists, unless --overwrite)",
    )
    io.add_argument(
        "--mask",
        default=None,
        metavar="MASK",
        help=defaults["mask_help"] + ", of the input's size: white = edit, black = keep (the output is the input's "
        "own pixels there), grey = blend; read as luminance (its alpha only when its colour is uniform)",
    )
    io.add_argument("--overwrite", action="store_true", help="replace an existing output folder when the run succeeds")
    io.add_argument(
        "--save-every",
        type=int,
        default=0,
        metavar="N",
        help="also save the result every N steps, to steps/ (0: off); an interrupted run keeps them",
    )
    io.add_argument(
        "--max-megapixels",
        type=float,
        default=MAX_MEGAPIXELS,
        help="largest input picture read (memory grows with it)",
    )
    io.add_argument("--quiet", action="store_true", help="no progress messages")

    edit = parser.add_argument_group("CSD-Edit")
    edit.add_argument(
        "--prompt",
        required=True,
        default=argparse.SUPPRESS,
        help='the edit instruction, e.g. "Turn it into a Van Gogh painting"',
    )
    edit.add_argument(
        "--ip2p-model",
        "--model",
        dest="model",
        default=DEFAULT_MODEL,
        help="IP2P hub id, local diffusers folder, or 'tiny' (random); --model is an alias",
    )
    edit.add_argument("--steps", type=int, default=defaults["steps"], help="optimisation steps")
    edit.add_argument("--num-particles", type=int, default=defaults["num_particles"], help=defaults["particles_help"])
    edit.add_argument("--guidance-scale", type=float, default=EDIT_DEFAULTS.guidance_scale, help="text guidance s_T")
    edit.add_argument(
        "--image-guidance-scale",
        type=float,
        default=defaults["image_guidance_scale"],
        help="image guidance s_I (the official code's value for this application)",
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
        help="image: CSD-Edit's image-conditional baseline; noise: SVGD with an SDS residual "
        "(plain SDS is --baseline noise --no-svgd)",
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

    shown = {"formatter_class": _DefaultsShown}
    panorama = commands.add_parser(
        "panorama", help="edit an image of any size through overlapping windows of the model's size", **shown
    )
    _add_common(
        panorama,
        APP_DEFAULTS["panorama"] | {"particles_help": "windows drawn per step", "mask_help": "a mask image"},
    )
    geometry = panorama.add_argument_group("windows")
    geometry.add_argument(
        "--window",
        type=int,
        default=None,
        help="window side in latent pixels (default: the model's training size, 64 = 512 px for IP2P)",
    )
    geometry.add_argument(
        "--stride",
        type=int,
        default=None,
        help="window stride in latent pixels, at most the window (default: a quarter window, 16 for IP2P)",
    )

    video = commands.add_parser("video", help="edit the frames of an MP4/GIF or a folder of frames jointly", **shown)
    _add_common(
        video,
        APP_DEFAULTS["video"]
        | {
            "particles_help": "frames per step (all frames when there are fewer)",
            "mask_help": "a mask video or folder of frames (one per input frame), or one image for every frame",
        },
    )
    frames = video.add_argument_group("frames")
    frames.add_argument(
        "--size",
        type=int,
        default=None,
        help="working long side in px, aspect kept, sides multiples of the VAE's factor "
        "(default: the model's training size, 512 for IP2P)",
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
    return local_device(device), str(resolve_dtype(dtype, kind)).removeprefix("torch.")


def edit_config(args: argparse.Namespace) -> CSDEditConfig:
    """The step's settings from the parsed arguments (``--no-svgd`` is the one flag named differently)."""
    return CSDEditConfig.from_settings(argparse.Namespace(**vars(args), coupling=not args.no_svgd))


def _check_args(args: argparse.Namespace) -> None:
    """What needs no model; window, stride and sizes that depend on the model are checked by the job's plan."""
    if args.save_every < 0:
        raise SettingError(f"--save-every {args.save_every}: use 0 (off) or a positive number of steps")
    if args.max_unet_batch < 0:
        raise SettingError(f"--max-unet-batch {args.max_unet_batch}: use 0 (all at once) or a positive number")
    if not args.max_megapixels > 0:
        raise SettingError(f"--max-megapixels {args.max_megapixels}: use a positive number")
    if args.command == "video" and args.vae_batch < 1:
        raise SettingError(f"--vae-batch {args.vae_batch}: use at least 1")
    if args.command == "panorama" and None not in (args.window, args.stride):
        check_windows(args.window, args.stride)
    for flag, value in (("--window", getattr(args, "window", None)), ("--stride", getattr(args, "stride", None))):
        if value is not None and value < 1:
            raise SettingError(f"{flag} {value}: use at least 1 latent pixel")
    if args.command == "video" and args.size is not None and args.size < 1:
        raise SettingError(f"--size {args.size}: use a positive number of pixels")


def _quiet_loaders() -> None:
    """transformers draws a progress bar per checkpoint load; ours is the only bar the user needs."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def _make_job(args: argparse.Namespace) -> PanoramaJob | VideoJob:
    if args.command == "panorama":
        return PanoramaJob.from_file(
            args.input, args.window, args.stride, args.vae_tiling, args.max_megapixels, mask=args.mask
        )
    return VideoJob.from_file(
        args.input,
        args.size,
        args.fps,
        args.max_megapixels,
        mask=args.mask,
        tiling=args.vae_tiling,
        vae_batch=args.vae_batch,
    )


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM after cleaning up; ``message`` says how far it got and what was kept."""

    def __init__(self, cause: KeyboardInterrupt, message: str) -> None:
        super().__init__(*cause.args)
        self.message = message


def _warn(console, notices: list[str], said: set[str]) -> None:
    for notice in notices:
        if notice not in said:
            said.add(notice)
            console.print(f"[yellow]note:[/] {notice}", soft_wrap=True, highlight=False)


def follow(args: argparse.Namespace, group: ParticleGroup) -> bool:
    """A process of rank > 0 under torchrun: the same job and steps as rank 0 (its share of every step's
    particles), nothing written, nothing printed. False when rank 0 stopped before the edit (it says why)."""
    try:
        config = edit_config(args)
        optim = OptimConfig(args.steps, args.lr, args.lr_decay, args.lr_decay_every)
        device, dtype = resolve_device(args.device, args.dtype)
        job = _make_job(args)
        _quiet_loaders()
        guidance = GuidanceConfig(args.model, device, dtype, args.reference_conditioning, args.max_unet_batch).setup()
        job.plan(guidance)
    except UserError:
        # Rank 0 checks the same input, says what is wrong and releases the others: leaving before that release
        # would break its broadcast (a gloo traceback instead of the one line).
        wait_for_release(group)
        raise
    if not wait_for_release(group):
        return False
    seed_everything(args.seed)
    scene = job.build_scene(guidance)
    run_edit(CSDEditor(guidance, config, group=group), scene, scene.parameters(), optim)
    return True


def run(args: argparse.Namespace, console, argv: list[str] | None = None, group: ParticleGroup | None = None) -> Path:
    """Do the whole job for parsed ``args``; returns the output folder. Raises :class:`UserError` on bad input,
    :class:`Interrupted` after cleaning up an interrupted run. ``group``: the processes torchrun started (rank 0
    runs this; the others :func:`follow`)."""
    started = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    config = edit_config(args)
    config.validate()
    optim = OptimConfig(args.steps, args.lr, args.lr_decay, args.lr_decay_every)
    optim.validate()
    _check_args(args)
    device, dtype = resolve_device(args.device, args.dtype)
    inputs = (args.input,) if args.mask is None else (args.input, args.mask)
    output = StagedOutput(args.output, args.overwrite, inputs=inputs)
    output.check()
    progress = Progress(optim.steps, args.quiet, console)
    said: set[str] = set()
    timings: dict[str, float] = {}

    with progress.phase(f"reading {args.input}" + ("" if args.mask is None else f" and the mask {args.mask}")):
        job = _make_job(args)
    tic = time.perf_counter()
    with progress.phase(f"loading InstructPix2Pix {args.model} on {device} ({dtype})"):
        _quiet_loaders()
        guidance = GuidanceConfig(args.model, device, dtype, args.reference_conditioning, args.max_unet_batch).setup()
    timings["load_s"] = time.perf_counter() - tic
    if guidance.notice:
        console.print(f"[yellow]warning:[/] {guidance.notice}", soft_wrap=True)
    job.plan(guidance)  # the model's sizes: refused here, before anything is written
    if group is not None:
        release(group, True)  # every check passed: the other processes (torchrun) go ahead
    _warn(console, job.notices, said)
    settings = {"edit": config, "optim": optim, "guidance": guidance.config}
    seed_everything(args.seed)

    previews: list[str] = []
    scene = None
    folder: Path | None = None
    try:
        folder = output.open()  # inside: a signal right after it still finds the staging folder to clean
        tic = time.perf_counter()
        with progress.phase(f"encoding {job.describe()}"):
            scene = job.build_scene(guidance)
        timings["encode_s"] = time.perf_counter() - tic
        editor = CSDEditor(guidance, config, group=group)
        if args.save_every:
            (folder / "steps").mkdir()
            progress.say(f"every {args.save_every} steps the result goes to {output.final / 'steps'}")

        def save(step: int) -> None:
            previews.append(job.write_preview(folder, guidance, scene, step))

        with progress:
            log = run_edit(editor, scene, scene.parameters(), optim, progress.update, save, args.save_every)

        tic = time.perf_counter()
        with progress.phase(f"decoding and writing {output.final}"):
            edited = job.render(guidance, scene)
            timings["decode_s"] = time.perf_counter() - tic
            tic = time.perf_counter()
            files = job.write(folder, edited)
        _warn(console, job.notices, said)
        timings["write_s"] = time.perf_counter() - tic
        timings["total_s"] = time.perf_counter() - started
        record = run_record(
            args, argv, settings, job, scene,
            status="finished",
            notice=guidance.notice,
            output={"files": files + previews},
            device=device_info(device),
            timings={k: round(v, 3) for k, v in timings.items()} | {"edit": log.summary()},
        )  # fmt: skip
        write_record(folder, record)
        return output.commit()
    except KeyboardInterrupt as exc:
        where = f"at step {progress.step} of {optim.steps}" if progress.step else "before the first step"
        if folder is not None and (folder / "steps").is_dir():
            previews = saved_previews(folder)  # the signal may have come between a preview's write and its listing
        if not previews:
            output.discard()
            raise Interrupted(exc, f"{where}: nothing written") from None
        record = run_record(
            args, argv, settings, job, scene,
            status=f"interrupted {where}",
            notice=guidance.notice,
            output={"files": previews},
            device=device_info(device),
        )  # fmt: skip
        write_record(folder, record)
        kept = output.keep()
        raise Interrupted(
            exc, f"{where}: the results saved every {args.save_every} steps are kept in {kept / 'steps'}"
        ) from None
    except UserError as exc:  # e.g. a full disk: name the file as the user knows it, not the staging folder
        message = output.public(str(exc))
        output.discard()
        raise type(exc)(message) from None
    except BaseException:
        output.discard()
        raise


def main(argv: list[str] | None = None) -> int:
    """Run ``csd-edit-2d``; returns the exit code (2 for a user error, with a one-line message; 128 + the signal
    after Ctrl-C or SIGTERM)."""
    from rich.console import Console

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        with terminate_as_interrupt():
            _check_args(args)
            group = join(resolve_device(args.device, args.dtype)[0])
            if not group.is_main:
                leave(group, wait=follow(args, group))
                return 0
            try:
                folder = run(args, console, argv, group)
            except BaseException:
                release(group, False)  # stopped before its checks passed: the others stop too
                leave(group, wait=False)
                raise
            leave(group)
    except UserError as exc:
        if not is_follower():  # every process checks the same input: rank 0 says it once
            print(f"csd-edit-2d: error: {first_line(exc, 1000)}", file=sys.stderr)
        return 2
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not isinstance(exc, torch.OutOfMemoryError) and "can't allocate memory" not in str(exc):
            raise
        print(f"csd-edit-2d: error: {OUT_OF_MEMORY}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if is_follower():  # the signal reached every process: rank 0 says how far the run got
            return exit_status(exc)
        what = exc.message if isinstance(exc, Interrupted) else "before the edit: nothing written"
        print(f"csd-edit-2d: interrupted ({signal_name(exc)}) {what}", file=sys.stderr)
        return exit_status(exc)
    print(folder)
    return 0


def entrypoint() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
