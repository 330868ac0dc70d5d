"""Steps per second and peak memory of the 2D applications, one JSON line per case.

    python scripts/bench_2d.py                    # CPU preset: the mid-size random UNet/VAE, float32
    python scripts/bench_2d.py --device cuda      # GPU preset: IP2P's real architecture (random weights), float16

Cases: ``panorama`` (a 2048x512 image, 4 windows of 64 latents per step on a stride of 16) and ``video``
(24 frames of 512x512, all frames every step). Each case runs the applications' own code path (encode the
input, CSD-Edit steps with SGD, decode) in a fresh process, so its peak memory is its own. Random weights:
timing and memory do not depend on them. The model presets are shared with ``scripts/bench_step.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import torch
from bench_step import build_guidance  # a sibling script: scripts/ is on sys.path when this runs as a script

from csd_nerf.editor import CSDEditConfig, CSDEditor
from csd_nerf.media.io import Video
from csd_nerf.media.jobs import PanoramaJob, VideoJob
from csd_nerf.media.optimise import OptimConfig, run_edit

CASES = ("panorama", "video")


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random picture (upsampled noise): realistic for the VAE, no files needed."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, height // 64), max(2, width // 64), generator=g)
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return (image.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(args: argparse.Namespace) -> dict:
    """Build the case's job and model, then time encode, ``warmup + steps`` steps and decode."""
    device = torch.device(args.device)
    load_avg = os.getloadavg()[0]
    guidance, build = build_guidance(args.preset, args.device, args.dtype, args.max_unet_batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    weights_mb = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None

    if args.case == "panorama":
        width, height = args.panorama_size
        job = PanoramaJob(synthetic_image(height, width))  # window and stride from the model
        particles = args.num_particles or 4
    else:
        frames = np.stack([synthetic_image(args.frame_size, args.frame_size, seed=i) for i in range(args.frames)])
        job = VideoJob(Video(frames, Fraction(10), "file"), long_side=args.frame_size)
        particles = args.num_particles or args.frames

    _sync(device)
    tic = time.perf_counter()
    scene = job.build_scene(guidance)
    _sync(device)
    encode_s = time.perf_counter() - tic

    editor = CSDEditor(guidance, CSDEditConfig(prompt="turn it into a painting", num_particles=particles))
    samples_before = guidance.stats.unet_samples
    log = run_edit(editor, scene, scene.parameters(), OptimConfig(steps=args.warmup + args.steps))
    _sync(device)
    step_s = statistics.median(log.step_seconds[args.warmup :])

    tic = time.perf_counter()
    job.render(guidance, scene)
    _sync(device)
    decode_s = time.perf_counter() - tic
    peak, kind = _peak_memory_mb(device)

    total_steps = args.warmup + args.steps
    record = {
        "case": args.case,
        "input": job.info(scene),
        "particles_per_step": min(particles, scene.num_views),
        "unet_samples_per_step": (guidance.stats.unet_samples - samples_before) // total_steps,
        "steps_timed": args.steps,
        "step_s": round(step_s, 3),
        "steps_per_s": round(1.0 / step_s, 4),
        "unet_share": round(log.unet_seconds / sum(log.step_seconds), 3),
        "encode_s": round(encode_s, 3),
        "decode_s": round(decode_s, 3),
        "peak_mem_mb": round(peak, 1),
        "peak_mem_kind": kind,
        "preset": args.preset,
        "device": args.device,
        "dtype": args.dtype,
        "torch": torch.__version__,
        **build,
    }
    if weights_mb is not None:
        record["weights_mb"] = round(weights_mb, 1)
        record["gpu"] = torch.cuda.get_device_name(device)
    else:
        record["threads"] = torch.get_num_threads()
        record["load_avg_1min_at_start"] = round(load_avg, 2)
    return record


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--preset", choices=("tiny", "mid", "ip2p"), default=None, help="default: mid on CPU, ip2p on CUDA"
    )
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, float16 on CUDA")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 2 on CPU, 10 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default: 0 on CPU, 2 on CUDA)")
    parser.add_argument(
        "--num-particles", type=int, default=0, help="0: csd-edit-2d's defaults (windows / all frames per step)"
    )
    parser.add_argument("--panorama-size", type=_size, default=(2048, 512), help="WIDTHxHEIGHT in px")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--frame-size", type=int, default=512)
    parser.add_argument("--max-unet-batch", type=int, default=0)
    parser.add_argument("--case", choices=CASES, default=None, help=argparse.SUPPRESS)  # one case, in this process
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA device is visible; run on a GPU machine or use --device cpu")
    args.preset = args.preset or ("ip2p" if cuda else "mid")
    args.dtype = args.dtype or ("float16" if cuda else "float32")
    args.steps = args.steps if args.steps is not None else (10 if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (2 if cuda else 0)
    if args.case is not None:
        print(json.dumps(run_case(args)), flush=True)
        return
    for case in args.cases:
        # A fresh process per case: the CPU's peak RSS is per process, and CUDA caches do not carry over.
        result = subprocess.run([sys.executable, __file__, *argv, "--case", case], capture_output=True, text=True)
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        if result.returncode != 0 or not lines:
            tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            print(json.dumps({"case": case, "error": tail}), flush=True)
            continue
        print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
