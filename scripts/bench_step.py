"""Time the CSD-Edit step on latents (the 2D case) for several particle counts; one JSON line per N.

    python scripts/bench_step.py                                   # CPU, mid-size UNet, 256 px
    python scripts/bench_step.py --device cuda --preset ip2p       # IP2P's real UNet/VAE, float16, 512 px
    python scripts/bench_step.py --device cuda --preset ip2p --speedups classic_attention channels_last compile

``--speedups`` also times the step at ``--speedup-particles`` views with each UNet variant next to the default
(diffusers' SDPA attention processor, contiguous memory, eager): ``classic_attention`` (diffusers' explicit
softmax(QK^T)V processor), ``sdpa_cudnn`` (SDPA restricted to cuDNN's attention kernels), ``channels_last``,
``compile`` (``torch.compile`` of the UNet), and ``+`` combinations such as ``channels_last+compile``.

Random weights: timing and memory do not depend on them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from csd_nerf.editor import CSDEditConfig, CSDEditor
from csd_nerf.guidance import GuidanceConfig, IP2PGuidance
from csd_nerf.guidance.components import IP2PComponents
from csd_nerf.guidance.presets import build_components
from csd_nerf.media.latents import LatentSetScene

SPEEDUPS = ("classic_attention", "sdpa_cudnn", "channels_last", "compile")


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


def build_on_device(preset: str, device: str) -> tuple[IP2PComponents, str]:
    """Random-weight components initialised directly on ``device`` (seconds on a GPU instead of a CPU init of the
    860M-parameter UNet and a copy); falls back to a CPU build. Returns the components and where they were built."""
    if torch.device(device).type != "cpu":
        try:
            with torch.device(device):
                return build_components(preset), device
        except Exception as error:  # any construction code that ignores the default device: build on the CPU
            print(f"note: building {preset} on {device} failed ({type(error).__name__}: {error}); using the CPU")
    return build_components(preset), "cpu"


def build_guidance(
    preset: str, device: str, dtype: str, max_unet_batch: int = 0
) -> tuple[IP2PGuidance, dict[str, object]]:
    """The random-weight guidance of ``preset`` on ``device``, and how long building it took, and where."""
    start = time.perf_counter()
    components, built_on = build_on_device(preset, device)
    config = GuidanceConfig(model=f"random:{preset}", device=device, dtype=dtype, max_unet_batch=max_unet_batch)
    guidance = IP2PGuidance(config, components)
    if guidance.device.type == "cuda":
        torch.cuda.synchronize(guidance.device)
    return guidance, {"built_on": built_on, "build_s": round(time.perf_counter() - start, 2)}


def attention_processors(guidance: IP2PGuidance) -> list[str]:
    """The UNet's attention processor class names (diffusers' default on torch 2 is SDPA: AttnProcessor2_0)."""
    return sorted({type(p).__name__ for p in guidance.unet.attn_processors.values()})


@contextmanager
def _one_speedup(guidance: IP2PGuidance, name: str) -> Iterator[None]:
    unet = guidance.unet
    if name == "classic_attention":
        from diffusers.models.attention_processor import AttnProcessor

        saved = unet.attn_processors
        unet.set_attn_processor(AttnProcessor())
        try:
            yield
        finally:
            unet.set_attn_processor(saved)
    elif name == "sdpa_cudnn":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            yield
    elif name == "channels_last":
        unet.to(memory_format=torch.channels_last)
        try:
            yield
        finally:
            unet.to(memory_format=torch.contiguous_format)
    elif name == "compile":
        guidance.unet = torch.compile(unet)
        try:
            yield
        finally:
            guidance.unet = unet
    else:
        raise ValueError(f"unknown speed-up {name!r}: use {', '.join(SPEEDUPS)} or a '+' combination")


@contextmanager
def speedup(guidance: IP2PGuidance, variant: str) -> Iterator[None]:
    """Apply a UNet variant (``default``, a name of :data:`SPEEDUPS`, or names joined by ``+``) for the block."""
    with ExitStack() as stack:
        for name in variant.split("+"):
            if name != "default":
                stack.enter_context(_one_speedup(guidance, name))
        yield


def bench(guidance: IP2PGuidance, n: int, latent_size: int, steps: int, warmup: int) -> dict:
    """Median step time over ``steps`` steps after ``warmup`` steps with ``n`` particles; the first step's time too
    (it carries one-off costs: cuDNN autotuning, ``torch.compile``)."""
    device = guidance.device
    g = torch.Generator().manual_seed(n)
    source = torch.randn(n, 4, latent_size, latent_size, generator=g).to(device)
    scene = LatentSetScene(source, guidance.conditioning_from_latents(source))
    editor = CSDEditor(guidance, CSDEditConfig(prompt="turn it into a painting", num_particles=n))
    optimizer = torch.optim.SGD([scene.parameter], lr=2.0)
    resident_mb = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        resident_mb = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    step_ms, unet_ms, first_ms = [], [], None
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        stats = editor.step(scene, list(range(n)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = 1e3 * (time.perf_counter() - start)
        if i == 0:
            first_ms = elapsed
        if i >= warmup:
            step_ms.append(elapsed)
            unet_ms.append(1e3 * stats.unet_seconds)
    peak, kind = _peak_memory_mb(device)
    step, unet = statistics.median(step_ms), statistics.median(unet_ms)
    record = {
        "n_particles": n,
        "unet_evals_per_particle": stats.unet_samples / n,
        "step_ms": round(step, 2),
        "step_ms_min": round(min(step_ms), 2),
        "step_ms_max": round(max(step_ms), 2),
        "first_step_ms": round(first_ms, 2),
        "unet_ms": round(unet, 2),
        "unet_share": round(unet / step, 4),
        "overhead_ms": round(step - unet, 2),
        "overhead_pct": round(100 * (step - unet) / step, 2),
        "peak_mem_mb": round(peak, 1),
        "peak_mem_kind": kind,
    }
    if resident_mb is not None:
        record["resident_before_mb"] = round(resident_mb, 1)
    return record


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
    parser.add_argument("--speedups", nargs="*", default=[], help="UNet variants to time next to the default")
    parser.add_argument("--speedup-particles", type=int, default=4)
    args = parser.parse_args(argv)

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA device is visible; run on a GPU machine or use --device cpu")
    preset = args.preset or ("ip2p" if cuda else "mid")
    dtype = args.dtype or ("float16" if cuda else "float32")
    resolution = args.resolution or (512 if cuda else 256)
    guidance, build = build_guidance(preset, args.device, dtype, args.max_unet_batch)
    context = {
        "preset": preset,
        "device": args.device,
        "dtype": dtype,
        "resolution": resolution,
        "torch": torch.__version__,
        "attention": attention_processors(guidance),
        **build,
    }
    if cuda:
        context["gpu"] = torch.cuda.get_device_name(0)
    else:
        context["threads"] = torch.get_num_threads()
    for n in args.particles:
        print(json.dumps({**bench(guidance, n, resolution // 8, args.steps, args.warmup), **context}), flush=True)
    for variant in ["default", *args.speedups] if args.speedups else []:
        with speedup(guidance, variant):
            row = bench(guidance, args.speedup_particles, resolution // 8, args.steps, args.warmup)
        print(json.dumps({"variant": variant, **row, **context}), flush=True)


if __name__ == "__main__":
    main()
