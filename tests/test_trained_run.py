"""A trained run after training: export and mlcl.load_run, mlcl eval's output folders, TensorBoard
logs, and progress output that stays plain when it is not a terminal."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mlcl
from mlcl.cli import main
from mlcl.errors import CheckpointError
from mlcl.train.run import load_run as load_full_run

ROOT = Path(__file__).parents[1]
CONFIG = str(ROOT / "configs" / "features_table.yaml")
DATA = f"data.path={ROOT / 'examples' / 'tiny_features.csv'}"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """The features config trained for 5 epochs on the example table (a few seconds)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--config", CONFIG, "--out", str(out), "--quiet", "--set", DATA]) == 0
    return out


def test_export_loads_without_pickle_and_embeds_like_the_run(run_dir, tmp_path):
    out = tmp_path / "export"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.json", "model.safetensors"]
    from safetensors.torch import load_file

    weights = load_file(str(out / "model.safetensors"))  # plain tensors, no pickle
    run = load_full_run(run_dir, "best")
    assert weights.keys() == run.model.state_dict().keys()
    inputs = run.dataset.test.inputs
    exported, from_run = mlcl.load_run(out), mlcl.load_run(run_dir)
    run.model.eval()
    with torch.no_grad():
        reference = torch.nn.functional.normalize(run.model(inputs).projections[1], dim=1)
    for model in (exported, from_run):
        assert model.head_names == ["state", "condition"]
        assert [level.name for level in model.levels] == ["state", "condition"]
        assert torch.allclose(model.embed(inputs, "condition"), reference, atol=1e-6)
        assert torch.allclose(model.embed(inputs), run.model.encode(inputs).detach(), atol=1e-6)
    manifest = json.loads((out / "model.json").read_text())
    # 9 validation rows are too few to choose an epoch by (selection.MIN_VALIDATION_ROWS): "best" is last.pt.
    assert manifest["source"]["checkpoint"] == "last.pt" and manifest["model"]["encoder_options"]["in_dim"] == 6
    assert main(["export", str(run_dir), "--out", str(out)]) == 2  # never over an existing folder


def test_damaged_exports_are_one_line_errors(run_dir, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", str(run_dir), "--out", str(out), "--checkpoint", "last"]) == 0
    (out / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(CheckpointError, match="model.safetensors is missing or damaged"):
        mlcl.load_run(out)
    (out / "model.json").write_text("{")
    with pytest.raises(CheckpointError, match="model.json is not readable JSON"):
        mlcl.load_run(out)
    with pytest.raises(mlcl.MlclError, match="neither an exported model"):
        mlcl.load_run(tmp_path)


def test_eval_writes_a_new_folder_each_time_unless_told_to_overwrite(run_dir, capsys):
    original = (run_dir / "metrics.json").read_bytes()
    assert main(["eval", str(run_dir), "--quiet"]) == 0
    assert main(["eval", str(run_dir), "--quiet"]) == 0
    assert main(["eval", str(run_dir), "--quiet", "--checkpoint", "last"]) == 0
    first = json.loads((run_dir / "eval-best" / "metrics.json").read_text())
    second = json.loads((run_dir / "eval-best-2" / "metrics.json").read_text())
    assert first["test"] == second["test"] and (run_dir / "eval-last" / "metrics.json").exists()
    assert (run_dir / "metrics.json").read_bytes() == original  # the training run's results are untouched
    assert main(["eval", str(run_dir), "--quiet", "--overwrite"]) == 0
    assert not (run_dir / "eval-best-3").exists()
    assert main(["eval", str(run_dir), "--quiet", "--out", str(run_dir / "eval-best")]) == 2
    assert "add --overwrite" in capsys.readouterr().err


def test_tensorboard_holds_each_step_and_each_epoch(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_state", "train/loss_condition", "train/lr", "train/temperature_state",
            "epoch/loss", "epoch/val_knn"} <= tags
    with open(run_dir / "log.csv", newline="") as handle:
        log = list(csv.DictReader(handle))
    steps = events.Scalars("train/loss_condition")
    per_epoch = len(steps) // len(log)
    assert len(steps) == per_epoch * len(log) and [s.step for s in steps] == list(range(1, len(steps) + 1))
    for epoch, row in enumerate(log):  # log.csv's epoch mean is the mean of that epoch's logged steps
        values = [s.value for s in steps[epoch * per_epoch:(epoch + 1) * per_epoch]]
        assert sum(values) / per_epoch == pytest.approx(float(row["loss_condition"]), rel=1e-5)
    assert [s.value for s in events.Scalars("train/temperature_state")] == pytest.approx([0.3] * len(steps))
    assert len(events.Scalars("epoch/val_knn")) == len(log)


def test_no_tensorboard_flag(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--config", CONFIG, "--out", str(out), "--quiet", "--no-tensorboard", "--set", DATA,
                 "--set", "train.epochs=1"]) == 0
    assert not (out / "tensorboard").exists() and (out / "metrics.json").exists()


def test_output_to_a_file_has_no_progress_bar_but_a_line_per_epoch(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-m", "mlcl", "train", "--config", CONFIG, "--out", str(tmp_path / "r"),
                             "--set", DATA, "--set", "train.epochs=2"], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\r" not in result.stdout
    assert "epoch 1/2: loss" in result.stdout and "epoch 2/2: loss" in result.stdout
    assert "eval: encoding" in result.stderr  # the evaluation says what it is doing
