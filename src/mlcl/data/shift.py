"""Sub-population shift: hold some finest classes out of training entirely (as in the BREEDS benchmarks).

Under every parent class (the next coarser level) that has more than ``per_parent`` children,
``per_parent`` children are drawn at random (seeded). Their samples leave the training and validation
splits; the test split keeps only the seen classes, and the held-out classes' training and test rows
are kept aside in :class:`mlcl.data.types.UnseenClasses`. Evaluation then asks what the coarser levels
and a few labelled examples make of classes the model never saw (:mod:`mlcl.eval.shift`).
"""

from __future__ import annotations

import dataclasses

import torch

from mlcl.data.types import Dataset, LabeledSplit, UnseenClasses
from mlcl.errors import DataError


def choose_unseen_classes(parent_index: torch.Tensor, per_parent: int, seed: int) -> list[int]:
    """``per_parent`` random children of every parent that has more than ``per_parent`` children (a parent
    always keeps a seen child), sorted; ``parent_index[c]`` is the parent of finest class ``c``."""
    if isinstance(per_parent, bool) or not isinstance(per_parent, int) or per_parent < 1:
        raise DataError(f"unseen classes per parent must be a positive integer, got {per_parent!r}")
    generator = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for parent in torch.unique(parent_index).tolist():
        children = torch.nonzero(parent_index == parent).flatten()
        if len(children) > per_parent:
            chosen += children[torch.randperm(len(children), generator=generator)[:per_parent]].tolist()
    if not chosen:
        raise DataError(f"no parent class has more than {per_parent} children, so no class can be held out "
                        "while its parent stays in training; use a smaller data.unseen_per_parent")
    return sorted(chosen)


def _rows(split: LabeledSplit, level: str, classes: torch.Tensor) -> tuple[LabeledSplit, LabeledSplit]:
    """(rows of other classes, rows of ``classes``) of ``split`` at ``level``."""
    held = torch.isin(split.targets[level].cpu(), classes)
    return split.subset(torch.nonzero(~held).flatten()), split.subset(torch.nonzero(held).flatten())


def hold_out_classes(dataset: Dataset, per_parent: int, seed: int) -> Dataset:
    """A copy of ``dataset`` whose training, validation and test splits hold only the seen finest classes,
    with the held-out classes and their rows in ``dataset.unseen``."""
    hierarchy = dataset.hierarchy
    if hierarchy is None or hierarchy.num_levels < 2:
        raise DataError(f"data.unseen_per_parent holds out finest classes under their parents, but {dataset.name} "
                        "has no label hierarchy with two or more levels")
    finest = dataset.levels[-1]
    if finest.multi_label or finest.name != hierarchy.level_names[-1]:
        raise DataError(f"data.unseen_per_parent needs a single-label finest level from the hierarchy, "
                        f"not {finest.name!r}")
    classes = choose_unseen_classes(hierarchy.parent_index(finest.name), per_parent, seed)
    held = torch.tensor(classes, dtype=torch.long)
    train, unseen_train = _rows(dataset.train, finest.name, held)
    test, unseen_test = _rows(dataset.test, finest.name, held)
    val = _rows(dataset.val, finest.name, held)[0] if dataset.val is not None else None
    unseen = UnseenClasses(finest.name, classes, unseen_train, unseen_test)
    return dataclasses.replace(dataset, train=train, val=val, test=test, unseen=unseen)
