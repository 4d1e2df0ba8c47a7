"""Encoders, projection heads and the multi-level model."""

from mlcl.models.encoders import ENCODERS, MLPEncoder, ResNet18, SmallCNN, build_encoder
from mlcl.models.heads import MultiHeadProjector, ProjectionHead
from mlcl.models.model import ModelOutput, MultiLevelModel
from mlcl.models.text import CachedTextEmbeddings, HFTextEncoder, MiniLMEncoder, embed_texts

__all__ = [
    "ENCODERS",
    "CachedTextEmbeddings",
    "HFTextEncoder",
    "MLPEncoder",
    "MiniLMEncoder",
    "ModelOutput",
    "MultiHeadProjector",
    "MultiLevelModel",
    "ProjectionHead",
    "ResNet18",
    "SmallCNN",
    "build_encoder",
    "embed_texts",
]
