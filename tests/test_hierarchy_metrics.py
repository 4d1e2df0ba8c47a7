"""Hierarchy-aware metrics against brute-force references (plain loops over rows) and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcl.errors import DataError, MlclError
from mlcl.eval.hierarchy_metrics import lca_heights, mistake_severity, retrieval_metrics

FINE2COARSE = [0, 1, 0, 2, 0, 3, 0, 3, 4, 3]  # Fashion-MNIST


def _brute_heights(parents: list[list[int]]) -> np.ndarray:
    """LCA height by walking both classes up one level at a time until they meet."""
    num_fine = len(parents[-1])
    out = np.zeros((num_fine, num_fine), dtype=int)
    for a in range(num_fine):
        for b in range(num_fine):
            x, y, height = a, b, 0
            for parent in reversed(parents):
                if x == y:
                    break
                x, y, height = parent[x], parent[y], height + 1
            out[a, b] = height if x == y else height + 1
    return out


def _random_tree(rng: np.random.Generator, sizes: list[int]) -> list[list[int]]:
    """Child -> parent maps for levels of ``sizes`` classes (coarse -> fine), every parent used."""
    maps = []
    for upper, lower in zip(sizes, sizes[1:]):
        parent = np.concatenate([np.arange(upper), rng.integers(0, upper, lower - upper)])
        maps.append(rng.permutation(parent).tolist())
    return maps


def _brute_retrieval(qx, qy, rx, ry, k, heights=None, self_retrieval=False):
    """MAP@R, precision@k and hierarchical distance@k with one full argsort per query."""
    qn = qx / np.linalg.norm(qx, axis=1, keepdims=True)
    rn = rx / np.linalg.norm(rx, axis=1, keepdims=True)
    aps, precs, dists = [], [], []
    for i in range(len(qx)):
        if qy[i] == -1:
            continue
        bank = [j for j in range(len(rx)) if ry[j] != -1 and not (self_retrieval and j == i)]
        order = sorted(bank, key=lambda j: -float(qn[i] @ rn[j]))
        rel = [ry[j] == qy[i] for j in order]
        r = sum(rel)
        if r == 0:
            continue
        hits, ap = 0, 0.0
        for rank in range(r):
            if rel[rank]:
                hits += 1
                ap += hits / (rank + 1)
        aps.append(ap / r)
        kk = min(k, len(order))
        precs.append(sum(rel[:kk]) / kk)
        if heights is not None:
            dists.append(np.mean([heights[qy[i], ry[j]] for j in order[:kk]]))
    if not aps:
        return None, None, None
    return np.mean(aps), np.mean(precs), (np.mean(dists) if heights is not None else None)


def test_lca_heights_fashion_mnist_by_hand():
    h = lca_heights([FINE2COARSE])
    assert h[0, 0] == 0 and h[0, 2] == 1 and h[0, 1] == 2 and h[5, 7] == 1 and h[8, 9] == 2
    assert (h == h.T).all() and (np.diag(h) == 0).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31), st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_lca_heights_matches_walking_up_the_tree(seed, growth):
    rng = np.random.default_rng(seed)
    sizes = [2]
    for g in growth:
        sizes.append(sizes[-1] + g)
    parents = _random_tree(rng, sizes)
    np.testing.assert_array_equal(lca_heights(parents), _brute_heights(parents))


def test_lca_heights_errors():
    with pytest.raises(MlclError, match="at least one"):
        lca_heights([])
    with pytest.raises(MlclError, match="outside"):
        lca_heights([[0, 1], [0, 5]])


def test_mistake_severity_by_hand():
    h = lca_heights([FINE2COARSE])
    target = torch.tensor([0, 0, 0, 5, 8, -1])
    pred = torch.tensor([0, 2, 1, 7, 8, 3])  # mistakes: 0->2 (siblings), 0->1 (other top), 5->7 (siblings)
    got = mistake_severity(pred, target, h)
    assert got == {"severity": pytest.approx(4 / 3), "within_parent": pytest.approx(2 / 3)}
    assert mistake_severity(target.clamp(min=0), target, h) == {"severity": None, "within_parent": None}
    with pytest.raises(DataError, match="no labelled"):
        mistake_severity(pred, torch.full((6,), -1), h)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31))
def test_mistake_severity_matches_loop(seed):
    rng = np.random.default_rng(seed)
    h = lca_heights(_random_tree(rng, [2, 4, 7]))
    target, pred = rng.integers(-1, 7, 40), rng.integers(0, 7, 40)
    wrong = [h[t, p] for t, p in zip(target, pred) if t != -1 and t != p]
    got = mistake_severity(pred, target, h)
    if wrong:
        assert got["severity"] == pytest.approx(np.mean(wrong))
        assert got["within_parent"] == pytest.approx(np.mean([w == 1 for w in wrong]))
    else:
        assert got == {"severity": None, "within_parent": None}


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 12), st.booleans(), st.integers(1, 7))
def test_retrieval_matches_brute_force(seed, k, self_retrieval, chunk):
    rng = np.random.default_rng(seed)
    parents = _random_tree(rng, [2, 5])
    heights = lca_heights(parents)
    nq, nr = rng.integers(1, 15), rng.integers(1, 25)
    qx, rx = rng.normal(size=(nq, 4)), rng.normal(size=(nr, 4))
    qf, rf = rng.integers(-1, 5, nq), rng.integers(-1, 5, nr)  # -1: unlabelled rows
    coarse = np.array(parents[0] + [-1])  # index -1 maps an unlabelled fine row to -1
    if self_retrieval:
        rx, rf = qx, qf
    labels = {"coarse": coarse[qf], "fine": qf}
    got = retrieval_metrics(qx, labels, None if self_retrieval else rx,
                            None if self_retrieval else {"coarse": coarse[rf], "fine": rf},
                            k=k, heights=heights, height_level="fine", chunk_size=chunk)
    for level, q_y, r_y in (("coarse", coarse[qf], coarse[rf]), ("fine", qf, rf)):
        ref = _brute_retrieval(qx, q_y, rx, r_y, k, heights if level == "fine" else None, self_retrieval)
        want = {"map_at_r": ref[0], "precision_at_k": ref[1]}
        if level == "fine":
            want["hier_dist_at_k"] = ref[2]
        assert got[level].keys() == want.keys()
        for key, value in want.items():
            assert got[level][key] == (None if value is None else pytest.approx(value, abs=1e-9)), (level, key)


def test_retrieval_by_hand():
    # Two tight clusters: every query finds its own class first.
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.95, 0.05], [0.0, 1.0], [0.1, 0.9]])
    y = {"fine": np.array([0, 0, 0, 1, 1])}
    perfect = retrieval_metrics(x, y, k=1)["fine"]
    assert perfect == {"map_at_r": 1.0, "precision_at_k": 1.0}
    # Swapped labels in the bank: every neighbour is wrong.
    swapped = retrieval_metrics(x[[0, 3]], {"fine": np.array([0, 1])}, x[[3, 0]], {"fine": np.array([0, 1])}, k=1)
    assert swapped["fine"] == {"map_at_r": 0.0, "precision_at_k": 0.0}
    # Classes with one sample have no other reference under leave-one-out: only class 0's queries count
    # (else rows 3 and 4, each other's nearest neighbour of another class, would score 0).
    single = retrieval_metrics(x, {"fine": np.array([0, 0, 0, 1, 2])}, k=2)["fine"]
    assert single == {"map_at_r": 1.0, "precision_at_k": 1.0}
    # A bank without the query's class: nothing to retrieve.
    alone = retrieval_metrics(x[:1], {"fine": np.array([3])}, x, {"fine": np.array([0, 0, 0, 1, 1])})
    assert alone["fine"] == {"map_at_r": None, "precision_at_k": None}


def test_ties_give_no_credit():
    # A collapsed embedding: every similarity is equal, so nothing is retrieved better than by chance;
    # ties rank the other classes first. Negative similarities order the same way.
    for sign in (1.0, -1.0):
        refs = np.ones((6, 3))
        got = retrieval_metrics(np.full((2, 3), sign), {"l": np.array([0, 1])}, refs,
                                {"l": np.array([0, 1, 1, 2, 2, 2])}, k=3)["l"]
        assert got == {"map_at_r": 0.0, "precision_at_k": 0.0}


def test_map_at_r_by_hand_ranks():
    # Query at angle 0; references ranked by angle: relevant at ranks 1 and 3, R = 2 -> (1/1 + 0) / 2.
    angles = np.array([0.1, 0.2, 0.3])
    refs = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    got = retrieval_metrics(np.array([[1.0, 0.0]]), {"l": np.array([0])}, refs, {"l": np.array([0, 1, 0])}, k=3)
    assert got["l"]["map_at_r"] == pytest.approx(0.5)
    assert got["l"]["precision_at_k"] == pytest.approx(2 / 3)


def test_retrieval_errors():
    x = np.zeros((3, 2))
    with pytest.raises(MlclError, match="same D"):
        retrieval_metrics(x, {"l": np.zeros(3)}, np.zeros((3, 4)), {"l": np.zeros(3)})
    with pytest.raises(MlclError, match="different levels"):
        retrieval_metrics(x, {"l": np.zeros(3)}, x, {"m": np.zeros(3)})
    with pytest.raises(MlclError, match="shape"):
        retrieval_metrics(x, {"l": np.zeros(2)})
    with pytest.raises(MlclError, match="k must be"):
        retrieval_metrics(x, {"l": np.zeros(3)}, k=0)
    with pytest.raises(MlclError, match="height_level"):
        retrieval_metrics(x, {"l": np.zeros(3)}, height_level="l")


def test_evaluate_model_scores_each_head_at_its_level_and_the_concatenation():
    from torch import nn

    from mlcl.data.types import Dataset, LabeledSplit, LabelLevel
    from mlcl.eval.probe import evaluate_levels
    from mlcl.hierarchy import Hierarchy
    from mlcl.models.heads import MultiHeadProjector
    from mlcl.models.model import MultiLevelModel
    from mlcl.train.evaluation import evaluate_model

    parent = [0, 0, 1, 1, 2, 2]
    hierarchy = Hierarchy.from_index(parent, list("abcdef"), list("xyz"), ("coarse", "fine"))
    levels = [LabelLevel("coarse", list("xyz")), LabelLevel("fine", list("abcdef"))]
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 5, generator=gen) * 3

    def split(n: int) -> LabeledSplit:
        fine = torch.randint(0, 6, (n,), generator=gen)
        return LabeledSplit(centres[fine] + torch.randn(n, 5, generator=gen),
                            {"coarse": torch.tensor(parent)[fine], "fine": fine})

    dataset = Dataset("toy", "features", levels, split(300), split(120), split(60), hierarchy=hierarchy)
    torch.manual_seed(0)
    projector = MultiHeadProjector(8, 3, hidden_dim=16, out_dim=4, head_names=["coarse", "fine", "instance"])
    model = MultiLevelModel(nn.Sequential(nn.Linear(5, 8), nn.ReLU()), projector).eval()
    heads = {"coarse": "coarse", "fine": "fine", "instance": None}
    got = evaluate_model(model, dataset, torch.device("cpu"), knn_k=5, probe_epochs=20,
                         features=["heads", "concat"], heads=heads)
    assert "test" not in got  # the encoder was not asked for
    assert set(got["features"]) == {"head:coarse", "head:fine", "head:instance", "concat"}
    assert set(got["features"]["head:coarse"]) == {"coarse"} and set(got["features"]["head:instance"]) == {"fine"}
    with torch.no_grad():
        z = {name: nn.functional.normalize(model(s.inputs).projections, dim=2)
             for name, s in (("train", dataset.train), ("val", dataset.val), ("test", dataset.test))}
    want = evaluate_levels(z["train"][0], dataset.train.targets, z["test"][0], dataset.test.targets, levels[:1],
                           val_feats=z["val"][0], val_targets=dataset.val.targets, knn_k=5, probe_epochs=20)
    assert got["features"]["head:coarse"]["coarse"] == pytest.approx(want["coarse"])
    joined = {name: torch.cat(list(x), dim=1) for name, x in z.items()}
    want = evaluate_levels(joined["train"], dataset.train.targets, joined["test"], dataset.test.targets, levels,
                           parent_index={"fine": torch.tensor(parent)}, val_feats=joined["val"],
                           val_targets=dataset.val.targets, knn_k=5, probe_epochs=20)
    assert got["features"]["concat"].keys() == want.keys()
    for key in want:
        assert got["features"]["concat"][key] == pytest.approx(want[key])
    with pytest.raises(MlclError, match="no level given for heads"):
        evaluate_model(model, dataset, torch.device("cpu"), knn_k=5, features=["heads"], heads={"coarse": "coarse"})


def test_map_at_r_agrees_with_pytorch_metric_learning():
    calculators = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    rng = np.random.default_rng(0)
    qx, rx = rng.normal(size=(60, 8)).astype(np.float32), rng.normal(size=(200, 8)).astype(np.float32)
    qy, ry = rng.integers(0, 4, 60), rng.integers(0, 4, 200)
    rx[ry == 1] += 1.5  # one class clustered, so scores are not all near chance
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.inference import CustomKNN

    calc = calculators.AccuracyCalculator(include=("mean_average_precision_at_r", "precision_at_1"),
                                          k="max_bin_count", knn_func=CustomKNN(CosineSimilarity()))
    theirs = calc.get_accuracy(torch.from_numpy(qx), torch.from_numpy(qy), torch.from_numpy(rx), torch.from_numpy(ry),
                               ref_includes_query=False)
    ours = retrieval_metrics(qx, {"l": qy}, rx, {"l": ry}, k=1)["l"]
    assert ours["map_at_r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-5)
    assert ours["precision_at_k"] == pytest.approx(theirs["precision_at_1"], abs=1e-5)
