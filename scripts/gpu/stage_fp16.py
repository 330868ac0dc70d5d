"""Stage ``fp16``: the pixel gradient through the VAE encoder in float16 against a float64 reference, on one view.

The 3D pipeline carries the CSD gradient from the latents to the pixels through ``guidance.encode_images`` (the VAE
encoder's ``mode() * scaling``), in the prior's dtype. Variants, each at several latent-gradient scales:

- ``fp16``: the library's path as it ships (``IP2PGuidance.encode_images`` in float16);
- ``fp16_scaled``: the same, with the latent gradient scaled by a power of two that brings its largest entry near
  ``2**10`` before the backward and the pixel gradient unscaled after it, in float32 (halved on overflow);
- ``fp32``: a float32 copy of the encoder for the backward (TF32 convolutions allowed, torch's CUDA default);
- ``fp32_strict``: the same with TF32 off.

Figures per variant and scale: relative norm error and cosine to float64, fraction of pixel gradients that are
exactly zero where the reference is not (flushed to zero), non-finite count; and each variant's time per view.
The goal: relative norm error <= 1 %, nothing flushed, over the scales CSD-Edit produces (``goal_scales``).
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
import time
from pathlib import Path

from stagekit import Skip, StageContext

SCRIPTS = Path(__file__).resolve().parents[1]
TARGET_MAX = 2.0**10
"""Largest latent-gradient entry after scaling: far from float16's 65504, far above its 6e-5 normal floor."""


def synthetic_view(size: int, work: Path):
    """One view of the demo's ray-traced synthetic scene, ``[1, 3, size, size]`` in ``[0, 1]``."""
    import numpy as np
    import torch
    from PIL import Image

    from csd_nerf.testing.synthetic import SyntheticSceneConfig, make_synthetic_scene

    folder = make_synthetic_scene(work / "view", SyntheticSceneConfig(num_views=2, width=size, height=size))
    image = sorted(Path(folder).glob("images/*.png"))[0]
    pixels = np.asarray(Image.open(image).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()


def power_of_two_scale(grad, target: float = TARGET_MAX) -> float:
    """``2**k`` that brings ``max |grad|`` to at most ``target`` (exact to undo in float32)."""
    peak = float(grad.abs().max())
    return 1.0 if peak == 0 else 2.0 ** math.floor(math.log2(target / peak))


def pixel_grad(encode, image, latent_grad, scale: float = 1.0):
    """``d <z, latent_grad> / d image`` through ``encode``, the latent gradient scaled by ``scale`` (then unscaled)."""
    x = image.clone().requires_grad_(True)
    z = encode(x)
    z.backward(latent_grad.to(z.dtype) * scale)
    return x.grad.double() / scale


def compare(grad, ref) -> dict:
    import torch

    finite = torch.isfinite(grad)
    g = torch.where(finite, grad, torch.zeros_like(grad))
    rel = float((g - ref).norm() / ref.norm())
    cos = float(torch.nn.functional.cosine_similarity(g.flatten(), ref.flatten(), dim=0))
    return {
        "rel_err": round(rel, 6),
        "cosine": round(cos, 7),
        "flushed_frac": round(float(((grad == 0) & (ref != 0)).double().mean()), 6),
        "zero_frac": round(float((grad == 0).double().mean()), 6),
        "nonfinite": int((~finite).sum()),
    }


def run(ctx: StageContext) -> None:
    p = ctx.params
    sys.path.insert(0, str(SCRIPTS))
    import torch
    from bench_step import build_on_device

    from csd_nerf.guidance import GuidanceConfig, IP2PGuidance

    device = torch.device(p["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Skip("no CUDA device visible")
    components, built_on = build_on_device(p["preset"], p["device"])
    vae64 = copy.deepcopy(components.vae).to(device, torch.float64).eval().requires_grad_(False)
    vae32 = copy.deepcopy(components.vae).to(device, torch.float32).eval().requires_grad_(False)
    guidance = IP2PGuidance(
        GuidanceConfig(model=f"random:{p['preset']}", device=p["device"], dtype=p["dtype"]), components
    )
    scaling = guidance.scaling_factor
    image = synthetic_view(p["resolution"], ctx.work).to(device)

    def direct(vae, dtype):
        # The formula of IP2PGuidance.encode_images, for dtypes the guidance does not take (float64 reference).
        return lambda x: vae.encode((x * 2.0 - 1.0).to(dtype)).latent_dist.mode().double() * scaling

    def scaled_fp16(x_image, latent_grad):
        scale = power_of_two_scale(latent_grad)
        for _ in range(8):  # like a GradScaler: halve the scale until nothing overflows
            grad = pixel_grad(guidance.encode_images, x_image, latent_grad, scale)
            if torch.isfinite(grad).all():
                return grad, scale
            scale /= 2.0
        return grad, scale

    tf32 = torch.backends.cudnn.allow_tf32
    ctx.figures.update(
        preset=p["preset"],
        device=p["device"],
        dtype=p["dtype"],
        resolution=p["resolution"],
        built_on=built_on,
        cudnn_allow_tf32_default=tf32,
        goal_scales=p["goal_scales"],
        goal="relative norm error <= 1 % and no flush to zero at every goal scale",
    )
    generator = torch.Generator().manual_seed(0)
    latent_shape = (1, 4, p["resolution"] // 8, p["resolution"] // 8)
    direction = torch.randn(latent_shape, generator=generator, dtype=torch.float64).to(device)
    with torch.no_grad():
        z64 = direct(vae64, torch.float64)(image)
        z16 = guidance.encode_images(image).double()
    ctx.figures["latent_forward_rel_err_fp16"] = round(float((z16 - z64).norm() / z64.norm()), 6)

    results: dict[str, dict] = {}
    ctx.figures["sweep"] = results
    for rms in p["scales"]:
        with ctx.part(f"rms={rms:g}"):
            latent_grad = direction * rms
            ref = pixel_grad(direct(vae64, torch.float64), image, latent_grad)
            row = {"ref_pixel_grad_max": float(ref.abs().max()), "ref_pixel_grad_mean": float(ref.abs().mean())}
            row["fp16"] = compare(pixel_grad(guidance.encode_images, image, latent_grad.float()), ref)
            grad, scale = scaled_fp16(image, latent_grad.float())
            row["fp16_scaled"] = {**compare(grad, ref), "scale": scale}
            row["fp32"] = compare(pixel_grad(direct(vae32, torch.float32), image, latent_grad.float()), ref)
            torch.backends.cudnn.allow_tf32 = False
            try:
                row["fp32_strict"] = compare(pixel_grad(direct(vae32, torch.float32), image, latent_grad.float()), ref)
            finally:
                torch.backends.cudnn.allow_tf32 = tf32
            results[f"{rms:g}"] = row
    ctx.figures["verdict"] = verdict(results, p["goal_scales"])

    with ctx.part("timing") as fig:
        latent_grad = (direction * 1e-2).float()
        fig["ms_per_view"] = time_variants(guidance, vae32, image, latent_grad, direct, scaled_fp16, p["repeats"])
        if device.type == "cuda":
            fig["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def verdict(results: dict[str, dict], goal_scales: list[float]) -> dict:
    """Per variant: worst relative error and flushed fraction over the goal scales, and whether the goal holds."""
    out = {}
    for variant in ("fp16", "fp16_scaled", "fp32", "fp32_strict"):
        rows = [results[f"{s:g}"][variant] for s in goal_scales if f"{s:g}" in results]
        if not rows:
            continue
        worst = max(r["rel_err"] for r in rows)
        flushed = max(r["flushed_frac"] for r in rows)
        bad = sum(r["nonfinite"] for r in rows)
        out[variant] = {
            "worst_rel_err": worst,
            "worst_flushed_frac": flushed,
            "meets_goal": worst <= 0.01 and flushed == 0 and bad == 0,
        }
    return out


def time_variants(guidance, vae32, image, latent_grad, direct, scaled_fp16, repeats: int) -> dict[str, float]:
    """Median milliseconds of one view's encode + backward per variant (after one untimed call)."""
    import torch

    def timed(fn) -> float:
        times = []
        for i in range(repeats + 1):
            if image.is_cuda:
                torch.cuda.synchronize(image.device)
            start = time.perf_counter()
            fn()
            if image.is_cuda:
                torch.cuda.synchronize(image.device)
            if i:
                times.append(1e3 * (time.perf_counter() - start))
        return round(statistics.median(times), 3)

    tf32 = torch.backends.cudnn.allow_tf32
    out = {
        "fp16": timed(lambda: pixel_grad(guidance.encode_images, image, latent_grad)),
        "fp16_scaled": timed(lambda: scaled_fp16(image, latent_grad)),
        "fp32": timed(lambda: pixel_grad(direct(vae32, torch.float32), image, latent_grad)),
    }
    torch.backends.cudnn.allow_tf32 = False
    try:
        out["fp32_strict"] = timed(lambda: pixel_grad(direct(vae32, torch.float32), image, latent_grad))
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    return out
