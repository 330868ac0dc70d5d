"""Checkpoint compatibility between nerfstudio 1.1.5 and torch >= 2.6.

nerfstudio 1.1.5 calls ``torch.load`` without ``weights_only``; since torch 2.6 that defaults to ``True`` and
refuses nerfstudio's checkpoints because its LR schedulers leave numpy scalars in the optimizer and scheduler
states ("Unsupported global: numpy.core.multiarray.scalar"). Two remedies, both used:

* :func:`register_safe_globals` allows exactly those numpy types for ``weights_only`` loading. It runs when
  nerfstudio discovers this plugin, which every ``ns-*`` command does, so stock ``ns-viewer``, ``ns-render``,
  ``ns-export`` and ``ns-train --load-dir`` read stock checkpoints again.
* :func:`to_builtin` turns numpy scalars into Python numbers, so the checkpoints we write need no extra globals.

Only ``torch``, ``numpy`` and our error base are imported here: this module is loaded by every ``ns-*`` command.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from csd_nerf.errors import UserError

__all__ = ["register_safe_globals", "to_builtin", "load_checkpoint", "CheckpointError"]


class CheckpointError(UserError):
    """A checkpoint cannot be read; the message is one line that names the fix."""


def _numpy_safe_globals() -> list[Any]:
    """The numpy objects that appear in pickled numpy scalars: the reconstructor, dtype and dtype classes."""
    # numpy 2 renamed numpy.core to numpy._core (numpy 1.26 has a partial numpy._core stub)
    module = "numpy._core.multiarray" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core.multiarray"
    scalar = importlib.import_module(module).scalar
    dtype_classes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}
    entries: list[Any] = [scalar, np.dtype, *sorted(dtype_classes, key=lambda c: c.__name__)]
    # A checkpoint written under the other numpy major names the reconstructor by that module path.
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        if module != scalar.__module__:
            entries.append((scalar, f"{module}.scalar"))
    return entries


def register_safe_globals() -> bool:
    """Allow the numpy scalar types of nerfstudio checkpoints in ``torch.load(weights_only=True)``.

    Returns False (and does nothing) on a torch without ``add_safe_globals`` (< 2.4, which loads them anyway).
    """
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is None:
        return False
    entries = _numpy_safe_globals()
    try:
        add(entries)
    except (TypeError, ValueError):  # torch 2.4 does not accept (object, name) pairs
        add([e for e in entries if not isinstance(e, tuple)])
    return True


def to_builtin(obj: Any) -> Any:
    """A copy of nested dicts/lists/tuples with numpy scalars and arrays replaced by Python values / tensors."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    if isinstance(obj, dict):
        return {k: to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_builtin(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_builtin(v) for v in obj)
    return obj


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a nerfstudio checkpoint with ``weights_only=True`` (numpy scalars allowed), on the CPU.

    Raises:
        CheckpointError: missing, unreadable or not a nerfstudio checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass the nerfstudio_models folder of a trained run")
    register_safe_globals()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a checkpoint we can read"
        # torch's own message advises weights_only=False, which is no fix for a damaged file.
        kind = "it holds objects nerfstudio checkpoints do not" if "Unsupported global" in str(exc) else None
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a valid checkpoint ({kind or 'corrupt or truncated'}): "
            f"pass one written by ns-train"
        ) from None
    if not isinstance(state, dict) or "pipeline" not in state:
        raise CheckpointError(
            f"{path} is not a nerfstudio checkpoint (no 'pipeline' state): pass one written by ns-train"
        )
    return state
