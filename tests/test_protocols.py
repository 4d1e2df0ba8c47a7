"""Label fraction, k-shot and label noise: exact counts, stratification, consistency, seeds, errors."""

from __future__ import annotations

import pytest
import torch

from mlcl.data.protocols import add_label_noise, k_shot, label_fraction, share
from mlcl.data.types import LabeledSplit, LabelLevel
from mlcl.errors import DataError
from mlcl.hierarchy import Hierarchy

FINE2COARSE = [0, 1, 0, 2, 0, 3, 0, 3, 4, 3]
SIZES = [10 + 3 * c for c in range(10)]  # class c has 10 + 3c rows


def hierarchy() -> Hierarchy:
    return Hierarchy.from_index(FINE2COARSE, [f"f{i}" for i in range(10)], [f"c{i}" for i in range(5)])


def make_split() -> LabeledSplit:
    """Rows grouped by class then shuffled deterministically; inputs remember their row number."""
    fine = torch.cat([torch.full((n,), c) for c, n in enumerate(SIZES)])
    fine = fine[torch.randperm(len(fine), generator=torch.Generator().manual_seed(123))]
    levels = hierarchy().leaf_to_levels(fine)
    inputs = torch.arange(len(fine), dtype=torch.float32)[:, None]
    return LabeledSplit(inputs, {"coarse": levels[:, 0], "fine": levels[:, 1]})


def counts(labels: torch.Tensor, n: int = 10) -> list[int]:
    return torch.bincount(labels[labels >= 0], minlength=n).tolist()


def test_share_rounds_half_up_on_the_written_decimal() -> None:
    assert [share(x, 1) for x in (0.49, 0.5)] == [0, 1]
    assert [share(0.5, n) for n in (3, 5)] == [2, 3]  # 1.5 -> 2, 2.5 -> 3
    assert 0.7 * 45 < 31.5 and share(0.7, 45) == 32  # not fooled by the float product


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 1.0])
def test_label_fraction_exact_stratified_counts(fraction) -> None:
    split = make_split()
    sub = label_fraction(split, "fine", fraction, seed=0)
    assert counts(sub.targets["fine"]) == [max(1, share(fraction, n)) for n in SIZES]


def test_label_fraction_keeps_rows_intact_and_in_order() -> None:
    split = make_split()
    sub = label_fraction(split, "fine", 0.3, seed=1)
    rows = sub.inputs[:, 0].long()
    assert torch.all(rows[1:] > rows[:-1])
    for name in ("coarse", "fine"):
        assert torch.equal(sub.targets[name], split.targets[name][rows])


def test_label_fraction_at_least_one_per_class_unless_allow_empty() -> None:
    split = make_split()
    assert min(counts(label_fraction(split, "fine", 0.01, seed=0).targets["fine"])) == 1
    sparse = label_fraction(split, "fine", 0.03, seed=0, allow_empty=True)
    assert counts(sparse.targets["fine"]) == [share(0.03, n) for n in SIZES]
    assert 0 in counts(sparse.targets["fine"])
    with pytest.raises(DataError, match="no sample kept: every class of level 'fine' rounds to 0 rows; use a larger"):
        label_fraction(split, "fine", 0.01, seed=0, allow_empty=True)


def test_label_fraction_by_coarse_level() -> None:
    split = make_split()
    sub = label_fraction(split, "coarse", 0.5, seed=0)
    coarse_sizes = torch.bincount(split.targets["coarse"]).tolist()
    assert torch.bincount(sub.targets["coarse"]).tolist() == [share(0.5, n) for n in coarse_sizes]


def test_label_fraction_determinism() -> None:
    split = make_split()
    a = label_fraction(split, "fine", 0.2, seed=7).inputs
    b = label_fraction(split, "fine", 0.2, seed=7).inputs
    c = label_fraction(split, "fine", 0.2, seed=8).inputs
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_label_fraction_drops_unlabelled_rows_and_works_on_text() -> None:
    split = LabeledSplit(["a", "b", "c", "d"], {"fine": torch.tensor([0, -1, 0, 1])})
    sub = label_fraction(split, "fine", 1.0, seed=0)
    assert sub.inputs == ["a", "c", "d"]


@pytest.mark.parametrize("fraction", [0, -0.5, 1.01, float("nan"), "0.5"])
def test_label_fraction_rejects_bad_fraction(fraction) -> None:
    with pytest.raises(DataError, match=r"fraction must be in \(0, 1\]"):
        label_fraction(make_split(), "fine", fraction, seed=0)


def test_level_errors() -> None:
    split = make_split()
    with pytest.raises(DataError, match="no level 'fin'.*did you mean 'fine'"):
        label_fraction(split, "fin", 0.5, seed=0)
    multi = LabeledSplit(torch.zeros(3, 1), {"tags": torch.eye(3)})
    with pytest.raises(DataError, match="multi-label"):
        k_shot(multi, "tags", 1, seed=0)
    with pytest.raises(DataError, match="seed must be an integer"):
        k_shot(split, "fine", 1, seed=None)


def test_k_shot_exact_and_deterministic() -> None:
    split = make_split()
    sub = k_shot(split, "fine", 5, seed=3)
    assert counts(sub.targets["fine"]) == [5] * 10
    assert torch.equal(sub.inputs, k_shot(split, "fine", 5, seed=3).inputs)
    assert not torch.equal(sub.inputs, k_shot(split, "fine", 5, seed=4).inputs)


def test_k_shot_errors() -> None:
    with pytest.raises(DataError, match="class 0 at level 'fine' has only 10 samples, fewer than k=11"):
        k_shot(make_split(), "fine", 11, seed=0)
    names = [f"class-{i}" for i in range(10)]
    with pytest.raises(DataError, match="class 'class-0' at level 'fine' has only 10 samples"):
        k_shot(make_split(), "fine", 11, seed=0, class_names=names)
    with pytest.raises(DataError, match="k must be a positive integer"):
        k_shot(make_split(), "fine", 0, seed=0)


def assert_consistent(split: LabeledSplit, h: Hierarchy) -> None:
    fine = split.targets["fine"]
    assert torch.equal(split.targets["coarse"], h.parent_index("fine")[fine])


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.37, 1.0])
def test_symmetric_noise_exact_rate_and_consistency(rate) -> None:
    split, h = make_split(), hierarchy()
    noisy, flipped = add_label_noise(split, h, rate, mode="symmetric", seed=0)
    assert flipped.dtype == torch.bool and flipped.shape == (len(split),)
    assert int(flipped.sum()) == share(rate, len(split))
    changed = noisy.targets["fine"] != split.targets["fine"]
    assert torch.equal(changed, flipped)
    assert_consistent(noisy, h)
    assert noisy.inputs is split.inputs
    assert_consistent(split, h)  # the input split is left alone


def test_symmetric_noise_is_uniform_over_other_classes() -> None:
    fine = torch.zeros(6000, dtype=torch.long)
    split = LabeledSplit(torch.zeros(6000, 1), {"fine": fine})
    noisy, _ = add_label_noise(split, [LabelLevel("fine", [str(i) for i in range(4)])], 1.0, seed=0)
    share = torch.bincount(noisy.targets["fine"], minlength=4).float() / 6000
    assert share[0] == 0 and torch.allclose(share[1:], torch.full((3,), 1 / 3), atol=0.03)


def test_hierarchical_noise_stays_under_the_parent() -> None:
    split, h = make_split(), hierarchy()
    noisy, flipped = add_label_noise(split, h, 0.3, mode="hierarchical", seed=5)
    assert int(flipped.sum()) == share(0.3, len(split))
    assert torch.equal(noisy.targets["coarse"], split.targets["coarse"])
    assert torch.all(noisy.targets["fine"][flipped] != split.targets["fine"][flipped])
    assert_consistent(noisy, h)
    only_children = torch.tensor([1, 3, 8])  # Trouser, Dress, Bag have no sibling
    assert not flipped[torch.isin(split.targets["fine"], only_children)].any()


def test_hierarchical_noise_caps_at_flippable_rows_and_warns() -> None:
    split, h = make_split(), hierarchy()
    flippable = sum(n for c, n in enumerate(SIZES) if c not in (1, 3, 8))
    with pytest.warns(UserWarning, match=f"only {flippable} rows can flip; realised rate"):
        _, flipped = add_label_noise(split, h, 1.0, mode="hierarchical", seed=0)
    assert int(flipped.sum()) == flippable


def test_noise_determinism() -> None:
    split, h = make_split(), hierarchy()
    a = add_label_noise(split, h, 0.2, "symmetric", 11)
    b = add_label_noise(split, h, 0.2, "symmetric", 11)
    c = add_label_noise(split, h, 0.2, "symmetric", 12)
    assert torch.equal(a[0].targets["fine"], b[0].targets["fine"]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_noise_leaves_unlabelled_rows() -> None:
    h = hierarchy()
    targets = {"fine": torch.tensor([-1, 0, 2, -1]), "coarse": torch.tensor([3, 0, 0, -1])}
    split = LabeledSplit(torch.zeros(4, 1), targets)
    noisy, flipped = add_label_noise(split, h, 1.0, seed=0)
    assert flipped.tolist() == [False, True, True, False]
    assert noisy.targets["fine"][[0, 3]].tolist() == [-1, -1]
    assert noisy.targets["coarse"][[0, 3]].tolist() == [3, -1]  # a coarse-only label survives


def test_noise_errors() -> None:
    split, h = make_split(), hierarchy()
    with pytest.raises(DataError, match=r"noise rate must be in \[0, 1\]"):
        add_label_noise(split, h, 1.5)
    with pytest.raises(DataError, match="unknown noise mode 'sym'"):
        add_label_noise(split, h, 0.1, mode="sym")
    with pytest.raises(DataError, match="finest level"):
        add_label_noise(split, h, 0.1, level="coarse")
    with pytest.raises(DataError, match="hierarchical noise needs a Hierarchy"):
        add_label_noise(split, [LabelLevel("fine", list("abcdefghij"))], 0.1, mode="hierarchical")
    with pytest.raises(DataError, match="label 9 but only 3 classes"):
        add_label_noise(split, [LabelLevel("fine", list("abc"))], 0.1)

