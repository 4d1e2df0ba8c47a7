"""The contract between data loaders and the training code (:class:`LabelLevel` is defined with the
hierarchy that produces it, in :mod:`mlcl.hierarchy`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from mlcl.hierarchy import Hierarchy, LabelLevel

Modality = Literal["image", "features", "text"]


@dataclass
class LabeledSplit:
    """Inputs with one target tensor per level.

    ``inputs`` are images ``(N, C, H, W)`` float32 in [0, 1], feature vectors ``(N, F)``, or a list of
    texts. ``targets[level]`` is ``(N,)`` int64 (``-1`` = unknown) for single-label levels and ``(N, C)``
    float32 multi-hot for multi-label levels. ``ids`` name where each row came from (a file's line
    number, an image's path, an index in the official files), so exported embeddings can be joined
    back to the source; None when the loader does not say.
    """

    inputs: torch.Tensor | list[str]
    targets: dict[str, torch.Tensor] = field(default_factory=dict)
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, index: torch.Tensor) -> LabeledSplit:
        """The rows ``index`` (a 1-D long tensor) of every input and target."""
        if isinstance(self.inputs, list):
            inputs: torch.Tensor | list[str] = [self.inputs[i] for i in index.tolist()]
        else:
            inputs = self.inputs[index]
        ids = [self.ids[i] for i in index.tolist()] if self.ids is not None else None
        return LabeledSplit(inputs, {k: v[index] for k, v in self.targets.items()}, ids)


@dataclass
class UnseenClasses:
    """Finest classes held out of training and validation (the sub-population-shift protocol of
    :mod:`mlcl.data.shift`) with their rows: ``train`` is the pool few-shot probes draw from, ``test``
    the rows they and the coarser levels are scored on."""

    level: str
    classes: list[int]
    train: LabeledSplit
    test: LabeledSplit


@dataclass
class Dataset:
    """A dataset with its label structure; levels are ordered coarse -> fine."""

    name: str
    modality: Modality
    levels: list[LabelLevel]
    train: LabeledSplit
    test: LabeledSplit
    val: LabeledSplit | None = None
    hierarchy: Hierarchy | None = None
    unseen: UnseenClasses | None = None  # set by the unseen-classes protocol; ``test`` then holds seen classes

    @property
    def level_names(self) -> list[str]:
        return [level.name for level in self.levels]

    @property
    def multi_label(self) -> bool:
        return any(level.multi_label for level in self.levels)
