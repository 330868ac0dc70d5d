"""csd-edit demo, offline on a CPU: synthetic scene -> source run -> csd-edit -> known-answer edit -> videos + export.

    python scripts/demo.py                              # nerfacto, ~9 minutes on 2 CPU cores, no download
    python scripts/demo.py --representation splat       # Gaussian splats (splatfacto-cpu, csd-edit-splat)
    python scripts/demo.py --ip2p-model timbrooks/instruct-pix2pix --prompt "Make it look like winter"  # a real edit

Every user-facing stage is the stock command a user would type (ns-train, ns-render, ns-export); each command
and its log are printed. Offline the only InstructPix2Pix is ``tiny`` (random weights): ``ns-train csd-edit``
then runs end to end but makes no meaningful edit. So the demo also runs the **known-answer edit**: the same
csd-edit trainer with a test prior that pulls every view toward a target scene (the same capture with the ball
recoloured, a sphere moved and a box recoloured). Its before/after video shows a real, multi-view-consistent
change of the 3D scene, and is labelled as what it is: a convergence check, not a text edit.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shlex
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from rich.console import Console

from csd_nerf.editor import CSDEditConfig
from csd_nerf.errors import SettingError, UserError, check_text, first_line
from csd_nerf.media.output import OutputError, check_replaceable
from csd_nerf.testing.offline import offline_tool_env, torch_home_for_offline_nerfacto
from csd_nerf.testing.presets import CPU_MACHINE, CPU_NERFACTO, EXACT_POSES, QUIET
from csd_nerf.testing.synthetic import LOCAL_REGION, SyntheticSceneConfig, make_scene_triple

CONSOLE = Console(highlight=False, file=sys.stdout)  # fixed: a stage may redirect sys.stdout to its log
MARKER = ".csd-nerf-demo"
MIN_VIEWS = 10
"""nerfstudio holds out 10 % of the views: fewer than 10 leave none to measure the known-answer edit on."""
MIN_SIZE = 8
"""The synthetic views' smallest side: one latent pixel of the VAE."""
SOURCE_METHOD = {"nerfacto": "nerfacto", "splat": "splatfacto-cpu"}
EDIT_METHOD = {"nerfacto": "csd-edit", "splat": "csd-edit-splat"}
KNOWN_ANSWER_LABEL = "KNOWN-ANSWER PRIOR (a convergence check, not a text edit): source | edited"


class DemoError(UserError):
    """A stage failed or the output folder cannot be used; the message is one line."""


def _prepare_output(folder: Path, overwrite: bool) -> Path:
    folder = folder.expanduser().absolute()
    if folder.exists():
        if not overwrite:
            raise DemoError(f"{folder} exists: pass --overwrite to replace it, or --output another folder")
        try:
            check_replaceable(folder, MARKER)
        except OutputError as exc:
            raise DemoError(f"{exc}") from None
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).touch()
    return folder


class Runner:
    """Runs the stages' commands with the offline environment, logging each to its own file."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.env = offline_tool_env(out / "tools")
        self.logs = out / "logs"
        self.logs.mkdir()
        self.timings: list[tuple[str, float]] = []

    def run(self, name: str, args: list[str]) -> str:
        exe = Path(sys.executable).parent / args[0]
        command = [str(exe) if exe.exists() else args[0], *args[1:]]
        slug = "-".join(re.findall(r"[a-z0-9]+", name.lower())[:3])
        log = self.logs / f"{len(self.timings) + 1:02d}-{slug}.log"
        CONSOLE.print(f"\n[bold]{name}[/bold]  (log: {log.relative_to(self.out)})")
        CONSOLE.print(f"  $ {shlex.join(args)}", soft_wrap=True)
        start = time.perf_counter()
        with CONSOLE.status(f"{name} ..."):
            proc = subprocess.run(command, cwd=self.out, env=self.env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        log.write_text(f"$ {shlex.join(command)}\n\n{proc.stdout}\n{proc.stderr}")
        if proc.returncode != 0:
            tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
            raise DemoError(f"{name} failed after {seconds:.0f} s: {tail[0][:300]} (full log: {log})")
        self.timings.append((name, seconds))
        CONSOLE.print(f"  done in {seconds:.0f} s")
        return proc.stdout + proc.stderr


def _run_folder(outputs: Path, method: str, experiment: str = "*") -> Path:
    runs = sorted(outputs.glob(f"{experiment}/{method}/*/config.yml"))
    if not runs:
        raise DemoError(f"no {method} run was written under {outputs}")
    return runs[-1].parent


def _labelled(frames: np.ndarray, label: str, scale: int) -> np.ndarray:
    """Frames enlarged ``scale`` times (nearest) under a white banner carrying ``label``."""
    from PIL import Image, ImageDraw

    big = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    height, width = big.shape[1:3]
    words, lines, line = label.split(), [], ""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for word in words:  # wrap to the frame width
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate) > width - 8:
            lines.append(line)
            line = word
        else:
            line = candidate
    lines.append(line)
    banner = Image.new("RGB", (width, 14 * len(lines) + 6), "white")
    ImageDraw.Draw(banner).multiline_text((4, 3), "\n".join(lines), fill="black", spacing=3)
    strip = np.asarray(banner)
    out = np.concatenate([np.broadcast_to(strip, (len(big), *strip.shape)), big], axis=1)
    return out[:, : out.shape[1] // 2 * 2, : out.shape[2] // 2 * 2]  # even sides for H.264


def _side_by_side(before: Path, after: Path, target: Path, fps: int, label: str | None = None) -> Path:
    from csd_nerf.media.io import Video, comparison_image, read_video, write_video

    a, b = read_video(before), read_video(after)
    count = min(len(a.frames), len(b.frames))
    frames = np.stack([comparison_image(a.frames[i], b.frames[i], gap=4) for i in range(count)])
    if label is not None:
        frames = _labelled(frames, label, scale=max(1, 512 // frames.shape[2]))
    return write_video(target, Video(np.ascontiguousarray(frames), Fraction(fps), "file"))


def _known_answer_edit(
    args: argparse.Namespace, runner: Runner, source: Path, target: Path, local: Path | None = None
) -> dict:
    """The csd-edit trainer with the known-answer prior toward ``target`` (in this process); with ``local``, inside
    :data:`LOCAL_REGION` only, measured against the local target."""
    from csd_nerf.testing.convergence import ConvergenceConfig, run_known_answer_edit

    out = runner.out
    config = ConvergenceConfig(
        source_data=source,
        target_data=target,
        work_dir=out,
        representation=args.representation,
        steps=args.known_answer_steps,
        num_particles=args.particles,
        render_resolution=args.size,
        region=(*LOCAL_REGION[0], *LOCAL_REGION[1]) if local is not None else None,
        local_target_data=local,
    )
    where = " inside the box around the blue box only" if local is not None else ""
    CONSOLE.print(
        f"\n[bold]known-answer edit[/bold]  ({args.known_answer_steps} steps of the {EDIT_METHOD[args.representation]} "
        f"trainer, each view pulled toward the target scene's image of its camera{where})"
    )
    log = runner.logs / f"{len(runner.timings) + 1:02d}-known-answer-edit.log"
    CONSOLE.print(f"  (log: {log.relative_to(out)})")
    started = time.perf_counter()
    # In this process: the trainer's own output goes to the log, as the other stages' does.
    with CONSOLE.status("known-answer edit ..."), open(log, "w") as handle:
        with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
            report = run_known_answer_edit(config, log=print)
    seconds = time.perf_counter() - started
    runner.timings.append(("known-answer edit", seconds))
    CONSOLE.print(
        f"  done in {seconds:.0f} s: held-out PSNR to the target "
        f"{report['psnr_before']:.1f} -> {report['psnr_after']:.1f} dB"
    )
    if local is not None:
        CONSOLE.print(
            f"  local edit: held-out PSNR to the local target (only the box changed) {report['psnr_local_before']:.1f}"
            f" -> {report['psnr_local_after']:.1f} dB; to the source outside the box "
            f"{report['psnr_outside_source_before']:.1f} -> {report['psnr_outside_source_after']:.1f} dB"
        )
    return report


def _region_flags(source_run: Path) -> list[str]:
    """``--pipeline.region.*`` of :data:`LOCAL_REGION` in the source run's world (its dataparser transform)."""
    import json

    import torch

    from csd_nerf.nerf.region import RegionConfig

    transforms = json.loads((source_run / "dataparser_transforms.json").read_text())
    region = RegionConfig.from_dataset_box(
        LOCAL_REGION[0], LOCAL_REGION[1], torch.tensor(transforms["transform"]), transforms["scale"]
    )
    flags = []
    for name in ("center", "rotation", "scale"):
        flags += [f"--pipeline.region.{name}", *(f"{v:.5f}" for v in getattr(region, name))]
    return flags


def check_args(args: argparse.Namespace) -> None:
    """Every setting, before anything is written: a :class:`SettingError` in one line otherwise."""
    check_text(args.prompt, "--prompt")
    if not args.prompt.strip():
        raise SettingError('--prompt is empty: pass an instruction, e.g. "Turn the ball into a glass ball"')
    if args.size < MIN_SIZE:
        raise SettingError(f"--size {args.size}: use at least {MIN_SIZE} pixels (one latent pixel of the VAE)")
    for flag, value, least in (
        ("--views", args.views, 2),
        ("--source-steps", args.source_steps, 1),
        ("--edit-steps", args.edit_steps, 1),
        ("--particles", args.particles, 1),
        ("--known-answer-steps", args.known_answer_steps, 0),
    ):
        if value < least:
            raise SettingError(f"{flag} {value}: use at least {least}")
    if args.ip2p_model == "tiny" and args.known_answer_steps > 0 and args.views < MIN_VIEWS:
        raise SettingError(
            f"--views {args.views} is too few: the known-answer edit needs at least {MIN_VIEWS} (it holds views out)"
        )


def run_demo(args: argparse.Namespace) -> Path:
    """All stages; returns the output folder."""
    start = time.perf_counter()
    check_args(args)
    known_answer = args.ip2p_model == "tiny" and args.known_answer_steps > 0
    out = _prepare_output(Path(args.output), args.overwrite)
    runner = Runner(out)
    _, real_alexnet = torch_home_for_offline_nerfacto(out / "tools")
    representation = args.representation
    source_method, edit_method = SOURCE_METHOD[representation], EDIT_METHOD[representation]

    CONSOLE.print(f"[bold]csd-nerf demo[/bold] ({representation}) -> {out}")
    scene, target, local = make_scene_triple(
        out / "data", SyntheticSceneConfig(num_views=args.views, width=args.size, height=args.size)
    )
    local = local if args.region else None
    CONSOLE.print(f"\n[bold]scene[/bold]  {args.views} synthetic views of {args.size}x{args.size} px in {scene}")
    if known_answer:
        CONSOLE.print(f"  and the target of the known-answer edit (same cameras, edited objects) in {target}")
    if not real_alexnet:
        CONSOLE.print(
            "  (offline: nerfstudio's LPIPS metric gets placeholder AlexNet weights from tools/torch_home; "
            "only that logged metric is affected)"
        )

    outputs = out / "outputs"
    common = ["--output-dir", str(outputs), *QUIET]
    if representation == "nerfacto":
        train = [*CPU_MACHINE, *CPU_NERFACTO, *EXACT_POSES, "--pipeline.datamanager.train-num-rays-per-batch", "1024"]
        edit_flags = list(CPU_MACHINE)
    else:
        # Keep the point cloud's Gaussians (no densification): the CPU rasteriser's time grows with their number.
        train = ["--machine.device-type", "cpu", "--pipeline.model.stop-split-at", "1"]
        edit_flags = ["--machine.device-type", "cpu"]
    runner.run(
        f"train the source scene (stock {source_method})",
        ["ns-train", source_method, "--data", str(scene), *common, *train]
        + ["--max-num-iterations", str(args.source_steps), "--steps-per-save", str(args.source_steps)],
    )
    source = _run_folder(outputs, source_method)
    region_flags = _region_flags(source) if args.region else []

    edit_log = runner.run(
        f"edit it ({edit_method}, the command a user types)",
        ["ns-train", edit_method, "--data", str(scene), *common, *edit_flags]
        + ["--pipeline.prompt", args.prompt, "--pipeline.ip2p-model", args.ip2p_model]
        + ["--max-num-iterations", str(args.edit_steps), "--pipeline.preview-every", str(max(1, args.edit_steps // 4))]
        + ["--pipeline.num-particles", str(args.particles), *region_flags],
    )
    edited = _run_folder(outputs, edit_method, experiment=scene.name)

    report = None
    if known_answer:
        report = _known_answer_edit(args, runner, scene, target, local)
        edited = _run_folder(outputs, edit_method, experiment="known-answer")

    videos = out / "videos"
    render = ["interpolate", "--pose-source", "train", "--interpolation-steps", "2", "--frame-rate", "12"]
    runner.run(
        "render the source (stock ns-render)",
        [
            "ns-render",
            *render,
            "--load-config",
            str(source / "config.yml"),
            "--output-path",
            str(videos / "before.mp4"),
        ],
    )
    runner.run(
        "render the edit (stock ns-render)",
        ["ns-render", *render, "--load-config", str(edited / "config.yml"), "--output-path", str(videos / "after.mp4")],
    )
    label = KNOWN_ANSWER_LABEL if known_answer else None
    comparison = _side_by_side(videos / "before.mp4", videos / "after.mp4", videos / "before_after.mp4", 12, label)
    if representation == "nerfacto":
        export, exported = ["pointcloud", "--num-points", "20000", "--normal-method", "open3d"], "point_cloud.ply"
        export += ["--num-rays-per-batch", "8192"]
    else:
        export, exported = ["gaussian-splat"], "splat.ply"
    runner.run(
        "export the edit (stock ns-export)",
        ["ns-export", *export, "--load-config", str(edited / "config.yml"), "--output-dir", str(out / "export")],
    )

    previews = sorted(_run_folder(outputs, edit_method, experiment=scene.name).glob("previews/*.png"))
    CONSOLE.print(f"\n[bold green]Demo finished in {time.perf_counter() - start:.0f} s[/bold green]")
    CONSOLE.print(f"  source run        {source}")
    CONSOLE.print(f"  edited run        {edited}" + ("  (the known-answer edit)" if known_answer else ""))
    CONSOLE.print(f"  before | after    {comparison}")
    CONSOLE.print(f"  export            {out / 'export' / exported}")
    if previews:
        CONSOLE.print(f"  previews          {previews[-1]} (source | render | the prior's one-step estimate)")
    CONSOLE.print(f"  view the edit     ns-viewer --load-config {edited / 'config.yml'}")
    if report is not None:
        CONSOLE.print(
            f"\n[bold yellow]The before/after video shows the known-answer edit[/bold yellow]: the {edit_method} "
            f"trainer with a test prior that pulls each view toward the target scene (held-out PSNR to the target "
            f"{report['psnr_before']:.1f} -> {report['psnr_after']:.1f} dB). It is a convergence check, not a "
            "text edit.",
            soft_wrap=True,
        )
    if args.ip2p_model == "tiny" or "no meaningful edit" in edit_log:
        CONSOLE.print(
            "\n[bold yellow]The 'tiny' prior has random weights: the text edit above exercises every stage but makes "
            "NO meaningful edit.[/bold yellow]\nFor a real text edit, use InstructPix2Pix (about 5 GB, downloaded "
            "once; a GPU is strongly advised):\n"
            f"  python scripts/demo.py --overwrite --representation {representation} "
            f'--ip2p-model timbrooks/instruct-pix2pix --size 256 --prompt "{args.prompt}"\n'
            f"or on your own scene, trained first with ns-train {'nerfacto' if representation == 'nerfacto' else 'splatfacto'}:\n"
            f'  ns-train {edit_method} --data data/bear --pipeline.prompt "Turn the bear into a grizzly bear"',
            soft_wrap=True,
        )
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="A faster first try (about half the work: half the views and source steps, 80 known-answer steps; "
        "a weaker known-answer edit): --views 20 --source-steps 300 --known-answer-steps 80",
    )
    parser.add_argument("--output", default="demo_out", help="new folder for everything the demo writes")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo folder")
    parser.add_argument(
        "--representation", choices=sorted(SOURCE_METHOD), default="nerfacto", help="nerfacto or Gaussian splats"
    )
    parser.add_argument("--ip2p-model", default="tiny", help="tiny (offline, no real edit), a hub id, or a folder")
    parser.add_argument("--prompt", default="Turn the striped ball into a blue glass ball", help="the edit instruction")
    parser.add_argument(
        "--size", type=int, default=40, help=f"side of the synthetic views in pixels (at least {MIN_SIZE})"
    )
    parser.add_argument(
        "--views", type=int, default=40, help=f"synthetic views (at least {MIN_VIEWS} for the known-answer edit)"
    )
    parser.add_argument("--source-steps", type=int, default=600, help="training steps of the source scene")
    parser.add_argument("--edit-steps", type=int, default=8, help="steps of the text edit")
    parser.add_argument(
        "--known-answer-steps", type=int, default=150, help="steps of the known-answer edit (0: skip it)"
    )
    parser.add_argument("--particles", type=int, default=CSDEditConfig.num_particles, help="views per CSD step")
    parser.add_argument(
        "--region",
        action="store_true",
        help="a local edit: both edits act inside a box around the scene's blue box only (--pipeline.region)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_demo(args)
    except UserError as exc:
        CONSOLE.print(f"[bold red]demo: {first_line(exc)}", soft_wrap=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
