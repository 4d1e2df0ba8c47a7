"""The dtypes a loss computes in: matmul operands (may be low precision) and statistics (never).

bfloat16 / float16 projections, or float32 ones inside ``torch.autocast``, run the similarity and
gradient matmuls in that low precision (accumulating in float32); log-sum-exp statistics, positive
terms, the loss and the gradient stay in float32. float64 stays float64 throughout.
"""

from __future__ import annotations

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


def statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 input, else float32: the dtype of everything but the matmul operands."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def operand_dtype(z: torch.Tensor) -> torch.dtype:
    """The matmul dtype for projections ``z``: their own when low precision, autocast's when autocast
    is on for their device, else :func:`statistics_dtype`."""
    if z.dtype in LOW_PRECISION:
        return z.dtype
    if z.dtype == torch.float32 and torch.is_autocast_enabled(z.device.type):
        autocast_dtype = torch.get_autocast_dtype(z.device.type)
        if autocast_dtype in LOW_PRECISION:
            return autocast_dtype
    return statistics_dtype(z.dtype)
