"""Fashion-MNIST grids: a multi-label dataset of 2x2 canvases holding 1-4 Fashion-MNIST items.

Each canvas (56x56, one channel) has items in distinct random cells; its targets are the multi-hot sets
of the items' fine classes (10) and their coarse groups (5), so coarse = OR of the fine items' parents.
Train and validation canvases use disjoint pools of official training images, test canvases use the
official test images only. Everything is drawn from ``seed``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mlcl.data.fashion_mnist import CLASSES, COARSE_CLASSES, FINE2COARSE, IMAGE_SIZE, hierarchy, load_raw
from mlcl.data.splits import stratified_split
from mlcl.data.types import Dataset, LabeledSplit, LabelLevel
from mlcl.errors import DataError

NAME = "fashion-mnist-grid"
CELLS = 4  # a 2x2 grid


def make_canvases(
    images: torch.Tensor, labels: torch.Tensor, n: int, min_items: int, max_items: int, seed: int
) -> LabeledSplit:
    """``n`` canvases from ``images`` ``(M, 28, 28)`` uint8 with fine ``labels`` ``(M,)``.

    Items are drawn with replacement; the number of items per canvas is uniform in
    ``[min_items, max_items]``. Returns inputs ``(n, 1, 56, 56)`` float32 in [0, 1] and multi-hot
    ``fine`` ``(n, 10)`` / ``coarse`` ``(n, 5)`` float32 targets.
    """
    if len(labels) == 0:
        raise DataError(f"{NAME}: no source images to build canvases from; use a larger dataset")
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(min_items, max_items + 1, (n,), generator=gen)
    cells = torch.argsort(torch.rand(n, CELLS, generator=gen), dim=1)
    items = torch.randint(len(labels), (n, CELLS), generator=gen)
    grid = torch.zeros(n, CELLS, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    fine = torch.zeros(n, len(CLASSES))
    for slot in range(CELLS):
        used = torch.nonzero(counts > slot).squeeze(1)
        chosen = items[used, slot]
        grid[used, cells[used, slot]] = images[chosen]
        fine[used, labels[chosen]] = 1.0
    side = 2 * IMAGE_SIZE
    canvas = grid.view(n, 2, 2, IMAGE_SIZE, IMAGE_SIZE).permute(0, 1, 3, 2, 4).reshape(n, 1, side, side)
    parents = torch.nn.functional.one_hot(torch.tensor(FINE2COARSE), len(COARSE_CLASSES)).float()
    coarse = (fine @ parents).clamp_(max=1.0)
    return LabeledSplit(canvas.float().div_(255.0), {"coarse": coarse, "fine": fine})


def _check(n_train: int, n_val: int, n_test: int, min_items: int, max_items: int) -> None:
    if n_train < 1 or n_test < 1 or n_val < 0:
        raise DataError(f"{NAME}: expected n_train >= 1, n_val >= 0, n_test >= 1, got "
                        f"{n_train}, {n_val}, {n_test}")
    if not 1 <= min_items <= max_items <= CELLS:
        raise DataError(f"{NAME}: expected 1 <= min_items <= max_items <= {CELLS}, got "
                        f"min_items={min_items}, max_items={max_items}")


def load_fashion_mnist_grid(
    n_train: int = 20000,
    n_val: int = 5000,
    n_test: int = 10000,
    min_items: int = 1,
    max_items: int = 4,
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> Dataset:
    """The multi-label grid dataset with multi-hot levels ``coarse`` (5) and ``fine`` (10).

    The validation canvases draw from a stratified share of the official training images proportional
    to ``n_val / (n_train + n_val)``, so no item appears in both train and validation canvases.
    """
    _check(n_train, n_val, n_test, min_items, max_items)
    train_images, train_labels = load_raw("train", data_dir)
    test_images, test_labels = load_raw("test", data_dir)
    val_items = max(1, round(len(train_labels) * n_val / (n_train + n_val))) if n_val else 0
    val_pool, train_pool = stratified_split(train_labels, [val_items], seed)

    def canvases(images: torch.Tensor, labels: torch.Tensor, n: int, offset: int) -> LabeledSplit:
        return make_canvases(images, labels, n, min_items, max_items, seed * 3 + offset)

    return Dataset(
        name=NAME,
        modality="image",
        levels=[LabelLevel("coarse", list(COARSE_CLASSES), multi_label=True),
                LabelLevel("fine", list(CLASSES), multi_label=True)],
        train=canvases(train_images[train_pool], train_labels[train_pool], n_train, 0),
        test=canvases(test_images, test_labels, n_test, 2),
        val=canvases(train_images[val_pool], train_labels[val_pool], n_val, 1) if n_val else None,
        hierarchy=hierarchy(),
    )
