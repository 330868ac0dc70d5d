"""LPIPS (AlexNet) through torchmetrics, when its real weights can be had; otherwise a reason instead of a crash.

torchmetrics ships LPIPS's linear heads but fetches the AlexNet backbone from download.pytorch.org into
``$TORCH_HOME/hub/checkpoints``; offline and uncached, LPIPS is simply reported as unavailable. A file already
in the cache is loaded without any check, so a stand-in there (e.g. the random AlexNet that
``csd_nerf.testing.offline`` writes for stock nerfstudio offline) would give meaningless LPIPS values: the
file's SHA-256 is checked against the one its name carries (as ``torch.hub`` checks a download), and LPIPS is
reported unavailable when they differ.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

__all__ = ["LpipsScorer", "load_lpips", "frames_to_unit_tensor", "cached_weights", "matches_its_hash"]

LpipsScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def frames_to_unit_tensor(frames: np.ndarray) -> torch.Tensor:
    """``[F, H, W, 3]`` uint8 frames as a ``[F, 3, H, W]`` float32 tensor in ``[0, 1]``."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


def cached_weights(net_type: str = "alex") -> Path | None:
    """Where torchvision keeps the backbone LPIPS loads (``None`` for a backbone we do not check)."""
    if net_type != "alex":
        return None
    from torchvision.models import AlexNet_Weights

    name = AlexNet_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def matches_its_hash(path: Path) -> bool:
    """Whether ``path``'s SHA-256 starts with the hex digits its name carries (``name-<hash>.pth``)."""
    expected = torch.hub.HASH_REGEX.search(path.name)
    if expected is None:
        return True  # a name without a hash: nothing to check against
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().startswith(expected.group(1))


def load_lpips(
    device: torch.device, net_type: str = "alex", batch_size: int = 8
) -> tuple[LpipsScorer | None, str | None]:
    """An LPIPS scorer ``(a, b) -> [F]`` on ``[F, 3, H, W]`` images in ``[0, 1]``, or ``(None, reason)``."""
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
    except ImportError as err:
        return None, f"torchmetrics with LPIPS is not installed ({err}); pip install torchmetrics torchvision"
    weights = cached_weights(net_type)
    if weights is not None and weights.is_file() and not matches_its_hash(weights):
        return None, (
            f"the AlexNet weights in {weights} are not torchvision's (their SHA-256 differs from the one in the "
            "name: a stand-in, e.g. written for nerfstudio offline, or a damaged download); delete the file and "
            "connect once to download the real ones, or pass --no-lpips"
        )
    try:
        # torch.hub prints "Downloading: ..." even when offline; the caller reports the outcome instead.
        sink = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")  # torchvision's deprecation chatter about `pretrained`
            metric = LearnedPerceptualImagePatchSimilarity(net_type=net_type, reduction="none", normalize=True)
        metric = metric.to(device).eval()
    except Exception as err:  # offline: URLError; corrupt cache: RuntimeError; ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return None, (
            f"LPIPS {net_type} weights unavailable ({type(err).__name__}: {first}); connect once to download them "
            "into $TORCH_HOME/hub/checkpoints, or pass --no-lpips"
        )

    @torch.no_grad()
    def score(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, a.shape[0], batch_size):
            metric.reset()
            metric.update(a[start : start + batch_size].to(device), b[start : start + batch_size].to(device))
            out.append(metric.compute().reshape(-1).double().cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    return score, None
