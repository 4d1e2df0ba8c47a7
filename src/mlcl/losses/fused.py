"""The fused, row-blocked multi-head SupCon kernel.

For every head h and anchor row i (a view of a sample), with key rows j != i:

    ℓ_i = logsumexp_j(β_h <ẑ_i, ẑ_j>)  −  β_h <ẑ_i, Σ_j w_ij ẑ_j> / Σ_j w_ij          (β_h = 1 / τ_h)

which is DESIGN.md's ``− Σ_j w_ij logp_ij / Σ_j w_ij``. Two facts make it fast:

* the positive term is linear in ẑ, so ``Σ_j w_ij ẑ_j`` comes from group or sample sums (a relation
  operator, below) in O(H·n·D) or O(H·B²·D) work, never from an (H, n, n) weight matrix;
* each head's loss is a scalar, so its gradient is computed block by block *during the forward pass*
  and only scaled in ``backward``. The similarity block is built once, the softmax is done in place,
  and the whole thing costs the three matmuls of the bare ``bmm(z, zᵀ)`` forward + backward.

Anchor rows are processed in blocks, so peak memory is O(H · n · block). Anchors may be a contiguous
slice of the key rows (distributed training: a rank's own rows among all gathered rows).
"""

from __future__ import annotations

from typing import Protocol

import torch

# Elements of one (H, block, n) similarity block: 2**24 float32 = 64 MiB.
DEFAULT_BLOCK_ELEMENTS = 1 << 24
# Largest β = 1/τ for which exp(-2β) stays a normal number (float32: exp(-80) ≈ 1.8e-35).
_MAX_FIXED_SHIFT = {torch.float32: 40.0, torch.float64: 300.0}


class RelationOperator(Protocol):
    """The positive weights w_ij between anchor rows and key rows, applied without materialising them."""

    def positive_sum(self, keys: torch.Tensor) -> torch.Tensor:
        """``(H, N, D)`` key rows -> ``(H, m, D)``: Σ_j w_ij x_j for each anchor i."""

    def positive_sum_transposed(self, anchors: torch.Tensor) -> torch.Tensor:
        """``(H, m, D)`` anchor rows -> ``(H, N, D)``: Σ_i w_ij u_i for each key j."""

    def degree(self) -> torch.Tensor:
        """``(H, m)``: Σ_j w_ij for each anchor."""

    def eligible(self) -> torch.Tensor:
        """``(H, m)`` bool: anchors the relation allows (a labelled sample)."""


class LabelRelation:
    """Positives share a class label per head; ``-1`` is no anchor and nobody's label-positive.

    Rows are sample-major (row = sample · V + view). Each row gets a group id: its label, or a group of
    its own sample when unlabelled, so that w_ij = [group_i == group_j] for j != i covers both the
    same-label positives and the always-positive other views.
    """

    def __init__(self, labels: torch.Tensor, n_views: int, anchor_sample_offset: int, n_anchor_samples: int):
        per_head = labels.t().long()  # (H, B_keys)
        num_heads, num_samples = per_head.shape
        device = labels.device
        own_group = per_head.max().clamp_min(0) + 1 + torch.arange(num_samples, device=device)
        groups = torch.where(per_head >= 0, per_head, own_group)
        groups = groups + torch.arange(num_heads, device=device).unsqueeze(1) * (groups.max() + 1)
        unique, compact = torch.unique(groups, return_inverse=True)
        self.num_groups = unique.numel()
        self.key_groups = compact.repeat_interleave(n_views, dim=1)  # (H, N)
        first, last = anchor_sample_offset * n_views, (anchor_sample_offset + n_anchor_samples) * n_views
        self.anchor_rows = slice(first, last)
        self.anchor_groups = self.key_groups[:, self.anchor_rows]  # (H, m)
        labelled = per_head[:, anchor_sample_offset : anchor_sample_offset + n_anchor_samples] >= 0
        self.labelled = labelled.repeat_interleave(n_views, dim=1)
        # Group membership as sparse (groups x rows) matrices: a sparse matmul sums rows per group far
        # faster than index_add_ when many rows share few groups.
        self._key_membership = self._membership(self.key_groups)
        self._anchor_membership = self._membership(self.anchor_groups)

    def _membership(self, groups: torch.Tensor) -> torch.Tensor:
        flat = groups.reshape(-1)
        rows = torch.arange(flat.numel(), device=flat.device)
        ones = torch.ones(flat.numel(), device=flat.device)
        indices = torch.stack([flat, rows])
        shape = (self.num_groups, flat.numel())
        return torch.sparse_coo_tensor(indices, ones, shape, check_invariants=False).coalesce()

    def _group_sums(self, rows: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(membership.to(rows.dtype), rows.reshape(-1, rows.shape[-1]))

    def _per_row(self, sums: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        return sums.index_select(0, groups.reshape(-1)).view(*groups.shape, sums.shape[-1])

    def positive_sum(self, keys: torch.Tensor) -> torch.Tensor:
        sums = self._group_sums(keys, self._key_membership)
        return self._per_row(sums, self.anchor_groups) - keys[:, self.anchor_rows]

    def positive_sum_transposed(self, anchors: torch.Tensor) -> torch.Tensor:
        out = self._per_row(self._group_sums(anchors, self._anchor_membership), self.key_groups)
        out[:, self.anchor_rows] -= anchors
        return out

    def degree(self) -> torch.Tensor:
        counts = torch.bincount(self.key_groups.reshape(-1), minlength=self.num_groups)
        return (counts[self.anchor_groups] - 1).to(torch.float64)

    def eligible(self) -> torch.Tensor:
        return self.labelled


class DenseRelation:
    """Explicit positive weights ``(H, b, B_keys)`` between anchor samples and key samples.

    Anchor sample a is key sample ``anchor_sample_offset + a``; its own entry is ignored (own views are
    always positive with weight 1).
    """

    def __init__(self, weights: torch.Tensor, n_views: int, anchor_sample_offset: int):
        num_anchor_samples = weights.shape[1]
        own = torch.arange(num_anchor_samples, device=weights.device)
        self.weights = weights.clone()
        self.weights[:, own, own + anchor_sample_offset] = 0
        self.n_views = n_views
        self.anchor_samples = slice(anchor_sample_offset, anchor_sample_offset + num_anchor_samples)
        self.anchor_rows = slice(anchor_sample_offset * n_views, (anchor_sample_offset + num_anchor_samples) * n_views)

    def _per_sample(self, rows: torch.Tensor) -> torch.Tensor:
        heads, n, dims = rows.shape
        return rows.reshape(heads, n // self.n_views, self.n_views, dims).sum(2)

    def positive_sum(self, keys: torch.Tensor) -> torch.Tensor:
        sample_sums = self._per_sample(keys)
        own = sample_sums[:, self.anchor_samples]
        per_sample = torch.bmm(self.weights.to(keys.dtype), sample_sums) + own
        return per_sample.repeat_interleave(self.n_views, dim=1) - keys[:, self.anchor_rows]

    def positive_sum_transposed(self, anchors: torch.Tensor) -> torch.Tensor:
        sample_sums = self._per_sample(anchors)
        out = torch.bmm(self.weights.to(anchors.dtype).transpose(1, 2), sample_sums)
        out = out.repeat_interleave(self.n_views, dim=1)
        out[:, self.anchor_rows] += sample_sums.repeat_interleave(self.n_views, dim=1) - anchors
        return out

    def degree(self) -> torch.Tensor:
        per_sample = self.weights.to(torch.float64).sum(-1) * self.n_views + (self.n_views - 1)
        return per_sample.repeat_interleave(self.n_views, dim=1)

    def eligible(self) -> torch.Tensor:
        return torch.ones(self.degree().shape, dtype=torch.bool, device=self.weights.device)


def _block_rows(num_heads: int, num_keys: int, num_anchors: int, block_size: int | None) -> int:
    if block_size is None:
        block_size = max(1, DEFAULT_BLOCK_ELEMENTS // max(1, num_heads * num_keys))
    return max(1, min(num_anchors, block_size))


def supcon_forward_and_grad(
    keys: torch.Tensor,
    inv_tau: torch.Tensor,
    relation: RelationOperator,
    anchor_rows: slice,
    anchor_weight: torch.Tensor,
    need_grad: bool,
    block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-head weighted loss Σ_i c_i ℓ_i and, if ``need_grad``, its gradient w.r.t. ``keys`` and ``inv_tau``.

    ``keys`` are the L2-normalised rows ``(H, N, D)``; anchors are ``keys[:, anchor_rows]``;
    ``anchor_weight`` ``(H, m)`` is c_i (0 for anchors that do not count, else 1 / #anchors).
    """
    num_heads, num_keys, _ = keys.shape
    if num_keys < 2:  # a lone row has no other row to contrast with: no anchor counts
        zero = keys.new_zeros(num_heads)
        if not need_grad:
            return zero, None, None
        return zero, torch.zeros_like(keys), zero.clone()
    anchors = keys[:, anchor_rows]
    num_anchors = anchors.shape[1]
    beta = inv_tau.to(keys.dtype).view(num_heads, 1, 1)
    weight = anchor_weight.to(keys.dtype)
    lse = keys.new_empty(num_heads, num_anchors)
    expected = keys.new_empty(anchors.shape) if need_grad else None  # Σ_j P_ij ẑ_j per anchor
    grad = torch.zeros_like(keys) if need_grad else None
    block = _block_rows(num_heads, num_keys, num_anchors, block_size)
    # Rows are unit vectors, so every logit is at most β. When exp(-2β) cannot underflow, the constant
    # shift β replaces the row-max pass of a usual logsumexp; it rides along in the matmul as one extra
    # coordinate (anchor: -β, key: 1), which costs far less than a pass over the (H, blk, N) block.
    fixed_shift = bool(inv_tau.max() <= _MAX_FIXED_SHIFT[keys.dtype])
    scaled_anchors = anchors * beta
    if fixed_shift:
        keys_t = torch.cat([keys, keys.new_ones(num_heads, num_keys, 1)], dim=2).transpose(1, 2)
        lhs = torch.cat([scaled_anchors, (-beta).expand(num_heads, num_anchors, 1)], dim=2)
    else:
        keys_t, lhs = keys.transpose(1, 2), scaled_anchors
    for start in range(0, num_anchors, block):
        stop = min(start + block, num_anchors)
        sims = torch.bmm(lhs[:, start:stop], keys_t)  # (H, blk, N) logits (− β with the fixed shift)
        local = torch.arange(stop - start, device=keys.device)
        sims[:, local, local + anchor_rows.start + start] = float("-inf")
        if fixed_shift:
            shift = beta
        else:
            shift = sims.amax(dim=-1, keepdim=True)
            sims.sub_(shift)
        exps = sims.exp_()
        norm = exps.sum(dim=-1, keepdim=True)
        lse[:, start:stop] = (shift + norm.log()).squeeze(-1)
        if need_grad:  # softmax P = exps / norm, with 1 / norm folded into the small operands
            expected[:, start:stop] = torch.bmm(exps, keys).div_(norm)
            coef = weight[:, start:stop].unsqueeze(-1) / norm
            grad.baddbmm_(exps.transpose(1, 2), scaled_anchors[:, start:stop] * coef)

    degree = relation.degree().to(keys.dtype).clamp_min(1e-12).unsqueeze(-1)
    positives = relation.positive_sum(keys).div_(degree)  # (H, m, D): Σ_j w_ij ẑ_j / Σ_j w_ij
    positive_sim = torch.linalg.vecdot(anchors, positives)
    per_anchor = lse - beta.view(num_heads, 1) * positive_sim
    head_loss = torch.where(weight > 0, weight * per_anchor, torch.zeros_like(per_anchor)).sum(1)
    if not need_grad:
        return head_loss, None, None
    coef = beta * weight.unsqueeze(-1)
    grad[:, anchor_rows] += coef * (expected - positives)
    grad -= relation.positive_sum_transposed(anchors * (coef / degree))
    grad_inv_tau = (weight * (torch.linalg.vecdot(anchors, expected) - positive_sim)).sum(1)
    return head_loss, grad, grad_inv_tau


class FusedSupCon(torch.autograd.Function):
    """Autograd wrapper: the gradient is computed in ``forward`` and scaled by the upstream gradient."""

    @staticmethod
    def forward(ctx, keys, inv_tau, relation, anchor_rows, anchor_weight, block_size):  # noqa: D102
        need_grad = any(ctx.needs_input_grad[:2])
        head_loss, grad_keys, grad_inv_tau = supcon_forward_and_grad(
            keys, inv_tau, relation, anchor_rows, anchor_weight, need_grad, block_size
        )
        if need_grad:
            ctx.save_for_backward(grad_keys, grad_inv_tau)
        return head_loss

    @staticmethod
    def backward(ctx, grad_head_loss):  # noqa: D102
        grad_keys, grad_inv_tau = ctx.saved_tensors
        grad_keys = grad_keys * grad_head_loss.view(-1, 1, 1).to(grad_keys.dtype)
        grad_inv_tau = grad_inv_tau * grad_head_loss.to(grad_inv_tau.dtype)
        return grad_keys, grad_inv_tau, None, None, None, None
