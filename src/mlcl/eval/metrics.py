"""Evaluation metrics: per-level top-1, hierarchy consistency and the multi-label scores.

Inputs are numpy arrays or torch tensors; every metric returns plain Python floats so results go
straight into ``metrics.json``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from mlcl.errors import DataError, MlclError

ArrayLike = np.ndarray | torch.Tensor

#: Thresholds :func:`choose_threshold` tries by default.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))


def _numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_same_shape(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.shape != b.shape:
        raise MlclError(f"{names} must have the same shape, got {a.shape} and {b.shape}")


def top1(pred: ArrayLike, target: ArrayLike) -> float:
    """Accuracy over the labelled rows; rows with ``target == -1`` (unknown label) are ignored."""
    pred, target = _numpy(pred), _numpy(target)
    _check_same_shape(pred, target, "pred and target")
    labelled = target != -1
    if not labelled.any():
        raise DataError("top1: no labelled rows (every target is -1)")
    return float((pred[labelled] == target[labelled]).mean())


def hierarchy_consistency(pred_fine: ArrayLike, pred_coarse: ArrayLike, parent_index: ArrayLike) -> float:
    """Fraction of rows whose predicted fine class has the predicted coarse class as its parent.

    ``parent_index[c]`` is the coarse class of fine class ``c``. Labels are not needed: this measures
    whether the two levels' predictions agree with the hierarchy.
    """
    fine, coarse, parent = _numpy(pred_fine), _numpy(pred_coarse), _numpy(parent_index)
    _check_same_shape(fine, coarse, "pred_fine and pred_coarse")
    if fine.size == 0:
        raise DataError("hierarchy_consistency: no predictions")
    if fine.min() < 0 or fine.max() >= len(parent):
        raise MlclError(f"pred_fine holds classes outside parent_index (0..{len(parent) - 1})")
    return float((parent[fine] == coarse).mean())


def _multilabel_inputs(scores: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Scores as float (N, C) and multi-hot targets as bool (N, C), validated."""
    s, t = _numpy(scores).astype(np.float64), _numpy(targets)
    _check_same_shape(s, t, "scores and targets")
    if s.ndim != 2 or len(s) == 0:
        raise MlclError(f"multi-label scores must be a non-empty (N, C) array, got shape {s.shape}")
    if not np.isin(t, (0, 1)).all():
        raise MlclError("multi-label targets must be multi-hot (only 0 and 1)")
    return s, t.astype(bool)


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """2TP / (2TP + FP + FN), 0 where the denominator is 0 (scikit-learn's ``zero_division=0``)."""
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def _counts(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class true positives, false positives and false negatives of bool (N, C) arrays."""
    tp = (pred & truth).sum(axis=0)
    fp = (pred & ~truth).sum(axis=0)
    fn = (~pred & truth).sum(axis=0)
    return tp, fp, fn


def _micro_f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp, fp, fn = _counts(pred, truth)
    return float(_f1(tp.sum(), fp.sum(), fn.sum()))


def mean_average_precision(scores: ArrayLike, targets: ArrayLike) -> float:
    """Mean over classes with at least one positive of scikit-learn's average precision."""
    s, t = _multilabel_inputs(scores, targets)
    present = t.any(axis=0)
    if not present.any():
        raise DataError("mAP: no class has a positive example")
    return float(np.mean([average_precision_score(t[:, c], s[:, c]) for c in np.flatnonzero(present)]))


def multilabel_metrics(scores: ArrayLike, targets: ArrayLike, threshold: float) -> dict[str, float]:
    """mAP, micro/macro F1, subset accuracy and Hamming loss of ``scores >= threshold``.

    Take ``threshold`` from :func:`choose_threshold` on the validation split, never from the split
    these metrics are reported on. Macro F1 averages over all classes (0 for a class never present
    nor predicted, as scikit-learn's ``zero_division=0``).
    """
    s, t = _multilabel_inputs(scores, targets)
    pred = s >= threshold
    tp, fp, fn = _counts(pred, t)
    return {
        "mAP": mean_average_precision(s, t),
        "micro_f1": _micro_f1(pred, t),
        "macro_f1": float(_f1(tp, fp, fn).mean()),
        "subset_accuracy": float((pred == t).all(axis=1).mean()),
        "hamming_loss": float((pred != t).mean()),
    }


def choose_threshold(
    *, val_scores: ArrayLike, val_targets: ArrayLike, grid: Sequence[float] = DEFAULT_THRESHOLDS
) -> float:
    """The threshold of ``grid`` with the best micro-F1 on the VALIDATION split (ties: the lowest).

    Keyword-only so every call site says which split it tunes on; tuning on test inflates results.
    """
    s, t = _multilabel_inputs(val_scores, val_targets)
    if len(grid) == 0:
        raise MlclError("choose_threshold: empty threshold grid")
    thresholds = sorted(float(g) for g in grid)
    micro = [_micro_f1(s >= thr, t) for thr in thresholds]
    return thresholds[int(np.argmax(micro))]
