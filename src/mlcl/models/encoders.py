"""Encoders (input -> feature vector) and ``build_encoder``, the name -> encoder factory used by configs.

Every encoder exposes ``out_dim``, the size of the features it returns.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

from mlcl.errors import ConfigError
from mlcl.models.text import HFTextEncoder, MiniLMEncoder
from mlcl.user_input import check_positive_int, did_you_mean


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """A fast CNN for small grey images (28x28; any size works thanks to adaptive pooling).

    Three stride-2 conv-BN-ReLU blocks of ``width``, ``2 * width``, ``4 * width`` channels (28 -> 14 -> 7
    -> 4), global average pooling, then a Linear to ``out_dim``. Built for CPU: no block runs at full
    resolution (a fourth block at 14x14 doubled the step time for no gain: docs/measurements.md).
    """

    def __init__(self, in_channels: int = 1, width: int = 32, out_dim: int = 128) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("width", width), ("out_dim", out_dim)):
            check_positive_int(name, value)
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, width, stride=2),
            _conv_bn_relu(width, 2 * width, stride=2),
            _conv_bn_relu(2 * width, 4 * width, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(4 * width, out_dim)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class _BasicBlock(nn.Module):
    """The two-conv residual block of ResNet-18, with a 1x1 projection shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: a 3x3 stride-1 stem without max-pooling, four stages of two basic blocks.

    Returns the globally average-pooled features, ``out_dim = 8 * width`` (512 for the standard width).
    """

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("width", width)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        blocks: list[nn.Module] = []
        channels = width
        for stage, stride in enumerate((1, 2, 2, 2)):
            stage_width = width * 2**stage
            blocks += [_BasicBlock(channels, stage_width, stride), _BasicBlock(stage_width, stage_width, 1)]
            channels = stage_width
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x)))


class MLPEncoder(nn.Module):
    """``Linear -> BatchNorm1d -> ReLU`` per hidden size, then a Linear to ``out_dim``.

    Inputs with more than two dimensions (for instance 8x8 images) are flattened per sample.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int] = (256,), out_dim: int = 128) -> None:
        super().__init__()
        check_positive_int("in_dim", in_dim)
        check_positive_int("out_dim", out_dim)
        if isinstance(hidden, int):
            hidden = (hidden,)
        layers: list[nn.Module] = []
        prev = in_dim
        for i, size in enumerate(hidden):
            check_positive_int(f"hidden[{i}]", size)
            layers += [nn.Linear(prev, size, bias=False), nn.BatchNorm1d(size), nn.ReLU(inplace=True)]
            prev = size
        layers.append(nn.Linear(prev, out_dim))
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
    "mlp": MLPEncoder,
    "minilm": MiniLMEncoder,
    "hf": HFTextEncoder,
}


def build_encoder(name: str, **kwargs: object) -> nn.Module:
    """The encoder called ``name`` built with ``kwargs``; a :class:`ConfigError` for an unknown name or argument."""
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r}{did_you_mean(name, ENCODERS)}; choices: {', '.join(ENCODERS)}")
    factory = ENCODERS[name]
    signature = inspect.signature(factory)
    for key in kwargs:
        if key not in signature.parameters:
            raise ConfigError(
                f"encoder {name!r} has no argument {key!r}{did_you_mean(key, signature.parameters)}; "
                f"arguments: {', '.join(signature.parameters)}"
            )
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"encoder {name!r}: {exc}") from None
    return factory(**kwargs)
