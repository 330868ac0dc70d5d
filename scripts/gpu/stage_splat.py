"""Stage ``splat``: gsplat's JIT build, our CPU rasteriser against gsplat's CUDA one, and the splat edit step.

Parts (each may be skipped or fail without stopping the next):

- ``gsplat_build``: the first-use CUDA compile, started in the background at setup (``gsplat_build.py``); this part
  waits for it and reports its time, or its error;
- ``compare``: the same Gaussians (SH degree 3, two cameras) through ``csd_nerf.nerf.rasterize.rasterize`` on the
  CPU and through the reference (gsplat's CUDA ``rasterization``; in the rehearsal our own rasteriser in float64):
  max abs difference of colours and alphas, and of the gradients of a fixed weighted sum of both;
- ``edit_step``: ``bench_nerf.py --representation splat`` (once ``csd-edit-splat`` exists), projected to a whole edit.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import subbench
from stage_nerf import project, run_bench_nerf
from stagekit import Skip, StageContext

PARAMS = ("means", "quats", "scales", "opacities", "colors")


def wait_for_build(record: Path, ctx: StageContext, margin_s: float = 30.0) -> dict:
    """The background build's record, waiting for it while more than ``margin_s`` of the stage is left."""
    while not record.is_file():
        if ctx.time_left() < margin_s:
            raise RuntimeError(f"gsplat's JIT build had not finished when the stage had {margin_s:.0f} s left")
        time.sleep(2.0)
    return json.loads(record.read_text())


def make_scene(p: dict, device: str, dtype):
    """Random Gaussians in front of ``cameras`` pinhole cameras on a small arc, as gsplat's arguments."""
    import torch

    g = torch.Generator().manual_seed(0)
    n, cams, w, h = p["gaussians"], p["cameras"], p["width"], p["height"]
    scene = {
        "means": (torch.rand(n, 3, generator=g) * 2 - 1) * torch.tensor([1.2, 0.9, 0.8]),
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.exp(torch.rand(n, 3, generator=g) * 2.5 - 4.5),
        "opacities": torch.rand(n, generator=g) * 0.9 + 0.05,
        "colors": torch.randn(n, 16, 3, generator=g) * 0.4,
    }
    viewmats = []
    for i in range(cams):
        angle = math.radians(12.0 * (i - (cams - 1) / 2))
        c, s = math.cos(angle), math.sin(angle)
        rotation = torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
        view = torch.eye(4)
        view[:3, :3] = rotation
        view[:3, 3] = torch.tensor([0.0, 0.0, 4.0])
        viewmats.append(view)
    focal = 0.9 * w
    K = torch.tensor([[focal, 0.0, w / 2], [0.0, focal, h / 2], [0.0, 0.0, 1.0]])
    fixed = {"viewmats": torch.stack(viewmats), "Ks": K.expand(cams, 3, 3).clone()}
    weights = {"colors": torch.rand(cams, h, w, 3, generator=g), "alphas": torch.rand(cams, h, w, 1, generator=g)}
    cast = {k: v.to(device, dtype).requires_grad_(True) for k, v in scene.items()}
    return (
        cast,
        {k: v.to(device, dtype) for k, v in fixed.items()},
        {k: v.to(device, dtype) for k, v in weights.items()},
    )


def render_and_grad(fn, p: dict, device: str, dtype) -> dict:
    """Forward + backward of a fixed weighted sum of colours and alphas; outputs, gradients (CPU, float64), ms."""
    import torch

    leaves, fixed, weights = make_scene(p, device, dtype)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    colors, alphas, _ = fn(
        **leaves, **fixed, width=p["width"], height=p["height"], sh_degree=3, packed=False, rasterize_mode="classic"
    )
    loss = (colors * weights["colors"]).sum() + (alphas * weights["alphas"]).sum()
    grads = torch.autograd.grad(loss, [leaves[k] for k in PARAMS])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    ms = 1e3 * (time.perf_counter() - start)
    out = {"colors": colors, "alphas": alphas, **{f"grad_{k}": g for k, g in zip(PARAMS, grads, strict=True)}}
    return {"tensors": {k: v.detach().double().cpu() for k, v in out.items()}, "ms": round(ms, 2)}


def differences(ours: dict, ref: dict) -> dict:
    """Max abs difference and relative norm error per tensor."""
    result = {}
    for key, expected in ref.items():
        got = ours[key]
        denom = float(expected.norm()) or 1.0
        result[key] = {
            "max_abs_diff": float((got - expected).abs().max()),
            "rel_err": round(float((got - expected).norm()) / denom, 8),
            "ref_max_abs": float(expected.abs().max()),
        }
    return result


def compare(p: dict, fig: dict) -> None:
    import torch

    from csd_nerf.nerf.rasterize import rasterize

    if p["reference"] == "gsplat":
        from gsplat.rendering import rasterization

        start = time.perf_counter()
        render_and_grad(rasterization, p, p["device"], torch.float32)  # the first call loads the built extension
        fig["gsplat_first_call_s"] = round(time.perf_counter() - start, 2)
        ref = render_and_grad(rasterization, p, p["device"], torch.float32)
        fig["reference"] = "gsplat.rendering.rasterization (CUDA, float32)"
    else:
        ref = render_and_grad(rasterize, p, "cpu", torch.float64)
        fig["reference"] = "csd_nerf.nerf.rasterize in float64 (no gsplat CUDA here: a rehearsal of the comparison)"
    ours = render_and_grad(rasterize, p, "cpu", torch.float32)
    fig.update(
        gaussians=p["gaussians"],
        cameras=p["cameras"],
        size=f"{p['width']}x{p['height']}",
        ours_cpu_ms=ours["ms"],
        reference_ms=ref["ms"],
    )
    fig["diff"] = differences(ours["tensors"], ref["tensors"])
    if p["reference"] == "gsplat":  # our rasteriser is plain torch: it should also run on the GPU
        try:
            on_gpu = render_and_grad(rasterize, p, p["device"], torch.float32)
        except Exception as error:  # an extra, never the comparison's verdict
            fig["ours_on_cuda_error"] = f"{type(error).__name__}: {error}"[:300]
        else:
            fig["ours_on_cuda_ms"] = on_gpu["ms"]
            diff = differences(on_gpu["tensors"], ref["tensors"])
            fig["ours_on_cuda_diff"] = {k: v["max_abs_diff"] for k, v in diff.items()}


def run(ctx: StageContext) -> None:
    p = ctx.params
    if importlib.util.find_spec("csd_nerf.nerf.rasterize") is None:
        raise Skip("csd_nerf.nerf.rasterize does not exist yet")
    with ctx.part("gsplat_build") as fig:
        if not p.get("build_record"):
            raise Skip(p.get("build_skip_reason", "no gsplat build was started"))
        build = wait_for_build(Path(p["build_record"]), ctx)
        fig.update(build)
        if not build.get("ok"):
            raise RuntimeError(f"gsplat's JIT build failed: {build.get('error', '?')}")
    built = ctx.parts["gsplat_build"]["status"] == "ok"
    with ctx.part("compare") as fig:
        if p["reference"] == "gsplat" and not built:
            raise Skip("needs gsplat's CUDA build")
        compare(p, fig)
    with ctx.part("edit_step") as fig:
        if "--representation" not in subbench.supported_flags("bench_nerf.py"):
            raise Skip("bench_nerf.py has no --representation flag yet (csd-edit-splat is not there)")
        if p["reference"] == "gsplat" and not built:
            raise Skip("needs gsplat's CUDA build")
        result = run_bench_nerf(ctx, p["edit_args"], "bench_splat")
        fig.update({k: v for k, v in result.items() if k != "rows"})
        ctx.figures["rows"] = result["rows"]
        projection = project(result["rows"], p["projection_steps"], p["memory_goal_mb"])
        for row in projection:
            row["time_goal_met"] = row[f"projected_{p['projection_steps']}_steps_min"] * 60 <= p["time_goal_s"]
        ctx.figures["projection"] = projection
