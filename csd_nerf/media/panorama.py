"""A panorama as a scene seen through crop cameras: one latent canvas, each view a square window of it.

``latents(views)`` slices the drawn windows out of the one canvas parameter, so ``latents.backward(gradient=g)``
sums the windows' gradients into the canvas; a gradient hook divides that sum by the count map of the drawn
windows, so an overlap is averaged (not counted twice) and a latent pixel no drawn window covers gets zero
(the reference code's "normalize the gradient of each pixel by counting the appearance"). A ``weight`` on the
canvas (a mask in latent space) multiplies the averaged gradient, and windows it is 0 on are never drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from csd_nerf.distributed import Share
from csd_nerf.errors import SettingError

STRIDE_PER_WINDOW = 4
"""Windows step by a quarter of their side: the official code's stride of 16 latents for 64-latent windows.
The window itself is the UNet's training size (``unet.config.sample_size``, 64 latents = 512 px for SD)."""


def default_stride(window: int) -> int:
    """The stride for ``window``: a quarter of it (16 for SD's 64), at least 1."""
    return max(1, window // STRIDE_PER_WINDOW)


def check_windows(window: int, stride: int) -> None:
    """Refuse, in one line, a window or stride below one latent pixel, or a stride that would leave gaps."""
    if window < 1 or stride < 1:
        raise SettingError(f"--window {window} and --stride {stride}: use at least 1 latent pixel each")
    if stride > window:
        raise SettingError(
            f"--stride {stride} is larger than --window {window}: the gaps between windows would never be edited; "
            f"use a stride of at most {window} latent pixels (default {default_stride(window)})"
        )


def window_offsets(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows along one side: every ``stride``, plus one flush with the end if needed.

    With ``stride <= window`` and the extra last window, every position is covered by at least one window.
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window ({window}) and stride ({stride}) must be positive")
    if stride > window:
        raise ValueError(f"stride {stride} > window {window} leaves positions no window covers")
    if length < window:
        raise ValueError(f"side of {length} is smaller than one window of {window}")
    offsets = list(range(0, length - window + 1, stride))
    if offsets[-1] != length - window:
        offsets.append(length - window)
    return offsets


def window_grid(height: int, width: int, window: int, stride: int) -> list[tuple[int, int]]:
    """``(top, left)`` of every window over a ``height x width`` canvas, row-major."""
    return [
        (top, left) for top in window_offsets(height, window, stride) for left in window_offsets(width, window, stride)
    ]


def count_map(
    windows: Sequence[tuple[int, int]], height: int, width: int, window: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """How many of ``windows`` cover each canvas position, ``[height, width]`` float32."""
    counts = torch.zeros(height, width, device=device)
    for top, left in windows:
        counts[top : top + window, left : left + window] += 1
    return counts


def inverse_counts(counts: torch.Tensor) -> torch.Tensor:
    """``1 / count`` where covered, 0 where not."""
    return torch.where(counts > 0, counts.clamp(min=1).reciprocal(), torch.zeros_like(counts))


class PanoramaScene:
    """Views are the ``window x window`` latent windows of one canvas ``[1, 4, H, W]``.

    Args:
        source_latents: the whole image's source latents ``[1, 4, H, W]``.
        conditioning: its IP2P image conditioning, same shape.
        window: window side in latent pixels (IP2P's training size: 64 = 512 image pixels).
        stride: window stride in latent pixels, at most ``window`` (:func:`default_stride`: 16 for 64).
        weight: ``[H, W]`` (or ``[1, 1, H, W]``) in [0, 1], e.g. a mask in latent space: multiplies the canvas
            gradient, so latents where it is 0 never move; the windows it is 0 on everywhere are dropped (their
            gradient would be zero), every latent pixel it weighs is still covered.
    """

    def __init__(
        self,
        source_latents: torch.Tensor,
        conditioning: torch.Tensor,
        window: int,
        stride: int,
        weight: torch.Tensor | None = None,
    ):
        if source_latents.ndim != 4 or source_latents.shape[0] != 1:
            raise ValueError(f"panorama latents must be [1, C, H, W], got {tuple(source_latents.shape)}")
        if source_latents.shape != conditioning.shape:
            raise ValueError("source latents and image conditioning must have the same shape")
        height, width = source_latents.shape[-2:]
        if min(height, width) < window:
            raise ValueError(f"the canvas is {width}x{height} latents, smaller than one window of {window}")
        self.source_latents = source_latents.detach().float()
        self.conditioning = conditioning.detach().float()
        self.canvas = torch.nn.Parameter(self.source_latents.clone())
        self.window, self.stride = window, stride
        self.height, self.width = height, width
        self.windows = window_grid(height, width, window, stride)
        self.windows_total = len(self.windows)
        self.weight = None
        if weight is not None:
            if weight.numel() != height * width:
                raise ValueError(f"weight {tuple(weight.shape)} does not fit the {width}x{height} canvas")
            self.weight = weight.detach().float().reshape(height, width).to(self.canvas.device)
            weighted = [self.weight[top : top + window, left : left + window].any() for top, left in self.windows]
            self.windows = [corner for corner, keep in zip(self.windows, weighted, strict=True) if keep]
            if not self.windows:
                raise ValueError("the weight is zero everywhere: no window to edit")
        self.num_views = len(self.windows)
        self.share: Share | None = None
        """The step's windows when several processes share them (set by the editor): overlaps are counted over
        all of them, so that the gradients summed over the processes are the one-process average."""

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.canvas]

    def _slices(self, canvas: torch.Tensor, views: Sequence[int]) -> torch.Tensor:
        w = self.window
        crops = [canvas[0, :, top : top + w, left : left + w] for top, left in (self.windows[int(i)] for i in views)]
        return torch.stack(crops)

    def sources(self, views: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Source latents and conditioning of the windows: slices of the whole image's cached encoding."""
        return self._slices(self.source_latents, views), self._slices(self.conditioning, views)

    def count_map(self, views: Sequence[int]) -> torch.Tensor:
        """How many of the windows ``views`` cover each canvas latent pixel, ``[H, W]``."""
        windows = [self.windows[int(i)] for i in views]
        return count_map(windows, self.height, self.width, self.window, self.canvas.device)

    def latents(self, views: Sequence[int]) -> torch.Tensor:
        """The windows' current latents ``[n, 4, window, window]``; their backward averages overlaps on the canvas
        (and multiplies the average by the weight)."""
        scale = inverse_counts(self.count_map(self.share.ids if self.share is not None else views))
        if self.weight is not None:
            scale = scale * self.weight
        canvas = self.canvas.clone()
        # Autograd sums every window's gradient into ``canvas`` before this hook runs: divide the sum by the count.
        canvas.register_hook(lambda grad: grad * scale)
        return self._slices(canvas, views)
