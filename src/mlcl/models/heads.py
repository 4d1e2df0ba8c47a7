"""Projection heads: the MLPs between the encoder's features and the contrastive loss.

``MultiHeadProjector`` holds H heads of identical shape and runs them as one batched computation
(stacked weights, ``bmm``, and one BatchNorm over the H*hidden channels) instead of a Python loop.
It computes exactly what H independent :class:`ProjectionHead` modules compute.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from mlcl.errors import ConfigError
from mlcl.user_input import check_positive_int


def _layer_dims(in_dim: int, hidden_dim: int, out_dim: int, depth: int) -> list[int]:
    for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim), ("depth", depth)):
        check_positive_int(name, value)
    return [in_dim] + [hidden_dim] * (depth - 1) + [out_dim]


class ProjectionHead(nn.Module):
    """MLP ``Linear -> BatchNorm1d -> ReLU -> ... -> Linear`` with ``depth`` Linear layers.

    Hidden Linear layers have no bias (the BatchNorm after them has its own shift); the last one has.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128, depth: int = 2) -> None:
        super().__init__()
        dims = _layer_dims(in_dim, hidden_dim, out_dim, depth)
        layers: list[nn.Module] = []
        for i in range(depth):
            last = i == depth - 1
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=last))
            if not last:
                layers += [nn.BatchNorm1d(dims[i + 1]), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)
        self.in_dim, self.hidden_dim, self.out_dim, self.depth = in_dim, hidden_dim, out_dim, depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultiHeadProjector(nn.Module):
    """H projection heads on the same features, computed in one batch: ``(B, in_dim) -> (H, B, out_dim)``.

    Outputs are contiguous and not normalised (the loss normalises). Layer ``i`` of head ``h`` is
    ``weights[i][h]`` of shape ``(in, out)``; the BatchNorm of hidden layer ``i`` is ``norms[i]`` over
    ``H * hidden_dim`` channels, head ``h`` owning channels ``[h * hidden_dim, (h + 1) * hidden_dim)``.
    """

    def __init__(
        self,
        in_dim: int,
        n_heads: int,
        hidden_dim: int = 512,
        out_dim: int = 128,
        depth: int = 2,
        head_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("n_heads", n_heads)
        dims = _layer_dims(in_dim, hidden_dim, out_dim, depth)
        self.head_names = _check_head_names(head_names, n_heads)
        self.in_dim, self.n_heads, self.depth = in_dim, n_heads, depth
        self.hidden_dim, self.out_dim = hidden_dim, out_dim
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(n_heads, dims[i], dims[i + 1])) for i in range(depth)
        )
        self.bias = nn.Parameter(torch.empty(n_heads, 1, out_dim))
        self.norms = nn.ModuleList(nn.BatchNorm1d(n_heads * hidden_dim) for _ in range(depth - 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The same initialisation as ``nn.Linear`` (uniform in ``±1/sqrt(fan_in)``) for every head."""
        for weight in self.weights:
            bound = 1.0 / math.sqrt(weight.shape[1])
            nn.init.uniform_(weight, -bound, bound)
        bound = 1.0 / math.sqrt(self.weights[-1].shape[1])
        nn.init.uniform_(self.bias, -bound, bound)
        for norm in self.norms:
            norm.reset_parameters()

    @classmethod
    def from_heads(cls, heads: Sequence[ProjectionHead], head_names: Sequence[str] | None = None) -> MultiHeadProjector:
        """A projector computing exactly what ``heads`` compute (weights and BatchNorm state copied)."""
        if not heads:
            raise ConfigError("from_heads needs at least one ProjectionHead, got none")
        shape = (heads[0].in_dim, heads[0].hidden_dim, heads[0].out_dim, heads[0].depth)
        for i, head in enumerate(heads):
            got = (head.in_dim, head.hidden_dim, head.out_dim, head.depth)
            if got != shape:
                raise ConfigError(f"head {i} has (in, hidden, out, depth) = {got}, head 0 has {shape}")
        in_dim, hidden_dim, out_dim, depth = shape
        projector = cls(in_dim, len(heads), hidden_dim, out_dim, depth, head_names)
        linears = [[m for m in head.net if isinstance(m, nn.Linear)] for head in heads]
        norms = [[m for m in head.net if isinstance(m, nn.BatchNorm1d)] for head in heads]
        with torch.no_grad():
            for i, weight in enumerate(projector.weights):
                weight.copy_(torch.stack([layers[i].weight.T for layers in linears]))
            projector.bias.copy_(torch.stack([layers[-1].bias for layers in linears]).unsqueeze(1))
            for i, norm in enumerate(projector.norms):
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(norm, name).copy_(torch.cat([getattr(head_norms[i], name) for head_norms in norms]))
                norm.num_batches_tracked.copy_(norms[0][i].num_batches_tracked)
        return projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"MultiHeadProjector expects features (B, {self.in_dim}), got {tuple(x.shape)}")
        batch, heads = x.shape[0], self.n_heads
        if self.depth == 1:
            return torch.baddbmm(self.bias, x.expand(heads, *x.shape), self.weights[0])
        # The first layer shares its input across heads: one (B, in) @ (in, H * hidden) matmul, whose
        # (B, H * hidden) output is the channel layout of the BatchNorms.
        h = x @ self.weights[0].permute(1, 0, 2).reshape(self.in_dim, -1)
        for i in range(1, self.depth):
            h = torch.relu(self.norms[i - 1](h)).view(batch, heads, self.hidden_dim).transpose(0, 1)
            h = torch.bmm(h, self.weights[i])  # (H, B, out_i), contiguous
            if i < self.depth - 1:
                h = h.transpose(0, 1).reshape(batch, -1)
        return h + self.bias

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, n_heads={self.n_heads}, hidden_dim={self.hidden_dim}, "
            f"out_dim={self.out_dim}, depth={self.depth}, head_names={self.head_names}"
        )


def _check_head_names(head_names: Sequence[str] | None, n_heads: int) -> list[str]:
    if head_names is None:
        return [f"head{i}" for i in range(n_heads)]
    names = list(head_names)
    if len(names) != n_heads:
        raise ConfigError(f"head_names has {len(names)} names {names}, expected n_heads={n_heads}")
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"head_names must be distinct non-empty strings, got {names}")
    return names
