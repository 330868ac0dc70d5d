"""A small synthetic scene in nerfstudio format, ray-traced analytically (numpy only, no download).

The scene is a few coloured, shaded primitives (a striped sphere, a small sphere, a box) on a checkered
disc, seen from cameras on two rings around it, in front of a sky-like gradient. It is big enough for
nerfacto to learn something recognisable in a few hundred CPU steps and small enough for tests.

The ``edited`` layout is the same capture (same cameras, same file names) with the small sphere moved, enlarged
and recoloured and the box recoloured: the target of the known-answer edit (``scripts/bench_convergence.py``).
The ``local`` layout changes only the ball (as ``edited`` does): the target of a local edit restricted to
:data:`LOCAL_REGION`.

    python -m csd_nerf.testing.synthetic data/synthetic --num-views 24 --size 64 [--layout edited]
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "SceneLayout",
    "LAYOUTS",
    "LOCAL_REGION",
    "SyntheticSceneConfig",
    "make_synthetic_scene",
    "make_scene_pair",
    "make_scene_triple",
    "look_at",
]

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class SceneLayout:
    """Where the primitives are and what colour they have (apart: no primitive touches another)."""

    big_centre: Vec3 = (0.0, 0.0, 0.55)
    big_radius: float = 0.55
    stripe_colours: tuple[Vec3, Vec3] = ((0.85, 0.25, 0.2), (0.95, 0.8, 0.3))
    small_centre: Vec3 = (0.85, 0.7, 0.3)
    small_radius: float = 0.3
    small_colour: Vec3 = (0.2, 0.7, 0.35)
    box_lo: Vec3 = (-1.05, -0.2, 0.0)
    box_hi: Vec3 = (-0.65, 0.2, 0.6)
    box_colour: Vec3 = (0.25, 0.4, 0.9)


LAYOUTS = {
    "source": SceneLayout(),
    # The striped ball turned blue and white, the small green sphere moved, enlarged and turned magenta, the blue
    # box turned orange: an edit that changes much of every view, so a NeRF fit of CPU quality can show it.
    "edited": SceneLayout(
        stripe_colours=((0.15, 0.3, 0.85), (0.92, 0.92, 0.95)),
        small_centre=(0.85, -0.6, 0.38),
        small_radius=0.38,
        small_colour=(0.85, 0.25, 0.75),
        box_colour=(0.95, 0.55, 0.1),
    ),
    # The local target: the source with only the ball changed as in "edited" (blue and white stripes). An edit
    # toward "edited" restricted to LOCAL_REGION should reach this, leaving the rest as the source.
    "local": SceneLayout(stripe_colours=((0.15, 0.3, 0.85), (0.92, 0.92, 0.95))),
}
LOCAL_REGION = ((0.0, 0.0, 0.55), (0.57, 0.57, 0.57))
"""An axis-aligned box (centre, half-sizes) in the dataset's coordinates (its ``transforms.json``) around the
object the "local" layout changes, the ball, with 2 cm to spare. Nothing else that "edited" changes is in it
(the small sphere, where it is and where it goes, and the box stay outside); the ground under the ball is, and
"edited" leaves it as it is."""


@dataclass(frozen=True)
class SyntheticSceneConfig:
    """Geometry of the generated capture."""

    num_views: int = 24
    width: int = 64
    height: int = 64
    fov_degrees: float = 45.0
    radius: float = 3.2
    elevations_degrees: tuple[float, ...] = (20.0, 45.0)
    seed: int = 0
    layout: str = "source"
    """A key of :data:`LAYOUTS`."""
    num_points: int = 3000
    """Surface points written to ``sparse_pc.ply`` (what COLMAP gives a real capture; splatfacto starts from it)."""


CENTRE = np.array([0.0, 0.0, 0.3])
"""What the cameras look at."""
SKY_RADIUS = 3.0
"""Radius of the sky's backdrop points in ``sparse_pc.ply``, in camera-orbit radii."""


def look_at(position: np.ndarray, target: np.ndarray, world_up: np.ndarray | None = None) -> np.ndarray:
    """OpenGL/nerfstudio camera-to-world matrix (camera looks along -z, y up) placed at ``position``."""
    world_up = np.array([0.0, 0.0, 1.0]) if world_up is None else world_up
    forward = target - position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, world_up)
    right = right / np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, position
    return c2w


def _sphere_hits(origins: np.ndarray, dirs: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Distance to the first hit of unit-direction rays with a sphere (inf where missed)."""
    oc = origins - centre
    b = np.einsum("ij,ij->i", oc, dirs)
    c = np.einsum("ij,ij->i", oc, oc) - radius**2
    disc = b * b - c
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    return np.where((disc > 0) & (t > 1e-4), t, np.inf)


def _backdrop_hits(origins: np.ndarray, dirs: np.ndarray, radius: float) -> np.ndarray:
    """Where rays from inside leave the sphere of ``radius`` around the scene's centre."""
    oc = origins - CENTRE
    b = np.einsum("ij,ij->i", oc, dirs)
    t = -b + np.sqrt(b * b - np.einsum("ij,ij->i", oc, oc) + radius**2)
    return origins + t[:, None] * dirs


def _box_hits(origins: np.ndarray, dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab test: distance to an axis-aligned box and the outward normal at the hit."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs
        t0, t1 = (lo - origins) * inv, (hi - origins) * inv
    tmin, tmax = np.minimum(t0, t1), np.maximum(t0, t1)
    t_near, t_far = tmin.max(axis=1), tmax.min(axis=1)
    hit = (t_near <= t_far) & (t_near > 1e-4)
    axis = tmin.argmax(axis=1)
    normals = np.zeros_like(dirs)
    normals[np.arange(len(dirs)), axis] = -np.sign(dirs[np.arange(len(dirs)), axis])
    return np.where(hit, t_near, np.inf), normals


def _shade_rays(origins: np.ndarray, dirs: np.ndarray, layout: SceneLayout) -> tuple[np.ndarray, np.ndarray]:
    """Colour of each ray (the nearest primitive with Lambert shading, else the sky gradient) and its hit
    distance (inf for the sky)."""
    n = len(dirs)
    light = np.array([0.4, -0.3, 0.85])
    light = light / np.linalg.norm(light)

    big_c, small_c = np.array(layout.big_centre), np.array(layout.small_centre)
    box_lo, box_hi = np.array(layout.box_lo), np.array(layout.box_hi)
    t_big = _sphere_hits(origins, dirs, big_c, layout.big_radius)
    t_small = _sphere_hits(origins, dirs, small_c, layout.small_radius)
    t_box, box_normals = _box_hits(origins, dirs, box_lo, box_hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(dirs[:, 2] < -1e-6, -origins[:, 2] / dirs[:, 2], np.inf)
    floor_pts = origins + np.where(np.isfinite(t_floor), t_floor, 0.0)[:, None] * dirs
    t_floor = np.where(np.linalg.norm(floor_pts[:, :2], axis=1) < 1.4, t_floor, np.inf)

    ts = np.stack([t_big, t_small, t_box, t_floor], axis=1)
    which, t_hit = ts.argmin(axis=1), ts.min(axis=1)
    points = origins + np.where(np.isfinite(t_hit), t_hit, 0.0)[:, None] * dirs

    normals = np.zeros((n, 3))
    albedo = np.zeros((n, 3))
    m = which == 0
    normals[m] = (points[m] - big_c) / layout.big_radius
    stripes = (np.floor((np.arctan2(normals[m, 1], normals[m, 0]) + math.pi) / (math.pi / 4)) % 2)[:, None]
    albedo[m] = np.where(stripes > 0, layout.stripe_colours[0], layout.stripe_colours[1])
    m = which == 1
    normals[m] = (points[m] - small_c) / layout.small_radius
    albedo[m] = layout.small_colour
    m = which == 2
    normals[m] = box_normals[m]
    albedo[m] = layout.box_colour
    m = which == 3
    normals[m] = [0.0, 0.0, 1.0]
    # Squares of 0.5 units: a few pixels wide in a 32-64 px view, so a CPU-sized NeRF can fit the floor.
    checker = ((np.floor(points[m, 0] * 2) + np.floor(points[m, 1] * 2)) % 2)[:, None]
    albedo[m] = np.where(checker > 0, [0.75, 0.75, 0.72], [0.35, 0.33, 0.3])

    lambert = np.clip(np.einsum("ij,j->i", normals, light), 0.0, 1.0)[:, None]
    colour = albedo * (0.3 + 0.7 * lambert)
    sky = np.clip(dirs[:, 2:3], -1.0, 1.0) * 0.5 + 0.5
    background = (1 - sky) * np.array([0.85, 0.85, 0.9]) + sky * np.array([0.35, 0.55, 0.85])
    return np.where(np.isfinite(t_hit)[:, None], colour, background).clip(0.0, 1.0), t_hit


def _camera_positions(config: SyntheticSceneConfig) -> list[np.ndarray]:
    """Cameras ring after ring, azimuth increasing along each ring, so consecutive views are neighbours
    (``ns-render interpolate`` over them gives a smooth orbit)."""
    rings = len(config.elevations_degrees)
    per_ring = [config.num_views // rings + (1 if r < config.num_views % rings else 0) for r in range(rings)]
    positions = []
    for ring, count in enumerate(per_ring):
        elevation = math.radians(config.elevations_degrees[ring])
        for k in range(count):
            azimuth = 2 * math.pi * k / count + ring * math.pi / count
            direction = [
                math.cos(elevation) * math.cos(azimuth),
                math.cos(elevation) * math.sin(azimuth),
                math.sin(elevation),
            ]
            positions.append(config.radius * np.array(direction) + CENTRE)
    return positions


def make_synthetic_scene(output_dir: Path, config: SyntheticSceneConfig | None = None) -> Path:
    """Write ``transforms.json`` and ``images/*.png`` of the synthetic scene to ``output_dir``.

    Returns the folder, which is ready for ``ns-train ... --data <folder>``.
    """
    config = config or SyntheticSceneConfig()
    if config.num_views < 2 or config.width < 8 or config.height < 8:
        raise ValueError("the synthetic scene needs at least 2 views of at least 8x8 pixels")
    if config.layout not in LAYOUTS:
        raise ValueError(f"unknown layout {config.layout!r}: use one of {', '.join(LAYOUTS)}")
    output_dir = Path(output_dir)
    (output_dir / "images").mkdir(parents=True, exist_ok=True)
    w, h = config.width, config.height
    focal = 0.5 * w / math.tan(math.radians(config.fov_degrees) / 2)
    cx, cy = w / 2, h / 2
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    cam_dirs = np.stack([(u - cx) / focal, -(v - cy) / focal, -np.ones_like(u)], axis=-1).reshape(-1, 3)

    frames = []
    rng = np.random.default_rng(config.seed)
    points, colours = [], []
    per_view = -(-config.num_points // config.num_views)
    for i, position in enumerate(_camera_positions(config)):
        c2w = look_at(position, CENTRE)
        dirs = cam_dirs @ c2w[:3, :3].T
        dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
        origins = np.broadcast_to(c2w[:3, 3], dirs.shape)
        shaded, t_hit = _shade_rays(origins, dirs, LAYOUTS[config.layout])
        name = f"images/frame_{i:05d}.png"
        Image.fromarray((shaded.reshape(h, w, 3) * 255 + 0.5).astype(np.uint8)).save(output_dir / name)
        frames.append({"file_path": name, "transform_matrix": c2w.tolist()})
        hits = np.flatnonzero(np.isfinite(t_hit))
        picked = rng.choice(hits, size=min(per_view, len(hits)), replace=False)
        points.append(origins[picked] + t_hit[picked, None] * dirs[picked])
        colours.append(shaded[picked])
        # The sky as a distant backdrop: without points there, splatfacto has nothing to grow it from and
        # renders its background colour instead (COLMAP likewise finds points on a real capture's far walls).
        sky_rays = np.flatnonzero(~np.isfinite(t_hit))
        sky = rng.choice(sky_rays, size=min(per_view // 2, len(sky_rays)), replace=False)
        points.append(_backdrop_hits(origins[sky], dirs[sky], SKY_RADIUS * config.radius))
        colours.append(shaded[sky])
    _write_ply(output_dir / "sparse_pc.ply", np.concatenate(points), np.concatenate(colours))

    transforms = {
        "camera_model": "OPENCV",
        "fl_x": focal,
        "fl_y": focal,
        "cx": cx,
        "cy": cy,
        "w": w,
        "h": h,
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "ply_file_path": "sparse_pc.ply",
        "frames": frames,
    }
    (output_dir / "transforms.json").write_text(json.dumps(transforms, indent=2))
    return output_dir


def _write_ply(path: Path, points: np.ndarray, colours: np.ndarray) -> None:
    """An ASCII point cloud with 8-bit colours, as ns-process-data writes one."""
    rgb = (colours * 255 + 0.5).astype(np.uint8)
    header = (
        f"ply\nformat ascii 1.0\nelement vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    rows = [f"{x:.5f} {y:.5f} {z:.5f} {r} {g} {b}" for (x, y, z), (r, g, b) in zip(points, rgb, strict=True)]
    path.write_text(header + "\n".join(rows) + "\n")


def make_scene_pair(folder: Path, config: SyntheticSceneConfig | None = None) -> tuple[Path, Path]:
    """``folder/source`` and ``folder/edited``: the same capture of both layouts (a known-answer edit pair)."""
    from dataclasses import replace

    config = config or SyntheticSceneConfig()
    source = make_synthetic_scene(Path(folder) / "source", replace(config, layout="source"))
    edited = make_synthetic_scene(Path(folder) / "edited", replace(config, layout="edited"))
    return source, edited


def make_scene_triple(folder: Path, config: SyntheticSceneConfig | None = None) -> tuple[Path, Path, Path]:
    """:func:`make_scene_pair` and ``folder/local``: source, full target and local target of one capture."""
    from dataclasses import replace

    config = config or SyntheticSceneConfig()
    source, edited = make_scene_pair(folder, config)
    return source, edited, make_synthetic_scene(Path(folder) / "local", replace(config, layout="local"))


def main(argv: list[str] | None = None) -> None:
    """Command line: write a synthetic scene folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--num-views", type=int, default=24)
    parser.add_argument("--size", type=int, default=64, help="image width and height in pixels")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="source", help="edited: the known-answer target")
    args = parser.parse_args(argv)
    config = SyntheticSceneConfig(args.num_views, args.size, args.size, layout=args.layout)
    out = make_synthetic_scene(args.output_dir, config)
    print(f"wrote {args.num_views} views of {args.size}x{args.size} px to {out}")


if __name__ == "__main__":
    main()
