"""MulSupCon: multi-label supervised contrastive learning (Zhang & Wu, AAAI 2024).

Each of an anchor's labels acts as its own anchor. For anchor row i (a view of sample a) and a label
k of a, the positives P_k(i) are the other rows whose sample has label k (a's own other views
included); the denominator runs over every other row, as in SupCon:

    ℓ_ik = logsumexp_{j≠i}(<ẑ_i, ẑ_j>/τ)  −  (1/|P_k(i)|) Σ_{p∈P_k(i)} <ẑ_i, ẑ_p>/τ
    L    = mean of ℓ_ik over all (anchor row, label) pairs with |P_k(i)| > 0        (0 if none)

This is the official code's default (``get_output_func('MulSupCon', with_weight=False)`` in
github.com/williamzhangsjtu/MulSupCon: one score row per (anchor, label), weight 1/#rows), with every
view an anchor against the in-batch rows instead of a MoCo queue. Samples without labels are no
anchor and only ever negatives.

Because z and τ are shared by all labels, the log-sum-exp is the same for every label of an anchor,
so Σ_k ℓ_ik is one SupCon term with normalised positive weights averaged over the anchor's labels.
:class:`MultiLabelRelation` applies those weights through the label space in O(n·C·D), so the loss is
one pass of the fused kernel, not C.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlcl import distributed
from mlcl.losses._validate import check_head_values, check_views
from mlcl.losses.fused import FusedSupCon
from mlcl.losses.precision import operand_dtype, statistics_dtype


def check_multi_hot(multi_hot: torch.Tensor, batch: int) -> None:
    """``multi_hot`` must be a ``(B, C)`` matrix of 0/1 values (bool, integer or float)."""
    if not isinstance(multi_hot, torch.Tensor) or multi_hot.ndim != 2 or multi_hot.shape[0] != batch:
        shape = tuple(multi_hot.shape) if isinstance(multi_hot, torch.Tensor) else type(multi_hot).__name__
        raise ValueError(f"multi_hot must have shape (B, C) with B = {batch}, got {shape}")
    if multi_hot.numel() and not ((multi_hot == 0) | (multi_hot == 1)).all():
        raise ValueError("multi_hot must contain only 0 and 1 (a multi-hot label matrix)")


class MultiLabelRelation:
    """MulSupCon's positives, averaged over each anchor's labels, for the fused kernel (one head).

    Row i of sample a gets the key weights w_ij = (1/n_a) Σ_{k ∈ y_a ∩ y_b(j)} 1/deg_k for j ≠ i, where
    deg_k = V·count_k − 1 is the number of positives of any anchor with label k and n_a counts a's
    labels with deg_k > 0. Each label's weights sum to 1, so Σ_j w_ij = 1: ``degree`` is 1. Sums go
    through the label space, ``(b, C) @ ((C, B) @ (B, D))``, never an n × n weight matrix.

    ``multi_hot`` holds every key sample (all ranks' under ``gather_distributed``); the anchors are the
    ``n_anchor_samples`` samples from ``anchor_sample_offset`` (default: all of them).
    """

    def __init__(self, multi_hot: torch.Tensor, n_views: int, dtype: torch.dtype,
                 anchor_sample_offset: int = 0, n_anchor_samples: int | None = None):
        hot = multi_hot.to(dtype)
        positives_per_label = n_views * hot.sum(0) - 1  # deg_k
        usable = positives_per_label > 0
        inv_degree = torch.where(usable, 1 / positives_per_label.clamp_min(1), torch.zeros_like(positives_per_label))
        labels_per_sample = (hot * usable).sum(1)  # n_a
        # q_ak = y_ak / (n_a · deg_k): sample a's weight on label k's members.
        label_weights = hot * inv_degree / labels_per_sample.clamp_min(1).unsqueeze(1)
        own_weight = label_weights.sum(1)  # Σ_k q_ak y_ak: the weight of a's own other rows
        n_anchor_samples = len(hot) - anchor_sample_offset if n_anchor_samples is None else n_anchor_samples
        anchors = slice(anchor_sample_offset, anchor_sample_offset + n_anchor_samples)
        self.anchor_rows = slice(anchors.start * n_views, anchors.stop * n_views)
        self.label_weights, self.own_weight = label_weights[anchors], own_weight[anchors]
        self.labels_per_sample = labels_per_sample[anchors]
        self.total_pairs = labels_per_sample.sum() * n_views  # (anchor row, label) pairs of all samples
        self.hot = hot
        self.n_views = n_views

    def _per_sample(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.reshape(-1, self.n_views, rows.shape[-1]).sum(1)

    def _per_row(self, values: torch.Tensor) -> torch.Tensor:
        return values.repeat_interleave(self.n_views, dim=0)

    def positive_sum(self, keys: torch.Tensor) -> torch.Tensor:
        per_sample = self.label_weights @ (self.hot.t() @ self._per_sample(keys[0]))
        own = self._per_row(self.own_weight).unsqueeze(1) * keys[0, self.anchor_rows]
        return (self._per_row(per_sample) - own).unsqueeze(0)

    def positive_sum_transposed(self, anchors: torch.Tensor) -> torch.Tensor:
        per_sample = self.hot @ (self.label_weights.t() @ self._per_sample(anchors[0]))
        out = self._per_row(per_sample)
        out[self.anchor_rows] -= self._per_row(self.own_weight).unsqueeze(1) * anchors[0]
        return out.unsqueeze(0)

    def degree(self) -> torch.Tensor:
        return self.eligible().to(torch.float64)

    def eligible(self) -> torch.Tensor:
        return self._per_row(self.labels_per_sample > 0).unsqueeze(0)

    def anchor_weight(self) -> torch.Tensor:
        """``(1, m)``: n_a / #pairs per anchor row, so that Σ_i c_i Σ_k ℓ_ik / n_a is the mean over all
        (anchor row, label) pairs of every key sample."""
        pairs = self._per_row(self.labels_per_sample).unsqueeze(0)
        return pairs / self.total_pairs.clamp_min(1)


@torch.compiler.disable  # data-dependent validation and relation: a clean graph break under torch.compile
def mulsupcon(
    z: torch.Tensor, multi_hot: torch.Tensor, temperature: float, block_size: int | None = None,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """MulSupCon loss of ``z`` ``(B, V, D)`` with labels ``multi_hot`` ``(B, C)``: the mean over all
    (anchor row, label) pairs (see the module docstring). With ``gather_distributed`` the keys and
    labels are every rank's and each rank's anchors its own rows (DDP gives one process's gradients)."""
    rank, world = distributed.rank_and_world() if gather_distributed else (0, 1)
    if world > 1:
        distributed.check_same_shapes([*z.shape, *multi_hot.shape[1:]], "z (B, V, D) and multi_hot (B, C)", z.device)
    check_views(z, "MulSupConLoss")
    check_multi_hot(multi_hot, z.shape[0])
    batch, n_views, _ = z.shape
    dtype = statistics_dtype(z.dtype)
    local = F.normalize(z.to(dtype), dim=-1).reshape(1, batch * n_views, -1)
    keys = distributed.gather_with_grad(local, dim=1, check_size=False) if world > 1 else local
    hot = multi_hot.to(z.device)
    every_hot = distributed.gather_no_grad(hot, 0, check_size=False) if world > 1 else hot
    relation = MultiLabelRelation(every_hot, n_views, dtype, rank * batch, batch)
    inv_tau = torch.full((1,), 1.0 / temperature, dtype=dtype, device=z.device)
    # Scaled by W: DDP's gradient average over ranks is then the gradient of the global mean.
    weight = relation.anchor_weight() * world
    return FusedSupCon.apply(keys, inv_tau, relation, relation.anchor_rows, weight, block_size, operand_dtype(z))[0]


class MulSupConLoss(nn.Module):
    """MulSupCon (Zhang & Wu, AAAI 2024): every label of an anchor is its own SupCon anchor.

    Example::

        loss = MulSupConLoss(temperature=0.1)(z, multi_hot)   # z: (B, V, D); multi_hot: (B, C) 0/1
    """

    def __init__(self, temperature: float = 0.1, block_size: int | None = None, gather_distributed: bool = False):
        super().__init__()
        check_head_values("temperature", [temperature], 1, positive=True)
        if block_size is not None and block_size < 1:
            raise ValueError(f"block_size must be >= 1 or None, got {block_size}")
        self.temperature = float(temperature)
        self.block_size = block_size
        self.gather_distributed = gather_distributed

    def forward(self, z: torch.Tensor, multi_hot: torch.Tensor) -> torch.Tensor:
        return mulsupcon(z, multi_hot, self.temperature, self.block_size, self.gather_distributed)
