"""Batched tensor augmentations that make the views of contrastive learning.

Everything runs on the batch's own device as a handful of whole-batch tensor ops (no per-sample Python
loop) and draws its randomness from a ``torch.Generator``, so a seed fixes the views. The random numbers
are drawn on the generator's device and moved to the batch's device, so a CPU generator gives the same
views whether the batch is on the CPU or a GPU.

Images: :class:`ImageAugment` (random translation by pad + crop, horizontal flip, brightness / contrast
jitter, Gaussian noise, random erasing) and :func:`make_views`. Text views mask tokens inside the
text encoder (:func:`mlcl.models.text.mask_tokens`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mlcl.errors import ConfigError

Augment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=source).to(device)


def _normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source).to(device)


def _randint(
    high: torch.Tensor | int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Integers uniform in ``[0, high)`` (``high`` may be a per-sample tensor >= 1)."""
    draw = (_uniform(shape, generator, device) * high).long()
    return torch.minimum(draw, torch.as_tensor(high, device=device) - 1)


@dataclass(frozen=True)
class AugmentParams:
    """The random choices of one :class:`ImageAugment` call; ``None`` where an option is off.

    ``offsets`` ``(B, 2)``: crop origin (row, column) in the padded image, in ``[0, 2 * crop_padding]``.
    ``flip`` ``(B,)`` bool. ``brightness`` / ``contrast`` ``(B,)`` factors. ``noise`` ``(B, C, H, W)``.
    ``erase`` ``(B,)`` bool and ``boxes`` ``(B, 4)`` as (top, left, height, width).
    """

    offsets: torch.Tensor | None
    flip: torch.Tensor | None
    brightness: torch.Tensor | None
    contrast: torch.Tensor | None
    noise: torch.Tensor | None
    erase: torch.Tensor | None
    boxes: torch.Tensor | None


@dataclass(frozen=True)
class ImageAugment:
    """Random image augmentation of a batch ``(B, C, H, W)`` in [0, 1], independently per sample.

    Order: translate (zero-pad by ``crop_padding``, crop back at a random offset) and flip, brightness
    (multiply by a factor in ``[1 - b, 1 + b]``), contrast (scale around the per-sample mean by a
    factor in ``[1 - c, 1 + c]``), Gaussian noise, then random erasing (with ``erase_prob``, a
    rectangle of ``erase_scale`` of the area and aspect ratio in ``erase_ratio`` set to 0). Outputs
    stay in [0, 1]. With every option off it returns its input unchanged.
    """

    crop_padding: int = 4
    hflip: bool = True
    erase_prob: float = 0.25
    noise_std: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)

    def __post_init__(self) -> None:
        if isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise ConfigError(f"crop_padding must be an integer >= 0, got {self.crop_padding!r}")
        for name in ("erase_prob", "brightness", "contrast"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
        if not self.noise_std >= 0.0:
            raise ConfigError(f"noise_std must be >= 0, got {self.noise_std!r}")
        low, high = self.erase_scale
        if not 0.0 < low <= high <= 1.0:
            raise ConfigError(f"erase_scale must satisfy 0 < low <= high <= 1, got {self.erase_scale!r}")
        low, high = self.erase_ratio
        if not 0.0 < low <= high:
            raise ConfigError(f"erase_ratio must satisfy 0 < low <= high, got {self.erase_ratio!r}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"ImageAugment expects images (B, C, H, W), got shape {tuple(x.shape)}")
        return self.apply(x, self.sample(tuple(x.shape), generator, x.device))

    def sample(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> AugmentParams:
        """Draw the random choices for a batch of ``shape`` ``(B, C, H, W)``."""
        batch, _, height, width = shape
        device = torch.device(device)
        offsets = flip = brightness = contrast = noise = erase = boxes = None
        if self.crop_padding:
            offsets = _randint(2 * self.crop_padding + 1, (batch, 2), generator, device)
        if self.hflip:
            flip = _uniform((batch,), generator, device) < 0.5
        if self.brightness:
            brightness = 1.0 + self.brightness * (2 * _uniform((batch,), generator, device) - 1)
        if self.contrast:
            contrast = 1.0 + self.contrast * (2 * _uniform((batch,), generator, device) - 1)
        if self.noise_std:
            noise = self.noise_std * _normal(shape, generator, device)
        if self.erase_prob:
            erase = _uniform((batch,), generator, device) < self.erase_prob
            boxes = self._sample_boxes(batch, height, width, generator, device)
        return AugmentParams(offsets, flip, brightness, contrast, noise, erase, boxes)

    def _sample_boxes(
        self, batch: int, height: int, width: int, generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        draws = _uniform((batch, 2), generator, device)
        area = height * width * (self.erase_scale[0] + (self.erase_scale[1] - self.erase_scale[0]) * draws[:, 0])
        log_low, log_high = math.log(self.erase_ratio[0]), math.log(self.erase_ratio[1])
        ratio = torch.exp(log_low + (log_high - log_low) * draws[:, 1])
        box_h = torch.sqrt(area * ratio).round().long().clamp(1, height)
        box_w = torch.sqrt(area / ratio).round().long().clamp(1, width)
        top = _randint(height - box_h + 1, (batch,), generator, device)
        left = _randint(width - box_w + 1, (batch,), generator, device)
        return torch.stack([top, left, box_h, box_w], dim=1)

    def apply(self, x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Augment ``x`` with the choices in ``params`` (from :meth:`sample` for the same shape)."""
        out = _translate_flip(x, self.crop_padding, params.offsets, params.flip)
        if params.brightness is not None:
            out = (out * params.brightness.view(-1, 1, 1, 1).to(out.dtype)).clamp(0.0, 1.0)
        if params.contrast is not None:
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = ((out - mean) * params.contrast.view(-1, 1, 1, 1).to(out.dtype) + mean).clamp(0.0, 1.0)
        if params.noise is not None:
            out = (out + params.noise.to(out.dtype)).clamp(0.0, 1.0)
        if params.erase is not None and params.boxes is not None:
            out = out.masked_fill(_box_mask(params.boxes, params.erase, x.shape[2], x.shape[3]), 0.0)
        return out


def _translate_flip(
    x: torch.Tensor, padding: int, offsets: torch.Tensor | None, flip: torch.Tensor | None
) -> torch.Tensor:
    """``out[b, :, i, j] = pad(x)[b, :, oy + i, ox + (W - 1 - j if flipped else j)]`` as one gather."""
    if offsets is None and flip is None:
        return x
    batch, channels, height, width = x.shape
    padded = F.pad(x, (padding,) * 4) if padding else x
    rows = torch.arange(height, device=x.device).expand(batch, height)
    cols = torch.arange(width, device=x.device).expand(batch, width)
    if flip is not None:
        cols = torch.where(flip[:, None], width - 1 - cols, cols)
    if offsets is not None:
        rows = rows + offsets[:, :1]
        cols = cols + offsets[:, 1:]
    index = (rows[:, :, None] * padded.shape[3] + cols[:, None, :]).view(batch, 1, height * width)
    out = padded.reshape(batch, channels, -1).gather(2, index.expand(batch, channels, height * width))
    return out.view(batch, channels, height, width)


def _box_mask(boxes: torch.Tensor, active: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, 1, H, W)`` bool: inside sample b's box (top, left, height, width) where ``active[b]``."""
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    top, left, box_h, box_w = boxes.unbind(1)
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :] & active[:, None, None]).unsqueeze(1)


def make_views(
    x: torch.Tensor, n_views: int, augment: Augment, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n_views`` independent augmentations of every image: ``(B, C, H, W) -> (B, V, C, H, W)``.

    All views are made by one call of ``augment`` on the batch repeated ``n_views`` times.
    """
    if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 1:
        raise ConfigError(f"n_views must be a positive integer, got {n_views!r}")
    if x.ndim != 4:
        raise ValueError(f"make_views expects images (B, C, H, W), got shape {tuple(x.shape)}")
    batch, rest = x.shape[0], x.shape[1:]
    repeated = x.unsqueeze(1).expand(batch, n_views, *rest).reshape(batch * n_views, *rest)
    return augment(repeated, generator).view(batch, n_views, *rest)
