"""The Lightning module: per-head losses logged, training moves the weights, and DDP on 2 CPU processes."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

L = pytest.importorskip("lightning")

from mlcl import MultiHeadProjector, MultiLevelSupConLoss, SupConLoss  # noqa: E402
from mlcl.data.augment import ImageAugment, make_views  # noqa: E402
from mlcl.data.fashion_mnist import is_available as fashion_available  # noqa: E402
from mlcl.data.registry import load_dataset  # noqa: E402
from mlcl.lightning import ContrastiveModule  # noqa: E402
from mlcl.models.encoders import SmallCNN  # noqa: E402

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.skipif(not fashion_available()[0], reason="needs: apt-get install dataset-fashion-mnist")


def _loader(batch_size: int = 32, limit: int = 256) -> torch.utils.data.DataLoader:
    data = load_dataset("fashion-mnist", val_size=0, limit_train=limit)
    labels = torch.stack([data.train.targets["coarse"], data.train.targets["fine"]], dim=1)
    dataset = torch.utils.data.TensorDataset(data.train.inputs, labels)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                       generator=torch.Generator().manual_seed(0))


def _module(weights=(0.5, 1.0)) -> ContrastiveModule:
    torch.manual_seed(0)
    projector = MultiHeadProjector(32, 2, hidden_dim=32, out_dim=16, head_names=["coarse", "fine"])
    loss = MultiLevelSupConLoss([0.3, 0.1], list(weights))
    views = partial(make_views, n_views=2, augment=ImageAugment(crop_padding=2))
    return ContrastiveModule(SmallCNN(1, width=8, out_dim=32), projector, loss, views=views, lr=1e-2)


def test_per_head_losses_are_logged_and_weigh_up_to_the_total(tmp_path):
    module = _module()
    before = [p.detach().clone() for p in module.parameters()]
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=4, log_every_n_steps=1, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="run"))
    trainer.fit(module, _loader())
    with open(Path(trainer.log_dir) / "metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/loss")]
    assert len(rows) == 4
    for row in rows:
        coarse, fine, total = (float(row[k]) for k in ("train/loss_coarse", "train/loss_fine", "train/loss"))
        assert 0.5 * coarse + 1.0 * fine == pytest.approx(total, rel=1e-5)
        assert float(row["train/temperature_coarse"]) == pytest.approx(0.3)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_one_head_losses_and_mismatched_heads():
    projector = MultiHeadProjector(32, 1, hidden_dim=16, out_dim=8)
    module = ContrastiveModule(SmallCNN(1, width=4, out_dim=32), projector, SupConLoss(0.1))
    images, labels = next(iter(_loader(batch_size=8, limit=64)))
    views = make_views(images, 2, ImageAugment())
    loss = module.training_step((views, labels[:, 1]), 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="the loss has 2 heads .* but the projector 1"):
        ContrastiveModule(SmallCNN(1), MultiHeadProjector(128, 1), MultiLevelSupConLoss([0.1, 0.2]))
    with pytest.raises(ValueError, match="SupConLoss works on one head, but the projector has 2"):
        ContrastiveModule(SmallCNN(1), MultiHeadProjector(128, 2), SupConLoss(0.1))


@pytest.mark.slow
def test_the_example_trains_under_ddp_on_two_cpu_processes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "examples" / "lightning_fashion_mnist.py"), "--devices", "2",
               "--strategy", "ddp", "--accelerator", "cpu", "--max-steps", "3", "--batch-size", "16",
               "--limit-train", "256", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained 3 steps" in result.stdout
    tensorboard = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    accumulator = tensorboard.EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    assert {"train/loss", "train/loss_coarse", "train/loss_fine"} <= set(tags)
    assert len(accumulator.Scalars("train/loss_fine")) == 3
