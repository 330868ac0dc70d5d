"""Running stock nerfstudio commands on a machine without network access (demo and tests).

* ``ns-train nerfacto`` builds an LPIPS metric whose AlexNet backbone torchvision downloads at construction.
  :func:`torch_home_for_offline_nerfacto` returns a private ``TORCH_HOME`` holding AlexNet weights: the real
  ones copied from the user's cache when present, else randomly initialised placeholders. The placeholder
  only changes the LPIPS *metric* nerfacto logs; training and the trained scene are unaffected.
* ``ns-render`` writes videos with an ``ffmpeg`` found on ``PATH``. :func:`ffmpeg_bin_dir` returns a folder
  holding a link to the ffmpeg binary bundled with ``imageio-ffmpeg`` (a pip dependency) when there is none.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["ALEXNET_FILE", "torch_home_for_offline_nerfacto", "ffmpeg_bin_dir", "offline_tool_env"]

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
"""torchvision's file name for AlexNet_Weights.IMAGENET1K_V1 (the weights LPIPS asks for)."""


def _user_torch_home() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch"
    return Path(os.environ.get("TORCH_HOME", default))


def torch_home_for_offline_nerfacto(root: Path) -> tuple[Path, bool]:
    """A ``TORCH_HOME`` under ``root`` where torchvision finds AlexNet weights without a download.

    Returns the folder and whether the weights are the real ones (copied from the user's torch cache).
    """
    import torch
    import torchvision

    home = Path(root) / "torch_home"
    target = home / "hub" / "checkpoints" / ALEXNET_FILE
    real = _user_torch_home() / "hub" / "checkpoints" / ALEXNET_FILE
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        if real.is_file():
            shutil.copyfile(real, target)
        else:
            torch.save(torchvision.models.alexnet(weights=None).state_dict(), target)
    return home, target.stat().st_size == (real.stat().st_size if real.is_file() else -1)


def ffmpeg_bin_dir(root: Path) -> Path | None:
    """A folder to put on ``PATH`` so ``ffmpeg`` resolves to imageio-ffmpeg's binary; None if ffmpeg is on PATH."""
    if shutil.which("ffmpeg"):
        return None
    import imageio_ffmpeg

    folder = Path(root) / "bin"
    link = folder / "ffmpeg"
    if not link.exists():
        folder.mkdir(parents=True, exist_ok=True)
        link.symlink_to(imageio_ffmpeg.get_ffmpeg_exe())
    return folder


def offline_tool_env(root: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for stock ``ns-*`` subprocesses: AlexNet weights without a download, ffmpeg on PATH."""
    env = dict(os.environ if base is None else base)
    env["TORCH_HOME"] = str(torch_home_for_offline_nerfacto(root)[0])
    bin_dir = ffmpeg_bin_dir(root)
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env
