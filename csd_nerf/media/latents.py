"""A set of independent latents, one per view: the video's scene, and the simplest scene for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class LatentSetScene:
    """Views are rows of one latent tensor ``[N, 4, h, w]``, initialised from the source latents.

    Each view's camera sees only its own row: the degenerate camera setup of a video (one camera per frame).
    """

    def __init__(self, source_latents: torch.Tensor, conditioning: torch.Tensor) -> None:
        if source_latents.shape != conditioning.shape:
            raise ValueError("source latents and image conditioning must have the same shape")
        self.source_latents = source_latents.detach().float()
        self.conditioning = conditioning.detach().float()
        self.parameter = torch.nn.Parameter(self.source_latents.clone())
        self.num_views = source_latents.shape[0]

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.parameter]

    def sources(self, views: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(list(views), device=self.source_latents.device)
        return self.source_latents[index], self.conditioning[index]

    def latents(self, views: Sequence[int]) -> torch.Tensor:
        return self.parameter[torch.as_tensor(list(views), device=self.parameter.device)]
