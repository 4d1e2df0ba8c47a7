"""The training step's precision (fp32 / bf16 / fp16 with loss scaling) and its host syncs: values that
reach the host every ``train.log_every`` steps give the same run as every step."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from mlcl.data.fashion_mnist import is_available as fashion_available
from mlcl.errors import TrainingError
from mlcl.train.checkpoint import load_checkpoint
from mlcl.train.config import load_config
from mlcl.train.loop import start_run

pytestmark = pytest.mark.skipif(not fashion_available()[0], reason="needs: apt-get install dataset-fashion-mnist")

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
TINY = [
    "data.options.limit_train=640", "data.options.val_size=128", "data.options.limit_test=128",
    "train.epochs=2", "train.batch_size=64", "model.encoder_options.width=8", "model.proj_hidden=32",
    "model.proj_dim=16", "train.monitor_train_samples=256", "train.threads=1",
]


def train(out: Path, *overrides: str, step_log: list | None = None):
    trainer = start_run(load_config(QUICKSTART, [*TINY, *overrides]), out, progress=False)
    if step_log is not None:
        trainer.step_callbacks.append(lambda step, values: step_log.append((step, values)))
    trainer.train()
    return trainer


def log_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "log.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_syncing_every_few_steps_trains_the_same_run_as_every_step(tmp_path):
    every, few = [], []
    train(tmp_path / "every", "train.log_every=1", step_log=every)
    train(tmp_path / "few", "train.log_every=4", step_log=few)  # 10 steps per epoch: flushes at 4, 8, epoch end
    assert [s for s, _ in every] == [s for s, _ in few] == list(range(1, 21))
    assert every == few
    for a, b in zip(log_rows(tmp_path / "every"), log_rows(tmp_path / "few")):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    assert {"loss", "loss_coarse", "loss_fine", "lr"} <= set(every[0][1])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_training_runs_and_checkpoints_its_loss_scale(tmp_path, precision):
    trainer = train(tmp_path / precision, f"train.precision={precision}")
    rows = log_rows(tmp_path / precision)
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    assert float(rows[1]["loss"]) < float(rows[0]["loss"])  # it learns
    state = load_checkpoint(tmp_path / precision / "checkpoints" / "last.pt")
    assert state["scaler"] == trainer.scaler.state_dict()
    assert bool(state["scaler"]) == (precision == "fp16")  # GradScaler's state is empty when disabled


def test_a_diverging_run_names_the_step_and_keeps_a_finite_checkpoint(tmp_path):
    with pytest.raises(TrainingError, match=r"epoch 1, step \d+; .*last\.pt holds the last checkpoint"):
        train(tmp_path / "run", "train.lr=1e30", "train.warmup_epochs=0", "train.log_every=3")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["loop"]["global_step"] == 0  # the start of the run
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
