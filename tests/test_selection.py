"""The best-checkpoint rule: ties within validation noise go to the later epoch, a clear improvement
wins, a tiny validation split reports the last epoch; metrics.json says which epoch and why."""

from __future__ import annotations

import json
import math
import random

import pytest
from conftest import QUICKSTART, train_args

from mlcl.cli import main
from mlcl.train.selection import MIN_VALIDATION_ROWS, checkpoint_record, noise_tolerance, selected_epoch


def test_noise_tolerance_is_the_binomial_standard_error():
    assert noise_tolerance(0.9, 1000) == pytest.approx(math.sqrt(0.09 / 1000))
    assert noise_tolerance(1.0, 500) == 0.0


def test_ties_within_noise_go_to_the_later_epoch():
    # 250 rows: one sample (0.004) is well within the error (0.019) of 0.9.
    assert selected_epoch([(1, 225 / 250), (2, 0.7), (30, 224 / 250)], 250) == 30
    assert selected_epoch([(1, 0.8), (2, 0.8)], 1000) == 2  # an exact tie too


def test_a_clear_improvement_wins_and_a_clear_drop_does_not():
    assert selected_epoch([(1, 0.5), (2, 0.9), (3, 0.7)], 1000) == 2
    assert selected_epoch([(1, 0.9), (2, 0.8)], 1000) == 1


def test_the_reference_is_the_best_score_so_no_slow_decline_drifts():
    # Each step is within noise (0.0095) of the previous score, but the third is not within noise of the best.
    assert selected_epoch([(1, 0.900), (2, 0.893), (3, 0.886)], 1000) == 2


def test_the_rule_is_the_latest_epoch_within_noise_of_the_overall_best():
    rng = random.Random(0)
    for _ in range(300):
        n_val = rng.choice([200, 500, 5000])
        scores = [(epoch, rng.choice([0.6, 0.61, 0.62, 0.8, 0.81, 0.805])) for epoch in range(1, rng.randint(2, 12))]
        best = max(score for _, score in scores)
        expected = max(epoch for epoch, score in scores if score >= best - noise_tolerance(best, n_val))
        assert selected_epoch(scores, n_val) == expected


def test_a_tiny_validation_split_reports_the_last_epoch():
    assert selected_epoch([(1, 0.95), (2, 0.5)], MIN_VALIDATION_ROWS - 1) is None
    assert selected_epoch([(1, 0.95), (2, 0.5)], MIN_VALIDATION_ROWS) == 1


def test_the_checkpoint_record_says_which_epoch_and_why():
    state = {"epoch": 30, "best": 0.9, "best_epoch": 12}
    assert checkpoint_record(state, 1000, True) == {
        "epoch": 12, "of": 30,
        "reason": "the latest epoch whose validation kNN (mean over levels) is within noise (±0.009) of the best "
                  "(0.9000)"}
    assert checkpoint_record(state, 1000, False)["reason"] == "the last checkpoint, as asked (best.pt holds epoch 12)"
    tiny = checkpoint_record({"epoch": 30, "best": None}, 180, False)
    assert tiny == {"epoch": 30, "of": 30, "reason": "validation split has 180 rows (< 200): the last epoch"}
    assert checkpoint_record({"epoch": 3, "best": None}, 0, False)["reason"] == "no validation split: the last epoch"


DIGITS = ["data.name=digits", "method.heads=[]", "method.temperatures=[0.1]", "method.weights=[]", "train.epochs=2",
          "train.batch_size=64", "model.encoder_options.width=4", "model.proj_hidden=16", "model.proj_dim=8",
          "eval.embedding_map=none", "train.threads=1", "eval.probe_epochs=5", "train.tensorboard=false"]


@pytest.mark.slow
@pytest.mark.parametrize("val_fraction, n_val", [(0.1, 180), (0.15, 270)])
def test_metrics_json_records_the_reported_checkpoint(tmp_path, val_fraction, n_val):
    out = tmp_path / "run"
    assert main(train_args(out, *DIGITS, f"data.options={{test_fraction: 0.2, val_fraction: {val_fraction}}}",
                           config=QUICKSTART)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    record = metrics["checkpoint"]
    assert record["of"] == metrics["epochs"] == 2 and record["epoch"] == metrics["best_epoch"]
    if n_val < MIN_VALIDATION_ROWS:
        assert record == {"epoch": 2, "of": 2, "reason": f"validation split has {n_val} rows (< 200): the last epoch"}
        assert not (out / "checkpoints" / "best.pt").exists()
    else:
        assert "within noise" in record["reason"] and (out / "checkpoints" / "best.pt").exists()
