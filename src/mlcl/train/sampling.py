"""Which training rows make up each batch of an epoch (``train.labelled_share``).

With a share of 0 an epoch is one seeded permutation of the training split, cut into global batches
(the remainder is dropped). With a share > 0, each global batch of ``B`` rows holds
``k = round(share * B)`` rows labelled at one level (at least 1, at most the labelled rows) and
``B - k`` of the other rows. Each of the two groups is read as an endless stream of reshuffled
passes (pass ``c`` of a group is a permutation seeded by the run's seed and ``c``), and epoch ``e``
takes the stream positions that follow epoch ``e - 1``'s. So the epoch length stays
``len(train) // B`` steps, every row of a group appears once per pass of that group (labelled rows
are reused more often, the others less, and none is starved), and an epoch's order is a pure function
of the seed and the epoch number, which is what an exact resume needs.

The rest of a batch comes from the rows *not* labelled at the level, not from all rows, so that a
batch holds exactly ``k`` labelled rows, the number asked for. When every row is labelled there are
no others and the whole batch comes from the labelled stream (uniform batches, in another order).

The ``k`` labelled rows are spread evenly over the batch's positions (not shuffled within it): the
global batch is split into contiguous per-process slices, so every process gets ``k / processes``
rows (give or take one), and the order does not depend on the process count.
"""

from __future__ import annotations

import math

import torch

from mlcl.data.protocols import is_labelled
from mlcl.data.types import LabeledSplit
from mlcl.errors import ConfigError, DataError
from mlcl.hierarchy import LabelLevel
from mlcl.user_input import did_you_mean

EPOCH_SEED_STRIDE = 1_000_003  # epoch e of seed s shuffles with s * stride + e


def labelled_mask(split: LabeledSplit, levels: list[LabelLevel], share: float, level_name: str | None
                  ) -> torch.Tensor | None:
    """The rows that ``train.labelled_share`` draws from (``None`` for uniform batches); a
    ``train.labelled_level`` that names no level, or a level without any labelled row, is refused."""
    names = [level.name for level in levels]
    if level_name is not None and level_name not in names:
        raise ConfigError(f"train.labelled_level={level_name!r} is not a level of this data"
                          f"{did_you_mean(level_name, names)}; use one of {', '.join(names)} (null: the finest)")
    if share == 0:
        return None
    level = levels[-1] if level_name is None else levels[names.index(level_name)]
    mask = is_labelled(split.targets[level.name]).cpu()
    if not mask.any():
        raise DataError(f"train.labelled_share={share} draws rows labelled at level {level.name!r}, but no training "
                        f"row has a {level.name!r} label; set train.labelled_level to a level with labels, or "
                        "train.labelled_share=0")
    return mask


def labelled_per_batch(share: float, batch_size: int, n_labelled: int) -> int:
    """``round(share * batch_size)`` (halves up), at least 1 when ``share > 0``, at most ``n_labelled``."""
    if share == 0:
        return 0
    return min(max(1, math.floor(share * batch_size + 0.5)), n_labelled, batch_size)


def _stream(rows: torch.Tensor, start: int, count: int, seed: int, stream: int) -> torch.Tensor:
    """Positions ``start .. start + count`` of an endless sequence of seeded permutations of ``rows``."""
    size = len(rows)
    first, last = start // size, (start + count - 1) // size
    passes = []
    for index in range(first, last + 1):
        # Distinct from the uniform epochs' seeds (seed * stride + epoch) of the same seed, and within 64 bits.
        generator = torch.Generator().manual_seed(((seed * EPOCH_SEED_STRIDE + index) << 2) + stream + 1)
        passes.append(rows[torch.randperm(size, generator=generator)])
    offset = start - first * size
    return torch.cat(passes)[offset : offset + count]


def epoch_batches(n_rows: int, batch_size: int, seed: int, epoch: int, labelled: torch.Tensor | None = None,
                  share: float = 0.0) -> torch.Tensor:
    """``(steps, batch_size)`` row indices of ``epoch``'s global batches, ``steps = n_rows // batch_size``.

    ``labelled`` (``(n_rows,)`` bool) and ``share`` compose each batch as the module docstring says;
    without them (or with ``share == 0``) the epoch is a seeded permutation of all rows.
    """
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"train.labelled_share must be in [0, 1], got {share}")
    steps = n_rows // batch_size
    if labelled is None or share == 0:
        generator = torch.Generator().manual_seed(seed * EPOCH_SEED_STRIDE + epoch)
        order = torch.randperm(n_rows, generator=generator)
        return order[: steps * batch_size].view(steps, batch_size)
    if len(labelled) != n_rows:
        raise ValueError(f"labelled has {len(labelled)} rows, expected {n_rows}")
    if not labelled.any():
        raise ValueError("labelled marks no row: there is nothing to draw the labelled share from")
    rows = torch.arange(n_rows)
    marked, others = rows[labelled], rows[~labelled]
    k = labelled_per_batch(share, batch_size, len(marked))
    if len(others) == 0:
        k = batch_size
    batches = torch.empty(steps, batch_size, dtype=torch.long)
    positions = torch.zeros(batch_size, dtype=torch.bool)
    positions[torch.arange(k) * batch_size // k] = True  # k distinct, evenly spread positions
    batches[:, positions] = _stream(marked, epoch * steps * k, steps * k, seed, 0).view(steps, k)
    if k < batch_size:
        rest = batch_size - k
        batches[:, ~positions] = _stream(others, epoch * steps * rest, steps * rest, seed, 1).view(steps, rest)
    return batches
