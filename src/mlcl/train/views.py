"""Several random views of a batch, whatever its modality, flattened sample-major for the encoder."""

from __future__ import annotations

import torch

from mlcl.data.augment import ImageAugment, make_views
from mlcl.train.config import AugmentConfig


def feature_views(x: torch.Tensor, n_views: int, dropout: float, noise_std: float,
                  generator: torch.Generator) -> torch.Tensor:
    """``(B, F) -> (B, V, F)``: each view drops features with prob. ``dropout`` and adds Gaussian noise."""
    repeated = x.unsqueeze(1).expand(x.shape[0], n_views, x.shape[1])
    keep = torch.rand(repeated.shape, generator=generator) >= dropout
    noise = torch.randn(repeated.shape, generator=generator) * noise_std
    scale = 1.0 / (1.0 - dropout) if dropout < 1 else 0.0
    return repeated * keep.to(x.device) * scale + noise.to(x.device)


class ViewMaker:
    """Makes ``n_views`` views of a batch: image augmentation, feature dropout+noise, or repeated texts
    (a trainable text encoder's dropout makes the views differ, as in SimCSE)."""

    def __init__(self, modality: str, n_views: int, augment: AugmentConfig, generator: torch.Generator):
        self.modality = modality
        self.n_views = n_views
        self.config = augment
        self.generator = generator
        self.image_augment = ImageAugment(
            crop_padding=augment.crop_padding, hflip=augment.hflip, erase_prob=augment.erase_prob,
            noise_std=augment.noise_std,
        )

    def __call__(self, inputs: torch.Tensor | list[str]) -> torch.Tensor | list[str]:
        """The views flattened sample-major: row ``b * V + v`` is view ``v`` of sample ``b``."""
        if isinstance(inputs, list):
            return [text for text in inputs for _ in range(self.n_views)]
        if self.modality == "image":
            views = make_views(inputs, self.n_views, self.image_augment, self.generator)
        else:
            views = feature_views(inputs, self.n_views, self.config.feature_dropout, self.config.feature_noise,
                                  self.generator)
        return views.reshape(-1, *views.shape[2:])
