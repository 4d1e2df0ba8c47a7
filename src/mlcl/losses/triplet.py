"""Batch-hard triplet loss (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss").

Every row (a view of a sample) with a label is an anchor a. Its hardest positive is the farthest other
row with the same label (its own other views included), its hardest negative the closest row with a
different label or no label (``-1``: no anchor and nobody's positive, but still a negative, as in the
contrastive losses). Then

    ℓ_a = max(0, margin + d(a, p*) − d(a, n*))   or, with ``soft``: ℓ_a = log(1 + exp(d(a, p*) − d(a, n*)))

(Hermans' soft margin has no margin). L is the mean over anchors that have both a positive and a
negative (0 if none). ``distance="euclidean"`` is ‖x_a − x_b‖ on L2-normalised rows (``normalize=False``
keeps the raw rows, as in Hermans et al.); ``"cosine"`` is 1 − cos(x_a, x_b).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlcl import distributed
from mlcl.losses._validate import check_views
from mlcl.losses.precision import statistics_dtype

DISTANCES = ("euclidean", "cosine")


def _rows_and_labels(z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``z`` ``(B, V, D)`` or ``(N, D)`` with ``labels`` ``(B,)`` / ``(N,)``; return rows and row labels."""
    if isinstance(z, torch.Tensor) and z.ndim == 2:
        z = z.unsqueeze(1)
    check_views(z, "BatchHardTripletLoss")
    batch, n_views, dims = z.shape
    if not isinstance(labels, torch.Tensor) or labels.shape != (batch,):
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must have shape (B,) = ({batch},), one per sample of z, got {shape}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class ids (-1 = unlabelled), got dtype {labels.dtype}")
    if labels.min().item() < -1:
        raise ValueError(f"labels must be >= -1 (-1 = unlabelled), got {labels.min().item()}")
    rows = z.to(statistics_dtype(z.dtype)).reshape(batch * n_views, dims)
    return rows, labels.to(z.device).repeat_interleave(n_views)


def pairwise_distance(rows: torch.Tensor, keys: torch.Tensor, distance: str, normalize: bool) -> torch.Tensor:
    """``(m, N)`` distances from rows to keys: Euclidean (on unit rows if ``normalize``) or cosine."""
    if distance == "cosine":
        return 1 - F.normalize(rows, dim=-1) @ F.normalize(keys, dim=-1).t()
    if normalize:
        rows, keys = F.normalize(rows, dim=-1), F.normalize(keys, dim=-1)
    return torch.cdist(rows, keys)


def batch_hard_triplet(
    z: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    distance: str = "euclidean",
    soft: bool = False,
    normalize: bool = True,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """Batch-hard triplet loss of ``z`` ``(B, V, D)`` or ``(N, D)`` with ``labels`` ``(B,)`` / ``(N,)``.

    With ``gather_distributed`` each rank's rows mine their hardest positive and negative among every
    rank's rows, and the mean runs over all ranks' anchors (DDP then gives one process's gradients).
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    rank, world = distributed.rank_and_world() if gather_distributed else (0, 1)
    if world > 1 and isinstance(z, torch.Tensor):
        distributed.check_same_shapes(z.shape, "z", z.device)
    rows, row_labels = _rows_and_labels(z, labels)
    keys = distributed.gather_with_grad(rows, 0, check_size=False) if world > 1 else rows
    key_labels = distributed.gather_no_grad(row_labels, 0, check_size=False) if world > 1 else row_labels
    dist = pairwise_distance(rows, keys, distance, normalize)
    labelled = row_labels >= 0
    same = row_labels.unsqueeze(1) == key_labels.unsqueeze(0)
    own = torch.arange(len(rows), device=rows.device)
    not_self = torch.ones_like(same)
    not_self[own, own + rank * len(rows)] = False
    positive, negative = same & not_self, ~same
    valid = labelled & positive.any(1) & negative.any(1)
    hardest_positive = torch.where(positive, dist, torch.full_like(dist, float("-inf"))).amax(1)
    hardest_negative = torch.where(negative, dist, torch.full_like(dist, float("inf"))).amin(1)
    gap = torch.where(valid, hardest_positive - hardest_negative, torch.zeros_like(hardest_positive))
    per_anchor = F.softplus(gap) if soft else F.relu(gap + margin)
    count = valid.sum().to(rows.dtype)
    count = distributed.all_reduce_sum(count) if world > 1 else count
    return torch.where(valid, per_anchor, torch.zeros_like(per_anchor)).sum() * world / count.clamp_min(1)


class BatchHardTripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al. 2017) on the mlcl label convention (``-1`` = unlabelled).

    Example::

        loss = BatchHardTripletLoss(margin=0.2)(z, labels)   # z: (B, V, D) or (N, D); labels: (B,) / (N,)
    """

    def __init__(self, margin: float = 0.2, distance: str = "euclidean", soft: bool = False, normalize: bool = True,
                 gather_distributed: bool = False):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if not (isinstance(margin, (int, float)) and margin >= 0 and margin != float("inf")):
            raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
        self.margin = float(margin)
        self.distance = distance
        self.soft = soft
        self.normalize = normalize
        self.gather_distributed = gather_distributed

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return batch_hard_triplet(z, labels, self.margin, self.distance, self.soft, self.normalize,
                                  self.gather_distributed)
