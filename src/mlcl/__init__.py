"""mlcl: multi-level supervised contrastive learning for PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mlcl import relations
from mlcl.errors import CheckpointError, ConfigError, DataError, MlclError, TrainingError
from mlcl.losses import MultiLevelSupConLoss, NTXentLoss, SupConLoss, multilevel_supcon
from mlcl.models.heads import MultiHeadProjector

if TYPE_CHECKING:
    import torch

    from mlcl.train.trained import TrainedModel

__version__ = "0.1.0"


def load_run(path: str | Path, checkpoint: Literal["best", "last"] = "best",
             device: str | torch.device = "cpu") -> TrainedModel:
    """A trained model ready for inference from an exported folder (``mlcl export``) or a run folder
    (``checkpoint``: ``"best"`` by validation, or ``"last"``); see :func:`mlcl.train.export.load_trained`.
    Imported on first use, so ``import mlcl`` stays light."""
    from mlcl.train.export import load_trained

    return load_trained(path, checkpoint, device)


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "MlclError",
    "MultiHeadProjector",
    "MultiLevelSupConLoss",
    "NTXentLoss",
    "SupConLoss",
    "TrainingError",
    "load_run",
    "multilevel_supcon",
    "relations",
]
