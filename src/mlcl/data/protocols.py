"""Training-set protocols of the experiments: a stratified label fraction, k-shot subsets, label noise,
labels hidden per level (partial labels).

Each is a pure function of a split and an explicit seed (a private ``torch.Generator``), so the same
seed always selects the same rows and the global RNG is left alone. Apply them to the training split
only; evaluation uses the full test set. Counts round half up (:func:`share`: 2.5 -> 3).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction

import torch

from mlcl.data.splits import stratified_subset
from mlcl.data.types import LabeledSplit, LabelLevel
from mlcl.errors import DataError
from mlcl.hierarchy import Hierarchy
from mlcl.user_input import did_you_mean


def share(fraction: float, n: int) -> int:
    """``fraction * n`` rounded half up (Python's ``round`` would send 2.5 to 2), computed on the decimal
    the user wrote: in floats 0.7 * 45 is 31.499999999999996, which would round down instead of to 32."""
    return math.floor(Fraction(repr(float(fraction))) * n + Fraction(1, 2))


def _single_label(split: LabeledSplit, level: str) -> torch.Tensor:
    """The (N,) label ids of ``level`` on the CPU; DataError for a missing or multi-label level."""
    if level not in split.targets:
        raise DataError(
            f"the split has no level {level!r}{did_you_mean(level, split.targets)}; "
            f"its levels are {list(split.targets)}"
        )
    labels = split.targets[level]
    if labels.dim() != 1 or labels.is_floating_point():
        raise DataError(f"level {level!r} is multi-label; this protocol needs a single-label level")
    return labels.cpu()


def _generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an integer, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def _stratified(
    split: LabeledSplit, level: str, count: Callable[[int, int], int], seed: int
) -> LabeledSplit:
    """Keep ``count(class_id, n_class)`` random rows of every class of ``level``, in the original order."""
    return split.subset(stratified_subset(_single_label(split, level), count, _generator(seed), level))


def label_fraction(
    split: LabeledSplit, level: str, fraction: float, seed: int, *, allow_empty: bool = False
) -> LabeledSplit:
    """A stratified subset: ``share(fraction, n_c)`` rows (``fraction * n_c`` rounded half up) of every class
    ``c`` of ``level``.

    Every class keeps at least one row (so tiny classes are over-represented at small fractions)
    unless ``allow_empty=True``, where a class whose share rounds to 0 disappears. DataError unless
    0 < fraction <= 1.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise DataError(f"fraction must be in (0, 1], got {fraction!r}")
    floor = 0 if allow_empty else 1
    return _stratified(split, level, lambda _, n: max(floor, share(fraction, n)), seed)


def k_shot(split: LabeledSplit, level: str, k: int, seed: int,
           class_names: Sequence[str] | None = None) -> LabeledSplit:
    """Exactly ``k`` random rows of every class of ``level``; DataError (naming the class by its name in
    ``class_names``, else its id) if a class has fewer."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataError(f"k must be a positive integer, got {k!r}")

    def count(c: int, n: int) -> int:
        if n < k:
            name = repr(class_names[c]) if class_names is not None else str(c)
            raise DataError(f"class {name} at level {level!r} has only {n} samples, fewer than k={k}; use a smaller k")
        return k

    return _stratified(split, level, count, seed)


def _noise_classes(hierarchy_or_levels: Hierarchy | Sequence[LabelLevel], level: str, mode: str) -> int:
    """The number of classes at ``level``, checking the level and the mode fit what was given."""
    if mode not in ("symmetric", "hierarchical"):
        raise DataError(f"unknown noise mode {mode!r}; use 'symmetric' or 'hierarchical'")
    if isinstance(hierarchy_or_levels, Hierarchy):
        hierarchy = hierarchy_or_levels
        if hierarchy.level_index(level) != hierarchy.num_levels - 1:
            raise DataError(
                f"label noise goes on the finest level ({hierarchy.level_names[-1]!r}), not {level!r}; "
                "coarser levels are derived from it"
            )
        if mode == "hierarchical" and hierarchy.num_levels < 2:
            raise DataError("hierarchical noise needs a hierarchy with at least two levels")
        return hierarchy.num_classes(level)
    if mode == "hierarchical":
        raise DataError("hierarchical noise needs a Hierarchy (siblings share a parent), not a list of levels")
    for label_level in hierarchy_or_levels:
        if label_level.name == level and not label_level.multi_label:
            return label_level.num_classes
    names = [lv.name for lv in hierarchy_or_levels]
    raise DataError(f"no single-label level {level!r}{did_you_mean(level, names)} among {names}")


def _sibling_table(hierarchy: Hierarchy, level: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, S) the other children of each class's parent (padded with -1) and (C,) how many there are."""
    parent = hierarchy.parent_index(level)
    family = [torch.nonzero(parent == parent[c]).flatten() for c in range(len(parent))]
    siblings = [f[f != c] for c, f in enumerate(family)]
    counts = torch.tensor([len(s) for s in siblings], dtype=torch.long)
    table = torch.full((len(parent), max(1, int(counts.max()))), -1, dtype=torch.long)
    for c, s in enumerate(siblings):
        table[c, : len(s)] = s
    return table, counts


def add_label_noise(
    split: LabeledSplit,
    hierarchy_or_levels: Hierarchy | Sequence[LabelLevel],
    rate: float,
    mode: str = "symmetric",
    seed: int = 0,
    level: str = "fine",
) -> tuple[LabeledSplit, torch.Tensor]:
    """Flip exactly ``share(rate, N)`` labels at ``level`` (N = labelled rows); returns the
    noisy split and the (N_rows,) bool mask of flipped rows.

    ``symmetric``: the new label is uniform over the other classes. ``hierarchical``: uniform over
    the siblings under the same parent; a class that is its parent's only child cannot flip, so when
    fewer rows can flip than asked, all flippable rows flip, a warning gives the realised rate, and
    ``mask.float().mean()`` is that rate. With a :class:`Hierarchy` the coarser levels of flipped rows
    are recomputed from the noisy label; with a list of :class:`LabelLevel` only ``level`` changes.
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise DataError(f"noise rate must be in [0, 1], got {rate!r}")
    num_classes = _noise_classes(hierarchy_or_levels, level, mode)
    labels = _single_label(split, level)
    if len(labels) and labels.max() >= num_classes:
        raise DataError(f"level {level!r} has a label {int(labels.max())} but only {num_classes} classes")
    generator = _generator(seed)
    if mode == "hierarchical":
        table, choices = _sibling_table(hierarchy_or_levels, level)
    else:
        choices = torch.full((num_classes,), num_classes - 1, dtype=torch.long)
    labelled = labels >= 0
    flippable = torch.nonzero(labelled & (choices[labels.clamp(min=0)] > 0)).flatten()
    wanted = share(rate, int(labelled.sum()))
    if wanted > len(flippable):
        warnings.warn(
            f"label noise: {wanted} flips asked but only {len(flippable)} rows can flip; realised rate "
            f"{len(flippable) / max(1, int(labelled.sum())):.4f} instead of {rate}",
            stacklevel=2,
        )
    rows = flippable[torch.randperm(len(flippable), generator=generator)[:wanted]]
    old = labels[rows]
    pick = (torch.rand(len(rows), generator=generator, dtype=torch.float64) * choices[old]).long()
    if mode == "hierarchical":
        new = table[old, pick]
    else:
        new = pick + (pick >= old).long()
    return _noisy_split(split, hierarchy_or_levels, level, rows, new)


def _noisy_split(
    split: LabeledSplit,
    hierarchy_or_levels: Hierarchy | Sequence[LabelLevel],
    level: str,
    rows: torch.Tensor,
    new: torch.Tensor,
) -> tuple[LabeledSplit, torch.Tensor]:
    """A copy of ``split`` with ``new`` labels on ``rows`` at ``level`` (and its ancestors), plus the mask."""
    targets = {name: t.clone() for name, t in split.targets.items()}
    device = targets[level].device
    targets[level][rows.to(device)] = new.to(device)
    if isinstance(hierarchy_or_levels, Hierarchy):
        ancestors = hierarchy_or_levels.leaf_to_levels(new)
        for k, name in enumerate(hierarchy_or_levels.level_names[:-1]):
            if name in targets and targets[name].dim() == 1:
                targets[name][rows.to(device)] = ancestors[:, k].to(device)
    mask = torch.zeros(len(split), dtype=torch.bool)
    mask[rows] = True
    return LabeledSplit(split.inputs, targets, split.ids), mask


def is_labelled(target: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: the rows of one level's targets that carry a label (a class id >= 0, or at least
    one positive of a multi-hot ``(N, C)`` target)."""
    return target.gt(0).any(dim=1) if target.dim() == 2 else target.ge(0)


def labelled_rows(split: LabeledSplit) -> dict[str, int]:
    """The number of rows labelled at each level."""
    return {name: int(is_labelled(target).sum()) for name, target in split.targets.items()}


def keep_level_labels(
    split: LabeledSplit,
    hierarchy_or_levels: Hierarchy | Sequence[LabelLevel],
    fractions: Mapping[str, float],
    seed: int,
) -> LabeledSplit:
    """Hide labels: at each level named in ``fractions``, keep the labels of ``max(1, share(f, n_c))`` random
    rows of every class ``c`` (``n_c`` = its labelled rows) and set the others to -1. Every row is kept.

    Nested: a row keeps a level's label only if it keeps the label of every coarser level, so a fine label
    never comes without its coarse one. The levels are drawn finest first: a coarser level keeps the rows
    whose finer label was kept, then tops each class up to its share. A fraction is of all the rows labelled
    at the level (not of those that keep the coarser label), so a level's fraction may not exceed the one
    above it (an unnamed level keeps 1). Levels are ordered coarse -> fine;
    DataError for an unknown or multi-label level, a fraction outside (0, 1], or fractions that grow finer.
    """
    levels = hierarchy_or_levels.label_levels() if isinstance(hierarchy_or_levels, Hierarchy) \
        else list(hierarchy_or_levels)
    names = [level.name for level in levels]
    for name, fraction in fractions.items():
        if name not in names:
            raise DataError(f"no level {name!r}{did_you_mean(name, names)}; the levels are {names}")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise DataError(f"the fraction of level {name!r} must be in (0, 1], got {fraction!r}")
        if next(level for level in levels if level.name == name).multi_label:
            raise DataError(f"level {name!r} is multi-label; hiding labels needs single-label levels")
    kept = [float(fractions.get(name, 1.0)) for name in names]
    for k in range(1, len(names)):
        if kept[k] > kept[k - 1]:
            keeps = f"keeps {kept[k]}" if names[k] in fractions else "is not named, so it keeps all"
            raise DataError(
                f"level {names[k]!r} {keeps} of its labels but {names[k - 1]!r} above it only {kept[k - 1]}; a "
                f"{names[k]!r} label needs its {names[k - 1]!r} label: give {names[k]!r} at most {kept[k - 1]}"
            )
    generator = _generator(seed)
    targets = dict(split.targets)
    finer: torch.Tensor | None = None  # (N,) bool: rows that keep the next finer level's label
    for name in reversed(names):
        labels = _single_label(split, name) if name in fractions else split.targets[name].cpu()
        if labels.dim() != 1:  # an unnamed multi-label level keeps everything and constrains nothing
            finer = None
            continue
        keep = labels >= 0
        if name in fractions:
            keep = finer.clone() if finer is not None else torch.zeros(len(labels), dtype=torch.bool)
            keep &= labels >= 0
            for c in torch.unique(labels[labels >= 0]).tolist():
                rows = torch.nonzero(labels == c).flatten()
                missing = max(1, share(fractions[name], len(rows))) - int(keep[rows].sum())
                if missing > 0:
                    free = rows[~keep[rows]]
                    keep[free[torch.randperm(len(free), generator=generator)[:missing]]] = True
            hidden = split.targets[name].clone()
            hidden[~keep.to(hidden.device)] = -1
            targets[name] = hidden
        finer = keep
    return LabeledSplit(split.inputs, targets, split.ids)
