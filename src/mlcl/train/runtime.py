"""Process-level set-up for a run: device, seeds, threads, signals, the distributed process group.

In a distributed run (see docs/distributed.md) :func:`init_distributed` joins the process group in each
worker and :func:`shutdown_distributed` closes it; starting the workers and reporting their failures is
:mod:`mlcl.train.launch`.
"""

from __future__ import annotations

import datetime
import os
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import numpy as np
import torch
import torch.distributed as dist

from mlcl.distributed import rank_and_world
from mlcl.errors import ConfigError


def _local_world() -> int:
    """Processes of this run on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA (this rank's GPU), then MPS, then CPU; an unavailable choice is a ConfigError.

    In a distributed run ``cuda`` means this rank's GPU (``cuda:LOCAL_RANK``); a fixed ``cuda:N`` would put
    every local process on one GPU and is refused, and so is MPS (no collective backend supports it).
    """
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        mps = getattr(torch.backends, "mps", None)
        if not distributed and mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"train.device {name!r} is not a device (use auto, cpu, cuda, cuda:N or mps)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available here; use train.device=cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device={name} but MPS is not available here; use train.device=cpu or auto")
    if distributed and device.type == "mps":
        raise ConfigError("distributed training cannot use MPS (gloo and NCCL do not support it); use train.device=cpu")
    if distributed and device.type == "cuda":
        if device.index is not None and _local_world() > 1:
            raise ConfigError(
                f"train.device={name} would put every process of this machine on one GPU; use train.device=cuda "
                "(each process takes the GPU of its LOCAL_RANK) and CUDA_VISIBLE_DEVICES to choose the GPUs"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_threads(threads: int | None) -> int:
    """Set torch's CPU threads: ``threads`` when given, else (several processes on this machine) the
    cores shared out between them, so N processes do not oversubscribe the CPU. Returns the count."""
    if threads:
        torch.set_num_threads(threads)
    elif _local_world() > 1:
        torch.set_num_threads(max(1, cpu_cores() // _local_world()))
    return torch.get_num_threads()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) so a run reproduces."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


RANK_SEED_STRIDE = 1_000_003


def seed_rank(seed: int, rank: int) -> None:
    """Give this rank its own stream of torch's global generator (dropout, token masking), derived from
    the run's seed: with one shared stream every rank would drop the same units and mask the same
    token positions. Rank 0 keeps ``seed`` itself, so a single process is unchanged."""
    torch.manual_seed(seed + RANK_SEED_STRIDE * rank)


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM outside the training loop (loading data, evaluating): stops the command."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signal.Signals(signum).name)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM raise :class:`Stopped` (SIGTERM would otherwise end the
    process with no message), so a command reports them in one line; the training loop turns them into
    a checkpoint instead (:class:`StopRequest`). Outside the main thread signals cannot be handled."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StopRequest:
    """Turns SIGINT / SIGTERM into a flag the training loop checks between steps."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is not None:  # a second Ctrl-C: stop right away
            raise Stopped(signal.Signals(signum).name)
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


BACKEND_ENV = "MLCL_DIST_BACKEND"


def init_distributed(device: str) -> tuple[int, int, int]:
    """Join the process group torchrun set up (``RANK``/``WORLD_SIZE`` in the environment).

    ``device`` is ``train.device`` (or a device type): NCCL for CUDA (``auto`` with a GPU), gloo
    otherwise; ``$MLCL_DIST_BACKEND`` overrides (gloo lets several processes share one GPU).
    Returns ``(rank, local_rank, world_size)``; ``(0, 0, 1)`` without torchrun.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 0, 1
    missing = [key for key in ("RANK", "MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={world} is set but not {', '.join(missing)}: start distributed runs with "
            "mlcl train --nproc N or torchrun -m mlcl train (see docs/distributed.md)"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = os.environ.get(BACKEND_ENV) or ("nccl" if cuda else "gloo")
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"{BACKEND_ENV}={backend!r} is not a backend mlcl supports; use nccl or gloo (or unset it)")
    if not dist.is_initialized():
        if cuda and torch.cuda.is_available():
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group(backend=backend)
    return dist.get_rank(), local_rank, dist.get_world_size()


def join_local_group(rank: int, world: int, port: int, timeout_s: float = 120.0) -> None:
    """Join a CPU (gloo) group of ``world`` processes on this machine that meet at ``port``: for
    processes started by hand (tests, benchmarks, notebooks) rather than by torchrun. A peer that
    never arrives or hangs becomes an error after ``timeout_s`` instead of a stuck process."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if rank_and_world()[1] > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def shutdown_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
