"""The metrics as pure math on embedding and image tensors (no model loading here).

CLIP metrics follow InstructPix2Pix / Instruct-NeRF2NeRF (``metrics/clip_similarity.py``): embeddings are
L2-normalised first, and "directions" are differences of normalised embeddings. A cosine with a (numerically)
zero vector is undefined and comes back as NaN rather than as a silent 0, so that means can skip it honestly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "ZERO_NORM_TOL",
    "Summary",
    "safe_cosine",
    "unit",
    "clip_directional_similarity",
    "clip_direction_consistency",
    "clip_image_consistency",
    "clip_image_similarity",
    "psnr",
    "summarize",
]

# Differences of unit-norm embeddings below this norm count as "no change". Real edits move CLIP embeddings by
# ~1e-2 or more; float32 noise between two encodings of the same image is ~1e-7.
ZERO_NORM_TOL = 1e-4


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` scaled to unit L2 norm, in float64 (zero rows stay zero)."""
    x = x.double()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)


def safe_cosine(a: torch.Tensor, b: torch.Tensor, min_norm: float = ZERO_NORM_TOL) -> torch.Tensor:
    """Row-wise cosine similarity of ``a`` and ``b`` (broadcast over leading dims), NaN where a norm is below ``min_norm``."""
    a, b = torch.broadcast_tensors(a.double(), b.double())
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    cos = (a * b).sum(dim=-1) / (na * nb).clamp_min(torch.finfo(torch.float64).tiny)
    undefined = (na < min_norm) | (nb < min_norm)
    return torch.where(undefined, torch.full_like(cos, math.nan), cos.clamp(-1.0, 1.0))


def _check_pairs(source: torch.Tensor, edited: torch.Tensor) -> None:
    if source.ndim != 2 or source.shape != edited.shape:
        raise ValueError(
            f"expected two [F, D] embedding tensors of one shape, got {tuple(source.shape)} and {tuple(edited.shape)}"
        )


def clip_directional_similarity(
    source_images: torch.Tensor,
    edited_images: torch.Tensor,
    source_text: torch.Tensor,
    target_text: torch.Tensor,
) -> torch.Tensor:
    """Per frame ``cos(E_I(edited_k) - E_I(source_k), E_T(target) - E_T(source))`` on unit embeddings.

    Args:
        source_images, edited_images: image embeddings ``[F, D]``.
        source_text, target_text: caption embeddings ``[D]`` or ``[1, D]``.

    Returns:
        ``[F]`` float64; NaN for a frame whose image did not change (or when the captions embed identically).
    """
    _check_pairs(source_images, edited_images)
    image_dir = unit(edited_images) - unit(source_images)
    text_dir = unit(target_text.reshape(1, -1)) - unit(source_text.reshape(1, -1))
    return safe_cosine(image_dir, text_dir)


def clip_direction_consistency(source_images: torch.Tensor, edited_images: torch.Tensor) -> torch.Tensor:
    """Instruct-NeRF2NeRF's temporal consistency: cosine of the image-change directions of frames k and k + 1.

    Returns ``[F - 1]`` float64 (empty for one frame); NaN for a pair where either frame did not change.
    """
    _check_pairs(source_images, edited_images)
    change = unit(edited_images) - unit(source_images)
    return safe_cosine(change[:-1], change[1:])


def clip_image_consistency(edited_images: torch.Tensor) -> torch.Tensor:
    """The CSD paper's consistency: cosine of the CLIP embeddings of consecutive edited frames, ``[F - 1]``."""
    if edited_images.ndim != 2:
        raise ValueError(f"expected an [F, D] embedding tensor, got {tuple(edited_images.shape)}")
    e = unit(edited_images)
    return safe_cosine(e[:-1], e[1:])


def clip_image_similarity(source_images: torch.Tensor, edited_images: torch.Tensor) -> torch.Tensor:
    """Cosine of the CLIP embeddings of each source frame and its edit, ``[F]`` (how much of the source survives)."""
    _check_pairs(source_images, edited_images)
    return safe_cosine(unit(source_images), unit(edited_images))


def psnr(source: torch.Tensor, edited: torch.Tensor, max_value: float = 1.0) -> torch.Tensor:
    """Per-frame PSNR in dB of ``edited`` against ``source`` (``[F, ...]``, values in ``[0, max_value]``).

    Returns ``[F]`` float64; ``+inf`` for a frame identical to its source.
    """
    if source.shape != edited.shape:
        raise ValueError(f"image stacks differ in shape: {tuple(source.shape)} vs {tuple(edited.shape)}")
    diff = source.double() - edited.double()
    mse = diff.reshape(diff.shape[0], -1).square().mean(dim=1)
    return 10.0 * torch.log10(max_value**2 / mse)  # mse = 0 gives +inf, which is what PSNR of identical frames is


@dataclass(frozen=True)
class Summary:
    """Statistics over the finite values of one per-frame metric; ``undefined`` counts NaN/inf frames skipped."""

    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    count: int
    undefined: int


def summarize(values: torch.Tensor) -> Summary:
    """Mean, population std, min and max over the finite entries of ``values`` (all ``None`` when there are none)."""
    flat = values.double().reshape(-1)
    finite = flat[torch.isfinite(flat)]
    undefined = int(flat.numel() - finite.numel())
    if finite.numel() == 0:
        return Summary(None, None, None, None, 0, undefined)
    return Summary(
        mean=float(finite.mean()),
        std=float(finite.std(unbiased=False)),
        min=float(finite.min()),
        max=float(finite.max()),
        count=int(finite.numel()),
        undefined=undefined,
    )
