"""The one place where the loss talks to ``torch.distributed``: gathering across ranks.

``gather_with_grad`` concatenates a tensor from all ranks; its backward sums the incoming gradients
over ranks (every rank's loss depends on every rank's rows) and returns this rank's slice.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _check_same_size(tensor: torch.Tensor, dim: int) -> None:
    size = torch.tensor([tensor.shape[dim]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    values = [int(s.item()) for s in sizes]
    if len(set(values)) != 1:
        raise ValueError(
            f"gather_distributed needs the same batch size on every rank, got {values}; "
            "use drop_last=True in the DistributedSampler / DataLoader"
        )


def gather_no_grad(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """All ranks' ``tensor`` concatenated along ``dim`` in rank order (no gradient)."""
    rank, world = rank_and_world()
    if world == 1:
        return tensor
    _check_same_size(tensor, dim)
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=dim)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, dim: int) -> torch.Tensor:  # noqa: D102
        ctx.dim = dim
        ctx.size = tensor.shape[dim]
        return gather_no_grad(tensor, dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        rank, _ = rank_and_world()
        return grad.narrow(ctx.dim, rank * ctx.size, ctx.size), None


def gather_with_grad(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """All ranks' ``tensor`` along ``dim``, differentiable: gradients flow back to the owning rank."""
    if rank_and_world()[1] == 1:
        return tensor
    return _GatherWithGrad.apply(tensor, dim)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks (a copy; no gradient)."""
    if rank_and_world()[1] == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total
