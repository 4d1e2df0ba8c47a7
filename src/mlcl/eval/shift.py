"""What a frozen encoder makes of finest classes it never saw in training (sub-population shift).

Two questions, on the held-out classes' test rows (:mod:`mlcl.data.shift`):

* **coarser levels**: a linear probe and a kNN fitted on the seen classes' training rows at each coarser
  level, scored on the unseen classes' test rows (their parents were seen, through other children);
* **few-shot finest level**: a nearest-centroid classifier and a kNN on ``k`` labelled training rows per
  unseen class (k = 1, 5, 20), choosing among the unseen classes only, averaged over ``draws`` random
  draws of the k rows (one draw of one shot is too noisy to compare methods). The centroid classifier is
  SimpleShot's (Wang et al., 2019): features centred on the seen training rows' mean and L2-normalised,
  each class the mean of its shots. A linear probe is not used here: standardising features by the
  statistics of a few rows blows up the directions in which those rows happen to agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mlcl.data.types import Dataset
from mlcl.eval.metrics import top1
from mlcl.eval.probe import knn_predict, linear_probe

SHOTS = (1, 5, 20)
DRAWS = 5


def _few_shot_rows(labels: Tensor, shots: int, generator: torch.Generator) -> Tensor:
    """``shots`` random rows of every class in ``labels`` (all of a class's rows when it has fewer)."""
    rows = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels).tolist()]
    return torch.cat([r[torch.randperm(len(r), generator=generator)[:shots]] for r in rows])


def nearest_centroid(train_x: Tensor, train_y: Tensor, test_x: Tensor, centre: Tensor | None = None) -> Tensor:
    """Predicted class per test row: the most cosine-similar class mean of the (centred, L2-normalised)
    training rows; ``train_y`` holds 0..K-1 and ``centre`` defaults to no centring."""
    centre = torch.zeros(train_x.shape[1]) if centre is None else centre
    train, test = F.normalize(train_x - centre, dim=1), F.normalize(test_x - centre, dim=1)
    num_classes = int(train_y.max()) + 1
    sums = torch.zeros(num_classes, train.shape[1], dtype=train.dtype).index_add_(0, train_y, train)
    return (test @ F.normalize(sums, dim=1).T).argmax(dim=1)


def few_shot_scores(pool_x: Tensor, pool_y: Tensor, test_x: Tensor, test_y: Tensor, shots: int, *,
                    centre: Tensor | None = None, draws: int = DRAWS, seed: int = 0,
                    knn_k: int = 20) -> dict[str, float]:
    """Mean nearest-centroid and kNN top-1 over ``draws`` draws of ``shots`` rows per class of ``pool_y``
    (labels 0..K-1), scored on ``test_x``; the classes are those of the pool only."""
    generator = torch.Generator().manual_seed(seed)
    centroid, knn = [], []
    for _ in range(draws):
        rows = _few_shot_rows(pool_y, shots, generator)
        x, y = pool_x[rows], pool_y[rows]
        centroid.append(top1(nearest_centroid(x, y, test_x, centre), test_y))
        knn.append(top1(knn_predict(x, y, test_x, k=min(knn_k, len(rows))), test_y))
    return {"centroid_top1": sum(centroid) / draws, "knn_top1": sum(knn) / draws}


def unseen_class_metrics(
    encode: Callable[[Any], Tensor],
    dataset: Dataset,
    train_x: Tensor,
    *,
    knn_k: int = 20,
    probe_epochs: int = 100,
    shots: Sequence[int] = SHOTS,
    draws: int = DRAWS,
    seed: int = 0,
) -> dict[str, Any]:
    """``{"classes": [names], "test_rows": n, LEVEL: {"linear_top1", "knn_top1"} for each coarser level,
    "<finest>_<k>shot": {"centroid_top1", "knn_top1"} for each k}`` for ``dataset.unseen``; ``encode`` maps
    inputs to features and ``train_x`` are the (seen) training split's features."""
    unseen = dataset.unseen
    if unseen is None:
        raise ValueError("the dataset has no unseen classes (data.unseen_per_parent=0)")
    finest = dataset.levels[-1]
    test_x = encode(unseen.test.inputs)
    results: dict[str, Any] = {"classes": [finest.classes[c] for c in unseen.classes], "test_rows": len(test_x)}
    for level in dataset.levels[:-1]:
        train_y, test_y = dataset.train.targets[level.name], unseen.test.targets[level.name]
        probe = linear_probe(train_x, train_y, test_x, test_y, num_classes=level.num_classes, epochs=probe_epochs)
        knn = knn_predict(train_x, train_y, test_x, k=knn_k)
        results[level.name] = {"linear_top1": probe.top1, "knn_top1": top1(knn, test_y)}
    # The unseen classes as 0..K-1, in the order of unseen.classes.
    relabel = torch.full((finest.num_classes,), -1, dtype=torch.long)
    relabel[torch.tensor(unseen.classes)] = torch.arange(len(unseen.classes))
    pool_x = encode(unseen.train.inputs)
    pool_y, test_y = relabel[unseen.train.targets[finest.name]], relabel[unseen.test.targets[finest.name]]
    for k in shots:
        results[f"{finest.name}_{k}shot"] = few_shot_scores(pool_x, pool_y, test_x, test_y, k,
                                                           centre=train_x.mean(dim=0), draws=draws, seed=seed,
                                                           knn_k=knn_k)
    return results
