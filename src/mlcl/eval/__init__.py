"""Evaluation on frozen features: linear probe, kNN, retrieval and the per-level and hierarchy metrics."""

from mlcl.eval.hierarchy_metrics import lca_heights, mistake_severity, retrieval_metrics
from mlcl.eval.metrics import (
    choose_threshold,
    hierarchy_consistency,
    mean_average_precision,
    multilabel_metrics,
    top1,
)
from mlcl.eval.probe import ProbeResult, evaluate_levels, knn_predict, linear_probe

__all__ = [
    "ProbeResult",
    "choose_threshold",
    "evaluate_levels",
    "hierarchy_consistency",
    "knn_predict",
    "lca_heights",
    "linear_probe",
    "mean_average_precision",
    "mistake_severity",
    "multilabel_metrics",
    "retrieval_metrics",
    "top1",
]
