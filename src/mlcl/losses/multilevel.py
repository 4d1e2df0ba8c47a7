"""Multi-level supervised contrastive loss (the method), and SupCon / NT-Xent as its special cases."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mlcl import distributed
from mlcl.losses._validate import (
    check_anchor_mask,
    check_head_values,
    check_projections,
    check_relation,
    head_values,
    single_head_relation,
)
from mlcl.losses.fused import DenseRelation, FusedSupCon, LabelRelation
from mlcl.losses.precision import operand_dtype, statistics_dtype


@torch.compiler.disable  # validation and relations are data-dependent: a clean graph break under torch.compile
def multilevel_supcon(
    z: torch.Tensor,
    relation: torch.Tensor,
    temperatures: torch.Tensor,
    weights: torch.Tensor,
    anchor_mask: torch.Tensor | None = None,
    *,
    gather_distributed: bool = False,
    block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, L_h)``: the weighted sum over heads and the per-head losses (docs/loss.md).

    ``z`` is ``(H, B, V, D)``; ``relation`` is class labels ``(B, H)`` or positive weights
    ``(H, B, B)`` (with ``gather_distributed``: ``(H, B, W·B)``, rows = this rank's samples, columns =
    all ranks' samples in rank order). ``temperatures`` and ``weights`` are ``(H,)`` tensors.
    """
    check_projections(z)
    num_heads, batch, n_views, _ = z.shape
    rank, world = distributed.rank_and_world() if gather_distributed else (0, 1)
    if world > 1:  # before the rank-local checks: a rank whose (H, b, W·b) check passed would hang
        distributed.check_same_shapes(z.shape[1:], "z (B, V, D)", z.device)
    check_relation(relation, num_heads, batch, key_batch=batch * world)
    is_labels = not (relation.dtype.is_floating_point or relation.dtype == torch.bool)
    check_anchor_mask(anchor_mask, num_heads, batch)
    if temperatures.shape != (num_heads,) or weights.shape != (num_heads,):
        raise ValueError(
            f"z has {num_heads} heads but got {temperatures.numel()} temperatures and {weights.numel()} weights"
        )

    dtype = statistics_dtype(z.dtype)
    normalised = F.normalize(z.to(dtype), dim=-1).reshape(num_heads, batch * n_views, -1)
    keys = distributed.gather_with_grad(normalised, dim=1, check_size=False) if world > 1 else normalised
    if is_labels:
        labels = relation.to(z.device)  # NCCL gathers only CUDA tensors
        all_labels = distributed.gather_no_grad(labels, dim=0, check_size=False) if world > 1 else labels
        operator = LabelRelation(all_labels, n_views, rank * batch, batch)
    else:
        operator = DenseRelation(relation.to(device=z.device, dtype=dtype), n_views, rank * batch)
    anchor_rows = slice(rank * batch * n_views, (rank + 1) * batch * n_views)

    valid = operator.eligible() & (operator.degree() > 0)
    if anchor_mask is not None:
        valid &= anchor_mask.to(z.device).repeat_interleave(n_views, dim=1)
    local_count = valid.sum(1).to(dtype)
    # Each rank normalises by the global anchor count and scales by W, so DDP's gradient average over
    # ranks equals the one-process gradient of the mean over all anchors.
    count = distributed.all_reduce_sum(local_count) if world > 1 else local_count
    anchor_weight = valid.to(dtype) * (world / count.clamp_min(1)).unsqueeze(1)

    inv_tau = 1.0 / temperatures.to(device=z.device, dtype=dtype)
    head_losses = FusedSupCon.apply(keys, inv_tau, operator, anchor_rows, anchor_weight, block_size, operand_dtype(z))
    total = (weights.to(device=z.device, dtype=dtype) * head_losses).sum()
    return total, head_losses


class MultiLevelSupConLoss(nn.Module):
    """Σ_h λ_h L_h over H projection heads, each with its own positives and temperature.

    Example::

        loss_fn = MultiLevelSupConLoss(temperatures=[0.5, 0.1], weights=[0.5, 1.0])
        loss = loss_fn(z, labels)          # z: (H, B, V, D); labels: (B, H) long, -1 = unknown
        loss_fn.last_head_losses           # (H,) detached per-head values for logging
        loss, head_losses = loss_fn(z, labels, return_head_losses=True)   # the same, returned (H,)

    bfloat16 / float16 ``z``, or ``z`` inside ``torch.autocast``, computes the similarity matmuls in that
    precision with float32 statistics (:mod:`mlcl.losses.precision`).
    """

    def __init__(
        self,
        temperatures: Sequence[float] | float,
        weights: Sequence[float] | None = None,
        gather_distributed: bool = False,
        *,
        learnable_temperatures: bool = False,
        block_size: int | None = None,
    ):
        super().__init__()
        temps = head_values(temperatures, "temperatures")
        if not temps:
            raise ValueError("temperatures must name at least one head")
        check_head_values("temperatures", temps, None, positive=True)
        head_weights = [1.0] * len(temps) if weights is None else head_values(weights, "weights")
        check_head_values("weights", head_weights, len(temps), positive=False)
        if block_size is not None and block_size < 1:
            raise ValueError(f"block_size must be >= 1 or None, got {block_size}")
        self.gather_distributed = gather_distributed
        self.block_size = block_size
        log_temps = torch.tensor([math.log(t) for t in temps], dtype=torch.float64)
        if learnable_temperatures:
            self.log_temperatures = nn.Parameter(log_temps)
        else:
            self.register_buffer("log_temperatures", log_temps)
        self.register_buffer("weights", torch.tensor(head_weights, dtype=torch.float64))
        self.last_head_losses: torch.Tensor | None = None

    @property
    def num_heads(self) -> int:
        return self.weights.numel()

    @property
    def temperatures(self) -> torch.Tensor:
        return self.log_temperatures.exp()

    def forward(
        self,
        z: torch.Tensor,
        relation: torch.Tensor,
        anchor_mask: torch.Tensor | None = None,
        *,
        return_head_losses: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The weighted total; with ``return_head_losses`` also the ``(H,)`` per-head losses (detached)."""
        check_projections(z)
        if z.shape[0] != self.num_heads:
            raise ValueError(
                f"z has {z.shape[0]} heads (shape {tuple(z.shape)}) but the loss was built with "
                f"{self.num_heads} temperatures"
            )
        total, head_losses = multilevel_supcon(
            z,
            relation,
            self.temperatures,
            self.weights,
            anchor_mask,
            gather_distributed=self.gather_distributed,
            block_size=self.block_size,
        )
        self.last_head_losses = head_losses.detach()
        return (total, self.last_head_losses) if return_head_losses else total


class SupConLoss(MultiLevelSupConLoss):
    """Supervised contrastive loss (Khosla et al. 2020, L_out) with one head.

    ``z`` is ``(B, V, D)`` and ``labels`` ``(B,)`` (``-1`` = unlabelled) or a ``(B, B)`` relation
    (with ``gather_distributed``: ``(B, W·B)``, columns = all ranks' samples in rank order).
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False, block_size: int | None = None):
        super().__init__([temperature], gather_distributed=gather_distributed, block_size=block_size)

    def forward(self, z: torch.Tensor, labels: torch.Tensor, anchor_mask: torch.Tensor | None = None) -> torch.Tensor:
        if z.ndim != 3:
            raise ValueError(f"SupConLoss expects z of shape (B, V, D), got {tuple(z.shape)}")
        relation = single_head_relation(labels, z.shape[0])
        mask = None if anchor_mask is None else anchor_mask.unsqueeze(0)
        return super().forward(z.unsqueeze(0), relation, mask)


class NTXentLoss(SupConLoss):
    """SimCLR's NT-Xent: only a sample's own other views are positive. ``z`` is ``(B, V, D)``, V >= 2."""

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False, block_size: int | None = None):
        super().__init__(temperature, gather_distributed=gather_distributed, block_size=block_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if z.ndim != 3 or z.shape[1] < 2:
            raise ValueError(f"NTXentLoss expects z of shape (B, V, D) with V >= 2 views, got {tuple(z.shape)}")
        batch = z.shape[0]
        # No positive besides a sample's own views; with gather the relation is (B, W·B).
        world = distributed.rank_and_world()[1] if self.gather_distributed else 1
        return super().forward(z, torch.zeros(batch, batch * world, dtype=torch.bool, device=z.device))
