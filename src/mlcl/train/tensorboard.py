"""A run's scalars as TensorBoard event files in ``RUN/tensorboard/`` (``tensorboard --logdir RUN``).

The trainer calls :meth:`TensorBoardLogger.log` with a global step and a dict of floats wherever it
already has values on the host: per-step losses, learning rate and temperatures under ``train/``, the
epoch's means and validation score under ``epoch/``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

FOLDER = "tensorboard"


class TensorBoardLogger:
    """Writes scalars to event files in ``log_dir``. ``purge_step`` (a resumed run's position) drops
    the events an interrupted run wrote after its last checkpoint, so curves do not double back."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def log(self, step: int, values: Mapping[str, float], prefix: str = "train") -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def tensorboard_available() -> bool:
    """Whether the tensorboard package is installed (``pip install 'mlcl[tensorboard]'``)."""
    return importlib.util.find_spec("tensorboard") is not None


def open_logger(out_dir: Path, enabled: bool, step: int = 0) -> TensorBoardLogger | None:
    """A logger for the run in ``out_dir`` when ``enabled`` and TensorBoard is installed, else None."""
    if not enabled or not tensorboard_available():
        return None
    return TensorBoardLogger(out_dir / FOLDER, purge_step=step or None)
