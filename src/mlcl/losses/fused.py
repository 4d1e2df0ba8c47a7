"""The fused, row-blocked multi-head SupCon kernel.

For every head h and anchor row i (a view of a sample), with key rows j != i:

    ℓ_i = logsumexp_j(β_h <ẑ_i, ẑ_j>)  −  β_h <ẑ_i, Σ_j w_ij ẑ_j> / Σ_j w_ij          (β_h = 1 / τ_h)

which is docs/loss.md's ``− Σ_j w_ij logp_ij / Σ_j w_ij``. Two facts make it fast:

* the positive term is linear in ẑ, so ``Σ_j w_ij ẑ_j`` comes from group or sample sums (a relation
  operator, below) in O(H·n·D) or O(H·B²·D) work, never from an (H, n, n) weight matrix;
* each head's loss is a scalar, so its gradient is computed block by block *during the forward pass*
  and only scaled in ``backward``. The similarity block is built once, the softmax is done in place,
  and the whole thing costs the three matmuls of the bare ``bmm(z, zᵀ)`` forward + backward.

Anchor rows are processed in blocks, so peak memory is O(H · n · block). Anchors may be a contiguous
slice of the key rows (distributed training: a rank's own rows among all gathered rows).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

# Similarities in one (H, block, n) block on the CPU: 2**24 float32 = 64 MiB, a cache-friendly size.
CPU_BLOCK_ELEMENTS = 1 << 24
# On CUDA a block takes this share of the free device memory, and at most this many bytes.
CUDA_BLOCK_MEMORY_FRACTION = 0.25
CUDA_MAX_BLOCK_BYTES = 8 << 30
# Largest β = 1/τ for which exp(-2β) stays a normal number of the matmul's dtype (float32 and bfloat16:
# exp(-80) ≈ 1.8e-35; float16: exp(-8) ≈ 3.4e-4, so float16 mostly takes the row-max path).
# float16 sums are kept below this (its largest number is 65504).
FLOAT16_SUM_LIMIT = 32768
_MAX_FIXED_SHIFT = {torch.float64: 300.0, torch.float32: 40.0, torch.bfloat16: 40.0, torch.float16: 4.0}


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


def free_device_memory(device: torch.device) -> int:
    """Bytes a new allocation on CUDA ``device`` can take: the driver's free memory plus what PyTorch's
    caching allocator holds unused."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def block_rows(
    num_heads: int, num_keys: int, num_anchors: int, block_size: int | None, device: torch.device, dtype: torch.dtype
) -> int:
    """Anchor rows per block: ``block_size`` when given, else the device's block policy.

    On the CPU a block holds :data:`CPU_BLOCK_ELEMENTS` similarities, so that it stays in cache. On CUDA
    a block takes a share of the free memory (:data:`CUDA_BLOCK_MEMORY_FRACTION`, at most
    :data:`CUDA_MAX_BLOCK_BYTES`): a few large matmuls run at the GPU's full rate, and a batch too large
    for one block still fits.
    """
    if block_size is None:
        if device.type == "cuda":
            budget = min(CUDA_MAX_BLOCK_BYTES, int(CUDA_BLOCK_MEMORY_FRACTION * free_device_memory(device)))
            elements = budget // torch.empty((), dtype=dtype).element_size()
        else:
            elements = CPU_BLOCK_ELEMENTS
        block_size = elements // max(1, num_heads * num_keys)
    return max(1, min(num_anchors, block_size))


def _headroom(dtype: torch.dtype, terms: int) -> float:
    """A power of two that keeps a sum of ``terms`` values of size <= 1.5 below :data:`FLOAT16_SUM_LIMIT`."""
    if dtype != torch.float16:
        return 1.0
    return float(2 ** max(0, math.ceil(math.log2(1.5 * terms / FLOAT16_SUM_LIMIT))))


def uses_fixed_shift(max_inv_tau: float, operand_dtype: torch.dtype) -> bool:
    """Whether the constant shift β (instead of a row max) keeps every exp(logit − shift) representable."""
    return max_inv_tau <= _MAX_FIXED_SHIFT[operand_dtype]


def _scaled_bmm(lhs: torch.Tensor, rhs: torch.Tensor, scales: list[float], out: torch.Tensor) -> torch.Tensor:
    """``out[h] = scales[h] · lhs[h] @ rhs[h]``, scaled in the matmul's float32 accumulator (before any
    rounding to a low-precision output)."""
    for h, scale in enumerate(scales):
        torch.addmm(out[h], lhs[h], rhs[h], beta=0, alpha=scale, out=out[h])
    return out


def supcon_forward_and_grad(
    keys: torch.Tensor,
    inv_tau: torch.Tensor,
    relation: RelationOperator,
    anchor_rows: slice,
    anchor_weight: torch.Tensor,
    need_grad: bool,
    block_size: int | None = None,
    operand_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-head weighted loss Σ_i c_i ℓ_i and, if ``need_grad``, its gradient w.r.t. ``keys`` and ``inv_tau``.

    ``keys`` are the L2-normalised rows ``(H, N, D)`` in the statistics dtype (float32 or float64);
    anchors are ``keys[:, anchor_rows]``; ``anchor_weight`` ``(H, m)`` is c_i (0 for anchors that do
    not count). The three ``(H, m, N)`` matmuls run in ``operand_dtype`` (default: the keys' dtype;
    bfloat16 or float16 for the low-precision path, which accumulates in float32); log-sum-exp
    statistics, positive terms and the gradient stay in the keys' dtype. Reading ``inv_tau`` costs one
    host sync per call.
    """
    num_heads, num_keys, _ = keys.shape
    if num_keys < 2:  # a lone row has no other row to contrast with: no anchor counts
        zero = keys.new_zeros(num_heads)
        if not need_grad:
            return zero, None, None
        return zero, torch.zeros_like(keys), zero.clone()
    stat = keys.dtype
    op = stat if operand_dtype is None else operand_dtype
    keys_op = keys.to(op)
    if op != stat:  # the loss of the rows as the matmuls see them: positives and log-sum-exp agree
        keys = keys_op.to(stat)
    anchors, anchors_op = keys[:, anchor_rows], keys_op[:, anchor_rows]
    num_anchors = anchors.shape[1]
    betas = inv_tau.tolist()  # the matmuls' scale factors (host floats)
    beta = inv_tau.to(stat).view(num_heads, 1, 1)
    weight = anchor_weight.to(stat)
    block = block_rows(num_heads, num_keys, num_anchors, block_size, keys.device, op)
    lse = keys.new_empty(num_heads, num_anchors)
    expected = keys.new_empty(anchors.shape) if need_grad else None  # Σ_j P_ij ẑ_j per anchor
    grad = torch.zeros_like(keys) if need_grad else None

    # Rows are unit vectors, so every logit is at most β. When exp(-2β) cannot underflow, the constant
    # shift β replaces the row max of a usual logsumexp. The shift rides along in the matmul as one
    # extra coordinate (anchor: -1, key: 1) and β scales the float32 accumulator, so the largest logits
    # leave the matmul as small, exact numbers, in low precision too.
    fixed_shift = uses_fixed_shift(max(betas), op)
    keys_t = torch.cat([keys_op, keys_op.new_ones(num_heads, num_keys, 1)], dim=2).transpose(1, 2)
    # float16 sums of many softmax terms could overflow: the operands are scaled down by powers of two.
    key_headroom, anchor_headroom = _headroom(op, num_keys), _headroom(op, block)
    keys_for_expected = keys_op if key_headroom == 1 else keys_op / key_headroom
    # Anchor weights, relative to each head's largest (c_i can be ~1/n, below float16's range).
    weight_scale = weight.amax(dim=1, keepdim=True).clamp_min(torch.finfo(stat).tiny)
    relative_weight = (weight / weight_scale).unsqueeze(-1) / anchor_headroom

    for start in range(0, num_anchors, block):
        stop = min(start + block, num_anchors)
        block_anchors = anchors_op[:, start:stop]
        sims = keys_op.new_empty(num_heads, stop - start, num_keys)
        self_entries = sims.diagonal(anchor_rows.start + start, dim1=1, dim2=2)  # anchor i against itself
        if fixed_shift and op == stat:  # float32 / float64: β-scaled anchors lose nothing, one batched matmul
            lhs = torch.cat([block_anchors * beta, (-beta).expand(-1, stop - start, 1)], dim=2)
            torch.bmm(lhs, keys_t, out=sims)  # logits − β
            self_entries.fill_(float("-inf"))
            shift = beta
        elif fixed_shift:
            lhs = torch.cat([block_anchors, block_anchors.new_ones(num_heads, stop - start, 1).neg_()], dim=2)
            _scaled_bmm(lhs, keys_t, betas, sims)  # logits − β, β applied in the float32 accumulator
            self_entries.fill_(float("-inf"))
            shift = beta
        elif op == stat:
            torch.bmm(block_anchors * beta, keys_t[:, :-1], out=sims)
            self_entries.fill_(float("-inf"))
            shift = sims.amax(dim=-1, keepdim=True)
            sims.sub_(shift)
        else:  # low precision: a first pass finds each row's max similarity, which then rides in the matmul
            torch.bmm(block_anchors, keys_t[:, :-1], out=sims)
            self_entries.fill_(float("-inf"))
            row_max = sims.amax(dim=-1, keepdim=True)
            _scaled_bmm(torch.cat([block_anchors, -row_max], dim=2), keys_t, betas, sims)  # logits − β·max
            self_entries.fill_(float("-inf"))
            shift = beta * row_max.to(stat)
        exps = sims.exp_()
        norm = exps.sum(dim=-1, keepdim=True, dtype=stat)
        lse[:, start:stop] = (shift + norm.log()).squeeze(-1)
        if need_grad:  # softmax P = exps / norm, with 1 / norm folded into the small operands
            expected[:, start:stop] = torch.bmm(exps, keys_for_expected).to(stat).mul_(key_headroom).div_(norm)
            rhs = (anchors[:, start:stop] * (relative_weight[:, start:stop] / norm)).to(op)
            if op == stat:
                grad.baddbmm_(exps.transpose(1, 2), rhs)
            else:
                grad.add_(torch.bmm(exps.transpose(1, 2), rhs))
    if need_grad:
        grad.mul_(beta * weight_scale.unsqueeze(-1) * anchor_headroom)

    degree = relation.degree().to(stat).clamp_min(1e-12).unsqueeze(-1)
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
    """Autograd wrapper: the gradient is computed in ``forward`` and scaled by the upstream gradient.

    Autocast is off inside: the kernel chooses each operation's dtype itself (``operand_dtype``).
    """

    @staticmethod
    def forward(ctx, keys, inv_tau, relation, anchor_rows, anchor_weight, block_size, operand_dtype=None):
        need_grad = any(ctx.needs_input_grad[:2])
        with torch.autocast(keys.device.type, enabled=False):
            head_loss, grad_keys, grad_inv_tau = supcon_forward_and_grad(
                keys, inv_tau, relation, anchor_rows, anchor_weight, need_grad, block_size, operand_dtype
            )
        if need_grad:
            ctx.save_for_backward(grad_keys, grad_inv_tau)
        return head_loss

    @staticmethod
    def backward(ctx, grad_head_loss):
        grad_keys, grad_inv_tau = ctx.saved_tensors
        grad_keys = grad_keys * grad_head_loss.view(-1, 1, 1).to(grad_keys.dtype)
        grad_inv_tau = grad_inv_tau * grad_head_loss.to(grad_inv_tau.dtype)
        return grad_keys, grad_inv_tau, None, None, None, None, None
