"""scikit-learn's bundled 8x8 digits (1797 images, 10 classes) as a small image dataset."""

from __future__ import annotations

import torch

from mlcl.data.splits import fraction_split
from mlcl.data.types import Dataset, LabeledSplit, LabelLevel

NAME = "digits"
MAX_PIXEL = 16.0  # the digits' gray levels are 0..16


def is_available() -> tuple[bool, str]:
    """Always available: the data ship inside scikit-learn."""
    import sklearn  # imported when used: the registry imports this module for every mlcl command

    return True, f"bundled with scikit-learn {sklearn.__version__}"


def load_digits(test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Digits as images ``(N, 1, 8, 8)`` float32 in [0, 1] with one level ``label`` ("0".."9").

    The test / validation parts are stratified by class and seeded.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / MAX_PIXEL
    everything = LabeledSplit(images, {"label": torch.as_tensor(bunch.target, dtype=torch.int64)})
    train, val, test = fraction_split(everything.targets["label"], test_fraction, val_fraction, seed, NAME)
    return Dataset(
        name=NAME,
        modality="image",
        levels=[LabelLevel("label", [str(d) for d in range(10)])],
        train=everything.subset(train),
        test=everything.subset(test),
        val=everything.subset(val) if len(val) else None,
    )
