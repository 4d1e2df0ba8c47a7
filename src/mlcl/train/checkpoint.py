"""Checkpoints that survive a kill and never run code: written to a temp file and renamed, read with
``torch.load(weights_only=True)`` (tensors and plain Python values only) and checked before use."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlcl.errors import CheckpointError

FORMAT_VERSION = 1
# The parts of a training run's checkpoint and the type each must have.
RUN_CHECKPOINT_KEYS = {"model": Mapping, "objective": Mapping, "optimizer": Mapping, "scheduler": Mapping,
                       "loop": Mapping, "rng": Mapping, "config": Mapping}
LOOP_KEYS = {"epoch": int, "step": int, "global_step": int, "history": list, "epoch_sums": Mapping,
             "train_seconds": (int, float)}


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` atomically: a crash mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"format_version": FORMAT_VERSION, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unusable(path: Path) -> str:
    """What to do about a checkpoint that cannot be read, by which checkpoint of a run it is."""
    if path.name == "best.pt":
        return f"delete it: evaluation then uses {path.with_name('last.pt')}"
    if path.name == "last.pt" and path.parent.name == "checkpoints":
        return (f"delete it, and mlcl train --resume {path.parent.parent} starts the run again from the beginning "
                "with its saved config")
    return "it cannot be used"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without running any code stored in it.

    A missing, truncated or foreign file, or one holding Python objects other than tensors and plain
    values (which a pickle could use to run code), is a one-line :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = re.search(r"GLOBAL (\S+)", str(exc))
        if unsafe is None:
            raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({exc.__class__.__name__}); "
                                  f"{_unusable(path)}") from None
        raise CheckpointError(
            f"checkpoint {path} holds a Python object ({unsafe.group(1)}) that could run code when loaded, so it "
            "was refused; mlcl writes only tensors and plain values: this file was not written by mlcl or was altered"
        ) from None
    except Exception as exc:  # torch.load raises many types for damaged files (zip, EOF, index, runtime)
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({exc.__class__.__name__}); "
                              f"{_unusable(path)}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not an mlcl checkpoint (format version {FORMAT_VERSION} expected)")
    return state


def check_run_checkpoint(state: Mapping[str, Any], path: Path) -> None:
    """A training run's checkpoint has every part (weights, optimiser, schedule, loop record, RNG, config)."""
    parts = [(key, state.get(key), kind) for key, kind in RUN_CHECKPOINT_KEYS.items()]
    loop = state.get("loop")
    if isinstance(loop, Mapping):
        parts += [(f"loop.{key}", loop.get(key), kind) for key, kind in LOOP_KEYS.items()]
    for key, value, kind in parts:
        if not isinstance(value, kind) or isinstance(value, bool):
            problem = "lacks the" if value is None else "has a malformed"
            raise CheckpointError(f"{path} {problem} {key!r} part; it is damaged or was not written by an mlcl "
                                  f"training run: {_unusable(path)}")


def _first(keys: list[str]) -> str:
    """The first key, and how many more there are."""
    return f"{keys[0]!r}" + (f" (and {len(keys) - 1} more)" if len(keys) > 1 else "")


def _shape(value: object) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def load_weights(module: nn.Module, weights: Mapping[str, Any], path: Path, what: str = "model") -> None:
    """``module.load_state_dict(weights)``, or a one-line :class:`CheckpointError` naming the first
    missing, unexpected or differently shaped tensor (e.g. the data gained a class since ``path`` was written)."""
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"{path}: its {what} weights are a {type(weights).__name__}, not a state dict")
    expected = module.state_dict()
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    if missing:
        raise CheckpointError(f"{path} lacks the {what} tensor {_first(missing)}; it was written by "
                              "another model or is damaged")
    if unexpected:
        raise CheckpointError(f"{path} holds a {what} tensor {_first(unexpected)} this run's model "
                              "does not have; it was written by another model")
    for key, tensor in expected.items():
        value = weights[key]
        if not isinstance(value, torch.Tensor) or value.shape != tensor.shape:
            raise CheckpointError(
                f"{path}: the {what} tensor {key!r} has shape {_shape(value)} but this run's has "
                f"{tuple(tensor.shape)}; the data (e.g. its number of classes) or the config changed since it was "
                "written"
            )
    module.load_state_dict(weights)


def restore_state(setter: Callable[[Any], None], value: Any, path: Path, what: str) -> None:
    """Apply one saved state (an RNG's, a scheduler's, ...) or raise a one-line :class:`CheckpointError`."""
    try:
        setter(value)
    except (RuntimeError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"{path} holds a {what} this run cannot restore ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'malformed'}); {_unusable(path)}") from None
