"""The one place where the loss talks to ``torch.distributed``: gathering across ranks.

``gather_with_grad`` concatenates a tensor from all ranks; its backward sums the incoming gradients
over ranks (every rank's loss depends on every rank's rows) and returns this rank's slice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_sizes(sizes: Sequence[int], device: torch.device | str = "cpu") -> list[tuple[int, ...]]:
    """Every rank's ``sizes`` in rank order. A collective: all ranks call it with as many sizes.

    ``device`` must suit the backend (CUDA for NCCL).
    """
    if rank_and_world()[1] == 1:
        return [tuple(int(s) for s in sizes)]
    local = torch.tensor([int(s) for s in sizes], dtype=torch.int64, device=device)
    parts = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return [tuple(int(v) for v in part.tolist()) for part in parts]


def check_batch_sizes(values: Sequence[int]) -> None:
    """The ``ValueError`` every rank raises when the ranks' batch sizes differ."""
    values = list(values)
    if len(set(values)) != 1:
        raise ValueError(
            f"gather_distributed needs the same batch size on every rank, got {values}; "
            "use drop_last=True in the DistributedSampler / DataLoader"
        )


def check_same_shapes(shape: Sequence[int], what: str, device: torch.device | str = "cpu") -> None:
    """Raise the same ``ValueError`` on every rank unless all ranks' ``shape`` (batch first) agree.

    A collective done before any rank-local check, so that unequal batches fail on every rank instead
    of leaving a rank whose own check happened to pass waiting in the next gather.
    """
    shapes = gather_sizes(shape, device)
    check_batch_sizes([s[0] for s in shapes])
    if len(set(shapes)) != 1:
        raise ValueError(f"gather_distributed needs {what} of the same shape on every rank, got {shapes}")


def gather_no_grad(tensor: torch.Tensor, dim: int = 0, *, check_size: bool = True) -> torch.Tensor:
    """All ranks' ``tensor`` concatenated along ``dim`` in rank order (no gradient).

    ``check_size=False`` skips the collective size check (the caller has checked the sizes).
    """
    rank, world = rank_and_world()
    if world == 1:
        return tensor
    if check_size:
        check_same_shapes([tensor.shape[dim]], "the gathered tensor", tensor.device)
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=dim)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, dim: int, check_size: bool) -> torch.Tensor:
        ctx.dim = dim
        ctx.size = tensor.shape[dim]
        return gather_no_grad(tensor, dim, check_size=check_size)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # A copy: autograd may hand this same tensor to other backward functions (e.g. both inputs of
        # an add), which must not see it reduced in place.
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        rank, _ = rank_and_world()
        return grad.narrow(ctx.dim, rank * ctx.size, ctx.size), None, None


def gather_with_grad(tensor: torch.Tensor, dim: int = 0, *, check_size: bool = True) -> torch.Tensor:
    """All ranks' ``tensor`` along ``dim``, differentiable: gradients flow back to the owning rank."""
    if rank_and_world()[1] == 1:
        return tensor
    return _GatherWithGrad.apply(tensor, dim, check_size)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks (a copy; no gradient)."""
    if rank_and_world()[1] == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total
