"""mlcl: multi-level supervised contrastive learning for PyTorch."""

from mlcl import relations
from mlcl.errors import CheckpointError, ConfigError, DataError, MlclError, TrainingError
from mlcl.losses import MultiLevelSupConLoss, NTXentLoss, SupConLoss, multilevel_supcon
from mlcl.models.heads import MultiHeadProjector

__version__ = "0.1.0"

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
    "multilevel_supcon",
    "relations",
]
