"""Per-particle cache of source latents and image conditioning, computed once per particle id."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

SourceFn = Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]]


class SourceCache:
    """Computes ``(source_latents, image_conditioning)`` for particle ids on first request and keeps them.

    ``compute(ids)`` returns both tensors stacked in the order of ``ids``; it is called once per step at most,
    with only the ids not seen before.
    """

    def __init__(self, compute: SourceFn) -> None:
        self._compute = compute
        self._entries: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.computed: int = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(self, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = list(dict.fromkeys(int(i) for i in ids if int(i) not in self._entries))
        if missing:
            latents, conditioning = self._compute(missing)
            for k, pid in enumerate(missing):
                self._entries[pid] = (latents[k], conditioning[k])
            self.computed += len(missing)
        pairs = [self._entries[int(i)] for i in ids]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def clear(self) -> None:
        self._entries.clear()
