"""Checks shared by the losses: each raises ``ValueError`` naming the expected and the actual value."""

from __future__ import annotations

from collections.abc import Sequence

import torch


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


def check_relation(relation: torch.Tensor, num_heads: int, batch: int, key_batch: int | None = None) -> None:
    """Class labels ``(B, H)`` (integer, >= -1) or positive weights ``(H, B, B_keys)`` in [0, 1]."""
    key_batch = batch if key_batch is None else key_batch
    if not isinstance(relation, torch.Tensor):
        raise ValueError(f"relation must be a torch.Tensor, got {type(relation).__name__}")
    if relation.dtype.is_floating_point or relation.dtype == torch.bool:
        expected = (num_heads, batch, key_batch)
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


def check_anchor_mask(anchor_mask: torch.Tensor | None, num_heads: int, batch: int) -> None:
    """``anchor_mask`` is ``None`` or a bool ``(H, B)`` tensor."""
    if anchor_mask is None:
        return
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
