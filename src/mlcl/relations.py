"""Label -> positive relation builders.

A relation says, for one head, how much sample ``b'`` counts as a positive of anchor ``b``: a ``(B, B)``
tensor of weights in [0, 1]. A sample's own other views are always positive and are added by the loss,
so the diagonal here is ignored. Stack one relation per head into ``(H, B, B)`` with :func:`stack`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def same_class(labels: torch.Tensor, others: torch.Tensor | None = None) -> torch.Tensor:
    """Positives share the class label; ``-1`` (no label) is nobody's positive.

    ``labels`` of shape ``(B,)`` gives a ``(B, B)`` bool relation; ``(B, H)`` (one column per head)
    gives ``(H, B, B)``. With ``others`` (``(B', ...)``, e.g. every rank's labels) the columns are
    ``others``' samples: ``(B, B')`` or ``(H, B, B')``.
    """
    if labels.ndim not in (1, 2) or labels.dtype.is_floating_point:
        raise ValueError(
            f"same_class expects integer labels of shape (B,) or (B, H), got dtype {labels.dtype} "
            f"and shape {tuple(labels.shape)}"
        )
    others = labels if others is None else others
    if others.shape[1:] != labels.shape[1:]:
        raise ValueError(
            f"others must have shape (B', ...) matching labels {tuple(labels.shape)}, got {tuple(others.shape)}"
        )
    rows = (labels.unsqueeze(1) if labels.ndim == 1 else labels).t()  # (H, B)
    cols = (others.unsqueeze(1) if others.ndim == 1 else others).t()  # (H, B')
    relation = (rows.unsqueeze(2) == cols.unsqueeze(1)) & (rows >= 0).unsqueeze(2)
    return relation[0] if labels.ndim == 1 else relation


def overlap(multi_hot: torch.Tensor, mode: str = "any", others: torch.Tensor | None = None) -> torch.Tensor:
    """Positives share labels of a multi-hot ``(B, C)`` matrix.

    ``mode="any"``: weight 1 when two samples share at least one label. ``mode="jaccard"``: weight
    ``|a ∩ b| / |a ∪ b|`` (0 when both label sets are empty). With ``others`` ``(B', C)`` the columns
    are ``others``' samples.
    """
    others = multi_hot if others is None else others
    if multi_hot.ndim != 2 or others.ndim != 2 or others.shape[1] != multi_hot.shape[1]:
        raise ValueError(
            "overlap expects multi-hot matrices of shape (B, C), "
            f"got {tuple(multi_hot.shape)} and {tuple(others.shape)}"
        )
    hot = (multi_hot > 0).to(torch.float32)
    other_hot = (others > 0).to(torch.float32)
    shared = hot @ other_hot.t()
    if mode == "any":
        return shared > 0
    if mode == "jaccard":
        union = hot.sum(1).unsqueeze(1) + other_hot.sum(1).unsqueeze(0) - shared
        return torch.where(union > 0, shared / union.clamp_min(1), torch.zeros_like(shared))
    raise ValueError(f"overlap mode must be 'any' or 'jaccard', got {mode!r}")


def instance(batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Instance discrimination: no other sample is positive (only a sample's own views)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return torch.zeros(batch_size, batch_size, dtype=torch.bool, device=device)


def stack(relations: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack per-head ``(B, B)`` relations into one ``(H, B, B)`` float tensor."""
    if not relations:
        raise ValueError("stack needs at least one relation")
    shapes = {tuple(r.shape) for r in relations}
    if len(shapes) != 1:
        raise ValueError(f"all relations must have the same (B, B) shape, got {sorted(shapes)}")
    return torch.stack([r.to(torch.float32) for r in relations])
