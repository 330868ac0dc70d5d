"""What each process of a distributed test runs (importable by spawned processes), and the spawner.

A step's gradients with k gloo processes on a CPU must equal those of one process with the same views, timestep and
noise: each worker builds the same scene, runs one editor step in its process group and saves what it ended with.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable, out: Path, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.save(fn(*args), out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable, world_size: int, out: Path, *args) -> list:
    """``fn(*args)`` in ``world_size`` gloo processes; returns what each returned (saved with torch.save)."""
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_worker, args=(world_size, _free_port(), fn, out, args), nprocs=world_size, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def in_one_process(fn: Callable, *args):
    """``fn(*args)`` here, without a process group (the reference)."""
    torch.set_num_threads(1)
    return fn(*args)


# --- the workers ------------------------------------------------------------------------------------------------


def _tiny():
    from csd_nerf.guidance import GuidanceConfig

    return GuidanceConfig(model="tiny").setup()


def _editor(guidance, n: int, coupling: bool = True):
    from csd_nerf.distributed import ParticleGroup
    from csd_nerf.editor import CSDEditConfig, CSDEditor

    return CSDEditor(
        guidance, CSDEditConfig(prompt="make it snowy", num_particles=n, coupling=coupling), group=ParticleGroup()
    )


def video_step(n: int) -> dict:
    """One step over ``n`` frames of a latent-set scene (the video application)."""
    from csd_nerf.media.latents import LatentSetScene

    guidance = _tiny()
    images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    scene = LatentSetScene(*guidance.encode_source(images))
    stats = _editor(guidance, n).step(scene)
    return {"grad": scene.parameter.grad.clone(), "ids": stats.ids, "timestep": stats.timestep}


def panorama_step(n: int) -> dict:
    """One step over ``n`` windows of a panorama canvas (overlaps averaged over every process's windows)."""
    from csd_nerf.media.panorama import PanoramaScene

    guidance = _tiny()
    image = torch.rand(1, 3, 48, 96, generator=torch.Generator().manual_seed(1))
    scene = PanoramaScene(*guidance.encode_source(image), window=4, stride=2)
    stats = _editor(guidance, n).step(scene)
    return {"grad": scene.canvas.grad.clone(), "ids": stats.ids}


def nerfacto_step(source: str, backprop: str, n: int) -> dict:
    """One step of the csd-edit scene (nerfacto) over ``n`` training views; the summed parameter gradients."""
    from nerf_fixtures import build_pipeline

    from csd_nerf.nerf.deferred import ViewRenderer
    from csd_nerf.nerf.scene import NerfScene
    from csd_nerf.nerf.views import TrainViews

    guidance = _tiny()
    pipeline = build_pipeline(Path(source))
    model = pipeline.model
    model.train()
    views = TrainViews(pipeline.datamanager.train_dataset, 16, guidance.latent_factor)
    scene = NerfScene(ViewRenderer(model, views.cameras, chunk=100), views, guidance, backprop, 0.5, seed=3)
    stats = _editor(guidance, n).step(scene)
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return {"grads": grads, "ids": stats.ids, "losses": stats.losses}


def splat_step(source: str, n: int) -> dict:
    """One step of the csd-edit-splat scene over ``n`` training views."""
    from nerf_fixtures import build_splat_pipeline

    from csd_nerf.nerf.splat_scene import SplatScene
    from csd_nerf.nerf.views import TrainViews

    guidance = _tiny()
    pipeline = build_splat_pipeline(Path(source))
    model = pipeline.model
    model.train()
    views = TrainViews(pipeline.datamanager.train_dataset, 16, guidance.latent_factor)
    scene = SplatScene(model, views, guidance, preservation_weight=0.5)
    stats = _editor(guidance, n).step(scene)
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return {"grads": grads, "ids": stats.ids}


def viewer_change(source: str) -> dict:
    """Rank 0's viewer sets a prompt, a scale and a region; every process applies what rank 0 has at the step."""
    from nerf_fixtures import build_pipeline

    from csd_nerf.editor import CSDEditConfig, CSDEditor
    from csd_nerf.nerf.region import Box

    pipeline = build_pipeline(Path(source))
    pipeline.editor = CSDEditor(_tiny(), CSDEditConfig(prompt="a"))
    pipeline.scene = type("Scene", (), {"set_region": lambda self, box, weight: setattr(self, "box", box)})()
    controls = pipeline.controls
    if dist.get_rank() == 0:  # only rank 0 has a viewer: the other processes' controls keep the start values
        controls.prompt.value = "Make it snowy"
        controls.guidance_scale.value = 10.0
        controls.region.enabled.value = True
        controls.region.center.value = (0.1, 0.2, 0.3)
    pipeline._apply_viewer_controls()
    box = getattr(pipeline.scene, "box", None)
    return {
        "prompt": pipeline.editor.config.prompt,
        "guidance_scale": pipeline.editor.config.guidance_scale,
        "box": isinstance(box, Box) and tuple(round(float(v), 3) for v in box.center),
    }


def environment() -> dict:
    """What a worker sees (the cache folder of the generated tiny models must reach it)."""
    return {"cache": os.environ.get("CSD_NERF_CACHE")}
