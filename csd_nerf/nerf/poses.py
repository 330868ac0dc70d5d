"""Camera poses of an edit: those the source run refined, kept unless the user asks to refine them further."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["SourcePoses"]


class SourcePoses:
    """Mixin for a nerfstudio model with a ``camera_optimizer``, placed before the model class.

    With ``config.optimize_cameras`` off (the default), the source run's pose corrections are loaded and applied
    but neither trained nor offered to an optimiser: the edit must not move cameras to explain away its targets.
    """

    config: Any
    camera_optimizer: torch.nn.Module

    def freeze_source_poses(self) -> None:
        """Call at the end of ``populate_modules``."""
        if not self.config.optimize_cameras:
            self.camera_optimizer.requires_grad_(False)

    def get_param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        groups = super().get_param_groups()  # type: ignore[misc]
        if not self.config.optimize_cameras:
            groups.pop("camera_opt", None)
        return groups
