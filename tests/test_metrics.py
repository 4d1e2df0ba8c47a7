"""Metrics against scikit-learn and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, hamming_loss

from mlcl.errors import DataError, MlclError
from mlcl.eval.metrics import (
    DEFAULT_THRESHOLDS,
    choose_threshold,
    hierarchy_consistency,
    mean_average_precision,
    multilabel_metrics,
    top1,
)

FINE2COARSE = [0, 1, 0, 2, 0, 3, 0, 3, 4, 3]  # Fashion-MNIST


def _random_multilabel(seed: int, n: int = 200, c: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Scores correlated with multi-hot targets; the last class has no positive at all."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.3).astype(np.float32)
    targets[:, -1] = 0
    scores = np.clip(0.35 * targets + 0.65 * rng.random((n, c)), 0, 1)
    return scores, targets


def test_top1_matches_sklearn_and_ignores_unknown_labels():
    rng = np.random.default_rng(0)
    target = rng.integers(-1, 5, 300)
    pred = rng.integers(0, 5, 300)
    labelled = target != -1
    expected = accuracy_score(target[labelled], pred[labelled])
    assert top1(pred, target) == pytest.approx(expected)
    assert top1(torch.from_numpy(pred), torch.from_numpy(target)) == pytest.approx(expected)
    assert isinstance(top1(pred, target), float)


def test_top1_errors():
    with pytest.raises(DataError, match="no labelled rows"):
        top1(np.array([1, 2]), np.array([-1, -1]))
    with pytest.raises(ValueError, match="same shape"):
        top1(np.array([1, 2, 3]), np.array([1, 2]))


def test_hierarchy_consistency_hand_made():
    parent = torch.tensor(FINE2COARSE)
    pred_fine = torch.tensor([0, 1, 3, 9, 8])
    pred_coarse = torch.tensor([0, 0, 2, 3, 4])  # the second row disagrees: parent of 1 is 1
    assert hierarchy_consistency(pred_fine, pred_coarse, parent) == pytest.approx(0.8)
    assert hierarchy_consistency(pred_fine, parent[pred_fine], parent) == 1.0
    assert hierarchy_consistency([2, 4], [1, 1], FINE2COARSE) == 0.0


def test_hierarchy_consistency_rejects_unknown_fine_class():
    with pytest.raises(MlclError, match="outside parent_index"):
        hierarchy_consistency([10], [0], FINE2COARSE)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_multilabel_metrics_match_sklearn(seed, threshold):
    scores, targets = _random_multilabel(seed)
    pred = (scores >= threshold).astype(int)
    got = multilabel_metrics(torch.from_numpy(scores), torch.from_numpy(targets), threshold)
    present = targets.sum(axis=0) > 0
    expected_map = np.mean(
        [average_precision_score(targets[:, c], scores[:, c]) for c in np.flatnonzero(present)]
    )
    assert got == pytest.approx(
        {
            "mAP": expected_map,
            "micro_f1": f1_score(targets, pred, average="micro", zero_division=0),
            "macro_f1": f1_score(targets, pred, average="macro", zero_division=0),
            "subset_accuracy": accuracy_score(targets, pred),
            "hamming_loss": hamming_loss(targets, pred),
        }
    )
    assert all(isinstance(v, float) for v in got.values())


def test_macro_f1_counts_a_class_never_present_nor_predicted_as_zero():
    targets = np.array([[1, 0], [0, 0]])
    scores = np.array([[0.9, 0.1], [0.1, 0.1]])
    got = multilabel_metrics(scores, targets, 0.5)
    assert got["micro_f1"] == 1.0
    expected = f1_score(targets, scores >= 0.5, average="macro", zero_division=0)
    assert got["macro_f1"] == pytest.approx(expected)
    assert got["mAP"] == 1.0  # the empty class is left out of the mean


def test_multilabel_input_errors():
    with pytest.raises(MlclError, match="multi-hot"):
        multilabel_metrics(np.zeros((2, 2)), np.array([[2, 0], [0, 1]]), 0.5)
    with pytest.raises(MlclError, match=r"\(N, C\)"):
        multilabel_metrics(np.zeros(3), np.zeros(3), 0.5)
    with pytest.raises(DataError, match="no class has a positive"):
        mean_average_precision(np.zeros((2, 2)), np.zeros((2, 2)))


@pytest.mark.parametrize("seed", [0, 1])
def test_choose_threshold_maximises_micro_f1_like_sklearn(seed):
    scores, targets = _random_multilabel(seed)
    best = max(
        DEFAULT_THRESHOLDS,  # max() keeps the first (lowest) of equal values, like choose_threshold
        key=lambda thr: f1_score(targets, scores >= thr, average="micro", zero_division=0),
    )
    assert choose_threshold(val_scores=scores, val_targets=targets) == best


def test_choose_threshold_uses_the_split_it_is_given():
    grid = (0.2, 0.5, 0.8)
    targets = np.array([[1], [1], [0], [0]])
    val_scores = np.array([[0.3], [0.35], [0.1], [0.15]])  # perfect at 0.2, nothing predicted at 0.5
    test_scores = np.array([[0.9], [0.95], [0.3], [0.35]])  # perfect at 0.5, all positive at 0.2
    assert choose_threshold(val_scores=val_scores, val_targets=targets, grid=grid) == 0.2
    assert choose_threshold(val_scores=test_scores, val_targets=targets, grid=grid) == 0.5
    with pytest.raises(TypeError):  # the split must be named at the call site
        choose_threshold(val_scores, targets)  # type: ignore[misc]
    with pytest.raises(MlclError, match="empty"):
        choose_threshold(val_scores=val_scores, val_targets=targets, grid=())
