"""The edit region of a 3D scene: an oriented box in the coordinates the viewer shows, and how much of a point,
a Gaussian or a ray lies inside it.

The box follows nerfstudio's crop box (the viewer's "Crop center / rotation / scale" and ``ns-export``'s
``--obb-center/--obb-rotation/--obb-scale``): a centre, roll-pitch-yaw angles in radians, and the box's side
lengths (``scale``, twice the half-sizes), in nerfstudio's world (after the dataparser's transform). A point's
weight is 1 inside, falls linearly to 0 over ``margin`` world units outside (a soft edge that avoids a seam), and
is 0 beyond. The functions here are pure torch; :mod:`csd_nerf.nerf.splat_scene` and :mod:`csd_nerf.nerf.scene`
apply them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from csd_nerf.errors import SettingError

__all__ = ["RegionConfig", "Box", "rpy_matrix", "box_weights", "ray_inside_fraction", "weight_gradient"]


@dataclass
class RegionConfig:
    """Edit only inside an oriented box (nerfstudio's crop-box convention); no box: the whole scene."""

    center: tuple[float, float, float] | None = None
    """Centre of the box, as the viewer's "Crop center" shows it (no centre and no scale: no region)."""
    rotation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Roll, pitch and yaw of the box in radians, as the viewer's "Crop rotation"."""
    scale: tuple[float, float, float] | None = None
    """Side lengths of the box (twice its half-sizes), as the viewer's "Crop scale"."""
    margin: float = 0.0
    """Width of a soft edge outside the box, in world units, where the edit fades out (0: a hard edge)."""
    preservation_weight: float = 1.0
    """Weight of the pull of pixels outside the region toward the source images (0: off): nerfacto's field is
    shared by all space, and a splat inside the box can spread over pixels outside it."""

    @property
    def enabled(self) -> bool:
        return self.center is not None and self.scale is not None

    def validate(self, flags: str = "--pipeline.region.") -> None:
        """A one-line :class:`SettingError` for a half-given or degenerate box."""
        if (self.center is None) != (self.scale is None):
            raise SettingError(f"a region needs both {flags}center and {flags}scale (or neither: the whole scene)")
        numbers = [*(self.center or ()), *self.rotation, *(self.scale or ()), self.margin, self.preservation_weight]
        if not all(math.isfinite(v) for v in numbers):
            raise SettingError(f"the region's numbers must be finite: check {flags}center/rotation/scale/margin")
        if self.scale is not None and min(self.scale) <= 0:
            raise SettingError(f"{flags}scale {self.scale}: every side length must be positive")
        if self.margin < 0 or self.preservation_weight < 0:
            raise SettingError(f"{flags}margin and {flags}preservation-weight must be >= 0")

    @classmethod
    def from_dataset_box(
        cls,
        center: tuple[float, float, float],
        half_sizes: tuple[float, float, float],
        transform: torch.Tensor,
        scale: float,
        **options: float,
    ) -> RegionConfig:
        """The region of an axis-aligned box given in a dataset's own coordinates (its ``transforms.json``), in
        the world nerfstudio builds from it: ``scale * (T[:, :3] p + T[:, 3])``, the dataparser's transform
        (``dataparser_transforms.json`` of a run)."""
        from viser import transforms as vtf

        transform = torch.as_tensor(transform, dtype=torch.float64)
        rotation, translation = transform[:3, :3], transform[:3, 3]
        world_center = scale * (rotation @ torch.tensor(center, dtype=torch.float64) + translation)
        rpy = vtf.SO3.from_matrix(rotation.numpy()).as_rpy_radians()
        return cls(
            center=tuple(float(v) for v in world_center),
            rotation=(float(rpy.roll), float(rpy.pitch), float(rpy.yaw)),
            scale=tuple(float(2 * h * scale) for h in half_sizes),
            **options,
        )

    def box(self) -> Box | None:
        """The box as tensors, or None without a region."""
        if not self.enabled:
            return None
        return Box(
            rotation=rpy_matrix(*self.rotation),
            center=torch.tensor(self.center, dtype=torch.float32),
            scale=torch.tensor(self.scale, dtype=torch.float32),
            margin=float(self.margin),
        )


@dataclass
class Box:
    """An oriented box: ``rotation`` (box to world), ``center``, side lengths ``scale``, soft ``margin``."""

    rotation: torch.Tensor
    center: torch.Tensor
    scale: torch.Tensor
    margin: float = 0.0

    def weights(self, points: torch.Tensor) -> torch.Tensor:
        """:func:`box_weights` of ``points`` ``[..., 3]``."""
        return box_weights(points, self.rotation, self.center, self.scale, self.margin)

    def corners(self) -> torch.Tensor:
        """The 8 corners ``[8, 3]`` in world coordinates (for drawing)."""
        signs = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=torch.float32)
        return (signs * self.scale / 2) @ self.rotation.T + self.center

    EDGES = [(0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7)]
    """Corner pairs of the 12 edges of :meth:`corners`."""


def rpy_matrix(roll: float, pitch: float, yaw: float) -> torch.Tensor:
    """The rotation ``Rz(yaw) Ry(pitch) Rx(roll)`` (viser's and nerfstudio's ``from_rpy_radians``), ``[3, 3]``."""
    cr, sr, cp, sp, cy, sy = (f(a) for a in (roll, pitch, yaw) for f in (math.cos, math.sin))
    rx = torch.tensor([[1, 0, 0], [0, cr, -sr], [0, sr, cr]], dtype=torch.float32)
    ry = torch.tensor([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]], dtype=torch.float32)
    rz = torch.tensor([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]], dtype=torch.float32)
    return rz @ ry @ rx


def box_weights(
    points: torch.Tensor, rotation: torch.Tensor, center: torch.Tensor, scale: torch.Tensor, margin: float = 0.0
) -> torch.Tensor:
    """1 for points ``[..., 3]`` inside the box, ``1 - d / margin`` at distance ``d < margin`` outside it, else 0.

    The box's local coordinates are ``R^T (p - c)``; a point is inside when every coordinate is within half a
    side length (as ``OrientedBox.within``). Returns ``[...]`` in the points' dtype.
    """
    rotation, center, scale = (t.to(points) for t in (rotation, center, scale))
    local = (points - center) @ rotation
    excess = (local.abs() - scale / 2).clamp(min=0)
    distance = excess.norm(dim=-1)
    if margin <= 0:
        return (distance == 0).to(points.dtype)
    return (1 - distance / margin).clamp(min=0)


def ray_inside_fraction(weights: torch.Tensor, point_weights: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The share of a ray's rendered weight that falls inside the region: ``sum_s w_s b_s / sum_s w_s``.

    ``weights`` ``[R, S, 1]`` (nerfacto's final-level sample weights), ``point_weights`` ``[R, S]`` (the samples'
    :func:`box_weights`); a ray that renders nothing (empty space) counts as outside. Returns ``[R, 1]``.
    """
    w = weights[..., 0]
    return ((w * point_weights).sum(-1) / w.sum(-1).clamp(min=eps))[..., None]


class _WeightGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (weight,) = ctx.saved_tensors
        return grad * weight, None


def weight_gradient(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged, with the gradient flowing back through it multiplied by ``weight`` (broadcast)."""
    return _WeightGradient.apply(x, weight.detach())
