"""Bodies of the GPU tests (``tests/test_gpu.py``): each takes a device and sizes, so that the same code runs on a
CUDA GPU at real size (``pytest -m gpu``) and on a CPU at tiny size (the quick tests beside them).

Each body returns its figures; :func:`record` prints them and, when ``CSD_GPU_FIGURES`` names a file, appends them
as one JSON line there (``scripts/gpu_check.sh`` reads them back into its report).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from csd_nerf.guidance import GuidanceConfig, IP2PGuidance
from csd_nerf.guidance.presets import build_components

FIGURES_ENV = "CSD_GPU_FIGURES"


def record(test: str, figures: dict[str, Any]) -> dict[str, Any]:
    """Print ``figures`` and append them to ``$CSD_GPU_FIGURES`` (one JSON line, with the test's name)."""
    line = json.dumps({"test": test, **figures}, default=float)
    print(line)
    if os.environ.get(FIGURES_ENV):
        with open(os.environ[FIGURES_ENV], "a") as handle:
            handle.write(line + "\n")
    return figures


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(device: torch.device | str) -> float | None:
    device = torch.device(device)
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``[n, 3, size, size]`` smooth random pictures in ``[0, 1]`` (upsampled noise: image-like for a VAE)."""
    coarse = torch.rand(n, 3, max(2, size // 32), max(2, size // 32), generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def guidance_on(device: torch.device | str, preset: str, dtype: str) -> tuple[IP2PGuidance, Any]:
    """Random-weight IP2P of ``preset`` built directly on ``device``; also returns its components (float32 copies
    are taken from them before the guidance casts them to ``dtype``)."""
    try:
        with torch.device(device):  # seconds on a GPU, against a minute for the real UNet's CPU init and copy
            components = build_components(preset)
    except Exception as error:  # construction code that ignores the default device: build on the CPU
        print(f"note: building {preset} on {device} failed ({type(error).__name__}: {error}); using the CPU")
        components = build_components(preset)
    vae32 = copy.deepcopy(components.vae)
    guidance = IP2PGuidance(GuidanceConfig(model=f"random:{preset}", device=str(device), dtype=dtype), components)
    return guidance, vae32


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300))


# --- 1. our rasteriser against a reference (gsplat's CUDA kernel on a GPU) ------------------------------------------

SPLAT_PARAMS = ("means", "quats", "scales", "opacities", "colors")


def gaussian_scene(gaussians: int, cameras: int, width: int, height: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random Gaussians (SH degree 3) in front of pinhole cameras on a small arc, plus fixed loss weights (CPU)."""
    g = torch.Generator().manual_seed(seed)
    n = gaussians
    scene = {
        "means": (torch.rand(n, 3, generator=g) * 2 - 1) * torch.tensor([1.2, 0.9, 0.8]),
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.exp(torch.rand(n, 3, generator=g) * 2.5 - 4.5),
        "opacities": torch.rand(n, generator=g) * 0.9 + 0.05,
        "colors": torch.randn(n, 16, 3, generator=g) * 0.4,
    }
    views = []
    for i in range(cameras):
        angle = math.radians(12.0 * (i - (cameras - 1) / 2))
        view = torch.eye(4)
        view[:3, :3] = torch.tensor(
            [[math.cos(angle), 0.0, -math.sin(angle)], [0.0, 1.0, 0.0], [math.sin(angle), 0.0, math.cos(angle)]]
        )
        view[:3, 3] = torch.tensor([0.0, 0.0, 4.0])
        views.append(view)
    K = torch.tensor([[0.9 * width, 0.0, width / 2], [0.0, 0.9 * width, height / 2], [0.0, 0.0, 1.0]])
    scene["viewmats"] = torch.stack(views)
    scene["Ks"] = K.expand(cameras, 3, 3).clone()
    scene["w_colors"] = torch.rand(cameras, height, width, 3, generator=g)
    scene["w_alphas"] = torch.rand(cameras, height, width, 1, generator=g)
    return scene


def render_and_grads(
    rasterize: Callable[..., Any], scene: dict[str, torch.Tensor], width: int, height: int, device, dtype
) -> dict[str, torch.Tensor]:
    """Colours, alphas and the gradients of a fixed weighted sum of both (float64, CPU)."""
    t = {k: v.to(device, dtype) for k, v in scene.items()}
    leaves = {k: t[k].requires_grad_(True) for k in SPLAT_PARAMS}
    colors, alphas, _ = rasterize(
        **leaves, viewmats=t["viewmats"], Ks=t["Ks"], width=width, height=height, sh_degree=3, packed=False
    )
    loss = (colors * t["w_colors"]).sum() + (alphas * t["w_alphas"]).sum()
    grads = torch.autograd.grad(loss, [leaves[k] for k in SPLAT_PARAMS])
    out = {"colors": colors, "alphas": alphas, **{f"grad_{k}": g for k, g in zip(SPLAT_PARAMS, grads, strict=True)}}
    return {k: v.detach().double().cpu() for k, v in out.items()}


def compare_rasterizers(
    reference: Callable[..., Any],
    device,
    ref_dtype: torch.dtype,
    gaussians: int,
    cameras: int,
    width: int,
    height: int,
) -> dict[str, dict[str, float]]:
    """``csd_nerf.nerf.rasterize`` (float32, on ``device``) against ``reference`` (in ``ref_dtype``, same device):
    per output, the relative norm error, the largest absolute difference and the reference's largest value."""
    from csd_nerf.nerf.rasterize import rasterize

    scene = gaussian_scene(gaussians, cameras, width, height)
    ref = render_and_grads(reference, scene, width, height, device, ref_dtype)
    ours = render_and_grads(rasterize, scene, width, height, device, torch.float32)
    return {
        key: {
            "rel_err": relative_error(ours[key], expected),
            "max_abs_diff": float((ours[key] - expected).abs().max()),
            "ref_max_abs": float(expected.abs().max()),
        }
        for key, expected in ref.items()
    }


# --- 2. the float16 VAE's pixel gradient against float64 ------------------------------------------------------------


def vae_gradient_errors(
    device, preset: str, resolution: int, rms_values: Sequence[float] = (1e-4, 1e-5, 1e-6)
) -> dict[str, dict[str, dict[str, float]]]:
    """The pixel gradient of ``guidance.encode_images`` (float16 VAE) for latent gradients of RMS ``rms_values``,
    with the guidance's gradient scaling on and off, against a float64 copy of the same VAE.

    Returns ``{rms: {"scaled"|"unscaled": {rel_err, flushed_frac, nonfinite}}}``; ``flushed_frac`` is the fraction of
    pixel gradients that are exactly zero where the float64 one is not.
    """
    guidance, vae32 = guidance_on(device, preset, "float16")
    vae64 = vae32.to(device, torch.float64).eval().requires_grad_(False)
    images = smooth_images(1, resolution).to(device)
    latent = resolution // guidance.latent_factor
    direction = torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    direction = (direction / direction.square().mean().sqrt()).to(device)  # RMS 1

    # float64 reference: the pixel gradient is linear in the latent gradient, so one backward serves every RMS.
    x64 = images.double().requires_grad_(True)
    (vae64.encode(x64 * 2.0 - 1.0).latent_dist.mode() * guidance.scaling_factor).backward(direction)
    ref_unit = x64.grad

    results: dict[str, dict[str, dict[str, float]]] = {}
    for rms in rms_values:
        ref = ref_unit * rms
        row = {}
        for scaling in (True, False):
            guidance.gradient_scaling = scaling
            x = images.clone().requires_grad_(True)
            latents = guidance.encode_images(x)
            latents.backward((direction * rms).to(latents.dtype))
            grad = x.grad.double()
            finite = torch.isfinite(grad)
            row["scaled" if scaling else "unscaled"] = {
                "rel_err": relative_error(torch.where(finite, grad, torch.zeros_like(grad)), ref),
                "flushed_frac": float(((grad == 0) & (ref != 0)).double().mean()),
                "nonfinite": int((~finite).sum()),
            }
        results[f"{rms:g}"] = row
    guidance.gradient_scaling = True
    return results


# --- 3./4. one csd-edit step of a nerfacto or splat pipeline ----------------------------------------------------------


def synthetic_scene(folder: Path, size: int, views: int = 8) -> Path:
    from csd_nerf.testing.synthetic import SyntheticSceneConfig, make_synthetic_scene

    return Path(make_synthetic_scene(folder, SyntheticSceneConfig(num_views=views, width=size, height=size)))


def edit_pipeline(
    representation: str,
    scene: Path,
    device,
    *,
    resolution: int,
    particles: int,
    prior: str,
    dtype: str,
    implementation: str = "torch",
    backprop: str = "deferred",
    gaussians: int = 20_000,
    cpu_nerfacto: bool = False,
):
    """A csd-edit (nerfacto) or csd-edit-splat pipeline on ``scene``, randomly initialised, with a random-weight
    prior ``prior`` on ``device``, ready for ``edit_step`` (the set-up of ``scripts/bench_nerf.py``).

    Splats start from ``gaussians`` random Gaussians: reading the scene's point cloud would take nerfstudio's
    open3d import, which a GPU machine without nerfstudio's full dependencies lacks.
    """
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    torch.manual_seed(0)
    settings = {"prompt": "Turn it into a bronze statue", "num_particles": particles, "preview_every": 0}
    settings["render_resolution"] = resolution
    if representation == "splat":
        from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanagerConfig

        from csd_nerf.nerf.splat_model import CSDSplatModelConfig
        from csd_nerf.nerf.splat_pipeline import CSDSplatPipelineConfig

        parser = NerfstudioDataParserConfig(data=scene, load_3D_points=False)
        config = CSDSplatPipelineConfig(
            datamanager=FullImageDatamanagerConfig(dataparser=parser),
            model=CSDSplatModelConfig(num_random=gaussians, random_scale=2.0),
            **settings,
        )
    else:
        from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig

        from csd_nerf.nerf.model import CSDNerfactoModelConfig
        from csd_nerf.nerf.pipeline import CSDPipelineConfig
        from csd_nerf.testing.presets import CPU_NERFACTO_MODEL

        fields = CPU_NERFACTO_MODEL if cpu_nerfacto else {}
        config = CSDPipelineConfig(
            datamanager=VanillaDataManagerConfig(dataparser=NerfstudioDataParserConfig(data=scene)),
            model=CSDNerfactoModelConfig(implementation=implementation, **fields),
            backprop=backprop,
            **settings,
        )
    pipeline = config.setup(device=str(device), test_mode="val")
    guidance, _ = guidance_on(device, prior, dtype)
    pipeline.setup_editing(None, guidance)
    pipeline.train()
    return pipeline


def edit_steps(pipeline, steps: int = 1) -> dict[str, Any]:
    """Run ``steps`` edit steps (gradients cleared before each); the last step's metrics and gradient summary."""
    device = next(pipeline.model.parameters()).device
    metrics: dict[str, float] = {}
    seconds = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(steps):
        pipeline.model.zero_grad(set_to_none=True)
        sync(device)
        start = time.perf_counter()
        _, metrics = pipeline.edit_step(i)
        sync(device)
        seconds.append(time.perf_counter() - start)
    grads = [p.grad for p in pipeline.model.parameters() if p.requires_grad and p.grad is not None]
    return {
        "step_s": [round(s, 3) for s in seconds],
        "metrics": {k: float(v) for k, v in metrics.items()},
        "params_with_grad": len(grads),
        "grads_finite": all(bool(torch.isfinite(g).all()) for g in grads),
        "grad_norm": float(torch.stack([g.double().norm() for g in grads]).norm()) if grads else 0.0,
        "mode": getattr(pipeline.scene, "mode", None),
        "peak_mb": peak_mb(device),
        "peak_note": "largest memory allocated during the steps, the prior's weights included",
    }


# --- 5. one CSD-Edit step of IP2P through its VAE -------------------------------------------------------------------


class ImageScene:
    """``n`` images in pixel space, seen through the prior's VAE: the step's gradient crosses UNet and VAE."""

    def __init__(self, images: torch.Tensor, guidance: IP2PGuidance) -> None:
        self.guidance = guidance
        self.num_views = images.shape[0]
        self.source_latents, self.conditioning = guidance.encode_source(images)
        self.images = torch.nn.Parameter(images.clone())

    def sources(self, views: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.source_latents[list(views)], self.conditioning[list(views)]

    def latents(self, views: Sequence[int]) -> torch.Tensor:
        return self.guidance.encode_images(self.images[list(views)])

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.images]


def ip2p_step(device, preset: str, dtype: str, resolution: int, particles: int) -> dict[str, Any]:
    """One CSD-Edit step on ``particles`` images of ``resolution`` px with the random-weight IP2P ``preset``."""
    from csd_nerf.editor import CSDEditConfig, CSDEditor

    guidance, _ = guidance_on(device, preset, dtype)
    scene = ImageScene(smooth_images(particles, resolution).to(device), guidance)
    editor = CSDEditor(guidance, CSDEditConfig(prompt="Turn it into a painting", num_particles=particles))
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    stats = editor.step(scene, list(range(particles)))
    sync(device)
    grad = scene.images.grad
    return {
        "step_s": round(time.perf_counter() - start, 3),
        "unet_s": round(stats.unet_seconds, 3),
        "unet_evals_per_particle": stats.unet_samples / particles,
        "skipped": stats.skipped,
        "grad_finite": grad is not None and bool(torch.isfinite(grad).all()),
        "grad_norm": float(grad.double().norm()) if grad is not None else 0.0,
        "peak_mb": peak_mb(device),
    }
