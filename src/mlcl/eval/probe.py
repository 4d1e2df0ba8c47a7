"""Linear probe and kNN on frozen features, and the per-level evaluation behind ``metrics.json``.

Targets follow the data contract (:mod:`mlcl.data.types`): a ``(N,)`` long tensor is a single-label
level (``-1`` = unknown, ignored), a ``(N, C)`` multi-hot tensor is a multi-label level.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlcl.data.types import LabelLevel
from mlcl.errors import DataError, MlclError
from mlcl.eval.hierarchy_metrics import lca_heights, mistake_severity, retrieval_metrics
from mlcl.eval.metrics import choose_threshold, hierarchy_consistency, multilabel_metrics, top1


@dataclass
class ProbeResult:
    """A trained linear probe and its outputs on the test features."""

    linear: nn.Linear  # acts on raw features (the standardisation is folded into it)
    scores: Tensor  # (N_test, C): softmax probabilities, or sigmoid scores for multi-label
    predictions: Tensor | None  # (N_test,) argmax class; None for multi-label (threshold on val)
    top1: float | None  # over labelled test rows; None for multi-label or without test_y


def _features(x: Tensor) -> Tensor:
    """Detached features, float32 unless they are float64."""
    if x.ndim != 2:
        raise MlclError(f"features must be (N, F), got shape {tuple(x.shape)}")
    return x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32)


def _labelled(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The rows of ``x`` and ``y`` that carry a label (all rows for multi-label targets)."""
    if len(x) != len(y):
        raise MlclError(f"features and targets differ in length: {len(x)} vs {len(y)}")
    if y.ndim == 2:
        return x, y.to(x.dtype)
    keep = y != -1
    if not keep.any():
        raise DataError("no labelled training rows (every label is -1)")
    return x[keep], y[keep].long()


def _standardised_linear(x: Tensor, num_outputs: int) -> tuple[nn.Linear, Tensor, Tensor]:
    """A zero-initialised Linear and the per-feature mean and std of ``x`` (std 1 where constant)."""
    mean, std = x.mean(dim=0), x.std(dim=0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    linear = nn.Linear(x.shape[1], num_outputs, device=x.device, dtype=x.dtype)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear, mean, std


def _fold_standardisation(linear: nn.Linear, mean: Tensor, std: Tensor) -> nn.Linear:
    """Rewrite ``W (x - m) / s + b`` as ``W' x + b'`` so the probe applies to raw features."""
    with torch.no_grad():
        linear.weight.div_(std)
        linear.bias.sub_(linear.weight @ mean)
    return linear.requires_grad_(False)


def _fit(
    x: Tensor, y: Tensor, num_outputs: int, *, epochs: int, lr: float, weight_decay: float
) -> nn.Linear:
    """L2-regularised logistic regression (softmax, or per-class sigmoid for (N, C) targets)."""
    linear, mean, std = _standardised_linear(x, num_outputs)
    z = (x - mean) / std
    loss_fn = F.binary_cross_entropy_with_logits if y.ndim == 2 else F.cross_entropy
    optimizer = torch.optim.LBFGS(
        linear.parameters(), lr=lr, max_iter=epochs, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = loss_fn(linear(z), y) + 0.5 * weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return _fold_standardisation(linear, mean, std)


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor | None = None,
    *,
    num_classes: int | None = None,
    epochs: int = 100,
    lr: float = 1.0,
    weight_decay: float = 1e-4,
) -> ProbeResult:
    """Train a logistic-regression probe on frozen features and apply it to ``test_x``.

    Full-batch L-BFGS (at most ``epochs`` iterations, each about one pass over the data) on standardised
    features: it converges to the unique optimum of the convex objective, so the result is
    deterministic and needs no learning-rate or batch tuning. Rows labelled -1 are ignored;
    ``(N, C)`` multi-hot targets train a per-class sigmoid (BCE) probe whose scores are meant to be
    thresholded with :func:`mlcl.eval.metrics.choose_threshold` on a validation split.
    ``num_classes`` defaults to the largest label seen + 1 (pass it when a class may be absent).
    """
    x, y = _labelled(_features(train_x), train_y)
    multi_label = y.ndim == 2
    num_outputs = y.shape[1] if multi_label else num_classes or int(y.max()) + 1
    if not multi_label and int(y.max()) >= num_outputs:
        raise DataError(f"label {int(y.max())} is out of range for num_classes={num_outputs}")
    linear = _fit(x, y, num_outputs, epochs=epochs, lr=lr, weight_decay=weight_decay)
    logits = linear(_features(test_x))
    if multi_label:
        return ProbeResult(linear, torch.sigmoid(logits), None, None)
    predictions = logits.argmax(dim=1)
    accuracy = None if test_y is None else top1(predictions, test_y)
    return ProbeResult(linear, logits.softmax(dim=1), predictions, accuracy)


def knn_predict(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    *,
    block_size: int = 512,
) -> Tensor:
    """Cosine-similarity kNN weighted by ``exp(sim / temperature)`` (the usual SSL kNN monitor).

    Single-label ``(N,)`` targets: returns the predicted class per test row (train rows labelled -1
    are left out of the bank). Multi-label ``(N, C)`` targets: returns ``(N_test, C)`` scores, the
    weighted mean of the neighbours' multi-hots. Test rows are processed in blocks of
    ``block_size`` so memory stays O(block_size x N_train).
    """
    bank, y = _labelled(F.normalize(_features(train_x), dim=1), train_y)
    votes_per_row = y if y.ndim == 2 else F.one_hot(y, int(y.max()) + 1).to(bank.dtype)
    k = min(k, len(bank))
    outputs = []
    for block in F.normalize(_features(test_x), dim=1).split(block_size):
        sim, index = (block @ bank.T).topk(k, dim=1)
        # shifting by the row's top similarity leaves every ratio of weights unchanged, avoids overflow
        weights = torch.exp((sim - sim[:, :1]) / temperature)
        votes = torch.einsum("bk,bkc->bc", weights, votes_per_row[index])
        outputs.append(votes / weights.sum(dim=1, keepdim=True) if y.ndim == 2 else votes.argmax(dim=1))
    return torch.cat(outputs)


def _target(targets: dict[str, Tensor], level: str, split: str) -> Tensor:
    if level not in targets:
        raise DataError(f"the {split} split has no targets for level {level!r} (has: {sorted(targets)})")
    return targets[level]


def _check_levels(levels: list[LabelLevel], val_feats: Tensor | None, val_targets: dict | None) -> None:
    for reserved in ("consistency", "severity"):
        if any(level.name == reserved for level in levels):
            raise DataError(f"a level may not be named {reserved!r} (that key holds the {reserved} scores)")
    multi = [level.name for level in levels if level.multi_label]
    if multi and (val_feats is None or val_targets is None):
        raise DataError(
            f"multi-label levels {multi} need a validation split to choose the decision threshold "
            "(choosing it on test would inflate the results); pass val_feats and val_targets"
        )


def _consistency(
    levels: list[LabelLevel],
    predictions: dict[str, tuple[Tensor, Tensor]],
    parent_index: dict[str, Tensor] | None,
) -> dict[str, float] | None:
    """Consistency of the finest level with the next coarser one, for the linear and kNN predictions."""
    if parent_index is None or len(levels) < 2 or levels[-1].multi_label or levels[-2].multi_label:
        return None
    fine, coarse = levels[-1].name, levels[-2].name
    if fine not in parent_index:
        raise DataError(
            f"parent_index has no entry for the finest level {fine!r} (has: {sorted(parent_index)})"
        )
    parent = parent_index[fine]
    (linear_fine, knn_fine), (linear_coarse, knn_coarse) = predictions[fine], predictions[coarse]
    return {
        "linear": hierarchy_consistency(linear_fine, linear_coarse, parent),
        "knn": hierarchy_consistency(knn_fine, knn_coarse, parent),
    }


def _tree_heights(levels: list[LabelLevel], parent_index: dict[str, Tensor] | None) -> Tensor | None:
    """LCA heights between finest classes, for a single-label hierarchy of two or more levels."""
    if parent_index is None or len(levels) < 2 or any(level.multi_label for level in levels):
        return None
    missing = [level.name for level in levels[1:] if level.name not in parent_index]
    if missing:
        raise DataError(f"parent_index has no entry for levels {missing} (has: {sorted(parent_index)})")
    return torch.from_numpy(lca_heights([parent_index[level.name] for level in levels[1:]]))


def _severity(finest: str, test_y: Tensor, predictions: dict[str, tuple[Tensor, Tensor]],
              heights: Tensor) -> dict[str, float | None]:
    """Mean LCA height of the linear and kNN mistakes at the finest level, and the share within the parent."""
    linear, knn = (mistake_severity(pred, test_y, heights) for pred in predictions[finest])
    return {"linear": linear["severity"], "knn": knn["severity"],
            "linear_within_parent": linear["within_parent"], "knn_within_parent": knn["within_parent"]}


def evaluate_levels(
    train_feats: Tensor,
    train_targets: dict[str, Tensor],
    test_feats: Tensor,
    test_targets: dict[str, Tensor],
    levels: list[LabelLevel],
    parent_index: dict[str, Tensor] | None = None,
    val_feats: Tensor | None = None,
    val_targets: dict[str, Tensor] | None = None,
    knn_k: int = 20,
    probe_epochs: int = 100,
) -> dict[str, dict[str, float]]:
    """Evaluate frozen features per level; the result is the ``metrics.json`` content.

    The linear probes run at most ``probe_epochs`` L-BFGS iterations (:func:`linear_probe`).

    Single-label level: ``{"linear_top1", "knn_top1", "map_at_r", "precision_at_k"}`` on test, the last
    two ranking the training rows by cosine similarity to each test row (k = ``knn_k``;
    :func:`mlcl.eval.hierarchy_metrics.retrieval_metrics`). Multi-label level: ``{"mAP",
    "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"}`` of the linear probe on test with the
    threshold chosen on the validation split (required). With two or more single-label levels
    (ordered coarse -> fine) and ``parent_index`` given, ``"consistency": {"linear", "knn"}`` is the
    fraction of test rows whose predicted finest class has the predicted next-coarser class as
    parent; ``parent_index[finest_level]`` maps each finest class to that parent class. When every level
    is single-label and ``parent_index`` maps each level below the top to its parents, the finest level
    also gets ``"hier_dist_at_k"`` (mean tree distance to its k nearest training rows) and
    ``"severity": {"linear", "knn", "linear_within_parent", "knn_within_parent"}`` is the mean tree distance
    of the wrong finest predictions and the share of them under the true parent (``None``: no mistake).
    """
    _check_levels(levels, val_feats, val_targets)
    results: dict[str, dict[str, float]] = {}
    predictions: dict[str, tuple[Tensor, Tensor]] = {}
    for level in levels:
        train_y = _target(train_targets, level.name, "train")
        test_y = _target(test_targets, level.name, "test")
        if level.multi_label:
            probe = linear_probe(train_feats, train_y, test_feats, epochs=probe_epochs)
            val_scores = probe.linear(_features(val_feats)).sigmoid()
            threshold = choose_threshold(
                val_scores=val_scores, val_targets=_target(val_targets, level.name, "validation")
            )
            results[level.name] = multilabel_metrics(probe.scores, test_y, threshold)
        else:
            probe = linear_probe(train_feats, train_y, test_feats, test_y, num_classes=level.num_classes,
                                 epochs=probe_epochs)
            knn = knn_predict(train_feats, train_y, test_feats, k=knn_k)
            results[level.name] = {"linear_top1": probe.top1, "knn_top1": top1(knn, test_y)}
            predictions[level.name] = (probe.predictions, knn)
    consistency = _consistency(levels, predictions, parent_index)
    single = [level.name for level in levels if not level.multi_label]
    heights = _tree_heights(levels, parent_index)
    if single:
        retrieval = retrieval_metrics(
            test_feats, {name: test_targets[name] for name in single},
            train_feats, {name: train_targets[name] for name in single},
            k=knn_k, heights=heights, height_level=levels[-1].name if heights is not None else None,
        )
        for name in single:
            results[name].update(retrieval[name])
    if consistency is not None:
        results["consistency"] = consistency
    if heights is not None:
        finest = levels[-1].name
        results["severity"] = _severity(finest, test_targets[finest], predictions, heights)
    return results
