"""CPU rasteriser (csd_nerf.nerf.rasterize) against a brute-force float64 reference written from gsplat's rules."""

from __future__ import annotations

import math

import pytest
import torch
from gsplat.strategy import DefaultStrategy
from torch import Tensor

from csd_nerf.nerf.rasterize import _plan_groups, rasterize

DT = torch.float64
W, H = 40, 28  # not multiples of the tile size: edge tiles overhang the image


# ---------------------------------------------------------------------------------------------------------------------
# brute-force reference: explicit per-Gaussian projection, dense pixels x Gaussians, sequential front-to-back blending

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def ref_sh(degree: int, d: Tensor, sh: Tensor) -> Tensor:
    """Inria 3DGS ``eval_sh`` (the convention gsplat matches): d [3] unit, sh [K, 3] -> [3]."""
    x, y, z = d
    out = SH_C0 * sh[0]
    if degree > 0:
        out = out - SH_C1 * y * sh[1] + SH_C1 * z * sh[2] - SH_C1 * x * sh[3]
    if degree > 1:
        xx, yy, zz = x * x, y * y, z * z
        out = out + SH_C2[0] * x * y * sh[4] + SH_C2[1] * y * z * sh[5] + SH_C2[2] * (2 * zz - xx - yy) * sh[6]
        out = out + SH_C2[3] * x * z * sh[7] + SH_C2[4] * (xx - yy) * sh[8]
    if degree > 2:
        out = (
            out
            + SH_C3[0] * y * (3 * xx - yy) * sh[9]
            + SH_C3[1] * x * y * z * sh[10]
            + SH_C3[2] * y * (4 * zz - xx - yy) * sh[11]
            + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[12]
            + SH_C3[4] * x * (4 * zz - xx - yy) * sh[13]
            + SH_C3[5] * z * (xx - yy) * sh[14]
            + SH_C3[6] * x * (xx - 3 * yy) * sh[15]
        )
    return out


def ref_rotation(q: Tensor) -> Tensor:
    w, x, y, z = q / q.norm()
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)]),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)]),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]),
        ]
    )


def ref_project(mean, quat, scale, viewmat, K, width, height, eps2d, near, far, radius_clip, antialiased):
    """One Gaussian into one camera: None when culled, else (mean2d, conic 2x2, depth, radius, compensation)."""
    Rv, tv = viewmat[:3, :3], viewmat[:3, 3]
    X, Y, Z = Rv @ mean + tv
    if Z < near or Z > far:
        return None
    M = ref_rotation(quat) @ torch.diag(scale)
    cov_c = Rv @ (M @ M.T) @ Rv.T
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    tx = Z * torch.clamp(X / Z, -(cx / fx + 0.3 * tan_x), (width - cx) / fx + 0.3 * tan_x)
    ty = Z * torch.clamp(Y / Z, -(cy / fy + 0.3 * tan_y), (height - cy) / fy + 0.3 * tan_y)
    zero = torch.zeros((), dtype=mean.dtype)
    J = torch.stack([torch.stack([fx / Z, zero, -fx * tx / Z**2]), torch.stack([zero, fy / Z, -fy * ty / Z**2])])
    cov2 = J @ cov_c @ J.T
    det0 = torch.linalg.det(cov2)
    cov2 = cov2 + eps2d * torch.eye(2, dtype=mean.dtype)
    det = torch.linalg.det(cov2)
    if det <= 0:
        return None
    b, d = 0.5 * float((cov2[0, 0] + cov2[1, 1]).detach()), float(det.detach())
    radius = math.ceil(3.0 * math.sqrt(b + math.sqrt(max(0.01, b * b - d))))
    mean2d = torch.stack([fx * X / Z + cx, fy * Y / Z + cy])
    mx, my = mean2d.detach().tolist()
    if radius <= radius_clip or mx + radius <= 0 or mx - radius >= width or my + radius <= 0 or my - radius >= height:
        return None
    comp = torch.sqrt(torch.clamp(det0 / det, min=0.0)) if antialiased else None
    return mean2d, torch.linalg.inv(cov2), Z, radius, comp


def reference(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, *, sh_degree=None, backgrounds=None,
    render_mode="RGB+ED", rasterize_mode="classic", tile_size=16, near_plane=0.01, far_plane=1e10, eps2d=0.3,
    radius_clip=0.0,
):  # fmt: skip
    """Brute force. Returns colors [C,H,W,X], alphas [C,H,W,1], radii [C,N], means2d (per camera [N,2]), per_pixel
    (per camera [P,N,2] copies of means2d, one per pixel, for absgrad) and stopped (pixels that hit the early stop)."""
    C, N = viewmats.shape[0], means.shape[0]
    ii, jj = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pix = torch.stack([jj.reshape(-1) + 0.5, ii.reshape(-1) + 0.5], -1).to(DT)  # [P, 2]
    tile_of_pix = torch.stack([jj.reshape(-1) // tile_size, ii.reshape(-1) // tile_size], -1)
    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)
    images, alphas, means2d_all, per_pixel_all, radii_all, stopped = [], [], [], [], [], 0
    for c in range(C):
        proj = [
            ref_project(means[g], quats[g], scales[g], viewmats[c], Ks[c], width, height, eps2d, near_plane,
                        far_plane, radius_clip, rasterize_mode == "antialiased")
            for g in range(N)
        ]  # fmt: skip
        radii_all.append(torch.tensor([0 if p is None else p[3] for p in proj], dtype=torch.int32))
        means2d = torch.stack([torch.zeros(2, dtype=DT) if p is None else p[0] for p in proj])
        per_pixel = means2d[None].repeat(pix.shape[0], 1, 1)  # [P, N, 2]: one copy per pixel, for absgrad
        if means2d.requires_grad:
            means2d.retain_grad()
            per_pixel.retain_grad()
        centre = -viewmats[c, :3, :3].T @ viewmats[c, :3, 3]
        n_ch = (3 if sh_degree is not None else colors.shape[-1]) + (1 if "D" in render_mode else 0)
        n_ch = 1 if render_mode in ("D", "ED") else n_ch
        acc = torch.zeros(pix.shape[0], n_ch, dtype=DT)
        T = torch.ones(pix.shape[0], dtype=DT)
        done = torch.zeros(pix.shape[0], dtype=torch.bool)
        order = sorted((float(p[2].detach()), g) for g, p in enumerate(proj) if p is not None)
        for _, g in order:
            _, conic, depth, radius, comp = proj[g]
            if sh_degree is None:
                rgb = colors[g]
            else:
                d = means[g] - centre
                rgb = torch.clamp_min(ref_sh(sh_degree, d / d.norm(), colors[g]) + 0.5, 0.0)
            feat = {"RGB": rgb, "D": depth[None], "ED": depth[None]}.get(render_mode)
            feat = torch.cat([rgb, depth[None]]) if feat is None else feat
            opacity = opacities[g] * (comp if comp is not None else 1.0)
            delta = per_pixel[:, g] - pix
            sigma = 0.5 * ((delta @ conic) * delta).sum(-1)
            alpha = torch.clamp_max(opacity * torch.exp(-sigma), 0.999)
            # the Gaussian only reaches the tiles its radius box touches (gsplat's isect_tiles)
            tmx, tmy = (means2d[g].detach() / tile_size).tolist()
            r = radius / tile_size
            lo = (min(max(0, math.floor(tmx - r)), tw), min(max(0, math.floor(tmy - r)), th))
            hi = (min(max(0, math.ceil(tmx + r)), tw), min(max(0, math.ceil(tmy + r)), th))
            in_box = (tile_of_pix[:, 0] >= lo[0]) & (tile_of_pix[:, 0] < hi[0])
            in_box &= (tile_of_pix[:, 1] >= lo[1]) & (tile_of_pix[:, 1] < hi[1])
            valid = in_box & (sigma >= 0) & (alpha >= 1.0 / 255.0) & ~done
            next_T = T * (1 - alpha)
            stop = valid & (next_T <= 1e-4)
            blend = valid & ~stop
            done = done | stop
            acc = acc + torch.where(blend, alpha * T, 0.0)[:, None] * feat
            T = torch.where(blend, next_T, T)
        if backgrounds is not None:
            bg = backgrounds[c]
            if render_mode in ("RGB+D", "RGB+ED"):
                bg = torch.cat([bg, torch.zeros(1, dtype=DT)])
            elif render_mode in ("D", "ED"):
                bg = torch.zeros(1, dtype=DT)
            acc = acc + T[:, None] * bg
        alpha_img = (1 - T)[:, None]
        if render_mode in ("ED", "RGB+ED"):
            acc = torch.cat([acc[:, :-1], acc[:, -1:] / alpha_img.clamp(min=1e-10)], -1)
        images.append(acc.view(height, width, -1))
        alphas.append(alpha_img.view(height, width, 1))
        means2d_all.append(means2d)
        per_pixel_all.append(per_pixel)
        stopped += int(done.sum())
    return {
        "colors": torch.stack(images),
        "alphas": torch.stack(alphas),
        "radii": torch.stack(radii_all),
        "means2d": means2d_all,
        "per_pixel": per_pixel_all,
        "stopped": stopped,
    }


# ---------------------------------------------------------------------------------------------------------------------
# scenes


def look_at(eye, target=(0.0, 0.0, 0.0)) -> Tensor:
    """World-to-camera matrix of an OpenCV camera (x right, y down, z forward) at eye looking at target."""
    eye, target = torch.tensor(eye, dtype=DT), torch.tensor(target, dtype=DT)
    forward = (target - eye) / (target - eye).norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, -1.0, 0.0], dtype=DT))
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    R = torch.stack([right, down, forward])
    view = torch.eye(4, dtype=DT)
    view[:3, :3], view[:3, 3] = R, -R @ eye
    return view


def cameras(width=W, height=H, eyes=((0.3, -0.2, -3.0), (2.0, 0.5, -2.2))) -> tuple[Tensor, Tensor]:
    viewmats = torch.stack([look_at(e) for e in eyes])
    K = torch.tensor([[36.0, 0.0, width / 2 + 1.3], [0.0, 38.0, height / 2 - 0.7], [0.0, 0.0, 1.0]], dtype=DT)
    return viewmats, K.expand(len(eyes), 3, 3).clone()


def scene(n: int = 14, k_sh: int = 16, seed: int = 0) -> dict[str, Tensor]:
    """Overlapping anisotropic Gaussians; the first two are nearly opaque so some pixels hit gsplat's early stop."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=DT) - 0.5) * 1.2
    means[:2] = torch.tensor([[0.0, 0.05, -0.3], [0.05, 0.0, -0.1]], dtype=DT)
    scales = torch.exp(torch.empty(n, 3, dtype=DT).uniform_(math.log(0.04), math.log(0.35), generator=g))
    opacities = torch.empty(n, dtype=DT).uniform_(0.3, 0.95, generator=g)
    opacities[:2] = 0.9995
    scales[:2] = 0.3
    return {
        "means": means,
        "quats": torch.randn(n, 4, generator=g, dtype=DT),
        "scales": scales,
        "opacities": opacities,
        "sh": torch.randn(n, k_sh, 3, generator=g, dtype=DT) * 0.4,
        "rgb": torch.rand(n, 3, generator=g, dtype=DT),
    }


def leaves(s: dict[str, Tensor], color_key: str) -> dict[str, Tensor]:
    keys = ("means", "quats", "scales", "opacities")
    out = {k: s[k].clone().requires_grad_() for k in keys}
    out["colors"] = s[color_key].clone().requires_grad_()
    return out


CASES = [  # (sh_degree, rasterize_mode, render_mode, backgrounds)
    (None, "classic", "RGB+ED", False),
    (0, "classic", "RGB+ED", False),
    (1, "antialiased", "RGB+ED", True),
    (3, "classic", "RGB+ED", True),
    (3, "antialiased", "RGB+D", False),
    (None, "antialiased", "ED", True),
    (2, "classic", "RGB", False),
]


def run_both(case, s, viewmats, Ks, **kwargs):
    sh_degree, rasterize_mode, render_mode, with_bg = case
    C = viewmats.shape[0]
    common = {
        "sh_degree": sh_degree,
        "rasterize_mode": rasterize_mode,
        "render_mode": render_mode,
        "backgrounds": torch.tensor([[0.2, 0.7, 0.4]] * C, dtype=DT) if with_bg else None,
    }
    ours_in = leaves(s, "rgb" if sh_degree is None else "sh")
    ref_in = leaves(s, "rgb" if sh_degree is None else "sh")
    names = ("means", "quats", "scales", "opacities", "colors")
    ours = rasterize(*(ours_in[k] for k in names), viewmats, Ks, W, H, **common, **kwargs)
    ours[2]["means2d"].retain_grad()
    ref = reference(*(ref_in[k] for k in names), viewmats, Ks, W, H, **common)
    return ours, ref, ours_in, ref_in


def loss_weights(colors: Tensor, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(colors.shape, generator=g, dtype=DT), torch.randn(
        colors.shape[:-1] + (1,), generator=g, dtype=DT
    )


def backward(colors: Tensor, alphas: Tensor) -> None:
    wc, wa = loss_weights(colors)
    ((colors * wc).sum() + (alphas * wa).sum()).backward()


# ---------------------------------------------------------------------------------------------------------------------
# tests


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are small: one thread is as fast, and does not stall when other jobs share the CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"sh{c[0]}-{c[1]}-{c[2]}-bg{int(c[3])}")
def test_matches_reference_values_and_gradients(case):
    s = scene()
    viewmats, Ks = cameras()
    (colors, alphas, meta), ref, ours_in, ref_in = run_both(case, s, viewmats, Ks)

    assert colors.shape == ref["colors"].shape and alphas.shape == (2, H, W, 1)
    torch.testing.assert_close(colors, ref["colors"], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(alphas, ref["alphas"], atol=1e-9, rtol=1e-9)
    assert torch.equal(meta["radii"], ref["radii"]) and meta["radii"].dtype == torch.int32
    assert (ref["radii"] > 0).sum() >= 20, "the scene should keep most Gaussians visible"
    assert ref["stopped"] > 0, "the transmittance early stop should be exercised"

    backward(colors, alphas)
    backward(ref["colors"], ref["alphas"])
    uses_colors = case[2] not in ("D", "ED")
    for name in ("means", "quats", "scales", "opacities", "colors"):
        if name == "colors" and not uses_colors:
            assert ours_in[name].grad is None and ref_in[name].grad is None
            continue
        assert ours_in[name].grad.abs().sum() > 0, name
        torch.testing.assert_close(ours_in[name].grad, ref_in[name].grad, atol=1e-9, rtol=1e-7, msg=name)
    expected = torch.stack([m.grad for m in ref["means2d"]])
    torch.testing.assert_close(meta["means2d"].grad, expected, atol=1e-9, rtol=1e-7)


def test_absgrad_is_sum_of_per_pixel_magnitudes():
    s = scene()
    viewmats, Ks = cameras()
    (colors, alphas, meta), ref, _, _ = run_both((3, "classic", "RGB", False), s, viewmats, Ks, absgrad=True)
    backward(colors, alphas)
    backward(ref["colors"], ref["alphas"])
    expected = torch.stack([pp.grad.abs().sum(0) for pp in ref["per_pixel"]])
    torch.testing.assert_close(meta["means2d"].absgrad, expected, atol=1e-9, rtol=1e-7)
    assert (meta["means2d"].absgrad >= meta["means2d"].grad.abs() - 1e-12).all()


def test_float32_close_to_float64_reference():
    s = scene()
    viewmats, Ks = cameras()
    names = ("means", "quats", "scales", "opacities", "sh")
    colors, alphas, _ = rasterize(*(s[k].float() for k in names), viewmats.float(), Ks.float(), W, H, sh_degree=3)
    ref = reference(*(s[k] for k in names), viewmats, Ks, W, H, sh_degree=3, render_mode="RGB")
    torch.testing.assert_close(colors.double(), ref["colors"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(alphas.double(), ref["alphas"], atol=1e-4, rtol=1e-4)


def tile_list_lengths(meta: dict) -> Tensor:
    offsets = meta["isect_offsets"].flatten().long()
    return torch.diff(offsets, append=torch.tensor([meta["isect_ids"].numel()]))


@pytest.mark.parametrize("tile_size", [8, 16])
def test_chunking_does_not_change_results(tile_size):
    s = scene(n=20, seed=3)
    viewmats, Ks = cameras()
    P = tile_size * tile_size
    outs = []
    # <= 3 list entries per window / several tiles per group, one window each / everything at once
    for chunk_pairs in (3 * P, 40 * P, 1 << 22):
        x = leaves(s, "sh")
        colors, alphas, meta = rasterize(
            x["means"], x["quats"], x["scales"], x["opacities"], x["colors"], viewmats, Ks, W, H,
            sh_degree=3, render_mode="RGB+ED", tile_size=tile_size, chunk_pairs=chunk_pairs, absgrad=True,
        )  # fmt: skip
        meta["means2d"].retain_grad()
        backward(colors, alphas)
        outs.append((colors, alphas, {k: v.grad for k, v in x.items()}, meta["means2d"].grad, meta["means2d"].absgrad))
        groups = _plan_groups(tile_list_lengths(meta), P, chunk_pairs)
        if chunk_pairs == 3 * P:
            assert all(g.slots <= 3 for g in groups) and any(g.length > g.slots for g in groups)  # several windows
        elif chunk_pairs == 40 * P:
            assert len(groups) > 1 and max(len(g.tiles) for g in groups) > 1
        else:
            assert len(groups) == 1
    for colors, alphas, grads, m2d_grad, absgrad in outs[:-1]:
        c, a, g, m, ab = outs[-1]
        torch.testing.assert_close(colors, c, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(alphas, a, atol=1e-12, rtol=1e-12)
        for k in g:
            torch.testing.assert_close(grads[k], g[k], atol=1e-12, rtol=1e-10, msg=k)
        torch.testing.assert_close(m2d_grad, m, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(absgrad, ab, atol=1e-12, rtol=1e-10)
    if tile_size == 8:  # and the reference agrees at another tile size too
        names = ("means", "quats", "scales", "opacities", "sh")
        ref = reference(*(s[k] for k in names), viewmats, Ks, W, H, sh_degree=3, tile_size=8)
        torch.testing.assert_close(outs[0][0], ref["colors"], atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(outs[0][1], ref["alphas"], atol=1e-9, rtol=1e-9)


def test_culled_gaussians_contribute_nothing():
    s = scene(n=8, seed=5)
    viewmats, Ks = cameras(eyes=((0.0, 0.0, -3.0),))  # camera at z = -3 looking along +z
    extra = torch.tensor(
        [
            [0.0, 0.0, -4.0],  # behind the camera
            [0.0, 0.0, -2.995],  # in front, but nearer than near_plane
            [0.1, 0.0, 9.0],  # beyond far_plane (depth 12)
            [40.0, 0.0, 0.0],  # far off-screen to the right
            [0.0, -30.0, 0.5],  # far off-screen above
        ],
        dtype=DT,
    )
    n_extra = len(extra)
    full = {
        "means": torch.cat([s["means"], extra]),
        "quats": torch.cat([s["quats"], torch.randn(n_extra, 4, dtype=DT)]),
        "scales": torch.cat([s["scales"], torch.full((n_extra, 3), 0.2, dtype=DT)]),
        "opacities": torch.cat([s["opacities"], torch.full((n_extra,), 0.9, dtype=DT)]),
        "rgb": torch.cat([s["rgb"], torch.ones(n_extra, 3, dtype=DT)]),
    }
    names = ("means", "quats", "scales", "opacities", "colors")
    x = leaves(full, "rgb")
    colors, alphas, meta = rasterize(*(x[k] for k in names), viewmats, Ks, W, H, far_plane=10.0, render_mode="RGB+D")
    base, base_alphas, base_meta = rasterize(
        *(leaves(s, "rgb")[k] for k in names), viewmats, Ks, W, H, far_plane=10.0, render_mode="RGB+D"
    )
    assert (meta["radii"][0, -n_extra:] == 0).all()
    assert torch.equal(meta["radii"][:, :-n_extra], base_meta["radii"])
    assert (meta["tiles_per_gauss"][0, -n_extra:] == 0).all()
    assert (meta["means2d"][0, -n_extra:] == 0).all() and (meta["conics"][0, -n_extra:] == 0).all()
    torch.testing.assert_close(colors, base, atol=0, rtol=0)
    torch.testing.assert_close(alphas, base_alphas, atol=0, rtol=0)
    backward(colors, alphas)
    for k in names:
        assert torch.isfinite(x[k].grad).all(), k
        assert (x[k].grad[-n_extra:] == 0).all(), k
        assert x[k].grad[:-n_extra].abs().sum() > 0, k


def test_radius_clip_and_depth_planes_match_reference():
    s = scene()
    viewmats, Ks = cameras()
    names = ("means", "quats", "scales", "opacities", "rgb")
    kwargs = {"radius_clip": 6.0, "near_plane": 2.7, "far_plane": 3.3, "render_mode": "RGB+D"}
    colors, alphas, meta = rasterize(*(s[k] for k in names), viewmats, Ks, W, H, **kwargs)
    ref = reference(*(s[k] for k in names), viewmats, Ks, W, H, **kwargs)
    assert torch.equal(meta["radii"], ref["radii"])
    assert 0 < int((ref["radii"] > 0).sum()) < 20, "the planes and the clip should cull some, not all"
    torch.testing.assert_close(colors, ref["colors"], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(alphas, ref["alphas"], atol=1e-9, rtol=1e-9)


def test_no_grad_path_and_empty_scene():
    s = scene()
    viewmats, Ks = cameras()
    x = leaves(s, "sh")
    names = ("means", "quats", "scales", "opacities", "colors")
    with torch.no_grad():
        plain = rasterize(*(x[k] for k in names), viewmats, Ks, W, H, sh_degree=3)
    tracked = rasterize(*(x[k] for k in names), viewmats, Ks, W, H, sh_degree=3)
    assert not plain[0].requires_grad and tracked[0].requires_grad
    assert torch.equal(plain[0], tracked[0]) and torch.equal(plain[1], tracked[1])

    bg = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=DT)
    empty = [x[k].detach()[:0] for k in names]
    colors, alphas, meta = rasterize(*empty, viewmats, Ks, W, H, sh_degree=3, backgrounds=bg, render_mode="RGB+ED")
    assert torch.equal(colors[..., :3], bg[:, None, None, :].expand(2, H, W, 3)) and (colors[..., 3] == 0).all()
    assert (alphas == 0).all() and meta["isect_ids"].numel() == 0


def test_gsplat_intersection_metadata():
    s = scene()
    viewmats, Ks = cameras()
    _, _, meta = rasterize(s["means"], s["quats"], s["scales"], s["opacities"], s["rgb"], viewmats, Ks, W, H)
    C, N = 2, len(s["means"])
    tw, th = meta["tile_width"], meta["tile_height"]
    assert (tw, th, meta["n_cameras"], meta["tile_size"]) == (3, 2, 2, 16)
    assert meta["gaussian_ids"] is None and meta["camera_ids"] is None and meta["packed"] is False
    n_isects = int(meta["tiles_per_gauss"].sum())
    assert meta["isect_ids"].shape == (n_isects,) and meta["flatten_ids"].shape == (n_isects,)
    assert torch.equal(meta["isect_ids"], torch.sort(meta["isect_ids"]).values), "gsplat's sort order"
    tile_bits = (tw * th).bit_length()
    cam = meta["isect_ids"] >> (32 + tile_bits)
    assert torch.equal(cam, meta["flatten_ids"].long() // N)
    offsets = meta["isect_offsets"].flatten().long()
    assert meta["isect_offsets"].shape == (C, th, tw) and offsets[0] == 0
    # each (camera, tile) range starts where its key (camera << tile_bits | tile) first appears
    queries = torch.tensor([(c << tile_bits) | t for c in range(C) for t in range(tw * th)])
    assert torch.equal(offsets, torch.searchsorted(meta["isect_ids"] >> 32, queries))
    assert meta["depths"].shape == (C, N) and meta["conics"].shape == (C, N, 3) and meta["opacities"].shape == (C, N)


def test_covars_input_matches_quats_and_scales():
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

    s = scene()
    viewmats, Ks = cameras()
    covars = _quat_scale_to_covar_preci(s["quats"], s["scales"], True, False)[0]
    a = rasterize(s["means"], s["quats"], s["scales"], s["opacities"], s["rgb"], viewmats, Ks, W, H)
    b = rasterize(s["means"], None, None, s["opacities"], s["rgb"], viewmats, Ks, W, H, covars=covars.triu())
    torch.testing.assert_close(a[0], b[0], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs", [{"packed": True}, {"distributed": True}, {"camera_model": "fisheye"}, {"render_mode": "RGBD"}]
)
def test_unsupported_options_raise(kwargs):
    s = scene(n=3)
    viewmats, Ks = cameras()
    with pytest.raises(ValueError, match="rasterize"):
        rasterize(s["means"], s["quats"], s["scales"], s["opacities"], s["rgb"], viewmats, Ks, W, H, **kwargs)


def test_bad_shapes_raise():
    s = scene(n=3)
    viewmats, Ks = cameras()
    with pytest.raises(ValueError, match="colors"):
        rasterize(s["means"], s["quats"], s["scales"], s["opacities"], s["sh"][:, :3], viewmats, Ks, W, H, sh_degree=2)


@pytest.mark.parametrize("absgrad", [False, True])
def test_default_strategy_round_trip(absgrad):
    """gsplat's DefaultStrategy bookkeeping (pre/post backward, grow and prune) runs on our meta on a CPU."""
    s = scene(n=20, seed=7)
    viewmats, Ks = cameras()
    viewmats, Ks = viewmats[:1].float(), Ks[:1].float()
    params = torch.nn.ParameterDict(
        {
            "means": s["means"].float(),
            "scales": torch.log(s["scales"].float()),
            "quats": s["quats"].float(),
            "opacities": torch.logit(s["opacities"].float().clamp(0.01, 0.99)),
            "sh0": s["sh"][:, :1].float(),
            "shN": s["sh"][:, 1:].float(),
        }
    )
    params["opacities"].data[-1] = -10.0  # below prune_opa: pruned at the refine step
    optimizers = {k: torch.optim.Adam([{"params": p, "lr": 1e-3, "name": k}]) for k, p in params.items()}
    strategy = DefaultStrategy(
        refine_start_iter=0, refine_every=2, grow_grad2d=1e-12, grow_scale3d=0.1, absgrad=absgrad
    )
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    target = torch.rand(1, H, W, 3)
    for step in range(1, 3):
        colors, alphas, info = rasterize(
            means=params["means"],
            quats=params["quats"],
            scales=torch.exp(params["scales"]),
            opacities=torch.sigmoid(params["opacities"]),
            colors=torch.cat([params["sh0"], params["shN"]], 1),
            viewmats=viewmats,
            Ks=Ks,
            width=W,
            height=H,
            packed=False,
            near_plane=0.01,
            far_plane=1e10,
            render_mode="RGB",
            sh_degree=3,
            sparse_grad=False,
            absgrad=strategy.absgrad,
            rasterize_mode="classic",
        )
        strategy.step_pre_backward(params, optimizers, state, step, info)
        assert not info["means2d"].is_leaf
        ((colors - target) ** 2).mean().backward()
        visible = info["radii"][0] > 0
        n_before = len(params["means"])
        if step == 1:
            grad = (info["means2d"].absgrad if absgrad else info["means2d"].grad)[0].clone()
            assert grad[visible].norm(dim=-1).gt(0).any()
            assert (grad[~visible] == 0).all()
        strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        if step == 1:  # bookkeeping only
            assert torch.equal(state["count"], visible.float())
            grad[:, 0] *= W / 2.0
            grad[:, 1] *= H / 2.0
            torch.testing.assert_close(state["grad2d"], grad.norm(dim=-1) * visible)
            assert len(params["means"]) == n_before
        else:  # refine step: Gaussians with a gradient duplicated (small) or split (large), the transparent one pruned
            assert len(params["means"]) > n_before
            for k, p in params.items():
                assert optimizers[k].param_groups[0]["params"][0] is p
                assert optimizers[k].state[p]["exp_avg"].shape == p.shape
    colors, _, _ = rasterize(
        params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
        torch.cat([params["sh0"], params["shN"]], 1), viewmats, Ks, W, H, sh_degree=3,
    )  # fmt: skip
    assert torch.isfinite(colors).all()


def test_two_thousand_gaussians_forward_backward():
    """Sanity (no timing assertion): 2k Gaussians at 64x64 in float32, as splatfacto calls it."""
    torch.manual_seed(0)
    n, size = 2000, 64
    means = (torch.rand(n, 3) * 2 - 1).requires_grad_()
    quats = torch.randn(n, 4).requires_grad_()
    scales = torch.full((n, 3), 0.06).requires_grad_()
    opacities = torch.full((n,), 0.5).requires_grad_()
    sh = (torch.randn(n, 16, 3) * 0.3).requires_grad_()
    viewmats = look_at((0.0, 0.0, -3.0)).float()[None]
    Ks = torch.tensor([[[64.0, 0.0, 32.0], [0.0, 64.0, 32.0], [0.0, 0.0, 1.0]]])
    colors, alphas, meta = rasterize(
        means, quats, scales, opacities, sh, viewmats, Ks, size, size, sh_degree=3, render_mode="RGB+ED", absgrad=True
    )
    meta["means2d"].retain_grad()
    assert colors.shape == (1, size, size, 4) and alphas.shape == (1, size, size, 1)
    assert float(alphas.detach().mean()) > 0.5
    (colors[..., :3].mean() + alphas.mean()).backward()
    grads = [t.grad for t in (means, quats, scales, opacities, sh)] + [meta["means2d"].grad, meta["means2d"].absgrad]
    for g in grads:
        assert torch.isfinite(g).all() and g.abs().sum() > 0
