"""csd-edit demo, offline on a CPU: synthetic scene -> nerfacto -> CSD-Edit -> before/after video + point cloud.

    python scripts/demo.py                      # ~5-8 minutes on 2 CPU cores, no download
    python scripts/demo.py --ip2p-model timbrooks/instruct-pix2pix --prompt "Make it look like winter"

Every stage is the stock command a user would type (ns-train nerfacto, ns-train csd-edit, ns-render,
ns-export); each command and its log file are printed. With the default prior ``tiny`` (random weights)
the pipeline runs end to end but makes no meaningful edit.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

from rich.console import Console

from csd_nerf.testing.offline import offline_tool_env, torch_home_for_offline_nerfacto
from csd_nerf.testing.synthetic import SyntheticSceneConfig, make_synthetic_scene

CONSOLE = Console(highlight=False)
MARKER = ".csd-nerf-demo"
CPU = ["--machine.device-type", "cpu", "--pipeline.model.implementation", "torch"]
QUIET = ["--vis", "tensorboard", "--logging.local-writer.enable", "False"]
# A small nerfacto: the demo scene is 64 px and the machine may be a 2-core CPU.
SMALL_NERFACTO = [
    "--pipeline.model.hidden-dim", "16",
    "--pipeline.model.hidden-dim-color", "16",
    "--pipeline.model.num-levels", "6",
    "--pipeline.model.log2-hashmap-size", "13",
    "--pipeline.model.max-res", "128",
    "--pipeline.model.num-nerf-samples-per-ray", "16",
    "--pipeline.model.num-proposal-samples-per-ray", "32", "16",
    "--pipeline.model.appearance-embed-dim", "8",
]  # fmt: skip


class DemoError(RuntimeError):
    """A stage failed; the message is one line."""


def _prepare_output(folder: Path, overwrite: bool) -> Path:
    folder = folder.expanduser().absolute()
    if folder.exists():
        if not overwrite:
            raise DemoError(f"{folder} exists: pass --overwrite to replace it, or --output another folder")
        if not (folder / MARKER).exists():
            raise DemoError(f"{folder} is not a folder this demo made: choose another --output")
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
        slug = "-".join(word for word in name.replace("(", "").replace(")", "").split()[:3])
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
        CONSOLE.print(f"  done in {seconds:.0f} s")
        self.timings.append((name, seconds))
        return proc.stdout + proc.stderr


def _run_folder(outputs: Path, method: str) -> Path:
    runs = sorted(outputs.glob(f"*/{method}/*/config.yml"))
    if not runs:
        raise DemoError(f"no {method} run was written under {outputs}")
    return runs[-1].parent


def _side_by_side(before: Path, after: Path, target: Path, fps: int) -> Path:
    import numpy as np

    from csd_nerf.media.io import Video, comparison_image, read_video, write_video

    a, b = read_video(before), read_video(after)
    count = min(len(a.frames), len(b.frames))
    frames = [comparison_image(a.frames[i], b.frames[i], gap=4) for i in range(count)]

    return write_video(target, Video(np.stack(frames), Fraction(fps), "file"))


def run_demo(args: argparse.Namespace) -> Path:
    """All stages; returns the output folder."""
    start = time.perf_counter()
    out = _prepare_output(Path(args.output), args.overwrite)
    runner = Runner(out)
    _, real_alexnet = torch_home_for_offline_nerfacto(out / "tools")

    CONSOLE.print(f"[bold]csd-nerf demo[/bold] -> {out}")
    scene = make_synthetic_scene(
        out / "data" / "synthetic", SyntheticSceneConfig(num_views=args.views, width=args.size, height=args.size)
    )
    CONSOLE.print(f"\n[bold]scene[/bold]  {args.views} synthetic views of {args.size}x{args.size} px in {scene}")
    if not real_alexnet:
        CONSOLE.print(
            "  (offline: nerfacto's LPIPS metric gets placeholder AlexNet weights from tools/torch_home; "
            "only that logged metric is affected)"
        )

    outputs = out / "outputs"
    common = ["--output-dir", str(outputs), *CPU, *QUIET]
    runner.run(
        "train the source scene (stock nerfacto)",
        ["ns-train", "nerfacto", "--data", str(scene), *common, *SMALL_NERFACTO]
        + ["--max-num-iterations", str(args.source_steps), "--pipeline.datamanager.train-num-rays-per-batch", "1024"]
        + ["--steps-per-save", str(args.source_steps)],
    )
    source = _run_folder(outputs, "nerfacto")

    edit_log = runner.run(
        "edit it (csd-edit)",
        ["ns-train", "csd-edit", "--data", str(scene), "--load-dir", str(source / "nerfstudio_models"), *common]
        + ["--pipeline.prompt", args.prompt, "--pipeline.ip2p-model", args.ip2p_model]
        + ["--max-num-iterations", str(args.edit_steps), "--pipeline.preview-every", str(max(1, args.edit_steps // 4))]
        + ["--pipeline.num-particles", str(args.particles)],
    )
    edited = _run_folder(outputs, "csd-edit")

    videos = out / "videos"
    render = ["interpolate", "--pose-source", "train", "--interpolation-steps", "2", "--frame-rate", "12"]
    runner.run(
        "render the source",
        ["ns-render", *render, "--load-config", str(source / "config.yml")]
        + ["--output-path", str(videos / "before.mp4")],
    )
    runner.run(
        "render the edit",
        ["ns-render", *render, "--load-config", str(edited / "config.yml")]
        + ["--output-path", str(videos / "after.mp4")],
    )
    comparison = _side_by_side(videos / "before.mp4", videos / "after.mp4", videos / "before_after.mp4", fps=12)
    runner.run(
        "export a point cloud of the edit",
        ["ns-export", "pointcloud", "--load-config", str(edited / "config.yml"), "--output-dir", str(out / "export")]
        + ["--num-points", "20000", "--normal-method", "open3d", "--num-rays-per-batch", "8192"],
    )

    previews = sorted((edited / "previews").glob("*.png"))
    CONSOLE.print(f"\n[bold green]Demo finished in {time.perf_counter() - start:.0f} s[/bold green]")
    CONSOLE.print(f"  source run        {source}")
    CONSOLE.print(f"  edited run        {edited}")
    CONSOLE.print(f"  before | after    {comparison}")
    CONSOLE.print(f"  point cloud       {out / 'export' / 'point_cloud.ply'}")
    if previews:
        CONSOLE.print(f"  previews          {previews[-1]} (source | render | the prior's one-step estimate)")
    CONSOLE.print(f"  view the edit     ns-viewer --load-config {edited / 'config.yml'}")
    if args.ip2p_model == "tiny" or "no meaningful edit" in edit_log:
        CONSOLE.print(
            "\n[bold yellow]The 'tiny' prior has random weights: this run exercises every stage but makes NO "
            "meaningful edit.[/bold yellow]\nFor a real edit, use InstructPix2Pix (about 5 GB, downloaded once; "
            "a GPU is strongly advised):\n"
            f"  python scripts/demo.py --overwrite --ip2p-model timbrooks/instruct-pix2pix --size 256 "
            f'--prompt "{args.prompt}"\n'
            "or on your own nerfacto scene:\n"
            "  ns-train csd-edit --data data/bear --load-dir outputs/bear/nerfacto/RUN/nerfstudio_models "
            '--pipeline.prompt "Turn the bear into a grizzly bear"',
            soft_wrap=True,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="demo_out", help="new folder for everything the demo writes")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo folder")
    parser.add_argument("--ip2p-model", default="tiny", help="tiny (offline, no real edit), a hub id, or a folder")
    parser.add_argument("--prompt", default="Turn the striped ball into a blue glass ball")
    parser.add_argument("--size", type=int, default=64, help="image size of the synthetic views (pixels)")
    parser.add_argument("--views", type=int, default=24)
    parser.add_argument("--source-steps", type=int, default=300)
    parser.add_argument("--edit-steps", type=int, default=20)
    parser.add_argument("--particles", type=int, default=4, help="views per CSD step")
    args = parser.parse_args(argv)
    try:
        run_demo(args)
    except DemoError as exc:
        CONSOLE.print(f"[bold red]demo: {exc}", soft_wrap=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
