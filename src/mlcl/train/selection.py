"""Which epoch ``checkpoints/best.pt`` holds, and why: the rule that reads validation noise.

Every monitored epoch gets a validation kNN score (:func:`mlcl.train.evaluation.monitor_score`, the
mean top-1 over the levels). A score measured on ``n`` validation rows is uncertain by about its
binomial standard error ``sqrt(p (1 - p) / n)``, so the monitor does not crown an epoch for being a
sample or two better: a later epoch replaces the best whenever its score is at least the best score so
far minus that error (ties within noise go to the later, longer-trained epoch; for multi-label data,
scored by mAP, the same formula serves as the noise scale). The reported epoch is
therefore the latest monitored epoch within noise of the best score. On a validation split of fewer
than :data:`MIN_VALIDATION_ROWS` rows the scores are too noisy to choose by, and the last epoch is
reported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

MIN_VALIDATION_ROWS = 200  # fewer validation rows: the last epoch is reported, no best.pt is kept


def noise_tolerance(score: float, n_val: int) -> float:
    """The binomial standard error of an accuracy ``score`` measured on ``n_val`` rows."""
    return math.sqrt(max(0.0, score * (1.0 - score)) / n_val)


def replaces_best(score: float, best: float | None, n_val: int) -> bool:
    """Whether an epoch scoring ``score`` becomes the reported one, given the best score so far."""
    return best is None or score >= best - noise_tolerance(best, n_val)


def selected_epoch(scores: Iterable[tuple[int, float]], n_val: int) -> int | None:
    """The epoch the monitor reports after ``(epoch, score)`` checks in training order; ``None`` (the
    last epoch) when the validation split is smaller than :data:`MIN_VALIDATION_ROWS`."""
    if n_val < MIN_VALIDATION_ROWS:
        return None
    best, chosen = None, None
    for epoch, score in scores:
        if replaces_best(score, best, n_val):
            chosen = epoch
            best = score if best is None else max(best, score)
    return chosen


def checkpoint_record(state: dict[str, Any], n_val: int, loaded_best: bool) -> dict[str, Any]:
    """metrics.json's ``checkpoint``: the epoch whose weights were evaluated, of how many, and why.

    ``state`` is the run's loop record; ``loaded_best`` says whether the weights are best.pt's (else the
    last epoch's).
    """
    last = state["epoch"]
    if loaded_best and state.get("best") is not None and state.get("best_epoch") is not None:
        epoch, best = state["best_epoch"], state["best"]
        return {"epoch": epoch, "of": last,
                "reason": f"the latest epoch whose validation kNN (mean over levels) is within noise "
                          f"(±{noise_tolerance(best, n_val):.3f}) of the best ({best:.4f})"}
    if n_val == 0:
        reason = "no validation split: the last epoch"
    elif n_val < MIN_VALIDATION_ROWS:
        reason = f"validation split has {n_val} rows (< {MIN_VALIDATION_ROWS}): the last epoch"
    elif state.get("best") is not None:
        reason = f"the last checkpoint, as asked (best.pt holds epoch {state.get('best_epoch')})"
    else:
        reason = "no validation score was recorded: the last epoch"
    return {"epoch": last, "of": last, "reason": reason}
