"""nerfacto for editing: no LPIPS download at construction, frozen camera poses and appearance, settled and
explicitly scheduled proposal sampling."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig
from nerfstudio.utils.rich_utils import CONSOLE

from csd_nerf.nerf.poses import SourcePoses

__all__ = ["CSDNerfactoModelConfig", "CSDNerfactoModel", "LazyLPIPS", "lazy_lpips"]


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
def lazy_lpips() -> Iterator[None]:
    """Make nerfacto's and splatfacto's ``populate_modules`` build :class:`LazyLPIPS` instead of downloading AlexNet.

    Both import the metric class from ``torchmetrics.image.lpip`` inside ``populate_modules``, so swapping that
    module attribute for the duration of the call is enough.
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
    source_config: ClassVar[type] = NerfactoModelConfig
    """The model config of the runs this one edits (checked when reading the source's config.yml)."""
    optimize_cameras: bool = False
    """Keep refining the source run's camera poses while editing (off: edits are not consistent targets)."""
    settled_proposals: bool = True
    """Start with fully annealed proposal weights: the source run converged, so editing must not re-warm them."""
    freeze_appearance: bool = True
    """Keep the per-camera appearance embeddings of the source run: ns-render shows their mean, so an edit that
    trained them could hide per-view content where no render shows it (measured with the known-answer edit)."""


class CSDNerfactoModel(SourcePoses, NerfactoModel):
    """nerfacto whose construction is offline-safe, whose camera poses (and by default appearance embeddings) stay
    those of the source run, and whose proposal updates are decided once per edit step (see
    :meth:`proposal_updates`)."""

    config: CSDNerfactoModelConfig

    def populate_modules(self) -> None:
        with lazy_lpips():
            super().populate_modules()
        self.freeze_source_poses()
        if self.config.freeze_appearance and self.field.embedding_appearance is not None:
            self.field.embedding_appearance.requires_grad_(False)

    def proposal_update_due(self) -> bool:
        """Whether nerfacto would train its proposal networks on this step (its own schedule, read not consumed)."""
        sampler = self.proposal_sampler
        return bool(sampler._steps_since_update > sampler.update_sched(sampler._step) or sampler._step < 10)

    @contextmanager
    def proposal_updates(self, enabled: bool) -> Iterator[None]:
        """Render with proposal densities that do (``enabled``) or do not carry a graph, for every ray batch inside.

        nerfacto decides this per ``generate_ray_samples`` call from a counter that the first updating call resets,
        which fits one forward pass per step. An edit step renders many ray chunks, and twice with deferred
        backpropagation: left alone, the graph-free first pass would spend the update on its first chunk and
        every re-rendered chunk would run the proposals without a graph, so they would never learn. Here the
        caller decides once per step (:meth:`proposal_update_due`) and :meth:`finish_proposal_step` consumes it.
        """
        sampler = self.proposal_sampler
        saved = sampler._step, sampler._steps_since_update
        # generate_ray_samples updates iff steps_since_update > update_sched(step) or step < 10.
        sampler._step, sampler._steps_since_update = (0, 0) if enabled else (1 << 30, -(1 << 30))
        try:
            yield
        finally:
            sampler._step, sampler._steps_since_update = saved

    def finish_proposal_step(self, updated: bool) -> None:
        """Consume this step's proposal update, as one nerfacto forward pass would have."""
        if updated:
            self.proposal_sampler._steps_since_update = 0

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
