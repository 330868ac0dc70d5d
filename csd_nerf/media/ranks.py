"""``csd-edit-2d`` under ``torchrun --nproc-per-node k``: the windows or frames of every step spread over k
processes (torch's convention: the launcher sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the rendezvous).

Every process reads the input, loads the model and encodes the source alike; each step's particles are shared
out by :class:`~csd_nerf.distributed.ParticleGroup`; rank 0 alone writes the output and prints.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from csd_nerf.distributed import ParticleGroup

__all__ = ["launched_world_size", "is_follower", "join", "leave", "local_device", "release", "wait_for_release"]


def launched_world_size() -> int:
    """How many processes ``torchrun`` started for this job (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_follower() -> bool:
    """Whether torchrun started this process with a rank above 0 (known before the group is joined: a signal can
    come during the rendezvous)."""
    return launched_world_size() > 1 and int(os.environ.get("RANK", "0")) > 0


def local_device(device: str) -> str:
    """Under torchrun, ``cuda`` means this process's own GPU (``cuda:LOCAL_RANK``)."""
    if launched_world_size() > 1 and device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def join(device: str) -> ParticleGroup:
    """The process group torchrun set up (NCCL on GPUs, gloo on a CPU), or this process alone."""
    if launched_world_size() > 1 and not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl" if cuda else "gloo")
    return ParticleGroup()


def release(group: ParticleGroup, go: bool) -> None:
    """Rank 0, once: tell the other processes whether the job goes ahead (its checks passed) or stops."""
    if group.world_size > 1 and not getattr(group, "released", False):
        group.released = True
        group.broadcast(go)


def wait_for_release(group: ParticleGroup) -> bool:
    """The other processes: whether rank 0's checks passed (they stop quietly otherwise: rank 0 says why)."""
    return bool(group.broadcast(None))


def leave(group: ParticleGroup, wait: bool = True) -> None:
    """Every process, on its way out: wait for the others (``wait``: after a finished job, when they all get
    here), then tear the process group down.

    A process that exits while gloo's threads still serve its group can abort (``terminate called without an
    active exception``, SIGABRT): rank > 0 finishes its steps while rank 0 is still writing the output, so it
    waits here for rank 0 rather than exiting under it.
    """
    if group.world_size > 1 and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
