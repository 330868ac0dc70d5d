"""Time the CSD-Edit step on latents (the 2D case) for several particle counts; one JSON line per N.

    python scripts/bench_step.py                                   # CPU, mid-size UNet, 256 px
    python scripts/bench_step.py --device cuda --preset ip2p       # IP2P's real UNet/VAE, float16, 512 px

Random weights: timing and memory do not depend on them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import torch

from csd_nerf.editor import CSDEditConfig, CSDEditor
from csd_nerf.guidance import GuidanceConfig, IP2PGuidance
from csd_nerf.guidance.presets import build_components
from csd_nerf.media.latents import LatentSetScene


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


def bench(guidance: IP2PGuidance, n: int, latent_size: int, steps: int, warmup: int) -> dict:
    device = guidance.device
    g = torch.Generator().manual_seed(n)
    source = torch.randn(n, 4, latent_size, latent_size, generator=g).to(device)
    scene = LatentSetScene(source, guidance.conditioning_from_latents(source))
    editor = CSDEditor(guidance, CSDEditConfig(prompt="turn it into a painting", num_particles=n))
    optimizer = torch.optim.SGD([scene.parameter], lr=2.0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_ms, unet_ms = [], []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        stats = editor.step(scene, list(range(n)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            step_ms.append(1e3 * (time.perf_counter() - start))
            unet_ms.append(1e3 * stats.unet_seconds)
    peak, kind = _peak_memory_mb(device)
    step, unet = statistics.median(step_ms), statistics.median(unet_ms)
    return {
        "n_particles": n,
        "unet_evals_per_particle": stats.unet_samples / n,
        "step_ms": round(step, 2),
        "unet_ms": round(unet, 2),
        "overhead_ms": round(step - unet, 2),
        "overhead_pct": round(100 * (step - unet) / step, 2),
        "peak_mem_mb": round(peak, 1),
        "peak_mem_kind": kind,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--preset", choices=("tiny", "mid", "ip2p"), default=None, help="default: mid on CPU, ip2p on CUDA"
    )
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, float16 on CUDA")
    parser.add_argument("--resolution", type=int, default=None, help="pixels; default 256 on CPU, 512 on CUDA")
    parser.add_argument("--particles", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--max-unet-batch", type=int, default=0)
    args = parser.parse_args(argv)

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA device is visible; run on a GPU machine or use --device cpu")
    preset = args.preset or ("ip2p" if cuda else "mid")
    dtype = args.dtype or ("float16" if cuda else "float32")
    resolution = args.resolution or (512 if cuda else 256)
    config = GuidanceConfig(
        model=f"random:{preset}", device=args.device, dtype=dtype, max_unet_batch=args.max_unet_batch
    )
    guidance = IP2PGuidance(config, build_components(preset))
    context = {
        "preset": preset,
        "device": args.device,
        "dtype": dtype,
        "resolution": resolution,
        "torch": torch.__version__,
    }
    if cuda:
        context["gpu"] = torch.cuda.get_device_name(0)
    else:
        context["threads"] = torch.get_num_threads()
    for n in args.particles:
        print(json.dumps({**bench(guidance, n, resolution // 8, args.steps, args.warmup), **context}), flush=True)


if __name__ == "__main__":
    main()
