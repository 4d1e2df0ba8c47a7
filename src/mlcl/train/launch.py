"""Starting a distributed run on this machine and turning a failed worker into one clear line.

:func:`launch_local` is the launcher behind ``mlcl train --nproc N`` (torch's elastic agent, as
``torchrun --standalone``, in this process); :func:`distributed_worker` wraps the worker's command so
that a failing rank reports why (:func:`report_failure`) and :func:`summarise_failure` names the root
cause instead of printing every rank's traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch.distributed as dist

from mlcl.errors import ConfigError, MlclError
from mlcl.train.runtime import cpu_cores, shutdown_distributed

F = TypeVar("F", bound=Callable[..., Any])

# Set by launch_local for its workers: the folder where each failing rank leaves a report.
REPORT_DIR_ENV = "MLCL_RANK_REPORTS"
LOST_PEER_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def is_lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank went away (a consequence, not a cause)."""
    network = getattr(dist, "DistNetworkError", None)
    if network is not None and isinstance(exc, network):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in LOST_PEER_MARKERS)


def _failure_kind(exc: BaseException) -> str:
    if isinstance(exc, MlclError):
        return "error"
    if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "Interrupted":
        return "interrupted"
    if is_lost_peer(exc):
        return "lost_peer"
    return "crash"


def _failure_message(exc: BaseException, kind: str) -> str:
    text = str(exc).strip()
    if kind in ("error", "interrupted"):
        return text or "interrupted"
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def report_failure(exc: BaseException) -> str:
    """Record why this rank failed: for :func:`launch_local` (its report folder) and for torchrun
    (``TORCHELASTIC_ERROR_FILE``, shown as the root cause in torchrun's summary). Returns the kind:
    ``error`` (a user error), ``interrupted``, ``lost_peer`` (another rank went away) or ``crash``."""
    kind = _failure_kind(exc)
    message = _failure_message(exc, kind)
    rank = int(os.environ.get("RANK", "0"))
    report_dir = os.environ.get(REPORT_DIR_ENV)
    try:
        if report_dir:
            report = {"rank": rank, "kind": kind, "message": message, "time": time.time()}
            Path(report_dir, f"rank{rank}.json").write_text(json.dumps(report), encoding="utf-8")
        error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
        if error_file and kind in ("error", "crash") and not os.path.exists(error_file):
            data = {"message": {"message": f"mlcl: {message}", "extraInfo": {
                "py_callstack": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
                "timestamp": str(int(time.time())),
            }}}
            Path(error_file).write_text(json.dumps(data), encoding="utf-8")
    except OSError:
        pass  # reporting is best effort: the exception itself still ends the process
    return kind


def distributed_worker(func: F) -> F:
    """Wrap a command that may run as a torchrun worker (``WORLD_SIZE`` > 1).

    On a failure the rank reports it (:func:`report_failure`) and re-raises. Under :func:`launch_local`,
    which prints one summary, the rank then stays quiet unless its failure is an unexpected exception
    (whose traceback is the useful part): user errors and interrupts are printed once by the launcher,
    and a rank failing only because another rank went away says nothing. The process group is closed
    after a successful command.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return func(*args, **kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            if isinstance(exc, SystemExit):
                raise
            kind = report_failure(exc)
            debug = "--debug" in sys.argv
            if os.environ.get(REPORT_DIR_ENV) and kind != "crash" and not debug:
                sys.stderr.flush()
                sys.stderr = open(os.devnull, "w")  # the process is about to exit
            raise
        shutdown_distributed()
        return result

    return wrapper  # type: ignore[return-value]


def _read_reports(folder: Path) -> dict[int, dict[str, Any]]:
    reports = {}
    for path in folder.glob("rank*.json"):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
            reports[int(report["rank"])] = report
        except (OSError, ValueError, KeyError):
            continue
    return reports


def _rank_list(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in sorted(ranks))


def summarise_failure(reports: dict[int, dict[str, Any]], exit_codes: dict[int, int], world: int) -> tuple[str, int]:
    """One message and an exit status for a failed run, from the ranks' reports and exit codes.

    The root cause is what the ranks that failed first reported; ranks that only lost contact with
    another rank, or were stopped by the launcher (SIGTERM) after it, are consequences and not named.
    """
    killed = {rank: code for rank, code in exit_codes.items()
              if code < 0 and rank not in reports and -code != signal.SIGTERM}
    primary = {rank: r for rank, r in reports.items() if r["kind"] in ("error", "crash")}
    if primary:
        first = min(primary.values(), key=lambda r: r["time"])
        same = [rank for rank, r in primary.items() if r["kind"] == first["kind"] and r["message"] == first["message"]]
        if first["kind"] == "error":
            who = "" if len(same) == world else f"{_rank_list(same)}: "
            return f"mlcl: error: {who}{first['message']}", 2
        return (f"mlcl: error: {_rank_list(same)} failed with {first['message']} (traceback above); "
                "the other processes were stopped"), 1
    if killed:
        rank, code = min(killed.items())
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"mlcl: error: rank {rank} was killed by {name}{hint}; the other processes were stopped", 1
    lost = [r for r in reports.values() if r["kind"] == "lost_peer"]
    if lost and not any(r["kind"] == "interrupted" for r in reports.values()):
        first = min(lost, key=lambda r: r["time"])
        return (f"mlcl: error: the processes lost contact with each other (rank {first['rank']}: "
                f"{first['message']}); check the network between the machines", 1)
    interrupted = [r for r in reports.values() if r["kind"] == "interrupted"]
    if interrupted:
        # Prefer a rank that names the signal it received (the others stopped with it).
        first = min(interrupted, key=lambda r: ("another rank" in r["message"], r["rank"]))
        return f"mlcl: {first['message']}", 130
    if exit_codes:
        rank, code = min(exit_codes.items(), key=lambda kv: (kv[1] in (0, -signal.SIGTERM), kv[0]))
        return f"mlcl: error: rank {rank} exited with status {code}; the other processes were stopped", 1
    return "mlcl: error: the distributed run failed", 1


def launch_local(nproc: int, argv: list[str], *, debug: bool = False) -> int:
    """Run ``python -m mlcl ARGV`` as ``nproc`` data-parallel processes on this machine; the exit status.

    The same as ``torchrun --standalone --nproc_per_node=NPROC -m mlcl ARGV`` (torch's elastic agent:
    rendezvous on a free local port; when a worker fails the others are stopped, SIGTERM then SIGKILL),
    but run in this process so a failure ends in one line naming the rank and the cause (see
    :func:`summarise_failure`) instead of every rank's traceback. Ctrl-C reaches the workers once
    (they checkpoint and stop, as a single process does) and gives status 130.
    """
    # torch's elastic launcher is imported only by the process that starts workers
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    fields = getattr(LaunchConfig, "__dataclass_fields__", {})
    options: dict[str, Any] = {}
    if "shutdown_timeout" in fields:
        options["shutdown_timeout"] = 60  # time for the workers to write their checkpoint after Ctrl-C
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.1, start_method="spawn", **options)
    saved_env = {key: os.environ.get(key) for key in (REPORT_DIR_ENV, "OMP_NUM_THREADS")}
    # torch's elastic modules set their own loggers' levels: quieten each (the summary below replaces them)
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith("torch.distributed.elastic")]
    saved_levels = [logger.level for logger in loggers]
    with tempfile.TemporaryDirectory(prefix="mlcl-ranks-") as folder:
        os.environ[REPORT_DIR_ENV] = folder
        # torchrun would set 1 thread per process (with a warning); the workers share the cores out
        # themselves (configure_threads), and OpenMP starts with the same share.
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cpu_cores() // nproc)))
        if not debug:
            for logger in loggers:
                logger.setLevel(logging.CRITICAL)
        try:
            elastic_launch(config, sys.executable)("-u", "-m", "mlcl", *argv)
            return 0
        except ChildFailedError as exc:
            codes = {rank: failure.exitcode for rank, failure in exc.failures.items()}
            message, status = summarise_failure(_read_reports(Path(folder)), codes, nproc)
        except SignalException as exc:
            reports = _read_reports(Path(folder))
            message, status = summarise_failure(reports, {}, nproc)
            if not reports:
                message = f"mlcl: interrupted ({signal.Signals(exc.sigval).name})"
            status = 130 if status != 2 else status
        finally:
            for logger, level in zip(loggers, saved_levels):
                logger.setLevel(level)
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    print(message, file=sys.stderr)
    return status
