"""CPU rasterisation of 3D Gaussians: a drop-in for ``gsplat.rendering.rasterization`` (gsplat 1.4.0).

gsplat ships CUDA kernels only. :func:`rasterize` takes the arguments splatfacto (nerfstudio 1.1.5) passes and
returns the same ``(render_colors, render_alphas, meta)``, in pure torch, so that splatfacto-style scenes can be
trained, edited and tested on a CPU (small scenes: ~128 px images, ~20k Gaussians). Gradients come from autograd.

Semantics follow gsplat's CUDA kernels, not only its torch reference where the two differ:

* projection: ``_quat_scale_to_covar_preci``, ``_world_to_cam`` and ``_persp_proj`` from ``gsplat.cuda._torch_impl``
  (EWA Jacobian; x/z, y/z clamped to 0.3 half-fields of view beyond the image), then our own blur, conic, radius
  and culling step after ``fully_fused_projection_fwd.cu`` (the torch reference clamps ``det`` and culls at
  ``z == near_plane`` differently, and has no ``radius_clip``): ``eps2d`` added to the 2D covariance, antialiased
  opacity compensation ``sqrt(det / det_blur)``, radius ``ceil(3 sqrt(b + sqrt(max(0.01, b^2 - det))))``, culled
  (radius 0) when ``z < near_plane``, ``z > far_plane``, ``det <= 0``, ``radius <= radius_clip`` or the radius box
  misses the image; culled entries of ``means2d``/``depths``/``conics`` are 0 (gsplat leaves them uninitialised);
* colours: ``_spherical_harmonics`` with directions from the camera centre, then ``clamp_min(x + 0.5, 0)``;
* tiles: a Gaussian is seen only by the tiles its radius box touches (``isect_tiles.cu``), each tile's list sorted
  front to back by depth (ties by Gaussian index, as gsplat's stable radix sort), and ``meta`` carries gsplat's
  ``tiles_per_gauss``, ``isect_ids``, ``flatten_ids`` and ``isect_offsets``;
* compositing (``rasterize_to_pixels_fwd.cu``) at pixel centres: ``alpha = min(0.999, o exp(-sigma))``, skipped when
  ``sigma < 0`` or ``alpha < 1/255``; a pixel stops before the Gaussian that would take its transmittance to
  ``<= 1e-4``; ``render_alphas = 1 - T``; backgrounds add ``T * background``; "ED" divides by ``alpha.clamp(1e-10)``;
* ``meta["means2d"]`` is the ``[C, N, 2]`` tensor the compositing reads, so ``retain_grad()`` on it gives the
  screen-space gradient :class:`gsplat.DefaultStrategy` uses; with ``absgrad=True`` its ``.absgrad`` is gsplat's
  per-pixel sum ``sum_p |dL_p / d means2d|``.

Chunking strategy and cost
--------------------------
The intersections are gsplat's: one (tile, Gaussian) pair per tile a radius box touches. A *window* is a group of
tiles times a range of slots of their depth-sorted lists, padded to the group's longest list; it evaluates at most
``chunk_pairs`` (pixel, Gaussian) pairs as dense ``[tiles, pixels_per_tile, slots]`` tensors (exclusive
transmittance by ``cumprod``, weights, a batched matmul for the colours). Windows of one tile group run front to
back, carrying each pixel's transmittance, colour and "done" flag, and a group stops once all its pixels are done.
Tiles are grouped by list length (longest first) so that padding stays small.

* time: ``O(sum over tiles of pixels_per_tile x list length)`` pair evaluations, as gsplat's kernel does; the
  backward pass costs about two forwards more (recompute, then autograd through it);
* memory: each window runs under ``torch.utils.checkpoint``, so autograd keeps only a window's inputs (the carried
  per-pixel state, ``O(pixels x (D + 4))`` per window, and the slot indices), never its pair tensors. The peak is
  one window's ``O(chunk_pairs)`` tensors plus ``O(C N)`` per-Gaussian tensors and ``O(n_isects)`` indices; it does
  not grow with pixels x Gaussians.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
from gsplat.cuda._torch_impl import _persp_proj, _quat_scale_to_covar_preci, _spherical_harmonics, _world_to_cam
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = ["rasterize", "DEFAULT_CHUNK_PAIRS", "RENDER_MODES"]

DEFAULT_CHUNK_PAIRS = 1 << 20
"""Default upper bound of (pixel, Gaussian) pairs evaluated at once (~10 float tensors of this size live at once)."""

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
ALPHA_MAX = 0.999  # gsplat's opacity clamp
ALPHA_MIN = 1.0 / 255.0  # gsplat skips fainter contributions
T_MIN = 1e-4  # gsplat stops a pixel before its transmittance would reach this


@dataclass
class Projection:
    """Per-camera 2D Gaussians, ``[C, N, ...]``; entries with ``radii == 0`` are culled and zero."""

    radii: Tensor  # [C, N] int32
    means2d: Tensor  # [C, N, 2]
    depths: Tensor  # [C, N]
    conics: Tensor  # [C, N, 3] upper triangle of the inverse 2D covariance
    compensations: Tensor | None  # [C, N], antialiased mode only


@dataclass
class Intersections:
    """gsplat's tile intersections: per-tile ranges of ``flatten_ids`` (``c * N + g``) sorted by depth."""

    tiles_per_gauss: Tensor  # [C, N] int32
    isect_ids: Tensor  # [n_isects] int64: camera | tile | float32 depth bits
    flatten_ids: Tensor  # [n_isects] int64
    offsets: Tensor  # [C * tile_height * tile_width] int64, start of each tile's range
    counts: Tensor  # [C * tile_height * tile_width] int64, length of each tile's range


@dataclass(frozen=True)
class TileGrid:
    """C images of width x height pixels cut into square tiles; tiles are numbered ``c * tiles_per_image + row-major``."""

    cameras: int
    width: int
    height: int
    tile_size: int

    @property
    def tile_width(self) -> int:
        return math.ceil(self.width / self.tile_size)

    @property
    def tile_height(self) -> int:
        return math.ceil(self.height / self.tile_size)

    @property
    def tiles_per_image(self) -> int:
        return self.tile_width * self.tile_height

    @property
    def pixels_per_tile(self) -> int:
        return self.tile_size * self.tile_size

    def pixel_centres(self, tiles: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Pixel centres [G, P, 2] (x, y) of the given tiles, row-major within a tile, and their in-image mask."""
        local = tiles % self.tiles_per_image
        ty, tx = local // self.tile_width, local % self.tile_width
        offs = torch.arange(self.tile_size, device=tiles.device)
        py = (ty[:, None, None] * self.tile_size + offs[None, :, None]).expand(-1, self.tile_size, self.tile_size)
        px = (tx[:, None, None] * self.tile_size + offs[None, None, :]).expand(-1, self.tile_size, self.tile_size)
        inside = ((px < self.width) & (py < self.height)).reshape(len(tiles), -1)
        centres = torch.stack([px, py], dim=-1).reshape(len(tiles), -1, 2).to(dtype) + 0.5
        return centres, inside

    def untile(self, values: Tensor) -> Tensor:
        """[all tiles, P, D] -> [C, H, W, D] images, cropping the overhang of the last tile row and column."""
        C, th, tw, ts, D = self.cameras, self.tile_height, self.tile_width, self.tile_size, values.shape[-1]
        image = values.view(C, th, tw, ts, ts, D).permute(0, 1, 3, 2, 4, 5).reshape(C, th * ts, tw * ts, D)
        return image[:, : self.height, : self.width]


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    packed: bool = False,
    tile_size: int = 16,
    backgrounds: Tensor | None = None,
    render_mode: str = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    rasterize_mode: str = "classic",
    channel_chunk: int = 32,
    distributed: bool = False,
    camera_model: str = "pinhole",
    covars: Tensor | None = None,
    *,
    chunk_pairs: int = DEFAULT_CHUNK_PAIRS,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render N Gaussians into C pinhole cameras, as ``gsplat.rendering.rasterization`` with ``packed=False``.

    Args are gsplat's: means [N, 3], quats [N, 4] (wxyz, unnormalised), scales [N, 3], opacities [N], colors
    ([(C,) N, D] values, or [(C,) N, K, 3] SH coefficients when ``sh_degree`` is set), viewmats [C, 4, 4]
    (world-to-camera), Ks [C, 3, 3], backgrounds [C, D], covars [N, 3, 3] (replaces quats/scales; upper triangle
    used). ``sparse_grad`` and ``channel_chunk`` do not change results (gsplat ignores ``sparse_grad`` unless packed);
    ``packed=True``, ``distributed=True`` and non-pinhole cameras raise ``ValueError``. ``chunk_pairs`` bounds the
    (pixel, Gaussian) pairs evaluated at once (memory), never the result.

    Returns ``(render_colors [C, H, W, X], render_alphas [C, H, W, 1], meta)``.
    """
    _check_supported(packed, distributed, camera_model, render_mode, rasterize_mode, tile_size, chunk_pairs)
    C, N = _check_shapes(means, quats, scales, opacities, colors, viewmats, Ks, sh_degree, covars, backgrounds)

    covars3d = _covariances(quats, scales, covars)
    proj = _project(
        means, covars3d, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip,
        antialiased=rasterize_mode == "antialiased",
    )  # fmt: skip
    opacities_c = opacities.repeat(C, 1)
    if proj.compensations is not None:
        opacities_c = opacities_c * proj.compensations

    features = _features(colors, means, viewmats, sh_degree, C)
    if render_mode in ("RGB+D", "RGB+ED"):
        features = torch.cat([features, proj.depths[..., None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(C, 1)], dim=-1)
    elif render_mode in ("D", "ED"):
        features = proj.depths[..., None]
        if backgrounds is not None:
            backgrounds = backgrounds.new_zeros(C, 1)

    grid = TileGrid(C, width, height, tile_size)
    isect = _intersect_tiles(proj, grid)
    absgrad_buffer = proj.means2d.new_zeros(C * N, 2) if absgrad else None
    colors_out, transmittance = _composite(
        proj.means2d.reshape(C * N, 2),
        proj.conics.reshape(C * N, 3),
        opacities_c.reshape(C * N),
        features.reshape(C * N, features.shape[-1]),
        isect,
        grid,
        chunk_pairs,
        absgrad_buffer,
    )

    render_alphas = 1.0 - transmittance
    if backgrounds is not None:
        colors_out = colors_out + transmittance * backgrounds[:, None, None, :]
    if render_mode in ("ED", "RGB+ED"):
        expected = colors_out[..., -1:] / render_alphas.clamp(min=1e-10)
        colors_out = torch.cat([colors_out[..., :-1], expected], dim=-1)

    if absgrad_buffer is not None:
        # gsplat attaches the absolute screen-space gradient to means2d; ours fills in during backward
        proj.means2d.absgrad = absgrad_buffer.view(C, N, 2)
    meta = {
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": proj.radii,
        "means2d": proj.means2d,
        "depths": proj.depths,
        "conics": proj.conics,
        "opacities": opacities_c,
        "tile_width": grid.tile_width,
        "tile_height": grid.tile_height,
        "tiles_per_gauss": isect.tiles_per_gauss,
        "isect_ids": isect.isect_ids,
        "flatten_ids": isect.flatten_ids.int(),
        "isect_offsets": isect.offsets.int().view(C, grid.tile_height, grid.tile_width),
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_cameras": C,
        "packed": False,
    }
    return colors_out, render_alphas, meta


# ---------------------------------------------------------------------------------------------------------------------
# argument checks


def _check_supported(
    packed: bool,
    distributed: bool,
    camera_model: str,
    render_mode: str,
    rasterize_mode: str,
    tile_size: int,
    chunk_pairs: int,
) -> None:
    """Raise ``ValueError`` for the gsplat options this CPU path does not implement."""
    if packed:
        raise ValueError("rasterize: packed=True is not supported on the CPU path; pass packed=False")
    if distributed:
        raise ValueError("rasterize: distributed=True is not supported on the CPU path")
    if camera_model != "pinhole":
        raise ValueError(f"rasterize: camera_model={camera_model!r} is not supported, only 'pinhole'")
    if render_mode not in RENDER_MODES:
        raise ValueError(f"rasterize: render_mode={render_mode!r}, expected one of {RENDER_MODES}")
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterize: rasterize_mode={rasterize_mode!r}, expected 'classic' or 'antialiased'")
    if tile_size < 1 or chunk_pairs < 1:
        raise ValueError(f"rasterize: tile_size ({tile_size}) and chunk_pairs ({chunk_pairs}) must be positive")


def _check_shapes(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    sh_degree: int | None,
    covars: Tensor | None,
    backgrounds: Tensor | None,
) -> tuple[int, int]:
    """Validate gsplat's shape conventions; return (C, N)."""
    N, C = means.shape[0], viewmats.shape[0]
    expected = {"means": (means, (N, 3)), "opacities": (opacities, (N,))}
    expected |= {"viewmats": (viewmats, (C, 4, 4)), "Ks": (Ks, (C, 3, 3))}
    if covars is None:
        expected |= {"quats": (quats, (N, 4)), "scales": (scales, (N, 3))}
    else:
        expected["covars"] = (covars, (N, 3, 3))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"rasterize: {name} has shape {tuple(tensor.shape)}, expected {shape}")
    if sh_degree is None:
        ok = (colors.dim() == 2 and colors.shape[0] == N) or (colors.dim() == 3 and colors.shape[:2] == (C, N))
        want = "[N, D] or [C, N, D] (sh_degree=None)"
    else:
        ok = (colors.dim() == 3 and colors.shape[0] == N) or (colors.dim() == 4 and colors.shape[:2] == (C, N))
        ok = ok and colors.shape[-1] == 3 and (sh_degree + 1) ** 2 <= colors.shape[-2]
        want = f"[N, K, 3] or [C, N, K, 3] with K >= {(sh_degree + 1) ** 2} (sh_degree={sh_degree})"
    if not ok:
        raise ValueError(f"rasterize: colors has shape {tuple(colors.shape)}, expected {want}")
    if backgrounds is not None and (backgrounds.dim() != 2 or backgrounds.shape[0] != C):
        raise ValueError(f"rasterize: backgrounds has shape {tuple(backgrounds.shape)}, expected [C, D]")
    return C, N


# ---------------------------------------------------------------------------------------------------------------------
# projection and colours


def _covariances(quats: Tensor, scales: Tensor, covars: Tensor | None) -> Tensor:
    """World-space 3D covariances [N, 3, 3]: R S S^T R^T from (normalised) quats, or covars' upper triangle."""
    if covars is None:
        return _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)[0]
    upper = covars.triu()
    return upper + upper.transpose(-1, -2) - torch.diag_embed(covars.diagonal(dim1=-2, dim2=-1))


def _project(
    means: Tensor,
    covars3d: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float,
    near_plane: float,
    far_plane: float,
    radius_clip: float,
    antialiased: bool,
) -> Projection:
    """EWA projection with gsplat's blur, radius and culling rules (``fully_fused_projection_fwd.cu``)."""
    means_c, covars_c = _world_to_cam(means, covars3d, viewmats)
    depths = means_c[..., 2]
    in_range = (depths >= near_plane) & (depths <= far_plane)
    # why: _persp_proj divides by z; a culled Gaussian at or behind the camera would still put inf/NaN into the
    # graph, and autograd turns 0 * inf into NaN gradients. Culled entries are projected from a harmless point.
    safe_means_c = torch.where(in_range[..., None], means_c, torch.ones_like(means_c))
    means2d, cov2d = _persp_proj(safe_means_c, covars_c, Ks, width, height)

    det_orig = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    det = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    det_ok = det > 0
    det = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack(
        [cov2d[..., 1, 1] / det, -0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]) / det, cov2d[..., 0, 0] / det], dim=-1
    )

    with torch.no_grad():
        b = 0.5 * (cov2d[..., 0, 0] + cov2d[..., 1, 1])
        radius = torch.ceil(3.0 * torch.sqrt(b + torch.sqrt((b * b - det).clamp(min=0.01))))
        x, y = means2d[..., 0], means2d[..., 1]
        on_screen = (x + radius > 0) & (x - radius < width) & (y + radius > 0) & (y - radius < height)
        visible = in_range & det_ok & (radius > radius_clip) & on_screen
        radii = torch.where(visible, radius, torch.zeros_like(radius)).int()

    compensations = None
    if antialiased:
        ratio = det_orig / det
        # why: sqrt'(0) is infinite, so guard the degenerate (flat) Gaussians before the sqrt, not after
        positive = ratio > 0
        compensations = torch.where(positive, torch.sqrt(torch.where(positive, ratio, torch.ones_like(ratio))), 0.0)
        compensations = torch.where(visible, compensations, 0.0)
    return Projection(
        radii=radii,
        means2d=torch.where(visible[..., None], means2d, 0.0),
        depths=torch.where(visible, depths, 0.0),
        conics=torch.where(visible[..., None], conics, 0.0),
        compensations=compensations,
    )


def _features(colors: Tensor, means: Tensor, viewmats: Tensor, sh_degree: int | None, C: int) -> Tensor:
    """Per-camera colours [C, N, D]: the values themselves, or SH evaluated towards each camera centre."""
    if sh_degree is None:
        return colors.expand(C, -1, -1) if colors.dim() == 2 else colors
    camera_centres = torch.inverse(viewmats)[:, :3, 3]  # [C, 3]
    dirs = means[None, :, :] - camera_centres[:, None, :]  # [C, N, 3]
    coeffs = colors.expand(C, -1, -1, -1) if colors.dim() == 3 else colors
    # gsplat: "make it apple-to-apple with Inria's CUDA backend"
    return torch.clamp_min(_spherical_harmonics(sh_degree, dirs, coeffs) + 0.5, 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# tile intersections


@torch.no_grad()
def _intersect_tiles(proj: Projection, grid: TileGrid) -> Intersections:
    """gsplat's ``isect_tiles`` + ``isect_offset_encode``, vectorised: (tile, Gaussian) pairs sorted by tile, depth."""
    radii, means2d, depths = proj.radii, proj.means2d.detach(), proj.depths.detach()
    C, N = radii.shape
    device = radii.device
    n_tiles = grid.tiles_per_image

    # tile box [lo, hi) in tile units, computed as isect_tiles.cu does (floor/ceil of centre +- radius, clamped)
    tile_centre = means2d / grid.tile_size
    tile_radius = (radii.to(means2d.dtype) / grid.tile_size)[..., None]
    limit = torch.tensor([grid.tile_width, grid.tile_height], device=device)
    lo = torch.minimum(torch.floor(tile_centre - tile_radius).clamp(min=0).long(), limit)
    hi = torch.minimum(torch.ceil(tile_centre + tile_radius).clamp(min=0).long(), limit)
    span = hi - lo  # [C, N, 2]
    tiles_per_gauss = span.prod(dim=-1) * (radii > 0)

    # Gaussians front to back within each camera; stable so that equal depths keep index order, as gsplat's sort
    key = torch.where(radii > 0, depths, torch.full_like(depths, math.inf))
    order = torch.sort(key, dim=1, stable=True).indices  # [C, N]
    flat = (order + torch.arange(C, device=device)[:, None] * N).reshape(-1)  # c * N + g, camera-major
    flat = flat[tiles_per_gauss.reshape(-1)[flat] > 0]

    # one entry per (Gaussian, tile) it touches, rows outer and columns inner as in the CUDA loop
    n_per = tiles_per_gauss.reshape(-1)[flat]
    owner = torch.repeat_interleave(flat, n_per)
    local = torch.arange(owner.numel(), device=device) - torch.repeat_interleave(torch.cumsum(n_per, 0) - n_per, n_per)
    lo_o, span_o = lo.reshape(-1, 2)[owner], span.reshape(-1, 2)[owner]
    tile_x = lo_o[:, 0] + local % span_o[:, 0]
    tile_y = lo_o[:, 1] + local // span_o[:, 0]
    camera = owner // N
    tile_key = camera * n_tiles + tile_y * grid.tile_width + tile_x
    tile_key, perm = torch.sort(tile_key, stable=True)
    owner = owner[perm]

    depth_bits = depths.float().reshape(-1)[owner].view(torch.int32).long()  # sign-extended, as gsplat
    isect_ids = (camera[perm] << (32 + n_tiles.bit_length())) | ((tile_key % n_tiles) << 32) | depth_bits
    counts = torch.bincount(tile_key, minlength=C * n_tiles)
    return Intersections(
        tiles_per_gauss=tiles_per_gauss.int(),
        isect_ids=isect_ids,
        flatten_ids=owner,
        offsets=torch.cumsum(counts, 0) - counts,
        counts=counts,
    )


# ---------------------------------------------------------------------------------------------------------------------
# compositing


@dataclass
class _TileGroup:
    """Tiles composited together, their lists padded to ``length`` slots and walked ``slots`` at a time."""

    tiles: Tensor  # [G] tile numbers (TileGrid numbering)
    length: int  # longest list in the group
    slots: int  # list entries per window


def _plan_groups(counts: Tensor, pixels_per_tile: int, chunk_pairs: int) -> list[_TileGroup]:
    """Group non-empty tiles, longest lists first, so that a window holds <= chunk_pairs (pixel, Gaussian) pairs.

    A window never holds less than one tile x one slot, whatever ``chunk_pairs`` says.
    """
    nonempty = torch.nonzero(counts).flatten()
    by_length = nonempty[torch.sort(counts[nonempty], descending=True, stable=True).indices]
    lengths = counts[by_length].tolist()
    groups: list[_TileGroup] = []
    i = 0
    while i < len(lengths):
        slots = max(1, min(lengths[i], chunk_pairs // pixels_per_tile))
        n_tiles = max(1, chunk_pairs // (pixels_per_tile * slots))
        groups.append(_TileGroup(by_length[i : i + n_tiles], lengths[i], slots))
        i += n_tiles
    return groups


class _AbsGradTap(torch.autograd.Function):
    """Identity on per-pixel offsets (mean2d - pixel); backward adds sum_p |grad| per Gaussian (gsplat's absgrad)."""

    @staticmethod
    def forward(ctx: Any, delta: Tensor, ids: Tensor, buffer: Tensor) -> Tensor:
        ctx.save_for_backward(ids)
        ctx.buffer = buffer  # a plain reference: the buffer does not point back into the graph
        return delta.view_as(delta)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (ids,) = ctx.saved_tensors
        ctx.buffer.index_add_(0, ids.reshape(-1), grad.abs().sum(dim=1).reshape(-1, 2).to(ctx.buffer.dtype))
        return grad, None, None


def _composite_window(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    features: Tensor,
    ids: Tensor,
    slot_ok: Tensor,
    pixels: Tensor,
    trans_in: Tensor,
    acc_in: Tensor,
    done_in: Tensor,
    absgrad_buffer: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Blend one window's Gaussians (ids [G, K], front to back) over pixels [G, P, 2]; return (acc, T, done)."""
    delta = means2d[ids][:, None, :, :] - pixels[:, :, None, :]  # [G, P, K, 2]
    if absgrad_buffer is not None:
        delta = _AbsGradTap.apply(delta, ids, absgrad_buffer)
    dx, dy = delta[..., 0], delta[..., 1]
    conic = conics[ids][:, None]  # [G, 1, K, 3]
    sigma = 0.5 * (conic[..., 0] * dx * dx + conic[..., 2] * dy * dy) + conic[..., 1] * dx * dy
    alpha = torch.clamp_max(opacities[ids][:, None] * torch.exp(-sigma), ALPHA_MAX)  # [G, P, K]

    with torch.no_grad():
        hit = slot_ok[:, None, :] & (sigma >= 0) & (alpha >= ALPHA_MIN) & ~done_in[..., None]
        probe = torch.cumprod(torch.cat([trans_in[..., None], 1.0 - alpha * hit], dim=-1), dim=-1)[..., 1:]
        # T only decreases, so "T after this Gaussian > T_MIN" is exactly gsplat's prefix before the early stop
        keep = hit & (probe > T_MIN)
        done_out = done_in | (probe[..., -1] <= T_MIN)

    a = torch.where(keep, alpha, 0.0)
    # T_in first, then the factors in order: the same running product as gsplat's T = T * (1 - alpha)
    trans = torch.cumprod(torch.cat([trans_in[..., None], 1.0 - a], dim=-1), dim=-1)  # [G, P, K + 1]
    weights = a * trans[..., :-1]
    acc_out = acc_in + torch.bmm(weights, features[ids])
    return acc_out, trans[..., -1], done_out


def _composite(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    features: Tensor,
    isect: Intersections,
    grid: TileGrid,
    chunk_pairs: int,
    absgrad_buffer: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing of flattened [C * N, ...] Gaussians; returns colours [C, H, W, D] and T [C, H, W, 1]."""
    P, D = grid.pixels_per_tile, features.shape[-1]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (means2d, conics, opacities, features))
    # why: the absgrad buffer is bound here, not passed as an argument, so checkpoint does not save it (it is
    # written in place during backward, which would fail checkpoint's version check)
    blend = functools.partial(_composite_window, absgrad_buffer=absgrad_buffer)
    acc_parts, trans_parts, tile_parts = [], [], []
    for group in _plan_groups(isect.counts, P, chunk_pairs):
        tiles = group.tiles
        pixels, inside = grid.pixel_centres(tiles, means2d.dtype)
        acc = means2d.new_zeros(len(tiles), P, D)
        trans = means2d.new_ones(len(tiles), P)
        done = ~inside  # pixels of edge tiles outside the image never blend (and are cropped)
        offsets, counts = isect.offsets[tiles], isect.counts[tiles]
        for start in range(0, group.length, group.slots):
            slots = torch.arange(start, min(start + group.slots, group.length), device=tiles.device)
            slot_ok = slots[None, :] < counts[:, None]
            index = torch.where(slot_ok, offsets[:, None] + slots[None, :], 0)
            ids = torch.where(slot_ok, isect.flatten_ids[index], 0)  # padding reads Gaussian 0 and is masked out
            args = (means2d, conics, opacities, features, ids, slot_ok, pixels, trans, acc, done)
            if needs_grad:
                # why: without recomputation autograd would keep every window's [G, P, K] tensors until backward
                acc, trans, done = checkpoint(blend, *args, use_reentrant=False, preserve_rng_state=False)
            else:
                acc, trans, done = blend(*args)
            if bool(done.all()):
                break
        acc_parts.append(acc)
        trans_parts.append(trans)
        tile_parts.append(tiles)

    n_all = grid.cameras * grid.tiles_per_image
    acc_all = means2d.new_zeros(n_all, P, D)
    trans_all = means2d.new_ones(n_all, P)
    if tile_parts:  # tiles no Gaussian touches keep colour 0 and transmittance 1
        tiles = torch.cat(tile_parts)
        acc_all = acc_all.index_copy(0, tiles, torch.cat(acc_parts))
        trans_all = trans_all.index_copy(0, tiles, torch.cat(trans_parts))
    return grid.untile(acc_all), grid.untile(trans_all[..., None])
