"""Collaborative Score Distillation: the SVGD coupling of per-view residuals (Kim et al. 2023, Eq. 8;
``docs/DESIGN.md`` §1 step 4).

Pure torch, no diffusers. Every function works on a batch of N particles stacked on dim 0.
"""

from __future__ import annotations

import math

import torch

__all__ = ["pairwise_sq_dists", "median_bandwidth", "rbf_kernel", "csd_gradient"]


def pairwise_sq_dists(x: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``D_ij = ||x_i - x_j||^2`` of the flattened particles, in float32."""
    flat = x.reshape(x.shape[0], -1).float()
    # The direct (non-matmul) path keeps D exactly zero for identical particles, which the h = 0 case relies on.
    return torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist").square()


def median_bandwidth(sq_dists: torch.Tensor) -> torch.Tensor:
    """``h = median_{i != j}(D_ij) / log(N + 1)`` with torch's lower median; 0 for a single particle."""
    n = sq_dists.shape[0]
    if n < 2:
        return sq_dists.new_zeros(())
    off_diagonal = sq_dists[~torch.eye(n, dtype=torch.bool, device=sq_dists.device)]
    return off_diagonal.median() / math.log(n + 1)


def rbf_kernel(x: torch.Tensor, bandwidth_multiplier: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """RBF kernel of the particles with the median-heuristic bandwidth, and the SVGD repulsion.

    Args:
        x: particles ``[N, ...]``.
        bandwidth_multiplier: scales the median bandwidth ``h`` (1.0 is the paper's heuristic).

    Returns:
        ``K`` ``[N, N]`` with ``K_ij = exp(-D_ij / h)``, and ``repulsion`` of x's shape (float32) with
        ``repulsion[i] = sum_j grad_{x_j} k(x_j, x_i) = (2 / h) sum_j K_ij (x_i - x_j)``.
        ``h`` is treated as a constant. ``N = 1`` gives ``K = [1]``; ``h = 0`` (all particles identical)
        gives ``K`` all ones; both give zero repulsion.
    """
    xf = x.float()
    n = xf.shape[0]
    sq_dists = pairwise_sq_dists(xf)
    h = median_bandwidth(sq_dists) * bandwidth_multiplier
    if n < 2 or h.item() <= 0.0:
        return torch.ones(n, n, dtype=torch.float32, device=x.device), torch.zeros_like(xf)
    kernel = torch.exp(-sq_dists / h)
    flat = xf.reshape(n, -1)
    # sum_j K_ij (x_i - x_j) = x_i * sum_j K_ij - (K x)_i
    repulsion = (2.0 / h) * (flat * kernel.sum(dim=1, keepdim=True) - kernel @ flat)
    return kernel, repulsion.reshape(xf.shape)


def csd_gradient(
    noisy_latents: torch.Tensor,
    residuals: torch.Tensor,
    weight: float | torch.Tensor,
    coupling: bool = True,
    bandwidth_multiplier: float = 1.0,
) -> torch.Tensor:
    """The CSD gradient w.r.t. each particle's latent: ``g_i = weight/N * (sum_j K_ij d_j - repulsion_i)``.

    Args:
        noisy_latents: the noisy target latents ``x_i = z_t^(i)``, ``[N, ...]``; the kernel is computed on them.
        residuals: the guidance residuals ``d_i``, same shape.
        weight: ``w(t) = 1 - alpha_bar_t``.
        coupling: ``False`` sets ``K = I`` and drops the repulsion (independent particles, for ablations).
        bandwidth_multiplier: scales the kernel bandwidth (ablations).

    Returns:
        ``g`` with the inputs' shape, computed in float32 and returned in ``residuals``' dtype.
    """
    if noisy_latents.shape != residuals.shape:
        raise ValueError(f"noisy_latents {tuple(noisy_latents.shape)} and residuals {tuple(residuals.shape)} differ")
    n = residuals.shape[0]
    d = residuals.float().reshape(n, -1)
    if coupling:
        kernel, repulsion = rbf_kernel(noisy_latents, bandwidth_multiplier)
        mixed = kernel @ d - repulsion.reshape(n, -1)
    else:
        mixed = d
    if isinstance(weight, torch.Tensor):
        weight = weight.float()
    grad = (weight / n) * mixed
    return grad.reshape(residuals.shape).to(residuals.dtype)
