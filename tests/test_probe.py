"""Linear probe, kNN and the per-level evaluation on small synthetic features."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from mlcl.data.types import LabelLevel
from mlcl.errors import DataError
from mlcl.eval.hierarchy_metrics import lca_heights, mistake_severity, retrieval_metrics
from mlcl.eval.metrics import choose_threshold, multilabel_metrics
from mlcl.eval.probe import evaluate_levels, knn_predict, linear_probe

PARENT = torch.tensor([0, 0, 1, 1, 2, 2])  # 6 fine classes under 3 coarse ones


def _blobs(n: int, num_classes: int, dim: int = 16, spread: float = 0.3, seed: int = 0):
    """Features clustered around one random centre per class (linearly separable for small spread)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, num_classes, (n,), generator=g)
    return centres[y] + spread * torch.randn(n, dim, generator=g), y


def _knn_brute_force(train_x, train_y, test_x, k, temperature):
    """One test row at a time: sort all similarities, weight the top k by exp(sim / t)."""
    multi_label = train_y.ndim == 2
    if not multi_label:
        keep = train_y != -1
        train_x, train_y = train_x[keep], train_y[keep]
    out = []
    for q in test_x:
        sims = [F.cosine_similarity(q, t, dim=0).item() for t in train_x]
        top = sorted(range(len(sims)), key=lambda j: -sims[j])[:k]
        weights = {j: math.exp(sims[j] / temperature) for j in top}
        if multi_label:
            out.append(sum(weights[j] * train_y[j] for j in top) / sum(weights.values()))
        else:
            votes: dict[int, float] = {}
            for j in top:
                votes[int(train_y[j])] = votes.get(int(train_y[j]), 0.0) + weights[j]
            out.append(max(votes, key=votes.get))
    return torch.stack(out) if multi_label else torch.tensor(out)


def test_knn_single_label_matches_brute_force_and_skips_unknown_labels():
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(60, 5, generator=g), torch.randn(23, 5, generator=g)
    train_y = torch.randint(-1, 4, (60,), generator=g)
    got = knn_predict(train_x, train_y, test_x, k=7, temperature=0.1, block_size=5)
    assert torch.equal(got, _knn_brute_force(train_x, train_y, test_x, 7, 0.1))


def test_knn_multilabel_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    train_x, test_x = torch.randn(50, 6, generator=g), torch.randn(17, 6, generator=g)
    train_y = (torch.rand(50, 4, generator=g) < 0.4).float()
    got = knn_predict(train_x, train_y, test_x, k=9, temperature=0.2, block_size=4)
    torch.testing.assert_close(got, _knn_brute_force(train_x, train_y, test_x, 9, 0.2))


def test_knn_k_larger_than_bank_and_tiny_temperature():
    train_x, train_y = _blobs(30, 3)
    test_x, test_y = _blobs(20, 3, seed=1)
    got = knn_predict(train_x, train_y, test_x, k=100, temperature=0.001)
    assert torch.equal(got, knn_predict(train_x, train_y, test_x, k=30, temperature=0.001))
    assert (got == test_y).float().mean() > 0.9


def test_linear_probe_separable_data_reaches_high_accuracy():
    train_x, train_y = _blobs(800, 5)
    test_x, test_y = _blobs(400, 5, seed=1)
    result = linear_probe(train_x, train_y, test_x, test_y)
    assert result.top1 > 0.97
    assert result.scores.shape == (400, 5)
    torch.testing.assert_close(result.scores.sum(dim=1), torch.ones(400))
    assert torch.equal(result.predictions, result.linear(test_x).argmax(dim=1))


def test_linear_probe_random_labels_is_near_chance():
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(1000, 32, generator=g), torch.randn(2000, 32, generator=g)
    train_y, test_y = torch.randint(0, 4, (1000,), generator=g), torch.randint(0, 4, (2000,), generator=g)
    assert abs(linear_probe(train_x, train_y, test_x, test_y).top1 - 0.25) < 0.05


def test_linear_probe_is_invariant_to_feature_scale_and_offset():
    train_x, train_y = _blobs(300, 4, spread=1.0)
    test_x, _ = _blobs(200, 4, spread=1.0, seed=1)
    plain = linear_probe(train_x, train_y, test_x)
    scaled = linear_probe(train_x * 1000 + 50, train_y, test_x * 1000 + 50)
    assert torch.equal(plain.predictions, scaled.predictions)
    assert plain.top1 is None


def test_linear_probe_ignores_unknown_labels():
    train_x, train_y = _blobs(300, 4, spread=1.0)
    test_x, test_y = _blobs(200, 4, spread=1.0, seed=1)
    partial_y = train_y.clone()
    partial_y[:100] = -1
    test_y[:50] = -1
    with_unknown = linear_probe(train_x, partial_y, test_x, test_y)
    subset = linear_probe(train_x[100:], train_y[100:], test_x, test_y)
    torch.testing.assert_close(with_unknown.linear.weight, subset.linear.weight)
    labelled = test_y != -1
    expected = (with_unknown.predictions[labelled] == test_y[labelled]).float().mean().item()
    assert with_unknown.top1 == pytest.approx(expected)


def test_linear_probe_num_classes():
    train_x, train_y = _blobs(100, 3)
    assert linear_probe(train_x, train_y, train_x, num_classes=5).scores.shape == (100, 5)
    with pytest.raises(DataError, match="out of range"):
        linear_probe(train_x, train_y, train_x, num_classes=2)
    with pytest.raises(DataError, match="no labelled"):
        linear_probe(train_x, torch.full((100,), -1), train_x)


def _multilabel_data(n: int, seed: int, positive_below: float = 0.0):
    """Class c is on when feature c exceeds ``positive_below`` (plus noise so scores are not saturated)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, :3] + 0.5 * torch.randn(n, 3, generator=g) > positive_below).float()
    return x, y


def test_linear_probe_multilabel_returns_sigmoid_scores():
    train_x, train_y = _multilabel_data(500, 0)
    test_x, test_y = _multilabel_data(300, 1)
    result = linear_probe(train_x, train_y, test_x)
    assert result.predictions is None and result.top1 is None
    assert result.scores.shape == (300, 3) and 0 <= result.scores.min() <= result.scores.max() <= 1
    assert multilabel_metrics(result.scores, test_y, 0.5)["mAP"] > 0.9


def _hierarchical_split(n: int, seed: int):
    x, fine = _blobs(n, 6, seed=seed)
    return x, {"coarse": PARENT[fine], "fine": fine}


LEVELS = [LabelLevel("coarse", ["a", "b", "c"]), LabelLevel("fine", [str(i) for i in range(6)])]


def test_evaluate_levels_hierarchical_shape_and_values():
    train_x, train_t = _hierarchical_split(600, 0)
    test_x, test_t = _hierarchical_split(300, 1)
    train_t["coarse"][:50] = -1
    got = evaluate_levels(train_x, train_t, test_x, test_t, LEVELS, parent_index={"fine": PARENT}, knn_k=10)
    assert set(got) == {"coarse", "fine", "consistency", "severity"}
    assert set(got["coarse"]) == {"linear_top1", "knn_top1", "map_at_r", "precision_at_k"}
    assert set(got["fine"]) == set(got["coarse"]) | {"hier_dist_at_k"}
    assert set(got["consistency"]) == {"linear", "knn"}
    assert set(got["severity"]) == {"linear", "knn", "linear_within_parent", "knn_within_parent"}
    json.dumps(got)  # plain floats only
    scores = [v for k, v in got["fine"].items() if k != "hier_dist_at_k"]
    assert min(scores) > 0.95 and min(got["consistency"].values()) > 0.95
    fine_probe = linear_probe(train_x, train_t["fine"], test_x, test_t["fine"], num_classes=6)
    assert got["fine"]["linear_top1"] == pytest.approx(fine_probe.top1)
    # retrieval: the training rows unlabelled at a level are not in that level's bank
    heights = lca_heights([PARENT])
    coarse = retrieval_metrics(test_x, {"c": test_t["coarse"]}, train_x[50:], {"c": train_t["coarse"][50:]}, k=10)
    fine = retrieval_metrics(test_x, {"f": test_t["fine"]}, train_x, {"f": train_t["fine"]}, k=10,
                             heights=heights, height_level="f")
    assert {k: got["coarse"][k] for k in coarse["c"]} == pytest.approx(coarse["c"])
    assert {k: got["fine"][k] for k in fine["f"]} == pytest.approx(fine["f"])
    knn = knn_predict(train_x, train_t["fine"], test_x, k=10)
    assert got["severity"]["knn"] == mistake_severity(knn, test_t["fine"], heights)["severity"]


def test_evaluate_levels_consistency_only_with_a_parent_map():
    train_x, train_t = _hierarchical_split(200, 0)
    test_x, test_t = _hierarchical_split(100, 1)
    got = evaluate_levels(train_x, train_t, test_x, test_t, LEVELS)
    assert "consistency" not in got and "severity" not in got and "hier_dist_at_k" not in got["fine"]
    with pytest.raises(DataError, match="finest level 'fine'"):
        evaluate_levels(train_x, train_t, test_x, test_t, LEVELS, parent_index={"coarse": PARENT})
    with pytest.raises(DataError, match="no targets for level 'fine'"):
        evaluate_levels(train_x, {"coarse": train_t["coarse"]}, test_x, test_t, LEVELS)


def test_evaluate_levels_multilabel_needs_validation():
    x, y = _multilabel_data(50, 0)
    level = LabelLevel("tags", ["a", "b", "c"], multi_label=True)
    with pytest.raises(ValueError, match="validation split"):
        evaluate_levels(x, {"tags": y}, x, {"tags": y}, [level])


def test_evaluate_levels_multilabel_threshold_comes_from_validation():
    train_x, train_y = _multilabel_data(600, 0)
    test_x, test_y = _multilabel_data(400, 1)
    val_x, val_y = _multilabel_data(400, 2, positive_below=-1.0)  # far more positives: a lower optimum
    level = LabelLevel("tags", ["a", "b", "c"], multi_label=True)
    got = evaluate_levels(
        train_x, {"tags": train_y}, test_x, {"tags": test_y}, [level],
        val_feats=val_x, val_targets={"tags": val_y},
    )

    probe = linear_probe(train_x, train_y, test_x)
    val_threshold = choose_threshold(val_scores=probe.linear(val_x).sigmoid(), val_targets=val_y)
    test_threshold = choose_threshold(val_scores=probe.scores, val_targets=test_y)
    assert val_threshold < test_threshold
    assert got == {"tags": pytest.approx(multilabel_metrics(probe.scores, test_y, val_threshold))}
    assert got["tags"]["micro_f1"] < multilabel_metrics(probe.scores, test_y, test_threshold)["micro_f1"]


def test_the_validation_monitor_draws_its_bank_from_every_class():
    # A training split stored class by class (as WordNet's is): a bank of its first rows would hold
    # class 0 only and score 1/3 on a perfectly separable problem.
    from mlcl.data.types import Dataset, LabeledSplit
    from mlcl.train.evaluation import monitor_score

    centres = torch.eye(3) * 10
    labels = torch.arange(3).repeat_interleave(200)
    train = LabeledSplit(centres[labels] + torch.randn(600, 3, generator=torch.Generator().manual_seed(0)),
                         {"fine": labels})
    val = LabeledSplit(centres[torch.arange(3)], {"fine": torch.arange(3)})
    dataset = Dataset("sorted", "features", [LabelLevel("fine", ["a", "b", "c"])], train, val, val)

    class Identity(torch.nn.Module):
        def encode(self, x):
            return x

    assert monitor_score(Identity(), dataset, torch.device("cpu"), train_samples=100, knn_k=5) == 1.0


def test_probe_epochs_bounds_the_linear_probe_iterations():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=gen)
    y = (x[:, :4] @ torch.randn(4, 5, generator=gen)).argmax(1)  # linearly separable, 5 classes
    level = [LabelLevel("fine", list("abcde"))]

    def probed(epochs):
        return evaluate_levels(x[:200], {"fine": y[:200]}, x[200:], {"fine": y[200:]}, level,
                               probe_epochs=epochs)["fine"]["linear_top1"]

    assert probed(1) < probed(100) - 0.05
