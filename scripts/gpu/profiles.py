"""Sizes and time boxes of the check's stages: ``gpu`` (the real check), ``rehearse`` (the same stages at tiny sizes
on a CPU) and ``smoke`` (the rehearsal's fastest parts, for the test suite).

Each stage has ``cap_s`` (its time box) and ``floor_s`` (time kept free for it while earlier stages run): a stage
gets at most its cap and never eats into the floors of the stages after it; one that cannot get its floor is
skipped. ``deadline_s`` bounds the whole check, setup included.
"""

from __future__ import annotations

import copy

# Stage order: splat runs last so that gsplat's JIT build, started in the background during setup, has the longest
# time to finish before the stage needs it.
ORDER = ("core", "fp16", "2d", "nerf", "splat")

_GPU_SCALES = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5]
# CSD-Edit's latent gradient is w(t)/N (sum_j K_ij d_j - r_i): w(t) = 1 - a_t is 0.02..0.72 for t in 20..500, N = 4,
# residual entries ~0.02..1, so its RMS spans about 1e-4 .. 2e-1.
_GOAL_SCALES = [1e-1, 1e-2, 1e-3, 1e-4]

GPU = {
    "deadline_s": 465,
    "stages": {
        "core": {
            "cap_s": 150,
            "floor_s": 45,
            "preset": "ip2p",
            "device": "cuda",
            "dtype": "float16",
            "resolution": 512,
            "particles": [1, 2, 4, 8],
            "steps": 5,
            "warmup": 2,
            "min_s_per_n": 5,
            "variant_particles": 4,
            "variants": ["classic_attention", "sdpa_cudnn", "channels_last", "compile", "channels_last+compile"],
            "variant_min_s": 10,
            "compile_min_s": 75,
        },
        "fp16": {
            "cap_s": 60,
            "floor_s": 30,
            "preset": "ip2p",
            "device": "cuda",
            "dtype": "float16",
            "resolution": 512,
            "scales": _GPU_SCALES,
            "goal_scales": _GOAL_SCALES,
            "repeats": 5,
        },
        "2d": {
            "cap_s": 90,
            "floor_s": 45,
            "args": "--device cuda --steps 5 --warmup 1".split(),
        },
        "nerf": {
            "cap_s": 180,
            "floor_s": 60,
            "args": "--preset gpu --resolutions 256 512 --particles 4 --steps 2 --warmup 1".split(),
            "projection_steps": 2000,
            "memory_goal_mb": 12 * 1024,
        },
        "splat": {
            "cap_s": 120,
            "floor_s": 40,
            "device": "cuda",
            "gaussians": 10000,
            "cameras": 2,
            "width": 256,
            "height": 192,
            "reference": "gsplat",
            "edit_args": "--preset gpu --representation splat --resolutions 512 --particles 4 --steps 5 --warmup 2".split(),
            "projection_steps": 2000,
            "time_goal_s": 240,
            "memory_goal_mb": 12 * 1024,
        },
    },
}

REHEARSE = {
    "deadline_s": 900,
    "stages": {
        "core": {
            **GPU["stages"]["core"],
            "cap_s": 240,
            "floor_s": 30,
            "preset": "tiny",
            "device": "cpu",
            "dtype": "float32",
            "resolution": 64,
            "particles": [1, 2],
            "steps": 2,
            "warmup": 1,
            "variant_particles": 2,
            "variants": ["classic_attention", "channels_last", "compile"],
            "compile_min_s": 60,
        },
        "fp16": {
            **GPU["stages"]["fp16"],
            "cap_s": 120,
            "floor_s": 30,
            "preset": "tiny",
            "device": "cpu",
            "resolution": 64,
            "repeats": 2,
        },
        "2d": {
            "cap_s": 180,
            "floor_s": 30,
            "args": "--preset tiny --panorama-size 256x64 --frames 3 --frame-size 64 --steps 1 --warmup 0".split(),
        },
        "nerf": {
            **GPU["stages"]["nerf"],
            "cap_s": 300,
            "floor_s": 60,
            "args": "--preset cpu --resolutions 32 --particles 2 --steps 1 --warmup 1".split(),
        },
        "splat": {
            **GPU["stages"]["splat"],
            "cap_s": 240,
            "floor_s": 30,
            "device": "cpu",
            "gaussians": 300,
            "width": 48,
            "height": 32,
            "reference": "float64",
            "edit_args": "--preset cpu --representation splat --resolutions 32 --particles 2 --steps 1 --warmup 1".split(),
        },
    },
}

SMOKE = copy.deepcopy(REHEARSE)
SMOKE["deadline_s"] = 120
SMOKE["stages"]["core"].update(particles=[1], steps=1, warmup=0, variants=["channels_last"], variant_particles=1)
SMOKE["stages"]["fp16"].update(resolution=32, scales=[1e-2, 1e-4], goal_scales=[1e-2], repeats=1)

PROFILES = {"gpu": GPU, "rehearse": REHEARSE, "smoke": SMOKE}


def plan_timeout(name: str, profile: dict, stages: list[str], time_left: float) -> float:
    """Seconds stage ``name`` may run: its cap, less the floors of the stages after it in ``stages``."""
    later = stages[stages.index(name) + 1 :]
    reserved = sum(profile["stages"][s]["floor_s"] for s in later)
    return min(profile["stages"][name]["cap_s"], time_left - reserved)
