"""nerfacto for editing: no LPIPS download at construction, frozen camera poses, settled proposal sampling."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig
from nerfstudio.utils.rich_utils import CONSOLE

__all__ = ["CSDNerfactoModelConfig", "CSDNerfactoModel", "LazyLPIPS"]


class LazyLPIPS:
    """LPIPS built on first use, so that constructing the model needs no download (AlexNet weights).

    Not an ``nn.Module``: it stays out of the state dict, which keeps our checkpoints free of LPIPS weights.
    Offline, the first call warns once and every call returns NaN instead of failing the run.
    """

    def __init__(self, factory: Any, **kwargs: Any) -> None:
        self._factory = factory
        self._kwargs = kwargs
        self._metric: Any = None
        self._failed = False

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self._metric is None and not self._failed:
            try:
                self._metric = self._factory(**self._kwargs).to(a.device)
            except Exception as exc:  # offline: torchvision cannot download AlexNet
                self._failed = True
                CONSOLE.print(f"[yellow]LPIPS metric unavailable ({type(exc).__name__}); reporting NaN instead")
        if self._metric is None:
            return torch.tensor(math.nan)
        return self._metric(a, b)


@contextlib.contextmanager
def _lazy_lpips_in_nerfacto() -> Iterator[None]:
    """Make nerfacto's ``populate_modules`` build :class:`LazyLPIPS` instead of downloading AlexNet.

    nerfacto imports the metric class from ``torchmetrics.image.lpip`` inside ``populate_modules``, so swapping
    that module attribute for the duration of the call is enough.
    """
    from torchmetrics.image import lpip

    original = lpip.LearnedPerceptualImagePatchSimilarity
    lpip.LearnedPerceptualImagePatchSimilarity = functools.partial(LazyLPIPS, original)  # type: ignore[misc]
    try:
        yield
    finally:
        lpip.LearnedPerceptualImagePatchSimilarity = original  # type: ignore[misc]


@dataclass
class CSDNerfactoModelConfig(NerfactoModelConfig):
    """nerfacto with the changes editing needs; every nerfacto hyper-parameter keeps its meaning."""

    _target: type = field(default_factory=lambda: CSDNerfactoModel)
    optimize_cameras: bool = False
    """Keep refining the source run's camera poses while editing (off: edits are not consistent targets)."""
    settled_proposals: bool = True
    """Start with fully annealed proposal weights: the source run converged, so editing must not re-warm them."""


class CSDNerfactoModel(NerfactoModel):
    """nerfacto whose construction is offline-safe and whose camera poses stay those of the source run."""

    config: CSDNerfactoModelConfig

    def populate_modules(self) -> None:
        with _lazy_lpips_in_nerfacto():
            super().populate_modules()
        if not self.config.optimize_cameras:
            self.camera_optimizer.requires_grad_(False)

    def get_param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        groups = super().get_param_groups()
        if not self.config.optimize_cameras:
            groups.pop("camera_opt", None)
        return groups

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> list[TrainingCallback]:
        if not (self.config.use_proposal_weight_anneal and self.config.settled_proposals):
            return super().get_training_callbacks(training_callback_attributes)
        self.proposal_sampler.set_anneal(1.0)
        return [
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=self.proposal_sampler.step_cb,
            )
        ]

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict[str, torch.Tensor]:
        loss_dict = super().get_loss_dict(outputs, batch, metrics_dict)
        if not self.config.optimize_cameras:
            loss_dict.pop("camera_opt_regularizer", None)
        return loss_dict
