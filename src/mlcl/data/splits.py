"""Seeded, class-stratified selections of rows: the train / val / test splits of every loader and the
per-class subsets of the training-set protocols (:mod:`mlcl.data.protocols`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mlcl.errors import DataError


def stratified_split(labels: torch.Tensor, sizes: Sequence[int], seed: int) -> list[torch.Tensor]:
    """Split ``0..N-1`` into ``len(sizes) + 1`` index sets: the first ones of exactly ``sizes``, the last
    the rest; each class is spread over the parts in proportion to its size. Deterministic for a seed.

    Why: every loader needs reproducible, class-balanced train / val / test parts.
    """
    n = labels.shape[0]
    if any(s < 0 for s in sizes) or sum(sizes) > n:
        raise DataError(f"cannot split {n} samples into parts of sizes {list(sizes)}; expected sizes >= 0 "
                        f"summing to at most {n}")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    shuffled = labels[order]
    # Rank of each sample within its class, as a fraction of the class size: sorting by that fraction
    # interleaves the classes so that every prefix holds each class in proportion.
    by_class = torch.argsort(shuffled, stable=True)
    sorted_labels = shuffled[by_class]
    _, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    rank = torch.arange(n) - starts
    position = torch.empty(n, dtype=torch.float64)
    position[by_class] = (rank.double() + 0.5) / torch.repeat_interleave(counts, counts).double()
    interleaved = order[torch.argsort(position, stable=True)]
    bounds = torch.cumsum(torch.tensor([0, *sizes]), 0).tolist()
    bounds.append(n)
    return [interleaved[a:b].sort().values for a, b in zip(bounds[:-1], bounds[1:])]


def fraction_split(
    labels: torch.Tensor, test_fraction: float, val_fraction: float, seed: int, dataset: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stratified, seeded ``(train, val, test)`` indices with the given test / validation fractions."""
    if not (0 < test_fraction and 0 <= val_fraction and test_fraction + val_fraction < 1):
        raise DataError(f"{dataset}: expected test_fraction > 0, val_fraction >= 0 and their sum < 1, got "
                        f"test_fraction={test_fraction}, val_fraction={val_fraction}")
    n = labels.shape[0]
    test, val, train = stratified_split(labels, [round(test_fraction * n), round(val_fraction * n)], seed)
    return train, val, test


def stratified_subset(
    labels: torch.Tensor, count: Callable[[int, int], int], generator: torch.Generator, level: str
) -> torch.Tensor:
    """Sorted indices of ``count(class_id, n_class)`` random rows of every class in ``labels`` (N,).

    Rows without a label (-1) are dropped: they belong to no stratum. ``level`` names the labels in errors.
    """
    keep = []
    for c in torch.unique(labels[labels >= 0]).tolist():
        rows = torch.nonzero(labels == c).flatten()
        keep.append(rows[torch.randperm(len(rows), generator=generator)[: count(c, len(rows))]])
    index = torch.cat(keep) if keep else torch.empty(0, dtype=torch.long)
    if len(index) == 0 and not keep:
        raise DataError(f"no sample kept: the split has no labelled rows at level {level!r} to draw from")
    if len(index) == 0:
        raise DataError(f"no sample kept: every class of level {level!r} rounds to 0 rows; use a larger fraction")
    return torch.sort(index).values
