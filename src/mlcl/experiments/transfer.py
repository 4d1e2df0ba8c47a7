"""Transfer: a frozen encoder pre-trained on a source dataset, probed on another dataset.

* Fashion-MNIST -> scikit-learn digits: the 8x8 digits are resized to 28x28 (bilinear,
  ``torch.nn.functional.interpolate``) so the Fashion-MNIST CNN applies; both are light strokes on a
  dark background in [0, 1].
* WordNet nouns -> BBC News: the articles become frozen MiniLM embeddings (the same encoder and
  on-disk cache as training) and pass through the MLP trained on WordNet.

The target's own train split fits the linear probe (and is the kNN bank), its validation split is
unused except for multi-label thresholds, and its test split is scored, with
:func:`mlcl.eval.probe.evaluate_levels`. ``raw-input`` probes the target's inputs without any
pre-training (pixels / MiniLM embeddings), as a reference.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlcl.data.registry import load_dataset
from mlcl.data.types import Dataset
from mlcl.errors import ConfigError
from mlcl.eval.probe import evaluate_levels
from mlcl.train.config import ModelConfig
from mlcl.train.data_setup import embed_text_splits
from mlcl.train.evaluation import extract

TARGETS = ("digits", "bbc-news")
IMAGE_SIZE = 28


def load_target(name: str, model: ModelConfig | None = None) -> Dataset:
    """The target dataset, its inputs ready for the source encoder: 28x28 images, or the sentence
    embeddings of the source run's frozen text encoder (``model``; default MiniLM)."""
    if name not in TARGETS:
        raise ConfigError(f"unknown transfer target {name!r}; targets: {', '.join(TARGETS)}")
    dataset = load_dataset(name)
    if name == "digits":
        for split in (dataset.train, dataset.val, dataset.test):
            if split is not None:
                split.inputs = resize_images(split.inputs)
    else:
        dataset = embed_text_splits(dataset, model, progress=False)  # the cache that training uses
    return dataset


def resize_images(images: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """``(N, C, h, w)`` -> ``(N, C, size, size)`` by bilinear interpolation, clamped to [0, 1]."""
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


def _probe(dataset: Dataset, featurize, knn_k: int) -> dict[str, Any]:
    train_x, test_x = featurize(dataset.train.inputs), featurize(dataset.test.inputs)
    val_x = featurize(dataset.val.inputs) if dataset.val is not None else None
    return evaluate_levels(
        train_x, dataset.train.targets, test_x, dataset.test.targets, dataset.levels,
        val_feats=val_x, val_targets=dataset.val.targets if dataset.val is not None else None, knn_k=knn_k,
    )


def evaluate_target(model: nn.Module, target: str, device: torch.device, knn_k: int = 20,
                    model_config: ModelConfig | None = None) -> dict[str, Any]:
    """Probe ``model``'s frozen encoder features on ``target`` (per level: linear and kNN top-1);
    ``model_config`` is the source run's (its frozen text encoder embeds a text target)."""
    dataset = load_target(target, model_config)
    return _probe(dataset, lambda inputs: extract(model, inputs, device), knn_k)


def evaluate_raw_target(target: str, knn_k: int = 20) -> tuple[dict[str, Any], int]:
    """The reference without pre-training: probes on the target's raw inputs; returns (metrics, n_train).

    Digits: the original 8x8 pixels (64 features); BBC News: the MiniLM sentence embeddings.
    """
    if target == "digits":
        dataset = load_dataset("digits")
    else:
        dataset = load_target(target)
    return _probe(dataset, lambda inputs: inputs.flatten(1).float(), knn_k), len(dataset.train)
