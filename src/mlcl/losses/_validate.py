"""Checks shared by the losses: each raises ``ValueError`` naming the expected and the actual value.

The losses do not check ``z`` for NaN / inf on every call (that would wait for the GPU at every step):
a non-finite projection gives a non-finite loss. Call :func:`check_finite` where that must be an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# 1/τ must be a finite float32 (the precision the loss computes in): smaller temperatures give inf logits.
MIN_TEMPERATURE = 1.0 / float(np.finfo(np.float32).max)


def _check_layout(z: torch.Tensor, owner: str, layout: str, meaning: str, hint: str) -> None:
    """``z`` must be a non-empty floating tensor with one dimension per name in ``layout``."""
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"{owner} must be a torch.Tensor of shape {layout}, got {type(z).__name__}")
    if z.ndim != layout.count(",") + 1:
        raise ValueError(f"{owner} must have shape {layout} = ({meaning}), got shape {tuple(z.shape)}; {hint}")
    if not z.dtype.is_floating_point:
        raise ValueError(f"{owner} must be a floating-point tensor, got dtype {z.dtype}")
    if 0 in z.shape:
        raise ValueError(f"{owner} must not be empty, got shape {tuple(z.shape)}")


def check_projections(z: torch.Tensor) -> None:
    """``z`` must be a floating ``(H, B, V, D)`` tensor."""
    _check_layout(z, "z", "(H, B, V, D)", "heads, samples, views, dims",
                  "for a single head and view use z[None, :, None, :]")


def check_views(z: torch.Tensor, loss_name: str) -> None:
    """``z`` must be a non-empty floating ``(B, V, D)`` tensor (samples, views, dims)."""
    _check_layout(z, f"{loss_name}'s z", "(B, V, D)", "samples, views, dims", "for one view use z[:, None, :]")


def check_finite(z: torch.Tensor, name: str = "z") -> None:
    """Raise if ``z`` holds NaN or inf (opt-in: it waits for the device, so the losses do not call it)."""
    bad = ~torch.isfinite(z)
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0].tolist())
        raise ValueError(f"{name} holds {int(bad.sum())} non-finite value(s) (the first at index {first}: "
                         f"{z[first].item()}); the loss of a non-finite projection is not finite")


def _check_tensor(value: object, name: str, expected: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(value).__name__}; "
                         f"convert it with torch.as_tensor(...)")


def check_relation(relation: torch.Tensor, num_heads: int, batch: int, key_batch: int | None = None) -> None:
    """Class labels ``(B, H)`` (integer, >= -1) or positive weights ``(H, B, B_keys)`` in [0, 1]."""
    key_batch = batch if key_batch is None else key_batch
    _check_tensor(relation, "relation", "(B, H) (class labels) or (H, B, B) (positive weights)")
    if relation.dtype.is_floating_point or relation.dtype == torch.bool:
        expected = (num_heads, batch, key_batch)
        if relation.dtype.is_floating_point and tuple(relation.shape) == (batch, num_heads) != expected:
            raise ValueError(
                f"class labels (B, H) = {(batch, num_heads)} must be an integer tensor, got {relation.dtype}; "
                "use labels.long() (a float tensor is read as positive weights of shape (H, B, B))"
            )
        if tuple(relation.shape) != expected:
            raise ValueError(
                f"a positive-weight relation must have shape (H, B, B) = {expected}, "
                f"got {tuple(relation.shape)}"
            )
        if relation.dtype != torch.bool:
            if not torch.isfinite(relation).all():
                raise ValueError("relation weights must be finite, got NaN or inf")
            low, high = relation.min().item(), relation.max().item()
            if low < 0 or high > 1:
                raise ValueError(f"relation weights must lie in [0, 1], got values in [{low:g}, {high:g}]")
        return
    if relation.ndim != 2 or tuple(relation.shape) != (batch, num_heads):
        raise ValueError(
            f"class labels must have shape (B, H) = {(batch, num_heads)} (one column per head), "
            f"got {tuple(relation.shape)}"
        )
    if relation.numel() and relation.min().item() < -1:
        raise ValueError(f"class labels must be >= -1 (-1 = no label), got {relation.min().item()}")


def single_head_relation(labels: torch.Tensor, batch: int) -> torch.Tensor:
    """A one-head loss's labels as the multi-head relation: class labels ``(B,)`` or ``(B, 1)`` become
    ``(B, 1)``; positive weights ``(B, B_keys)`` (float or bool) become ``(1, B, B_keys)``."""
    _check_tensor(labels, "labels", "(B,) (class labels) or (B, B) (positive weights)")
    weights = labels.dtype.is_floating_point or labels.dtype == torch.bool
    if labels.ndim == 1:
        if weights:
            raise ValueError(f"class labels (B,) must be an integer tensor, got {labels.dtype}; use labels.long()")
        return labels.unsqueeze(1)
    if labels.ndim == 2 and not weights:
        if labels.shape[1] != 1:
            raise ValueError(f"a one-head loss takes class labels of shape (B,) or (B, 1), got {tuple(labels.shape)}; "
                             "for several label columns use MultiLevelSupConLoss (one head per column)")
        return labels
    if labels.ndim == 2 and labels.dtype.is_floating_point and labels.shape[1] == 1 < batch:
        raise ValueError(f"class labels (B, 1) must be an integer tensor, got {labels.dtype}; use labels.long()")
    if labels.ndim == 2:
        return labels.unsqueeze(0)
    raise ValueError(f"labels must have shape (B,) (class labels) or (B, B) (positive weights) for B = {batch}, "
                     f"got {tuple(labels.shape)}")


def head_values(values: float | Sequence[float] | torch.Tensor | np.ndarray, name: str) -> list[float]:
    """Per-head values given as a number, a 0-d or 1-d tensor / array, or a sequence, as a list of floats."""
    if isinstance(values, (torch.Tensor, np.ndarray)):
        if values.ndim > 1:
            raise ValueError(f"{name} must be a number or one value per head, got shape {tuple(values.shape)}")
        return [float(v) for v in values.reshape(-1).tolist()]
    if isinstance(values, (int, float, np.number)):
        return [float(values)]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a sequence of numbers, got {values!r}") from None


def check_anchor_mask(anchor_mask: torch.Tensor | None, num_heads: int, batch: int) -> None:
    """``anchor_mask`` is ``None`` or a bool ``(H, B)`` tensor."""
    if anchor_mask is None:
        return
    _check_tensor(anchor_mask, "anchor_mask", "(H, B)")
    if anchor_mask.dtype != torch.bool or tuple(anchor_mask.shape) != (num_heads, batch):
        raise ValueError(
            f"anchor_mask must be a bool tensor of shape (H, B) = {(num_heads, batch)}, "
            f"got {anchor_mask.dtype} {tuple(anchor_mask.shape)}"
        )


def check_head_values(name: str, values: Sequence[float], num_heads: int | None, *, positive: bool) -> None:
    """One finite value per head; strictly positive (temperatures) or non-negative (weights)."""
    values = list(values)
    if num_heads is not None and len(values) != num_heads:
        raise ValueError(f"expected {num_heads} {name} (one per head), got {len(values)}: {values}")
    for value in values:
        bad = not torch.isfinite(torch.tensor(float(value))) or (value <= 0 if positive else value < 0)
        if bad:
            rule = "> 0" if positive else ">= 0"
            raise ValueError(f"every one of {name} must be finite and {rule}, got {values}")
        if positive and value < MIN_TEMPERATURE:
            raise ValueError(f"every one of {name} must be >= {MIN_TEMPERATURE:.3g} (1/value must be a finite "
                             f"float32), got {values}; typical temperatures are 0.05-0.5")
