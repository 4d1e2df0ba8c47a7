"""Sub-population shift: finest classes held out of training, and what the model makes of them."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import QUICKSTART, needs_fashion

from mlcl.data import fashion_mnist
from mlcl.data.shift import choose_unseen_classes, hold_out_classes
from mlcl.errors import DataError
from mlcl.eval.shift import few_shot_scores, nearest_centroid
from mlcl.train.config import load_config
from mlcl.train.loop import start_run

# parents: 0 has 4 children, 1 has 1, 2 has 3, 3 has 2
PARENTS = torch.tensor([0, 0, 1, 0, 2, 2, 0, 2, 3, 3])


def _children(parent_index: torch.Tensor, parent: int) -> set[int]:
    return set(torch.nonzero(parent_index == parent).flatten().tolist())


@pytest.mark.parametrize("per_parent", [1, 2])
def test_every_parent_with_more_children_loses_exactly_per_parent_of_them(per_parent):
    for seed in range(5):
        chosen = set(choose_unseen_classes(PARENTS, per_parent, seed))
        for parent in range(4):
            children = _children(PARENTS, parent)
            held = children & chosen
            assert len(held) == (per_parent if len(children) > per_parent else 0)
            assert children - chosen, "a parent always keeps a seen child"


def test_the_choice_is_seeded():
    assert choose_unseen_classes(PARENTS, 1, 3) == choose_unseen_classes(PARENTS, 1, 3)
    assert len({tuple(choose_unseen_classes(PARENTS, 1, s)) for s in range(10)}) > 1


def test_no_parent_with_enough_children_is_a_one_line_error():
    with pytest.raises(DataError, match="smaller data.unseen_per_parent"):
        choose_unseen_classes(PARENTS, 4, 0)
    with pytest.raises(DataError, match="positive integer"):
        choose_unseen_classes(PARENTS, 0, 0)


@needs_fashion
def test_held_out_classes_leave_training_validation_and_the_seen_test_set():
    data = fashion_mnist.load_fashion_mnist(val_size=1000, limit_train=2000, limit_test=1000, seed=0)
    shifted = hold_out_classes(data, 1, seed=0)
    classes = torch.tensor(shifted.unseen.classes)
    assert len(classes) == 2  # tops and footwear have several children; bottoms, dresses and bags one each
    for split in (shifted.train, shifted.val, shifted.test):
        assert not torch.isin(split.targets["fine"], classes).any()
    for split in (shifted.unseen.train, shifted.unseen.test):
        assert torch.isin(split.targets["fine"], classes).all()
    for before, seen, unseen in ((data.train, shifted.train, shifted.unseen.train),
                                 (data.test, shifted.test, shifted.unseen.test)):
        assert len(seen) + len(unseen) == len(before)
        assert int(torch.isin(before.targets["fine"], classes).sum()) == len(unseen)
    assert len(data.train) == 2000 and data.unseen is None  # the input is left alone


def test_a_dataset_without_hierarchy_cannot_hold_classes_out():
    from mlcl.data.registry import load_dataset

    with pytest.raises(DataError, match="no label hierarchy"):
        hold_out_classes(load_dataset("digits"), 1, 0)


def _clusters(per_class: int, classes: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.eye(classes, 16) * 10
    labels = torch.arange(classes).repeat_interleave(per_class)
    return centres[labels] + spread * torch.randn(len(labels), 16, generator=generator), labels


def test_few_shot_scores_separate_clusters_and_are_at_chance_on_noise():
    pool_x, pool_y = _clusters(30, 3, 0.5, 0)
    test_x, test_y = _clusters(50, 3, 0.5, 1)
    assert few_shot_scores(pool_x, pool_y, test_x, test_y, 1) == {"centroid_top1": 1.0, "knn_top1": 1.0}
    noise = torch.randn(len(test_x), 16, generator=torch.Generator().manual_seed(2))
    scores = few_shot_scores(torch.randn(len(pool_x), 16), pool_y, noise, test_y, 5, draws=20)
    assert abs(scores["centroid_top1"] - 1 / 3) < 0.12 and abs(scores["knn_top1"] - 1 / 3) < 0.12


def test_few_shot_scores_do_not_depend_on_the_order_of_test_rows():
    pool_x, pool_y = _clusters(30, 3, 6.0, 0)
    test_x, test_y = _clusters(50, 3, 6.0, 1)
    order = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(0))
    assert few_shot_scores(pool_x, pool_y, test_x, test_y, 5) == pytest.approx(
        few_shot_scores(pool_x, pool_y, test_x[order], test_y[order], 5))


def test_a_one_shot_draw_takes_one_row_per_class_and_the_knn_is_the_nearest_shot():
    # One shot per class, one draw: the kNN prediction must be the class of the most similar shot.
    pool_x, pool_y = _clusters(30, 3, 6.0, 0)
    test_x, test_y = _clusters(20, 3, 6.0, 1)
    generator = torch.Generator().manual_seed(7)
    rows = torch.cat([torch.nonzero(pool_y == c).flatten()[torch.randperm(30, generator=generator)[:1]]
                      for c in range(3)])
    shots = torch.nn.functional.normalize(pool_x[rows], dim=1)
    nearest = (torch.nn.functional.normalize(test_x, dim=1) @ shots.T).argmax(1)
    expected = float((pool_y[rows][nearest] == test_y).float().mean())
    assert few_shot_scores(pool_x, pool_y, test_x, test_y, 1, draws=1, seed=7, knn_k=1)["knn_top1"] == \
        pytest.approx(expected)


@pytest.mark.slow
@needs_fashion
def test_a_run_with_unseen_classes_reports_them(tmp_path):
    overrides = ["data.options={val_size: 500, limit_train: 1500, limit_test: 1000}", "data.unseen_per_parent=1",
                 "train.epochs=1", "train.batch_size=128", "model.encoder_options={width: 4, out_dim: 16}",
                 "model.proj_hidden=16", "model.proj_dim=8", "eval.embedding_map=none", "eval.probe_epochs=20",
                 "train.threads=1"]
    trainer = start_run(load_config(QUICKSTART, overrides), tmp_path / "run", progress=False)
    trainer.train()
    from mlcl.train.results import evaluate_run

    evaluate_run(trainer.run)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    unseen = metrics["unseen"]
    assert len(unseen["classes"]) == 2 and unseen["test_rows"] == 200  # 2 of 10 balanced classes of 1000
    assert set(unseen["coarse"]) == {"linear_top1", "knn_top1"}
    for key in ("fine_1shot", "fine_5shot", "fine_20shot"):
        assert set(unseen[key]) == {"centroid_top1", "knn_top1"}
        assert 0.0 <= unseen[key]["centroid_top1"] <= 1.0
    assert len(trainer.run.dataset.test) == 800


def test_nearest_centroid_matches_a_brute_force_loop():
    generator = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(12, 5, generator=generator), torch.randn(9, 5, generator=generator)
    train_y, centre = torch.arange(3).repeat(4), torch.randn(5, generator=generator)
    predicted = nearest_centroid(train_x, train_y, test_x, centre)
    for i, row in enumerate(test_x):
        query = (row - centre) / (row - centre).norm()
        scores = []
        for c in range(3):
            shots = [(x - centre) / (x - centre).norm() for x, y in zip(train_x, train_y) if y == c]
            mean = sum(shots) / len(shots)
            scores.append(float(query @ mean / mean.norm()))
        assert int(predicted[i]) == max(range(3), key=scores.__getitem__)
