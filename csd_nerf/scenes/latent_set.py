"""A set of independent latents, one per particle: the video case and the simplest scene for tests/benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class LatentSetScene:
    """Particles are rows of one latent tensor ``[N, 4, h, w]`` initialised from the source latents."""

    def __init__(self, source_latents: torch.Tensor, conditioning: torch.Tensor) -> None:
        if source_latents.shape != conditioning.shape:
            raise ValueError("source latents and image conditioning must have the same shape")
        self.source_latents = source_latents.detach().float()
        self.conditioning = conditioning.detach().float()
        self.parameter = torch.nn.Parameter(self.source_latents.clone())
        self.num_particles = source_latents.shape[0]

    def sources(self, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(list(ids), device=self.source_latents.device)
        return self.source_latents[index], self.conditioning[index]

    def latents(self, ids: Sequence[int]) -> torch.Tensor:
        return self.parameter[torch.as_tensor(list(ids), device=self.parameter.device)]
