"""``ns-train csd-edit --machine.num-devices k``: one process per device, the particles of every step spread over
them (:class:`~csd_nerf.distributed.ParticleGroup`).

nerfstudio's launcher asserts CUDA and wraps the model in DDP, which a CSD step cannot use (the deferred backward
calls the model directly, and splatfacto replaces its parameters). So csd-edit starts its own processes, NCCL on
GPUs and gloo on a CPU, each running nerfstudio's ``train_loop``; the trainer sums gradients itself.

Stopping: a signal never interrupts a process in the middle of a collective (the others would wait forever).
Each process only notes it; at the start of every step the processes agree (one all-reduce) and all stop at the
same step, rank 0 saving the checkpoint and printing the one line. The launching process forwards the signals it
gets to its children and exits with their status.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from csd_nerf.distributed import ParticleGroup
from csd_nerf.errors import SettingError

__all__ = ["RUN_DIR_ENV", "check_devices", "launch", "StopRequests", "processes"]

RUN_DIR_ENV = "CSD_NERF_RUN_DIR"
"""The run folder the launching process created: its children write into it rather than claiming another."""

TIMEOUT = timedelta(minutes=30)
"""How long a process waits in a collective for the others (nerfstudio's launcher's timeout)."""

_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def processes(config: Any) -> int:
    """How many processes ``config.machine`` asks for."""
    return config.machine.num_devices * config.machine.num_machines


def check_devices(config: Any) -> None:
    """Refuse, in one line each, what a run over several processes cannot do."""
    k, machine, pipeline = processes(config), config.machine, config.pipeline
    if k <= 1:
        return
    if machine.num_machines > 1:
        raise SettingError("csd-edit spreads its views over the devices of one machine: pass --machine.num-machines 1")
    if machine.device_type not in ("cuda", "cpu"):
        raise SettingError(f"--machine.num-devices {k} needs --machine.device-type cuda (or cpu)")
    if machine.device_type == "cuda" and torch.cuda.device_count() < k:
        raise SettingError(
            f"--machine.num-devices {k} but {torch.cuda.device_count()} CUDA devices are visible: pass "
            f"--machine.num-devices {max(1, torch.cuda.device_count())}"
        )
    if pipeline.mode != "distill":
        raise SettingError(f"--pipeline.mode {pipeline.mode} runs in one process: pass --machine.num-devices 1")
    if getattr(pipeline.model, "densify", False):
        raise SettingError(
            "splats cannot be densified over several processes (each would split its own Gaussians): pass "
            "--pipeline.model.densify False or --machine.num-devices 1"
        )
    if pipeline.num_particles < k:
        raise SettingError(
            f"--pipeline.num-particles {pipeline.num_particles} views cannot be spread over {k} processes: pass "
            f"--pipeline.num-particles {k} or more"
        )
    if pipeline.ip2p_device:
        raise SettingError(
            "--pipeline.ip2p-device puts the prior of one process on another device: with several processes each "
            "has its own on its own device; drop --pipeline.ip2p-device"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(config: Any) -> int:
    """Run the edit in ``processes(config)`` processes of this machine; returns the exit status for the shell
    (0, or that of the first process that failed: 130/143 when stopped by a signal)."""
    import torch.multiprocessing as mp

    k = processes(config)
    url = f"tcp://127.0.0.1:{_free_port()}"
    context = mp.get_context("spawn")
    children = [context.Process(target=_worker, args=(rank, k, url, config), daemon=False) for rank in range(k)]
    forwarded: list[int] = []

    def forward(signum: int, frame: object) -> None:
        forwarded.append(signum)
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signum)

    previous = {getattr(signal, n): signal.signal(getattr(signal, n), forward) for n in _SIGNALS if hasattr(signal, n)}
    try:
        for child in children:
            child.start()
        return _wait(children)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _wait(children: list) -> int:
    """Wait for every child; when one fails, the others get a minute to end (they may be waiting on it)."""
    failed_at: float | None = None
    while any(child.is_alive() for child in children):
        for child in children:
            child.join(timeout=0.2)
        if failed_at is None and any(child.exitcode not in (None, 0) for child in children):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > 60:
            for child in children:
                if child.is_alive():
                    child.terminate()
    codes = [child.exitcode for child in children]
    failed = [code for code in codes if code != 0]
    if not failed:
        return 0
    code = failed[0]
    return 128 - code if code < 0 else code  # a child killed by signal n reports -n


def _worker(rank: int, k: int, url: str, config: Any) -> None:
    from nerfstudio.scripts.train import train_loop
    from nerfstudio.utils import comms
    from nerfstudio.utils.rich_utils import CONSOLE

    cuda = config.machine.device_type == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    StopRequests.install()
    if rank != 0:
        CONSOLE.quiet = True  # one log: rank 0's (errors still reach stderr)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=url, rank=rank, world_size=k, timeout=TIMEOUT)
    comms.LOCAL_PROCESS_GROUP = dist.new_group(list(range(k)))  # nerfstudio's notion of this machine's ranks
    try:
        train_loop(rank, k, config, rank)
    finally:
        dist.destroy_process_group()


class StopRequests:
    """The signals this process got and has not acted on: noted, never raised mid-step."""

    received: list[str] = []

    @classmethod
    def install(cls) -> None:
        for name in _SIGNALS:
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), cls._note)

    @classmethod
    def _note(cls, signum: int, frame: object) -> None:
        cls.received.append(signal.Signals(signum).name)

    @classmethod
    def agreed(cls, group: ParticleGroup) -> str | None:
        """The signal every process stops for, decided together (the same on every rank), or None."""
        codes = [_SIGNALS.index(name) + 1 for name in cls.received if name in _SIGNALS]
        code = int(group.maximum(max(codes, default=0)))
        return _SIGNALS[code - 1] if code else None
