"""The particles of a step spread over processes (``torch.distributed``: NCCL on GPUs, gloo on a CPU).

SVGD couples every particle with every other, so the kernel needs them all. Every rank draws the same views,
timestep and noise (the editor's generator is seeded by the run's seed, not the rank), renders and scores its
share of the views, and the noisy latents and residuals are all-gathered (small: N x 4 x 64 x 64), so that every
rank computes the full kernel and keeps its own rows. Each rank backpropagates its own views; the parameters'
gradients are then summed once across ranks, before the optimiser step, so that every rank takes the same step.
One process is the same code with a group of one.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Share", "ParticleGroup", "parameter_digest"]


def parameter_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names, shapes, dtypes and bytes): equal on every rank when they agree."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


@dataclass
class Share:
    """A step's views and which of them this rank renders and scores."""

    ids: list[int]
    """The step's views, on every rank alike."""
    own: slice
    """This rank's contiguous part of ``ids``."""

    @property
    def own_ids(self) -> list[int]:
        return self.ids[self.own]

    @property
    def fraction(self) -> float:
        """This rank's share of the step's views: what its view-averaged extra losses are weighted by, so that the
        sum over ranks is the one-process mean."""
        return len(self.own_ids) / max(1, len(self.ids))


class ParticleGroup:
    """The processes a step's particles are spread over: the default process group when one is initialised (e.g.
    by nerfstudio's launcher or ``torchrun``), else this process alone."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank(group) if self.distributed else 0
        self.world_size = dist.get_world_size(group) if self.distributed else 1
        nccl = self.distributed and dist.get_backend(group) == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        """Where this group's own small tensors (flags) live: NCCL only moves CUDA tensors."""
        self.seconds = 0.0
        """Time spent in this group's collectives (benchmarks)."""
        self.bytes = 0
        """Bytes this rank put into collectives (benchmarks): what it sends at least once."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sizes(self, n: int) -> list[int]:
        """How many of ``n`` particles each rank takes (contiguous, the first ``n % k`` one more)."""
        return [n // self.world_size + (1 if r < n % self.world_size else 0) for r in range(self.world_size)]

    def share(self, ids: Sequence[int]) -> Share:
        """This rank's part of the step's views ``ids``."""
        sizes = self.sizes(len(ids))
        start = sum(sizes[: self.rank])
        return Share(ids=list(ids), own=slice(start, start + sizes[self.rank]))

    def gather(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's rows of a ``[n_rank, ...]`` tensor, stacked in rank order into ``[n, ...]``."""
        if self.world_size == 1:
            return local
        sizes = self.sizes(n)
        padded = local.new_zeros((max(sizes), *local.shape[1:]))  # all_gather needs one size on every rank
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        start = time.perf_counter()
        dist.all_gather(parts, padded.contiguous(), group=self.group)
        self.seconds += time.perf_counter() - start
        self.bytes += padded.numel() * padded.element_size()
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    def sum_gradients(self, parameters: Iterable[torch.Tensor]) -> None:
        """Sum the parameters' gradients over the ranks, in one flat buffer per device and dtype.

        A parameter with a gradient on some rank gets the sum on every rank (zeros from ranks without one); one
        with a gradient on no rank keeps none, as in one process (an optimiser skips it rather than stepping it
        with a zero gradient).
        """
        if self.world_size == 1:
            return
        start = time.perf_counter()
        params = [p for p in parameters if p.requires_grad]
        has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self.device)
        dist.all_reduce(has_grad, op=dist.ReduceOp.MAX, group=self.group)
        buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for p, anywhere in zip(params, has_grad.tolist(), strict=True):
            if not anywhere:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            buckets.setdefault((p.grad.device, p.grad.dtype), []).append(p)
        for params in buckets.values():
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            self.bytes += flat.numel() * flat.element_size()
            offset = 0
            for p in params:
                count = p.grad.numel()
                p.grad.copy_(flat[offset : offset + count].view_as(p.grad))
                offset += count
        self.seconds += time.perf_counter() - start

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank."""
        return self.maximum(1.0 if flag else 0.0) > 0

    def maximum(self, value: float) -> float:
        """The largest of the ranks' ``value``."""
        if self.world_size == 1:
            return value
        holder = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(holder, op=dist.ReduceOp.MAX, group=self.group)
        return float(holder.item())

    def gather_objects(self, obj: object) -> list[object]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if self.world_size == 1:
            return [obj]
        holder: list[object] = [None] * self.world_size
        dist.all_gather_object(holder, obj, group=self.group)
        return holder

    def broadcast(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank (a viewer's change, a densification decision)."""
        if self.world_size == 1:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=0, group=self.group)
        return holder[0]
