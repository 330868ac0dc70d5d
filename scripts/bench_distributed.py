"""Particles across processes: step time, time in communication and bytes sent per step, for k = 1, 2, ... processes.

    python scripts/bench_distributed.py                         # CPU, gloo: video, nerfacto and splats, k = 1, 2
    python scripts/bench_distributed.py --device cuda --processes 1 2 4 --cases video   # GPUs, NCCL

Each case runs the same CSD-Edit steps (same views, timestep and noise on every rank) in k processes, each
rendering and scoring N / k of the N views, all-gathering the noisy latents and residuals and summing the
parameters' gradients once. Reported per case and k: seconds per step (rank 0, median of the timed steps),
seconds per step in collectives, bytes each rank put into collectives per step, and the speed-up over k = 1.
The same tiny prior and scenes as the tests on a CPU; on CUDA the video case uses IP2P's real architecture with
random weights (``--preset ip2p``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _guidance(spec: dict):
    from csd_nerf.guidance import GuidanceConfig, IP2PGuidance
    from csd_nerf.guidance.presets import build_components

    config = GuidanceConfig(model=spec["preset"], device=spec["device"], dtype=spec["dtype"])
    return IP2PGuidance(config, components=build_components(spec["preset"]))


def _scene(spec: dict, guidance):
    """The case's scene: a latent-set video, or a 3D scene built from a trained source run."""
    if spec["case"] == "video":
        from csd_nerf.media.latents import LatentSetScene

        size = spec["size"]
        images = torch.rand(spec["frames"], 3, size, size, generator=torch.Generator().manual_seed(0))
        return LatentSetScene(*guidance.encode_source(images.to(guidance.device)))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from nerf_fixtures import build_pipeline, build_splat_pipeline

    from csd_nerf.nerf.views import TrainViews

    if spec["case"] == "nerfacto":
        from csd_nerf.nerf.deferred import ViewRenderer
        from csd_nerf.nerf.scene import NerfScene

        pipeline = build_pipeline(Path(spec["source"]))
        pipeline.model.train()
        views = TrainViews(pipeline.datamanager.train_dataset, spec["size"], guidance.latent_factor)
        return NerfScene(ViewRenderer(pipeline.model, views.cameras), views, guidance, "direct", seed=3)
    from csd_nerf.nerf.splat_scene import SplatScene

    pipeline = build_splat_pipeline(Path(spec["source"]))
    pipeline.model.train()
    views = TrainViews(pipeline.datamanager.train_dataset, spec["size"], guidance.latent_factor)
    return SplatScene(pipeline.model, views, guidance)


def _run(spec: dict) -> dict:
    """Timed steps of one case in this process (one rank of a group, or alone)."""
    from csd_nerf.distributed import ParticleGroup
    from csd_nerf.editor import CSDEditConfig, CSDEditor

    guidance = _guidance(spec)
    scene = _scene(spec, guidance)
    group = ParticleGroup()
    editor = CSDEditor(guidance, CSDEditConfig(prompt="bench", num_particles=spec["particles"]), group=group)
    times, comm, sent = [], [], []
    for step in range(spec["warmup"] + spec["steps"]):
        for p in scene.parameters():
            p.grad = None
        seconds, nbytes = group.seconds, group.bytes
        if spec["device"].startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        editor.step(scene)
        if spec["device"].startswith("cuda"):
            torch.cuda.synchronize()
        if step >= spec["warmup"]:
            times.append(time.perf_counter() - start)
            comm.append(group.seconds - seconds)
            sent.append(group.bytes - nbytes)
    return {
        "step_s": round(statistics.median(times), 4),
        "comm_s": round(statistics.median(comm), 4),
        "bytes_per_step": int(statistics.median(sent)),
    }


def _worker(rank: int, world: int, port: int, spec: dict, out: str) -> None:
    torch.set_num_threads(spec["threads"])
    backend = "nccl" if spec["device"].startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank)
        spec = spec | {"device": f"cuda:{rank}"}
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = _run(spec)
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def measure(spec: dict, processes: int) -> dict:
    """One case with ``processes`` ranks (spawned, even for one, so that every k starts alike)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        mp.spawn(_worker, args=(processes, _free_port(), spec, out), nprocs=processes, join=True)
        return json.loads(Path(out).read_text())


def _sources(cases: list[str], work: Path) -> dict[str, str]:
    """Trained source runs for the 3D cases (the tests' small synthetic scene)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from nerf_fixtures import source_run, splat_source_run

    sources = {}
    if "nerfacto" in cases:
        sources["nerfacto"] = str(source_run(work))
    if "splat" in cases:
        sources["splat"] = str(splat_source_run(work))
    return sources


def main(argv: list[str] | None = None) -> int:
    from csd_nerf.editor import CSDEditConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--cases", nargs="+", choices=("video", "nerfacto", "splat"), default=["video", "nerfacto", "splat"]
    )
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--particles", type=int, default=CSDEditConfig.num_particles, help="views per step (N), over the processes"
    )
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process)")
    parser.add_argument("--preset", default=None, help="prior: tiny (CPU default) or ip2p (real sizes, GPU default)")
    parser.add_argument("--size", type=int, default=None, help="image side (px): video frames / 3D renders")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (CPU)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the 3D source runs are trained (kept)")
    parser.add_argument("--output", type=Path, default=None, help="also write the rows here (JSON)")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cuda = args.device.startswith("cuda")
    preset = args.preset or ("ip2p" if cuda else "tiny")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    os.environ.setdefault("CSD_NERF_CACHE", str(work / "csd_cache"))
    sources = _sources([c for c in args.cases if c != "video"], work)
    rows = []
    for case in args.cases:
        size = args.size or (512 if cuda and case == "video" else 32)
        spec = {
            "case": case, "device": "cuda" if cuda else "cpu", "dtype": "float16" if cuda else "float32",
            "preset": preset, "size": size, "frames": max(args.particles, 8), "particles": args.particles,
            "steps": args.steps, "warmup": args.warmup, "threads": args.threads, "source": sources.get(case),
        }  # fmt: skip
        base = None
        for k in args.processes:
            result = measure(spec, k)
            base = base or result["step_s"]
            row = {"case": case, "processes": k, "particles": args.particles, "size": size, "device": args.device}
            row |= result | {"speedup": round(base / result["step_s"], 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
