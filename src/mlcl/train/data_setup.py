"""From a data config to the splits a run trains and evaluates on.

Loads a built-in dataset or a user's file / folder, splits user data into train / val / test, applies
the training-split protocols (label fraction or k-shot, labels hidden per level, label noise), and turns
text into cached sentence embeddings when the text encoder is frozen.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mlcl.data.image_folder import load_image_folder
from mlcl.data.protocols import add_label_noise, k_shot, keep_level_labels, label_fraction
from mlcl.data.registry import load_dataset
from mlcl.data.shift import hold_out_classes
from mlcl.data.splits import fraction_split
from mlcl.data.tabular import load_table
from mlcl.data.types import Dataset, LabelLevel
from mlcl.distributed import rank_and_world
from mlcl.errors import ConfigError, DataError
from mlcl.hierarchy import Hierarchy
from mlcl.models.encoders import build_encoder
from mlcl.models.text import CachedTextEmbeddings
from mlcl.train.config import TEXT_ENCODERS, Config, DataConfig, ModelConfig
from mlcl.train.runtime import barrier
from mlcl.user_input import check_options, did_you_mean

# The share of a user's rows held out for testing and validation (options of table and image-folder).
USER_SPLIT_OPTIONS = {"test_fraction": 0.2, "val_fraction": 0.1}


def _user_dataset(config: DataConfig, seed: int) -> Dataset:
    loader = load_table if config.name == "table" else load_image_folder
    options = check_options(loader, config.options, f"data.name={config.name} (data.options)", skip=("path", "root"),
                            extra=dict.fromkeys(USER_SPLIT_OPTIONS, float))
    fractions = [options.pop(key, default) for key, default in USER_SPLIT_OPTIONS.items()]
    split, levels, hierarchy = loader(config.path, **options)
    finest = levels[-1]
    # Stratified by the finest single-label level; multi-label rows are split at random.
    strata = torch.zeros(len(split), dtype=torch.long) if finest.multi_label else split.targets[finest.name]
    train, val, test = fraction_split(strata, *fractions, seed, Path(config.path).name)
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"{config.path} has only {len(split)} rows: too few to split into train and test")
    modality = "text" if isinstance(split.inputs, list) else ("image" if split.inputs.ndim == 4 else "features")
    return Dataset(
        name=Path(config.path).name,
        modality=modality,
        levels=levels,
        train=split.subset(train),
        test=split.subset(test),
        val=split.subset(val) if len(val) else None,
        hierarchy=hierarchy,
    )


def _apply_protocols(dataset: Dataset, config: DataConfig, seed: int) -> Dataset:
    if config.unseen_per_parent:  # first: the other protocols then act on the seen classes
        dataset = hold_out_classes(dataset, config.unseen_per_parent, seed)
    finest = dataset.levels[-1]
    train = dataset.train
    if config.k_shot is not None or config.fraction < 1.0:
        if finest.multi_label:
            raise DataError(
                f"data.fraction / data.k_shot stratify by the finest single-label level, but {finest.name!r} "
                "is multi-label; use the full training set"
            )
        if config.k_shot is not None:
            train = k_shot(train, finest.name, config.k_shot, seed, class_names=finest.classes)
        else:
            train = label_fraction(train, finest.name, config.fraction, seed)
    if config.level_fractions:  # after the row protocols, before noise: noise flips only the labels kept
        names = dataset.level_names
        for name in config.level_fractions:
            if name not in names:
                raise ConfigError(f"data.level_fractions names {name!r}, which is not a level of {dataset.name}"
                                  f"{did_you_mean(name, names)}; levels: {', '.join(names)}")
        try:
            train = keep_level_labels(train, dataset.levels, config.level_fractions, seed)
        except DataError as err:
            raise ConfigError(f"data.level_fractions: {err}") from None
    if config.noise.rate > 0:
        if finest.multi_label:
            raise DataError("data.noise applies to single-label data only")
        source: Hierarchy | list[LabelLevel] = dataset.hierarchy if dataset.hierarchy is not None else dataset.levels
        if config.noise.mode == "hierarchical" and dataset.hierarchy is None:
            raise DataError(f"data.noise.mode=hierarchical needs a hierarchy, and {dataset.name} has none")
        train, _ = add_label_noise(train, source, config.noise.rate, config.noise.mode, seed, level=finest.name)
    dataset.train = train
    return dataset


def uses_frozen_text_encoder(config: Config) -> bool:
    """Whether texts are turned into cached frozen-encoder embeddings before training."""
    return config.model.encoder in TEXT_ENCODERS and not config.model.encoder_options.get("trainable", False)


# encoder_options of a frozen text run that belong to the sentence encoder; the others are the MLP's.
FROZEN_TEXT_OPTIONS = ("model_name_or_path", "max_length", "pooling")


def frozen_text_options(model: ModelConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """A frozen text run's ``model.encoder_options`` split into (sentence encoder's, trained MLP's)."""
    options = {k: v for k, v in model.encoder_options.items() if k != "trainable"}
    if "mask_rate" in options:
        raise ConfigError(
            "model.encoder_options.mask_rate masks tokens of a trainable text encoder, but this one is frozen (its "
            "sentence embeddings are computed once): set model.encoder_options.trainable=true or drop mask_rate"
        )
    mlp_options = ("hidden", "out_dim")  # MLPEncoder's, besides in_dim (the embedding size)
    for key in options:
        if key not in FROZEN_TEXT_OPTIONS + mlp_options:
            raise ConfigError(
                f"model.encoder_options.{key} is not an option of a frozen text encoder"
                f"{did_you_mean(key, FROZEN_TEXT_OPTIONS + mlp_options)}: it takes {', '.join(FROZEN_TEXT_OPTIONS)} "
                f"(the sentence encoder), {', '.join(mlp_options)} (the MLP trained on its embeddings) and trainable"
            )
    text = {key: options.pop(key) for key in FROZEN_TEXT_OPTIONS if key in options}
    return text, options


def frozen_text_embedder(model: ModelConfig | None = None, progress: bool = True):
    """The run's frozen sentence encoder (MiniLM by default, or ``model.encoder=hf``) behind a cache:
    each distinct text list is embedded once and kept on disk (``$MLCL_CACHE_DIR``, default
    ``~/.cache/mlcl/embeddings``)."""
    encoder = None  # MiniLM with its defaults: loaded only when a text list is not in the cache
    if model is not None:
        text_options = frozen_text_options(model)[0]
        if model.encoder == "hf" and "model_name_or_path" not in text_options:
            raise ConfigError("model.encoder=hf needs model.encoder_options.model_name_or_path (a local Hugging "
                              "Face model folder or a hub name)")
        if model.encoder == "hf" or text_options:
            encoder = build_encoder(model.encoder, trainable=False, **text_options)
    cache = os.environ.get("MLCL_CACHE_DIR", str(Path.home() / ".cache" / "mlcl" / "embeddings"))
    return CachedTextEmbeddings(encoder, cache_dir=cache, progress=progress)


def embed_text_splits(dataset: Dataset, model: ModelConfig | None = None, progress: bool = True) -> Dataset:
    """Replace every split's texts by the frozen encoder's sentence embeddings.

    In a distributed run rank 0 embeds first and fills the disk cache, which the other ranks of this
    machine then read instead of running the encoder at the same time.
    """
    rank = rank_and_world()[0]
    embed = frozen_text_embedder(model, progress and rank == 0)  # a config error stops every rank here
    if rank != 0:
        barrier()
    for split in (dataset.train, dataset.val, dataset.test):
        if split is not None:
            split.inputs = embed(split.inputs)
    if rank == 0:
        barrier()
    dataset.modality = "features"
    return dataset


def load_data(config: Config) -> Dataset:
    """The configured dataset as loaded: a built-in one, or the user's file / folder split three ways."""
    if config.data.name in ("table", "image-folder"):
        return _user_dataset(config.data, config.seed)
    return load_dataset(config.data.name, **config.data.options)


def prepare_dataset(dataset: Dataset, config: Config, progress: bool = True) -> Dataset:
    """The loaded ``dataset`` as a run uses it: texts embedded by a frozen encoder, protocols applied to
    the training split only."""
    if dataset.modality == "text" and uses_frozen_text_encoder(config):
        # Whole splits first: their cached embeddings then serve every label fraction and seed.
        dataset = embed_text_splits(dataset, config.model, progress)
    dataset = _apply_protocols(dataset, config.data, config.seed)
    if len(dataset.train) < config.train.batch_size:
        raise DataError(
            f"train.batch_size={config.train.batch_size} is larger than the training set ({len(dataset.train)} "
            f"samples after data.fraction / k_shot); lower train.batch_size to at most {len(dataset.train)}"
        )
    return dataset
