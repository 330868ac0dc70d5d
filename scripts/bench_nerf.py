"""Benchmark the csd-edit training step on a 3D scene: time per phase and peak memory, nerfacto (deferred vs
direct backpropagation) and Gaussian splats.

    python scripts/bench_nerf.py                              # CPU preset: 32/64/128 px x N = 1/2/4, tiny prior
    python scripts/bench_nerf.py --representation splat       # the same for splats (CPU rasteriser)
    python scripts/bench_nerf.py --representation both        # nerfacto and splats side by side
    python scripts/bench_nerf.py --preset gpu                 # CUDA: 128/256/512 px x N = 1/4/8, IP2P-size prior fp16

Each configuration runs in a fresh process (so memory high-water marks do not leak between them) on a
synthetic scene with a random-weight prior of the chosen architecture (timings and memory do not depend on the
weights): nerfacto randomly initialised with the CPU preset's model (``csd_nerf.testing.presets``) on a CPU and
nerfacto's own defaults (torch implementation) on a GPU; splats initialised from the scene's point cloud.
Phases per step: render (the scene making its views, VAE excluded; with deferred backpropagation the first,
graph-free pass), VAE (encoding sources and renders), UNet (the 5N guided evaluations), backward (the rest: VAE
and scene backward, deferred re-rendering). Peak memory is the steps' increase over the memory held before the
first step: resident memory sampled every 2 ms on a CPU (warm-up steps included), ``torch.cuda.max_memory_allocated``
on a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
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
        "nerfacto": "cpu",
        "ray_chunk": 4096,
        "points": 3000,
    },
    "gpu": {
        "device": "cuda",
        "image_size": 512,
        "resolutions": [128, 256, 512],
        "particles": [1, 4, 8],
        "prior": "ip2p",
        "dtype": "float16",
        "nerfacto": "default",
        "ray_chunk": 16384,
        "points": 200_000,
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

    preset = PRESETS[spec["preset"]]
    device = torch.device(preset["device"])
    torch.manual_seed(0)
    settings = {
        "prompt": "Turn it into a bronze statue",
        "num_particles": spec["n"],
        "render_resolution": spec["resolution"],
        "preview_every": 0,
    }
    if spec["representation"] == "splat":
        from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanagerConfig

        from csd_nerf.nerf.splat_pipeline import CSDSplatPipelineConfig

        # nerfstudio reads the point cloud with open3d; without it (a bare GPU machine) splatfacto starts from
        # random Gaussians, which times the same step.
        points = importlib.util.find_spec("open3d") is not None
        parser = NerfstudioDataParserConfig(data=Path(spec["scene"]), load_3D_points=points)
        config = CSDSplatPipelineConfig(datamanager=FullImageDatamanagerConfig(dataparser=parser), **settings)
    else:
        from csd_nerf.nerf.model import CSDNerfactoModelConfig
        from csd_nerf.nerf.pipeline import CSDPipelineConfig
        from csd_nerf.testing.presets import CPU_NERFACTO_MODEL

        fields = CPU_NERFACTO_MODEL if preset["nerfacto"] == "cpu" else {}
        config = CSDPipelineConfig(
            datamanager=VanillaDataManagerConfig(dataparser=NerfstudioDataParserConfig(data=Path(spec["scene"]))),
            model=CSDNerfactoModelConfig(implementation="torch", **fields),
            backprop=spec["mode"],
            ray_chunk=preset["ray_chunk"],
            **settings,
        )
    pipeline = config.setup(device=str(device), test_mode="val")
    prior = spec.get("prior", preset["prior"])
    guidance = IP2PGuidance(
        GuidanceConfig(model=prior, device=str(device), dtype=preset["dtype"]), components=build_components(prior)
    )
    pipeline.setup_editing(None, guidance)

    pipeline.train()
    if spec["representation"] == "splat":
        pipeline.model.config.densify = False  # a benchmark step has no trainer (optimisers) to densify with

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
    gaussians = pipeline.model.means.shape[0] if spec["representation"] == "splat" else None
    return {
        **{k: spec[k] for k in ("preset", "representation", "resolution", "n")},
        "mode": getattr(pipeline.scene, "mode", spec["mode"]),
        "prior": prior,
        "gaussians": gaussians,
        "step_s": round(total, 3),
        "render_s": round(render, 3),
        "vae_s": round(vae, 3),
        "unet_s": round(unet, 3),
        "backward_s": round(total - render - vae - unet, 3),
        "peak_step_mb": round(peak / 2**20, 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
    }


def _markdown(results: list[dict]) -> str:
    head = "| scene | res | N | backprop | step s | render s | VAE s | UNet s | backward s | peak MB |"
    lines = [head, "|" + "---|" * 10]
    for r in results:
        first = f"| {r.get('representation', '?')} | {r['resolution']} | {r['n']} | {r['mode']}"
        if "error" in r:
            lines.append(f"{first} | failed: {r['error'][:60]} |||||")
            continue
        lines.append(
            f"{first} | {r['step_s']:.2f} | {r['render_s']:.2f} | "
            f"{r['vae_s']:.2f} | {r['unet_s']:.2f} | {r['backward_s']:.2f} | {r['peak_step_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--resolutions", type=int, nargs="+", help="render resolutions (default: the preset's)")
    parser.add_argument("--particles", type=int, nargs="+", help="views per step (default: the preset's)")
    parser.add_argument(
        "--representation", choices=["nerfacto", "splat", "both"], default="nerfacto", help="the 3D scene to edit"
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["deferred", "direct"],
        choices=["auto", "deferred", "direct"],
        help="nerfacto's backpropagation (splats always render with a graph)",
    )
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
        scene_config = SyntheticSceneConfig(num_views=24, width=size, height=size, num_points=preset["points"])
        scene = make_synthetic_scene(Path(tmp) / "scene", scene_config)
        representations = ["nerfacto", "splat"] if args.representation == "both" else [args.representation]
        runs = [
            (representation, resolution, n, mode)
            for representation in representations
            for resolution in args.resolutions or preset["resolutions"]
            for n in args.particles or preset["particles"]
            for mode in (args.modes if representation == "nerfacto" else ["direct"])
        ]
        for representation, resolution, n, mode in runs:
            spec = {"preset": args.preset, "scene": str(scene), "resolution": resolution, "n": n}
            spec |= {"mode": mode, "steps": args.steps, "warmup": args.warmup, "representation": representation}
            spec["prior"] = args.prior or preset["prior"]
            with console.status(f"{representation} {resolution} px, N={n}, {mode} ..."):
                proc = subprocess.run(
                    [sys.executable, __file__, "--single", json.dumps(spec)], capture_output=True, text=True
                )
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if lines:
                result = json.loads(lines[-1][len("RESULT ") :])
            else:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                result = {"representation": representation, "resolution": resolution, "n": n}
                result |= {"mode": mode, "error": tail}
            results.append(result)
            console.print(json.dumps(result))
            if args.out:
                with args.out.open("a") as handle:
                    handle.write(json.dumps(result) + "\n")
    console.print(_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
