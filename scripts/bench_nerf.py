"""Benchmark the csd-edit training step on a NeRF: time per phase and peak memory, deferred vs direct backprop.

    python scripts/bench_nerf.py                    # CPU preset: 32/64/128 px x N = 1/2/4, tiny prior
    python scripts/bench_nerf.py --preset gpu       # CUDA: 128/256/512 px x N = 1/4/8, IP2P-size prior in fp16

Each configuration runs in a fresh process (so memory high-water marks do not leak between them) on a
synthetic scene with a randomly initialised nerfacto and a random-weight prior of the chosen architecture:
timings and memory do not depend on the weights. Phases per step: render (first pass, no graph in deferred
mode), VAE (encoding sources, renders and, in deferred mode, the per-view re-encode), UNet (the 5N guided
evaluations), backward (everything else: VAE and NeRF backward, deferred re-rendering). Peak memory is the
steps' increase over the memory held before the first step: resident memory sampled every 2 ms on a CPU
(warm-up steps included), ``torch.cuda.max_memory_allocated`` on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PRESETS = {
    "cpu": {
        "device": "cpu",
        "image_size": 128,
        "resolutions": [32, 64, 128],
        "particles": [1, 2, 4],
        "prior": "tiny",
        "dtype": "float32",
        "implementation": "torch",
        "nerfacto": {
            "hidden_dim": 16,
            "hidden_dim_color": 16,
            "num_levels": 6,
            "log2_hashmap_size": 13,
            "max_res": 128,
            "num_nerf_samples_per_ray": 16,
            "num_proposal_samples_per_ray": (32, 16),
            "appearance_embed_dim": 8,
        },
        "ray_chunk": 4096,
    },
    "gpu": {
        "device": "cuda",
        "image_size": 512,
        "resolutions": [128, 256, 512],
        "particles": [1, 4, 8],
        "prior": "ip2p",
        "dtype": "float16",
        "implementation": "tcnn",
        "nerfacto": {},
        "ray_chunk": 16384,
    },
}


class _RssSampler:
    """Peak resident memory of this process over a span, sampled every few milliseconds (CPU runs)."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self._page

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.002)

    def __enter__(self) -> _RssSampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def run_single(spec: dict) -> dict:
    """One configuration in this process; returns the measurements."""
    import torch
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from csd_nerf.guidance import GuidanceConfig, IP2PGuidance
    from csd_nerf.guidance.presets import build_components
    from csd_nerf.nerf.model import CSDNerfactoModelConfig
    from csd_nerf.nerf.pipeline import CSDPipelineConfig

    preset = PRESETS[spec["preset"]]
    device = torch.device(preset["device"])
    torch.manual_seed(0)
    model = CSDNerfactoModelConfig(implementation=preset["implementation"], **preset["nerfacto"])
    config = CSDPipelineConfig(
        datamanager=VanillaDataManagerConfig(dataparser=NerfstudioDataParserConfig(data=Path(spec["scene"]))),
        model=model,
        prompt="Turn it into a bronze statue",
        num_particles=spec["n"],
        render_resolution=spec["resolution"],
        backprop=spec["mode"],
        ray_chunk=preset["ray_chunk"],
        preview_every=0,
    )
    pipeline = config.setup(device=str(device), test_mode="val")
    prior = spec.get("prior", preset["prior"])
    guidance = IP2PGuidance(
        GuidanceConfig(model=prior, device=str(device), dtype=preset["dtype"]), components=build_components(prior)
    )
    pipeline.setup_editing(None, guidance)

    def step(i: int) -> dict:
        pipeline.model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        _, metrics = pipeline.edit_step(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        metrics["total"] = time.perf_counter() - start
        return metrics

    rows = []
    if device.type == "cuda":
        for i in range(spec["warmup"]):
            step(i)
        pipeline.model.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for i in range(spec["steps"]):
            rows.append(step(100 + i))
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        # The allocator keeps freed memory, so warm-up runs inside the sampled span: the peak is over all steps.
        with _RssSampler() as sampler:
            before = sampler.rss()
            for i in range(spec["warmup"]):
                step(i)
            for i in range(spec["steps"]):
                rows.append(step(100 + i))
        peak = sampler.peak - before

    def mean(key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    total, render, vae, unet = mean("total"), mean("time_render_s"), mean("time_vae_s"), mean("time_unet_s")
    return {
        **{k: spec[k] for k in ("preset", "resolution", "n", "mode")},
        "prior": prior,
        "step_s": round(total, 3),
        "render_s": round(render, 3),
        "vae_s": round(vae, 3),
        "unet_s": round(unet, 3),
        "backward_s": round(total - render - vae - unet, 3),
        "peak_step_mb": round(peak / 2**20, 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
    }


def _markdown(results: list[dict]) -> str:
    head = "| res | N | backprop | step s | render s | VAE s | UNet s | backward s | peak MB |"
    lines = [head, "|" + "---|" * 9]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['resolution']} | {r['n']} | {r['mode']} | failed: {r['error'][:60]} |||||")
            continue
        lines.append(
            f"| {r['resolution']} | {r['n']} | {r['mode']} | {r['step_s']:.2f} | {r['render_s']:.2f} | "
            f"{r['vae_s']:.2f} | {r['unet_s']:.2f} | {r['backward_s']:.2f} | {r['peak_step_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--resolutions", type=int, nargs="+", help="render resolutions (default: the preset's)")
    parser.add_argument("--particles", type=int, nargs="+", help="views per step (default: the preset's)")
    parser.add_argument("--modes", nargs="+", default=["deferred", "direct"], choices=["deferred", "direct"])
    parser.add_argument("--prior", choices=["tiny", "mid", "ip2p"], help="prior architecture (default: the preset's)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the results as JSON lines here")
    parser.add_argument("--single", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.single:
        print("RESULT " + json.dumps(run_single(json.loads(args.single))), flush=True)
        return 0

    from rich.console import Console

    from csd_nerf.testing.synthetic import SyntheticSceneConfig, make_synthetic_scene

    console = Console()
    preset = PRESETS[args.preset]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_nerf_") as tmp:
        size = preset["image_size"]
        scene = make_synthetic_scene(Path(tmp) / "scene", SyntheticSceneConfig(num_views=24, width=size, height=size))
        for resolution in args.resolutions or preset["resolutions"]:
            for n in args.particles or preset["particles"]:
                for mode in args.modes:
                    spec = {"preset": args.preset, "scene": str(scene), "resolution": resolution, "n": n}
                    spec |= {"mode": mode, "steps": args.steps, "warmup": args.warmup}
                    spec["prior"] = args.prior or preset["prior"]
                    with console.status(f"{resolution} px, N={n}, {mode} ..."):
                        proc = subprocess.run(
                            [sys.executable, __file__, "--single", json.dumps(spec)], capture_output=True, text=True
                        )
                    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                    if lines:
                        result = json.loads(lines[-1][len("RESULT ") :])
                    else:
                        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                        result = {"resolution": resolution, "n": n, "mode": mode, "error": tail}
                    results.append(result)
                    console.print(json.dumps(result))
                    if args.out:
                        with args.out.open("a") as handle:
                            handle.write(json.dumps(result) + "\n")
    console.print(_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
