"""End-to-end training on small slices of the real datasets, through the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import QUICKSTART, needs_fashion, train_args

from mlcl.cli import main
from mlcl.train.config import load_config
from mlcl.train.loop import Trainer
from mlcl.train.run import build_run

pytestmark = needs_fashion

SMALL_FASHION = [
    "data.options.limit_train=1500", "data.options.val_size=300", "data.options.limit_test=600",
    "train.epochs=1", "train.batch_size=128", "eval.embedding_map=pca", "eval.map_points=300",
    "model.encoder_options.width=16", "model.proj_hidden=64", "model.proj_dim=32",
]


def run(tmp_path, *overrides, config=QUICKSTART):
    out = tmp_path / "run"
    return main(train_args(out, *overrides, config=config)), out


@pytest.mark.slow
def test_quickstart_slice_writes_every_output(tmp_path, capsys):
    code, out = run(tmp_path, *SMALL_FASHION)
    assert code == 0
    for name in ("config.yaml", "log.csv", "metrics.json", "curves.png", "embeddings.png",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for level in ("coarse", "fine"):
        for key in ("linear_top1", "knn_top1"):
            assert 0.0 <= metrics["test"][level][key] <= 1.0
    # One short epoch on 1200 images already beats chance by far at both levels.
    assert metrics["test"]["coarse"]["linear_top1"] > 0.6
    assert metrics["test"]["fine"]["linear_top1"] > 0.4
    assert 0.0 <= metrics["test"]["consistency"]["linear"] <= 1.0
    assert metrics["method"]["name"] == "mlcl" and metrics["epochs"] == 1 and metrics["train_seconds"] > 0
    lr = float((out / "log.csv").read_text().splitlines()[1].split(",")[
        (out / "log.csv").read_text().splitlines()[0].split(",").index("lr")])
    assert 0 < lr < 0.1  # the mean rate the epoch trained with (warm-up, then decay), not the next step's 0
    printed = capsys.readouterr().out
    assert "linear_top1" in printed and "coarse" in printed
    header = (out / "log.csv").read_text().splitlines()[0]
    assert "loss_coarse" in header and "loss_fine" in header and "val_knn" in header


def _check_level_metrics(values: dict, finest: bool) -> None:
    for key in ("linear_top1", "knn_top1", "map_at_r", "precision_at_k"):
        assert 0.0 <= values[key] <= 1.0, key
    assert ("hier_dist_at_k" in values) == finest
    if finest:
        assert 0.0 <= values["hier_dist_at_k"] <= 2.0


@pytest.mark.slow
def test_metrics_json_has_retrieval_severity_and_head_features(tmp_path):
    code, out = run(tmp_path, *SMALL_FASHION, "data.options.limit_train=700", "eval.embedding_map=none",
                    "method.instance_head=true", "eval.features=[encoder, heads, concat]")
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    _check_level_metrics(test["coarse"], finest=False)
    _check_level_metrics(test["fine"], finest=True)
    # one epoch is far from perfect: there are mistakes, each 1 (a sibling) or 2 (another top class) away
    for method in ("linear", "knn"):
        assert 1.0 <= test["severity"][method] <= 2.0
        assert 0.0 <= test["severity"][f"{method}_within_parent"] <= 1.0
    # retrieval ranks the whole bank, so MAP@R is at most precision@R and well above chance (1/10) here
    assert test["fine"]["map_at_r"] > 0.1
    features = metrics["features"]
    assert set(features) == {"head:coarse", "head:fine", "head:instance", "concat"}
    assert set(features["head:coarse"]) == {"coarse"}
    assert set(features["head:fine"]) == set(features["head:instance"]) == {"fine"}
    _check_level_metrics(features["head:coarse"]["coarse"], finest=False)
    _check_level_metrics(features["head:instance"]["fine"], finest=False)  # one level: no tree to measure in
    assert set(features["concat"]) == set(test)
    _check_level_metrics(features["concat"]["fine"], finest=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method_overrides",
    [
        ["method.name=supcon"],
        ["method.name=simclr", "method.temperatures=[0.5]"],
        ["method.name=ce", "method.views=1"],
        ["method.name=himulcon"],
        ["method.name=mulsupcon"],
        ["method.name=triplet", "method.triplet_margin=0.3"],
        ["method.instance_head=true", "method.classifier_weight=0.5"],
    ],
    ids=["supcon", "simclr", "ce", "himulcon", "mulsupcon", "triplet", "mlcl-instance-classifiers"],
)
def test_every_method_trains_and_evaluates(tmp_path, method_overrides):
    code, out = run(tmp_path, *SMALL_FASHION, "data.options.limit_train=700", "eval.embedding_map=none",
                    *method_overrides)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"coarse", "fine"}
    if "classifier_weight=0.5" in " ".join(method_overrides) or "method.name=ce" in method_overrides:
        assert 0.0 <= metrics["classifier"]["fine"]["top1"] <= 1.0


@pytest.mark.slow
def test_multilabel_grid_reports_map_and_f1(tmp_path):
    code, out = run(
        tmp_path, "data.name=fashion-mnist-grid", "data.options={n_train: 600, n_val: 200, n_test: 300}",
        "train.epochs=1", "train.batch_size=100", "eval.embedding_map=none", "model.encoder_options.width=16",
        "model.proj_hidden=64", "model.proj_dim=32",
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for level in ("coarse", "fine"):
        assert set(metrics["test"][level]) == {"mAP", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"}
        assert 0.0 <= metrics["test"][level]["mAP"] <= 1.0


@pytest.mark.parametrize("overrides, message", [
    (["method.name=triplet"], "method.name=triplet needs one class per sample at the finest level"),
    (["method.name=himulcon"], "method.name=himulcon needs one class per sample at every level"),
    (["data.options={n_train: 200, n_val: 0, n_test: 50}"], "its F1 thresholds are chosen on a validation split"),
])
def test_multi_label_data_refuses_what_cannot_work_before_training(tmp_path, capsys, overrides, message):
    code, out = run(tmp_path, "data.name=fashion-mnist-grid", "data.options={n_train: 200, n_val: 50, n_test: 50}",
                    "train.batch_size=50", *overrides)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (out / "checkpoints").exists()  # refused before any training


DIGITS = ["data.name=digits", "data.options={test_fraction: 0.2}", "method.heads=[]", "method.temperatures=[0.1]",
          "method.weights=[]", "train.epochs=1", "train.batch_size=64"]


@pytest.mark.parametrize("overrides, message", [
    ([*DIGITS, "model.encoder_options={in_channels: 3}"], "model.encoder_options.in_channels is set from the data "
                                                          "(1 here)"),
    ([*DIGITS, "model.encoder=mlp"], "model.encoder=mlp cannot read images"),
    ([*DIGITS, "model.encoder=minilm"], "model.encoder=minilm reads text, but digits gives image"),
])
def test_encoder_mistakes_are_one_line_errors(tmp_path, capsys, overrides, message):
    code, _ = run(tmp_path, *overrides)
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_same_seed_reproduces_and_another_seed_differs(tmp_path):
    overrides = [*SMALL_FASHION, "data.options.limit_train=600", "eval.embedding_map=none", "train.threads=1"]
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / name
        assert main(train_args(out, *overrides, f"seed={seed}")) == 0
        runs.append(torch.load(out / "checkpoints" / "last.pt", weights_only=False)["model"])
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


@pytest.mark.slow
def test_embed_exports_each_head_and_the_encoder(tmp_path):
    code, out = run(tmp_path, *SMALL_FASHION, "data.options.limit_train=600", "eval.embedding_map=none")
    assert code == 0
    from mlcl.data.fashion_mnist import CLASSES, COARSE_CLASSES, load_raw

    _, official_labels = load_raw("test")
    for head, dims in (("encoder", 128), ("fine", 32), ("coarse", 32)):
        target = tmp_path / f"{head}.npz"
        assert main(["embed", str(out), "--head", head, "--input", "test", "--out", str(target)]) == 0
        saved = np.load(target)
        assert saved["embeddings"].shape == (600, dims)
        # ids are indices in the official test file; the labels written beside them are that image's classes
        ids = saved["ids"].astype(int)
        assert len(set(ids.tolist())) == 600
        assert saved["label_fine"].tolist() == [CLASSES[official_labels[i]] for i in ids]
        assert set(saved["label_coarse"].tolist()) <= set(COARSE_CLASSES)
    bare = tmp_path / "fine.npy"
    assert main(["embed", str(out), "--head", "fine", "--out", str(bare)]) == 0
    rows = (tmp_path / "fine.rows.csv").read_text().splitlines()
    assert np.load(bare).shape == (600, 32) and rows[0] == "id,coarse,fine" and len(rows) == 601
    assert main(["embed", str(out), "--head", "fien", "--out", str(tmp_path / "x.npy")]) == 2


def test_learnable_temperatures_get_no_weight_decay(tmp_path):
    config = load_config(QUICKSTART, [*SMALL_FASHION, "method.learnable_temperatures=true",
                                                     "train.weight_decay=0.01"])
    trainer = Trainer(build_run(config, tmp_path), progress=False)
    model_group, objective_group = trainer.optimizer.param_groups
    temperatures = list(trainer.objective.parameters())
    assert temperatures and [id(p) for p in objective_group["params"]] == [id(p) for p in temperatures]
    assert objective_group["weight_decay"] == 0.0 and model_group["weight_decay"] == 0.01
