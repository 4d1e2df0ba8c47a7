"""A trained run's results: ``metrics.json`` and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlcl.data.protocols import labelled_rows
from mlcl.train import plots
from mlcl.train.evaluation import evaluate_model
from mlcl.train.run import Run
from mlcl.train.selection import checkpoint_record


def evaluate_run(run: Run, out_dir: Path | None = None, *, progress: bool = False) -> dict[str, Any]:
    """Evaluate the run's model as loaded (usually its best checkpoint); write ``metrics.json`` and plots
    to ``out_dir`` (default: the run's folder). ``progress``: a line per stage on stderr."""
    config, state = run.config, run.state
    out_dir = run.out_dir if out_dir is None else out_dir
    heads = {head.name: head.level.name if head.level is not None else None for head in run.heads}
    metrics = evaluate_model(run.model, run.dataset, run.device, config.eval.knn_k, config.eval.probe_epochs,
                             progress=progress, features=config.eval.features, heads=heads)
    metrics.update({
        "dataset": run.dataset.name,
        "method": config.to_dict()["method"],
        "epochs": state["epoch"],
        "best_epoch": state.get("best_epoch", state["epoch"]),
        "checkpoint": checkpoint_record(state, len(run.dataset.val) if run.dataset.val is not None else 0,
                                        run.loaded_from == run.checkpoint_file("best.pt")),
        "train_samples": len(run.dataset.train),
        "labelled_rows": labelled_rows(run.dataset.train),
        "train_seconds": round(state["train_seconds"], 2),
        "seed": config.seed,
    })
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    plots.training_curves(state["history"], out_dir / "curves.png")
    if config.eval.embedding_map != "none":
        plots.embedding_maps(run.model, run.dataset, run.heads, run.device, out_dir / "embeddings.png", config.eval)
    return metrics


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json`` -> ``{LEVEL: {...}, "consistency": {...}, "severity": {...}}`` (+ classifier top-1
    for CE, the unseen classes' scores when some were held out, and the projection heads' scores under
    ``"features"`` when they were evaluated)."""
    flat = {level: dict(values) for level, values in metrics.get("test", {}).items()}
    for level, values in metrics.get("classifier", {}).items():
        flat.setdefault(level, {})["classifier_top1"] = values["top1"]
    for key in ("unseen", "features"):
        if key in metrics:
            flat[key] = metrics[key]
    return flat
