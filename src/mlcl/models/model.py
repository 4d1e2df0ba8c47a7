"""MultiLevelModel: an encoder, a multi-head projector and optional per-level linear classifiers."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from mlcl.errors import ConfigError
from mlcl.models.heads import MultiHeadProjector
from mlcl.user_input import check_positive_int


@dataclass
class ModelOutput:
    """``features`` ``(B, F)`` from the encoder, ``projections`` ``(H, B, D)`` (not normalised; ``None``
    without a projector), and ``logits[level]`` ``(B, C_level)`` from each classifier."""

    features: torch.Tensor
    projections: torch.Tensor | None
    logits: dict[str, torch.Tensor]


class MultiLevelModel(nn.Module):
    """Encoder -> features -> (projection heads for the contrastive loss, linear classifiers per level).

    ``projector=None`` makes a model without contrastive heads (a cross-entropy baseline). ``classifiers``
    maps a level name to its number of classes; each gets a Linear on the features, for cross-entropy
    training or a jointly trained probe. With ``detach_classifiers=True`` the classifiers see detached
    features, so they learn without shaping the encoder (an online linear probe).
    """

    def __init__(
        self,
        encoder: nn.Module,
        projector: MultiHeadProjector | None,
        classifiers: dict[str, int] | None = None,
        detach_classifiers: bool = False,
    ) -> None:
        super().__init__()
        feature_dim = getattr(encoder, "out_dim", None)
        if projector is not None:
            if feature_dim is not None and feature_dim != projector.in_dim:
                raise ConfigError(f"encoder out_dim={feature_dim} but projector in_dim={projector.in_dim}")
            feature_dim = projector.in_dim
        if feature_dim is None and classifiers:
            raise ConfigError("classifiers need the feature size: give the encoder an out_dim attribute or a projector")
        self.encoder = encoder
        self.projector = projector
        self.classifiers = nn.ModuleDict(
            {
                name: nn.Linear(feature_dim, check_positive_int(f"classes of {name!r}", n))
                for name, n in (classifiers or {}).items()
            }
        )
        self.detach_classifiers = detach_classifiers

    def encode(self, x: Any) -> torch.Tensor:
        """The encoder's features ``(B, F)`` (what probes and kNN use)."""
        return self.encoder(x)

    def forward(self, x: Any) -> ModelOutput:
        features = self.encoder(x)
        projections = self.projector(features) if self.projector is not None else None
        head_input = features.detach() if self.detach_classifiers else features
        logits = {name: classifier(head_input) for name, classifier in self.classifiers.items()}
        return ModelOutput(features, projections, logits)


@dataclass
class ModelSpec:
    """What builds a :class:`MultiLevelModel` besides its weights, as plain data (it is saved as JSON):
    an exported model is rebuilt from it without the data it was trained on.

    ``encoder_options`` include the sizes the data fixed (``in_channels``, ``in_dim``); ``head_names``
    are the projection heads in order (none: no projector); ``classifiers`` map a level to its classes.
    """

    encoder: str
    encoder_options: dict[str, Any]
    head_names: list[str]
    proj_hidden: int
    proj_dim: int
    proj_depth: int
    classifiers: dict[str, int]

    def build(self) -> MultiLevelModel:
        """A freshly initialised model of this shape."""
        from mlcl.models.encoders import build_encoder

        encoder = build_encoder(self.encoder, **self.encoder_options)
        projector = None
        if self.head_names:
            projector = MultiHeadProjector(encoder.out_dim, len(self.head_names), hidden_dim=self.proj_hidden,
                                           out_dim=self.proj_dim, depth=self.proj_depth, head_names=self.head_names)
        return MultiLevelModel(encoder, projector, classifiers=self.classifiers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
