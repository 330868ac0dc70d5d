"""A set of independent latents, one per view: the video's scene, and the simplest scene for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def weight_gradient(tensor: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """``tensor`` itself in the forward pass; its backward multiplies the gradient by ``weight`` (broadcast).

    A region of a scene (a mask) is a weight on its parameters' gradient: where it is 0 they never move.
    ``None`` is no weight (``tensor`` returned as it is).
    """
    if weight is None:
        return tensor
    out = tensor.view_as(tensor)  # a new autograd node, so the hook sees this use of ``tensor`` only
    out.register_hook(lambda grad: grad * weight)
    return out


class LatentSetScene:
    """Views are rows of one latent tensor ``[N, 4, h, w]``, initialised from the source latents.

    Each view's camera sees only its own row: the degenerate camera setup of a video (one camera per frame).
    ``weight`` (``[N, 1, h, w]``, broadcast over channels; e.g. a video's mask in latent space) multiplies each
    view's latent gradient: latents where it is 0 never move.
    """

    def __init__(
        self, source_latents: torch.Tensor, conditioning: torch.Tensor, weight: torch.Tensor | None = None
    ) -> None:
        if source_latents.shape != conditioning.shape:
            raise ValueError("source latents and image conditioning must have the same shape")
        self.source_latents = source_latents.detach().float()
        self.conditioning = conditioning.detach().float()
        self.parameter = torch.nn.Parameter(self.source_latents.clone())
        self.num_views = source_latents.shape[0]
        self.weight = None
        if weight is not None:
            count, _, height, width = self.source_latents.shape
            if weight.ndim != 4 or weight.shape[0] not in (1, count) or tuple(weight.shape[2:]) != (height, width):
                raise ValueError(f"weight {tuple(weight.shape)} does not fit latents {tuple(source_latents.shape)}")
            self.weight = weight.detach().float().to(self.parameter.device).expand(count, -1, -1, -1)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.parameter]

    def sources(self, views: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(list(views), device=self.source_latents.device)
        return self.source_latents[index], self.conditioning[index]

    def latents(self, views: Sequence[int]) -> torch.Tensor:
        index = torch.as_tensor(list(views), device=self.parameter.device)
        return weight_gradient(self.parameter[index], None if self.weight is None else self.weight[index])
