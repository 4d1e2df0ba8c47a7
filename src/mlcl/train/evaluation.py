"""Frozen-feature evaluation of a trained model: features per split, probes per level, metrics.json."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlcl.data.types import Dataset, LabeledSplit
from mlcl.errors import MlclError
from mlcl.eval.metrics import mean_average_precision, top1
from mlcl.eval.probe import evaluate_levels, knn_predict
from mlcl.eval.shift import unseen_class_metrics
from mlcl.progress import bar as progress_bar
from mlcl.progress import note


def _batches(inputs: torch.Tensor | list[str], batch_size: int):
    for start in range(0, len(inputs), batch_size):
        yield inputs[start : start + batch_size]


@torch.no_grad()
def extract(model: nn.Module, inputs: torch.Tensor | list[str], device: torch.device, batch_size: int = 512,
            what: str = "features", progress: str | None = None) -> torch.Tensor:
    """Encoder features ``(N, F)`` or every head's projections ``(H, N, D)`` (``what="projections"``);
    ``progress`` names a progress bar over the batches (shown on a terminal)."""
    was_training = model.training
    model.eval()
    outputs = []
    batches = progress_bar(progress is not None, iterable=_batches(inputs, batch_size), desc=progress,
                           total=-(-len(inputs) // batch_size), unit="batch", leave=False)
    for chunk in batches:
        chunk = chunk.to(device) if isinstance(chunk, torch.Tensor) else chunk
        if what == "features":
            outputs.append(model.encode(chunk).float().cpu())
        else:
            outputs.append(model(chunk).projections.float().cpu())
    model.train(was_training)
    return torch.cat(outputs, dim=0 if what == "features" else 1)


def parent_indices(dataset: Dataset) -> dict[str, torch.Tensor] | None:
    """Each level's child -> parent id map, when the dataset has a hierarchy."""
    if dataset.hierarchy is None:
        return None
    return {name: dataset.hierarchy.parent_index(name) for name in dataset.hierarchy.level_names[1:]}


def monitor_score(
    model: nn.Module, dataset: Dataset, device: torch.device, train_samples: int, knn_k: int
) -> float | None:
    """Validation kNN score that picks the best checkpoint (:mod:`mlcl.train.selection`): the mean top-1
    over the single-label levels, every level rather than the finest alone (the mean mAP of the
    multi-label levels when there is no single-label one). Levels without labelled rows are left out.

    Uses the validation split only (never test); ``None`` when the dataset has no validation split.
    The kNN bank is a fixed random ``train_samples`` of the training rows labelled at the finest level (so
    at every level, the labels being nested), the same at every check, not the first rows: a split stored
    class by class would otherwise hold only the first classes.
    """
    if dataset.val is None or len(dataset.val) == 0:
        return None
    level = dataset.levels[-1]
    labels = dataset.train.targets[level.name].cpu()
    # drawn among the rows labelled at that level: with partial labels few may be
    rows = torch.arange(len(labels)) if level.multi_label else torch.nonzero(labels >= 0).flatten()
    order = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))]
    reference: LabeledSplit = dataset.train.subset(order[:train_samples].sort().values)
    train_x = extract(model, reference.inputs, device)
    val_x = extract(model, dataset.val.inputs, device)
    single = [level for level in dataset.levels if not level.multi_label]
    scores = []
    for level in single or dataset.levels:
        bank_y, val_y = reference.targets[level.name], dataset.val.targets[level.name]
        if not level.multi_label and not (bank_y.ge(0).any() and val_y.ge(0).any()):
            continue
        predicted = knn_predict(train_x, bank_y, val_x, k=knn_k)
        scores.append(mean_average_precision(predicted, val_y) if level.multi_label else top1(predicted, val_y))
    return sum(scores) / len(scores) if scores else None


def _head_features(model: nn.Module, dataset: Dataset, device: torch.device,
                   progress: bool) -> dict[str, torch.Tensor | None]:
    """Each split's L2-normalised head projections ``(H, N, D)``, as ``mlcl embed --head`` exports them."""
    out: dict[str, torch.Tensor | None] = {}
    for name in ("train", "val", "test"):
        split = getattr(dataset, name)
        projections = None
        if split is not None:
            projections = extract(model, split.inputs, device, what="projections",
                                  progress=f"{name} heads" if progress else None)
            projections = F.normalize(projections, dim=2)
        out[name] = projections
    return out


def _feature_metrics(model: nn.Module, dataset: Dataset, device: torch.device, features: Sequence[str],
                     heads: Mapping[str, str | None], knn_k: int, probe_epochs: int,
                     progress: bool) -> dict[str, Any]:
    """``{"head:<name>": {LEVEL: {...}}, "concat": {LEVEL: {...}, ...}}`` for the head-based features.

    A head is evaluated at the level whose labels defined its positives (the instance head at the finest
    level); ``concat`` joins every head's normalised projections and is evaluated like the encoder.
    """
    projector = getattr(model, "projector", None)
    names = list(projector.head_names) if projector is not None else []
    if not names:
        return {}
    unknown = [name for name in names if name not in heads]
    if unknown:
        raise MlclError(f"evaluate_model: no level given for heads {unknown} (heads maps head -> level or None)")
    note(progress, f"eval: {', '.join(f for f in features if f != 'encoder')} features of heads {', '.join(names)}")
    projections = _head_features(model, dataset, device, progress)
    levels = {level.name: level for level in dataset.levels}
    val_targets = dataset.val.targets if dataset.val is not None else None

    def evaluate(split_x: Mapping[str, torch.Tensor | None], on_levels: list) -> dict[str, Any]:
        return evaluate_levels(split_x["train"], dataset.train.targets, split_x["test"], dataset.test.targets,
                               on_levels, parent_index=parent_indices(dataset), val_feats=split_x["val"],
                               val_targets=val_targets, knn_k=knn_k, probe_epochs=probe_epochs)

    results: dict[str, Any] = {}
    if "heads" in features:
        for index, name in enumerate(names):
            level = levels[heads[name] or dataset.levels[-1].name]
            own = {split: None if x is None else x[index] for split, x in projections.items()}
            results[f"head:{name}"] = evaluate(own, [level])
    if "concat" in features:
        joined = {split: None if x is None else torch.cat(list(x), dim=1) for split, x in projections.items()}
        results["concat"] = evaluate(joined, dataset.levels)
    return results


def evaluate_model(model: nn.Module, dataset: Dataset, device: torch.device, knn_k: int,
                   probe_epochs: int = 100, progress: bool = False, *, features: Sequence[str] = ("encoder",),
                   heads: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """``{"test": {LEVEL: {...}, "consistency": {...}, "severity": {...}}, "classifier": {LEVEL: top1}}`` on
    frozen features (``"unseen"`` too when the dataset holds classes out).

    ``features`` (``eval.features``) chooses what the per-level probes see: ``"encoder"`` fills ``"test"``;
    ``"heads"`` and ``"concat"`` fill ``"features": {"head:<name>": {LEVEL: {...}}, "concat": {...}}``, for
    which ``heads`` maps each head name to the level it was trained on (``None``: instance head, evaluated at
    the finest level). A model without projection heads has no head features. With ``progress``, a line
    per stage on stderr (and bars over the batches on a terminal)."""
    sizes = ", ".join(f"{len(split)} {name}" for name, split in
                      (("train", dataset.train), ("val", dataset.val), ("test", dataset.test)) if split is not None)
    note(progress, f"eval: encoding {sizes} samples")
    train_x = extract(model, dataset.train.inputs, device, progress="train" if progress else None)
    test_x = extract(model, dataset.test.inputs, device, progress="test" if progress else None)
    val_x = None
    if dataset.val is not None:
        val_x = extract(model, dataset.val.inputs, device, progress="val" if progress else None)
    results: dict[str, Any] = {}
    if "encoder" in features:
        note(progress, f"eval: linear probe (up to {probe_epochs} L-BFGS iterations), {knn_k}-NN and retrieval "
                       f"per level: {', '.join(dataset.level_names)}")
        results["test"] = evaluate_levels(
            train_x, dataset.train.targets, test_x, dataset.test.targets, dataset.levels,
            parent_index=parent_indices(dataset), val_feats=val_x,
            val_targets=dataset.val.targets if dataset.val is not None else None, knn_k=knn_k,
            probe_epochs=probe_epochs,
        )
    if "heads" in features or "concat" in features:
        per_feature = _feature_metrics(model, dataset, device, features, heads or {}, knn_k, probe_epochs, progress)
        if per_feature:
            results["features"] = per_feature
    if dataset.unseen is not None:
        note(progress, f"eval: {len(dataset.unseen.classes)} unseen classes (coarser levels, few-shot)")
        results["unseen"] = unseen_class_metrics(lambda inputs: extract(model, inputs, device), dataset, train_x,
                                                 knn_k=knn_k, probe_epochs=probe_epochs)
    classifiers = getattr(model, "classifiers", {})
    if len(classifiers):
        results["classifier"] = {}
        for level in dataset.levels:
            if level.name in classifiers and not level.multi_label:
                logits = classifiers[level.name](test_x.to(device)).cpu()
                results["classifier"][level.name] = {"top1": top1(logits.argmax(1), dataset.test.targets[level.name])}
    return results
