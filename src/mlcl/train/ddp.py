"""What data-parallel training adds around the model, so that W processes × b samples train like one
process with W·b samples (docs/distributed.md):

* BatchNorm over the global batch: :class:`GlobalBatchNorm` (any backend, gloo included) or, on CUDA,
  ``torch.nn.SyncBatchNorm``. Per-process statistics would make the result depend on the process
  count, and let a contrastive model tell its own process's samples from the others (SimCLR's
  "global BN").
* The same augmentation as one process: :func:`distribute_views` draws the random choices for the
  whole global batch from the shared seeded generator and keeps this rank's rows.
* Values averaged over ranks (:func:`mean_over_ranks`): logged losses, and the non-finite check, which
  every rank must agree on.
* With ``MLCL_DIST_BACKEND=gloo`` several processes can share one GPU (NCCL refuses that): BatchNorm is
  then :class:`GlobalBatchNorm`, since ``SyncBatchNorm`` needs NCCL.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable
from dataclasses import fields, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mlcl.distributed import rank_and_world
from mlcl.train.views import ViewMaker


class _GlobalBatchNormFunction(torch.autograd.Function):
    """Batch normalisation with the statistics of all ranks' rows (the math of ``torch.nn.SyncBatchNorm``).

    Forward: each rank's per-channel mean and sum of squared deviations, one all-gather, combined exactly
    (Chan et al.'s parallel variance), then torch's fused normalisation. Backward: torch's fused
    per-channel sums of ``dy`` and ``dy * x_hat``, one all-reduce of them, then two fused passes.
    The gradients follow the DDP convention of the loss gathers (``mlcl.distributed``): a rank's input
    gradient is that of every rank's loss, and weight / bias gradients are this rank's share, which DDP
    averages.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        var, mean = torch.var_mean(x, dims, correction=0)
        count = x.numel() // channels
        local = torch.cat([mean, var * count, mean.new_full((1,), float(count))]).unsqueeze(0)
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local)
        stats = torch.cat(parts)  # (W, 2C + 1) in rank order: mean, M2, count
        means, m2s, counts = stats[:, :channels], stats[:, channels : 2 * channels], stats[:, 2 * channels :]
        n = counts.sum()
        mean = (counts * means).sum(0) / n
        var = (m2s + counts * (means - mean).square()).sum(0) / n
        invstd = torch.rsqrt(var + eps)
        out = torch.batch_norm(x, weight, bias, mean, var, False, 0.0, eps, False)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.n = float(n)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        x, weight, mean, invstd = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        ones = torch.ones_like(mean) if weight is None else weight
        # sum(dy * x_hat) and sum(dy) per channel, in one fused pass.
        _, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
            grad_out, x, ones, None, None, mean, invstd, True, 0.0, [False, True, True]
        )
        totals = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(totals)
        channels = mean.numel()
        mean_dy, mean_dy_xhat = totals[:channels] / ctx.n, totals[channels:] / ctx.n
        scale = ones * invstd
        # dx = scale * (dy - mean(dy) - x_hat * mean(dy * x_hat)), the means over the global batch.
        correction = torch.batch_norm(x, scale * mean_dy_xhat, scale * mean_dy, mean, invstd.pow(-2), False,
                                      0.0, 0.0, False)
        shape = [1, channels] + [1] * (x.dim() - 2)
        grad_x = torch.addcmul(-correction, grad_out, scale.view(shape))
        grad_weight = sum_dy_xhat if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_dy if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (all ranks), on any backend.

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm1d/2d/3d``; without a process group,
    or in eval mode, it is plain BatchNorm. One all-gather per layer in the forward pass and one
    all-reduce in the backward pass (:class:`_GlobalBatchNormFunction`), as ``torch.nn.SyncBatchNorm``
    does on CUDA only. The running statistics get the same update on every rank, so they stay equal.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and rank_and_world()[1] > 1):
            return super().forward(input)
        self._check_input_dim(input)
        x = input if input.dtype in (torch.float32, torch.float64) else input.float()
        weight = self.weight.to(x.dtype) if self.affine else None
        bias = self.bias.to(x.dtype) if self.affine else None
        out, mean, var = _GlobalBatchNormFunction.apply(x, weight, bias, self.eps)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                n = input.numel() // input.shape[1] * rank_and_world()[1]
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_((var * (n / max(n - 1, 1))).to(self.running_var.dtype), momentum)
        return out.to(input.dtype)


def _convert_global(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, (GlobalBatchNorm, nn.SyncBatchNorm)
    ):
        converted = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats)
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias  # the same Parameter objects
        if module.track_running_stats:
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, _convert_global(child))
    return module


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm computing global-batch statistics (same state-dict keys):
    ``SyncBatchNorm`` on CUDA with NCCL, :class:`GlobalBatchNorm` otherwise."""
    if device.type == "cuda" and dist.is_initialized() and dist.get_backend() == "nccl":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_global(model)


def wrap_model(model: nn.Module, device: torch.device, *, find_unused_parameters: bool = False) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` (on this rank's GPU for CUDA), after :func:`sync_batchnorm`."""
    # The only buffers are BatchNorm statistics, updated identically on every rank by the global-batch
    # BatchNorm (sync_batchnorm): no need to broadcast them before every forward pass.
    # A single-head projector's stacked weights are (1, in, out): their gradient's stride on the size-1
    # axis differs from DDP's bucket view, which only costs the copy DDP makes anyway. Not worth a warning.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides", category=UserWarning)
    parameters = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in parameters else {"broadcast_buffers": False}
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
        **no_sync,
    )


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Average the gradients of parameters outside the DDP module (e.g. learnable temperatures)."""
    params = [p for p in parameters if p.requires_grad]
    if not params or rank_and_world()[1] == 1:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= rank_and_world()[1]
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def mean_over_ranks(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The mean of ``values`` over ranks (one all-reduce on ``device``; identical on every rank)."""
    world = rank_and_world()[1]
    if world == 1:
        return values
    tensor = values.to(device=device, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor / world


class _RankRows:
    """An image augmentation drawing the global batch's random choices and applying this rank's rows."""

    def __init__(self, augment: Any, rank: int, world: int):
        self.augment, self.rank, self.world = augment, rank, world

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        rows = x.shape[0]
        params = self.augment.sample((rows * self.world, *x.shape[1:]), generator, x.device)
        start = self.rank * rows
        mine = {f.name: None if getattr(params, f.name) is None else getattr(params, f.name)[start : start + rows]
                for f in fields(params)}
        return self.augment.apply(x, replace(params, **mine))


def distribute_views(views: ViewMaker, rank: int, world: int) -> Callable:
    """Views of this rank's samples equal to its rows of the views one process makes of the global batch.

    Every rank holds the same seeded generator; each draws the random choices for all W·b samples (for
    images, only the choices: a few numbers per sample) and keeps its own. Feature views draw noise of
    the global shape. Text views are copies (the encoder's dropout varies them).
    """
    if world == 1:
        return views
    if hasattr(views.image_augment, "sample") and hasattr(views.image_augment, "apply"):
        views.image_augment = _RankRows(views.image_augment, rank, world)

    def make(inputs: Any) -> Any:
        if views.modality != "features" or not isinstance(inputs, torch.Tensor):
            return views(inputs)
        batch = inputs.shape[0]
        padded = inputs.new_zeros((batch * world, *inputs.shape[1:]))
        padded[rank * batch : (rank + 1) * batch] = inputs
        out = views(padded)
        per_sample = out.shape[0] // (batch * world)
        return out[rank * batch * per_sample : (rank + 1) * batch * per_sample]

    return make
