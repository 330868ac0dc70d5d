"""What every prior returns (:class:`GuidanceOutput`) and counts (:class:`GuidanceStats`); no diffusers here."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["GuidanceOutput", "GuidanceStats"]


@dataclass
class GuidanceStats:
    """Counters of the work a prior did, for step timings, benchmarks and tests."""

    unet_calls: int = 0
    unet_samples: int = 0
    unet_seconds: float = 0.0
    vae_encode_calls: int = 0
    vae_seconds: float = 0.0

    def reset(self) -> None:
        self.__init__()


@dataclass
class GuidanceOutput:
    """Residuals ``d_i = E_tgt_i - E_src_i`` and the guided target noise ``E_tgt_i`` (float32)."""

    residual: torch.Tensor
    target_eps: torch.Tensor
    unet_samples: int = field(default=0)
