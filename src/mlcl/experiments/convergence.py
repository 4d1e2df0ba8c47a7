"""Linear-probe accuracy after every epoch of ONE run (the convergence curves).

Re-running with ``train.epochs=k`` for every k would change the cosine schedule with k (the learning
rate at epoch k of a k-epoch run is already ~0) and cost k runs; instead the weights at the end of
every epoch of a single run are kept in memory and probed after training, so probing never counts
as training time and the schedule is the one of the full run.

:func:`record_epochs` registers a trainer epoch callback (it runs after the epoch's checkpoint and
validation check).
"""

from __future__ import annotations

from typing import Any

import torch

from mlcl.train.evaluation import evaluate_model
from mlcl.train.loop import Trainer
from mlcl.train.results import flatten_metrics
from mlcl.train.run import Run

SnapshotList = list[tuple[int, dict[str, torch.Tensor]]]


def snapshot_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a model's weights."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def record_epochs(trainer: Trainer, snapshots: SnapshotList) -> None:
    """After each epoch of ``trainer``, append ``(epoch, weights)`` to ``snapshots``."""
    trainer.epoch_callbacks.append(
        lambda trained, record: snapshots.append((record["epoch"], snapshot_state(trained.model)))
    )


def evaluate_snapshots(run: Run, snapshots: SnapshotList, steps_per_epoch: int) -> list[dict[str, Any]]:
    """Test metrics of every snapshot: ``[{"epoch", "steps", "train_seconds", "val_knn", "metrics"}]``.

    ``train_seconds`` is cumulative training time up to that epoch (from the run's history); the
    model is left with the last snapshot's weights.
    """
    history = {record["epoch"]: record for record in run.state["history"]}
    curve, elapsed = [], 0.0
    seconds_by_epoch = {}
    for epoch in sorted(history):
        elapsed += history[epoch].get("seconds", 0.0)
        seconds_by_epoch[epoch] = elapsed
    for epoch, weights in snapshots:
        run.model.load_state_dict(weights)
        metrics = evaluate_model(run.model, run.dataset, run.device, run.config.eval.knn_k,
                                 run.config.eval.probe_epochs)
        curve.append({
            "epoch": epoch,
            "steps": epoch * steps_per_epoch,
            "train_seconds": round(seconds_by_epoch.get(epoch, float("nan")), 2),
            "val_knn": history.get(epoch, {}).get("val_knn"),
            "metrics": flatten_metrics(metrics),
        })
    return curve
