"""The run configuration: typed sections, YAML loading, ``--set`` overrides and validation.

Every check raises :class:`mlcl.errors.ConfigError` with one line naming the key, what was expected
and how to fix it; an unknown key gets the closest valid key as a suggestion.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from mlcl.errors import ConfigError
from mlcl.train.methods import METHODS
from mlcl.user_input import did_you_mean, fits_type, type_name

IMAGE_ENCODERS = ("small_cnn", "resnet18")
TEXT_ENCODERS = ("minilm", "hf")
ENCODER_NAMES = (*IMAGE_ENCODERS, "mlp", *TEXT_ENCODERS)  # mlcl.models.encoders.ENCODERS


def setting(default: Any, doc: str) -> Any:
    """A config field with its one-line meaning (shown by ``mlcl config --reference`` and docs/config.md).

    Lists and dicts get a fresh copy per instance; nested sections pass their class as ``default``.
    """
    metadata = {"doc": doc}
    if isinstance(default, type):
        return field(default_factory=default, metadata=metadata)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class NoiseConfig:
    """Label noise on the training split's finest level (coarser levels follow the noisy label)."""

    rate: float = setting(0.0, "share of training samples whose finest label is replaced, in [0, 1)")
    mode: str = setting("symmetric", "symmetric (any other class) | hierarchical (a sibling under the same parent)")

    def validate(self, key: str) -> None:
        _check_range(f"{key}.rate", self.rate, 0.0, 1.0, low_open=False, high_open=True)
        _check_choice(f"{key}.mode", self.mode, ("symmetric", "hierarchical"))


@dataclass
class DataConfig:
    """What to train on: a built-in dataset (``mlcl datasets``) or your own file or folder."""

    name: str = setting("fashion-mnist", "a built-in dataset, or table (a CSV / JSONL file) or image-folder "
                                         "(root/<coarse>/<fine>/*.png) with data.path")
    path: str | None = setting(None, "the file (table) or folder (image-folder); relative to where mlcl runs")
    options: dict[str, Any] = setting({}, "the loader's options: see 'Data options' below; they belong to "
                                          "data.name and are dropped when --set changes it")
    fraction: float = setting(1.0, "stratified share of the training labels kept per finest class, in (0, 1]")
    k_shot: int | None = setting(None, "keep this many training samples per finest class (null: all)")
    noise: NoiseConfig = setting(NoiseConfig, "label noise on the training split")
    unseen_per_parent: int = setting(0, "hold this many random finest classes of every parent (that has more "
                                        "children) out of training and validation; metrics.json's 'unseen' scores "
                                        "them (0: none)")
    level_fractions: dict[str, float] = setting({}, "partial labels: level -> share of the training rows that keep "
                                                    "their label at that level, in (0, 1], per class; the others "
                                                    "get -1 (unknown). Nested: a finer label is kept only with its "
                                                    "coarser one. Applied after fraction / k_shot, before noise")

    def validate(self, key: str) -> None:
        _check_range(f"{key}.fraction", self.fraction, 0.0, 1.0, low_open=True, high_open=False)
        if self.k_shot is not None and self.k_shot < 1:
            raise ConfigError(f"{key}.k_shot must be >= 1 or null, got {self.k_shot}")
        if self.k_shot is not None and self.fraction != 1.0:
            raise ConfigError(f"{key}.k_shot and {key}.fraction both limit the training labels; set only one "
                              f"(got k_shot={self.k_shot}, fraction={self.fraction})")
        if self.name in ("table", "image-folder") and not self.path:
            raise ConfigError(f"{key}.path is required when {key}.name is {self.name!r}: set data.path=FILE")
        self.noise.validate(f"{key}.noise")
        if self.unseen_per_parent < 0:
            raise ConfigError(f"{key}.unseen_per_parent must be >= 0 (0: every class is seen), got "
                              f"{self.unseen_per_parent}")
        for level, share in self.level_fractions.items():
            if not 0 < share <= 1:
                raise ConfigError(f"{key}.level_fractions.{level} must be in (0, 1] (the share of training rows "
                                  f"that keep their {level!r} label), got {share}")


@dataclass
class ModelConfig:
    """The encoder (input -> features) and the projection heads on top of it."""

    encoder: str = setting("small_cnn", "small_cnn | resnet18 (images), mlp (feature vectors), minilm | hf (text)")
    encoder_options: dict[str, Any] = setting({}, "the encoder's options: see 'Encoder options' below; they "
                                                  "belong to model.encoder and are dropped when --set changes it")
    proj_hidden: int = setting(512, "hidden width of each projection head")
    proj_dim: int = setting(128, "output size of each projection head (the contrastive space)")
    proj_depth: int = setting(2, "layers per projection head (1 = one Linear)")

    def validate(self, key: str) -> None:
        _check_choice(f"{key}.encoder", self.encoder, ENCODER_NAMES)
        for name in ("proj_hidden", "proj_dim", "proj_depth"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class MethodConfig:
    """The training objective: which heads, which loss, their temperatures and weights."""

    name: str = setting("mlcl", "mlcl | supcon | simclr | himulcon | mulsupcon | triplet | ce")
    heads: list[str] = setting([], "mlcl: one head per named level or label group ([] = every level)")
    temperatures: list[float] = setting([0.1], "one per head, or one for all heads")
    weights: list[float] = setting([], "mlcl: one loss weight per head ([] = all 1)")
    instance_head: bool = setting(False, "mlcl: add a head whose positives are only a sample's own views")
    instance_temperature: float = setting(0.2, "temperature of the instance head")
    instance_weight: float = setting(1.0, "loss weight of the instance head")
    classifier_weight: float = setting(0.0, "> 0: per-level linear classifiers trained jointly, with this weight")
    learnable_temperatures: bool = setting(False, "learn each head's temperature (starting from temperatures)")
    overlap: str = setting("any", "multi-label positives: any (share a label) | jaccard (weighted by overlap)")
    himulcon_mode: str = setting("hmce", "himulcon's terms: hmc | hce | hmce")
    triplet_margin: float = setting(0.2, "triplet: the margin between positive and negative distances")
    views: int = setting(2, "augmented views per sample in a batch")
    level: str | None = setting(None, "supcon / triplet: the level whose labels define positives (null: the "
                                      "finest); rows unknown at it are no anchor and nobody's positive")

    def validate(self, key: str) -> None:
        _check_choice(f"{key}.name", self.name, tuple(METHODS))
        _check_choice(f"{key}.overlap", self.overlap, ("any", "jaccard"))
        _check_choice(f"{key}.himulcon_mode", self.himulcon_mode, ("hmc", "hce", "hmce"))
        for i, t in enumerate(self.temperatures):
            if not t > 0:
                raise ConfigError(f"{key}.temperatures[{i}] must be > 0, got {t}: temperatures divide the logits")
        if not self.temperatures:
            raise ConfigError(f"{key}.temperatures must list at least one temperature")
        for i, w in enumerate(self.weights):
            if not w >= 0:
                raise ConfigError(f"{key}.weights[{i}] must be >= 0, got {w}")
        if not self.instance_temperature > 0:
            raise ConfigError(f"{key}.instance_temperature must be > 0, got {self.instance_temperature}")
        if self.views < 1:
            raise ConfigError(f"{key}.views must be >= 1, got {self.views}")
        if not 0 <= self.triplet_margin < float("inf"):
            raise ConfigError(f"{key}.triplet_margin must be a finite number >= 0, got {self.triplet_margin}")
        if self.classifier_weight < 0:
            raise ConfigError(f"{key}.classifier_weight must be >= 0, got {self.classifier_weight}")
        if self.level is not None and not METHODS[self.name].takes_level:
            takers = " and ".join(name for name, method in METHODS.items() if method.takes_level)
            raise ConfigError(f"{key}.level applies to {takers} only, not {key}.name={self.name}: drop "
                              f"{key}.level (mlcl picks levels with {key}.heads)")
        METHODS[self.name].check_config(self, key)


@dataclass
class AugmentConfig:
    """How the views of a sample differ: image augmentations, or noise on feature vectors."""

    crop_padding: int = setting(4, "images: pad by this many pixels, then crop back at a random offset")
    hflip: bool = setting(True, "images: flip left-right with probability 0.5")
    erase_prob: float = setting(0.25, "images: probability of erasing a random rectangle")
    noise_std: float = setting(0.0, "images: std of added Gaussian pixel noise")
    feature_dropout: float = setting(0.1, "feature vectors (and frozen text embeddings): dropout rate on the input")
    feature_noise: float = setting(0.05, "feature vectors: std of added Gaussian noise")

    def validate(self, key: str) -> None:
        if self.crop_padding < 0:
            raise ConfigError(f"{key}.crop_padding must be >= 0, got {self.crop_padding}")
        _check_range(f"{key}.erase_prob", self.erase_prob, 0.0, 1.0, low_open=False, high_open=False)
        _check_range(f"{key}.feature_dropout", self.feature_dropout, 0.0, 1.0, low_open=False, high_open=True)
        for name in ("noise_std", "feature_noise"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{key}.{name} must be >= 0 (a standard deviation), got {getattr(self, name)}")


@dataclass
class TrainConfig:
    """Optimisation, device and the validation monitor that picks the best checkpoint."""

    epochs: int = setting(10, "passes over the training split")
    batch_size: int = setting(256, "samples per step and process (the global batch is this x processes)")
    optimizer: str = setting("sgd", "sgd | adamw")
    lr: float = setting(0.1, "peak learning rate (linear warm-up, then cosine decay to 0)")
    momentum: float = setting(0.9, "sgd momentum")
    weight_decay: float = setting(5e-4, "weight decay (not applied to learnable temperatures)")
    warmup_epochs: float = setting(1.0, "epochs of linear learning-rate warm-up (may be fractional)")
    grad_clip: float | None = setting(None, "clip the gradient norm to this value (null: no clipping)")
    precision: str = setting("fp32", "fp32 | bf16 | fp16 (autocast; fp16 with loss scaling)")
    device: str = setting("auto", "auto (CUDA, then MPS, then CPU) | cpu | cuda | cuda:N | mps")
    threads: int | None = setting(None, "torch CPU threads (null: torch's default, shared out between processes)")
    labelled_share: float = setting(0.0, "share of each batch drawn from the rows labelled at "
                                         "train.labelled_level, the rest from the other rows; labelled rows are "
                                         "then reused more often within an epoch (0: uniform batches)")
    labelled_level: str | None = setting(None, "the level train.labelled_share counts labels at (null: the finest)")
    augment: AugmentConfig = setting(AugmentConfig, "how the views of a sample differ")
    monitor_every: int = setting(1, "epochs between validation kNN checks, which choose checkpoints/best.pt "
                                          "(a later epoch within validation noise of the best wins)")
    monitor_train_samples: int = setting(5000, "the validation kNN's bank: a fixed random sample of this many "
                                               "training samples")
    log_every: int | None = setting(None, "steps between host syncs (logs, non-finite check); null: 1 on CPU, "
                                          "25 on GPUs")
    tensorboard: bool = setting(True, "write TensorBoard event files to RUN/tensorboard/ (when tensorboard is "
                                      "installed)")

    def validate(self, key: str) -> None:
        for name in ("epochs", "batch_size", "monitor_every", "monitor_train_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ConfigError(f"{key}.batch_size must be >= 2 for contrastive learning, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"{key}.lr must be > 0, got {self.lr}")
        _check_choice(f"{key}.optimizer", self.optimizer, ("sgd", "adamw"))
        _check_choice(f"{key}.precision", self.precision, ("fp32", "bf16", "fp16"))
        if self.log_every is not None and self.log_every < 1:
            raise ConfigError(f"{key}.log_every must be >= 1 or null (1 on CPU, 25 on GPUs), got {self.log_every}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"{key}.grad_clip must be > 0 or null, got {self.grad_clip}")
        if self.weight_decay < 0:
            raise ConfigError(f"{key}.weight_decay must be >= 0, got {self.weight_decay}")
        _check_range(f"{key}.momentum", self.momentum, 0.0, 1.0, low_open=False, high_open=True)
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"{key}.warmup_epochs must be in [0, {key}.epochs={self.epochs}], "
                              f"got {self.warmup_epochs}: "
                              "the learning rate warms up, then decays over the remaining epochs")
        _check_range(f"{key}.labelled_share", self.labelled_share, 0.0, 1.0, low_open=False, high_open=False)
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"{key}.threads must be >= 1 or null (torch's default), got {self.threads}")
        self.augment.validate(f"{key}.augment")


#: What ``eval.features`` may list: the encoder's features, each projection head's, all heads concatenated.
EVAL_FEATURES = ("encoder", "heads", "concat")


@dataclass
class EvalConfig:
    """The evaluation after training: linear probe and kNN per level on frozen features, and plots."""

    knn_k: int = setting(20, "neighbours of the kNN classifier (and of the validation monitor)")
    probe_epochs: int = setting(100, "at most this many L-BFGS iterations per linear probe")
    embedding_map: str = setting("pca", "the 2-D map in embeddings.png: pca | tsne | none")
    map_points: int = setting(2000, "test points drawn in embeddings.png")
    features: list[str] = setting(["encoder"], "what the probes see: encoder | heads (each at its level) | concat")

    def validate(self, key: str) -> None:
        _check_choice(f"{key}.embedding_map", self.embedding_map, ("pca", "tsne", "none"))
        if not isinstance(self.features, list) or not self.features:
            raise ConfigError(f"{key}.features must be a non-empty list of {', '.join(EVAL_FEATURES)}, "
                              f"got {self.features!r}")
        for name in self.features:
            _check_choice(f"{key}.features", name, EVAL_FEATURES)
        if len(set(self.features)) != len(self.features):
            raise ConfigError(f"{key}.features lists a name twice: {self.features}; list each once")
        for name in ("knn_k", "probe_epochs", "map_points"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name} must be >= 1, got {getattr(self, name)}")


MAX_SEED = 2**32 - 1


@dataclass
class Config:
    """A whole run; every run folder keeps its resolved copy in config.yaml."""

    seed: int = setting(0, "seeds data order, splits, augmentations and initial weights")
    data: DataConfig = setting(DataConfig, "what to train on")
    model: ModelConfig = setting(ModelConfig, "encoder and projection heads")
    method: MethodConfig = setting(MethodConfig, "the training objective")
    train: TrainConfig = setting(TrainConfig, "optimisation")
    eval: EvalConfig = setting(EvalConfig, "evaluation after training")

    def validate(self) -> Config:
        # Seeds derive further seeds (per epoch, per rank) that must stay within torch's 64-bit range.
        _check_range("seed", self.seed, 0, MAX_SEED, low_open=False, high_open=False)
        for section in dataclasses.fields(self):
            value = getattr(self, section.name)
            if hasattr(value, "validate"):
                value.validate(section.name)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"{key} must be one of {', '.join(choices)}; got {value!r}{did_you_mean(str(value), choices)}"
        )


def _check_range(key: str, value: float, low: float, high: float, *, low_open: bool, high_open: bool) -> None:
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{key} must be in {interval}, got {value}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'the config'} must be a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            valid = [f"{prefix}.{n}" if prefix else n for n in names]
            raise ConfigError(
                f"unknown config key {full!r}{did_you_mean(full, valid)}; valid keys here: {', '.join(names)}"
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, full)
            continue
        ok, converted = fits_type(hint, value)
        if not ok:
            finite = " (a finite number)" if float in (hint, *typing.get_args(hint)) else ""
            raise ConfigError(
                f"{full} must be of type {type_name(hint)}{finite}, got {value!r} ({type(value).__name__})"
            )
        kwargs[key] = converted
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any]) -> Config:
    """A validated :class:`Config` from nested plain data."""
    return _build(Config, raw, "").validate()


class Override(NamedTuple):
    """One ``--set``: the key path, the value (parsed as YAML), and whether it replaces a mapping whole."""

    path: list[str]
    value: Any
    replace: bool = False


def parse_override(text: str) -> Override:
    """``"train.epochs=5"`` -> ``Override(["train", "epochs"], 5)``; the value is parsed as YAML.

    ``KEY=VALUE`` merges a mapping value into the mapping already at KEY (key by key); ``KEY:=VALUE``
    replaces it whole. Other values are replaced either way.
    """
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE (for example train.epochs=5), got {text!r}")
    key, value = text.split("=", 1)
    replace = key.endswith(":")
    key = key.removesuffix(":").strip()
    if not key:
        raise ConfigError(f"--set expects KEY=VALUE with a non-empty key, got {text!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: the value {value!r} is not valid YAML ({exc.__class__.__name__})") from exc
    return Override(key.split("."), parsed, replace)


# Mappings that belong to another key's value: a CNN's width means nothing to a text encoder, and
# fashion-mnist's val_size nothing to a CSV file. When the --set overrides change the owner, the
# file's mapping is dropped and only the options given with --set remain.
OWNED_OPTIONS = {("model", "encoder"): ("model", "encoder_options"), ("data", "name"): ("data", "options")}


def _lookup(raw: dict[str, Any], path: tuple[str, ...] | list[str]) -> Any:
    """The value at ``path`` in nested plain data, else the package default there."""
    node: Any = raw
    for part in path:
        if not isinstance(node, dict) or node.get(part) is None:
            node = Config().to_dict()
            for default_part in path:
                node = node[default_part]
            return node
        node = node[part]
    return node


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` merged into ``base`` key by key (nested mappings too), in place."""
    for key, value in update.items():
        if isinstance(base.get(key), dict) and isinstance(value, dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _assign(raw: dict[str, Any], override: Override) -> None:
    path = override.path
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if child is None:  # absent, or an empty section in the file (`train:` with nothing under it)
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part!r} is a value, not a section")
        node = child
    current = node.get(path[-1])
    if not override.replace and isinstance(current, dict) and isinstance(override.value, dict):
        _merge(current, override.value)
    else:
        node[path[-1]] = copy.deepcopy(override.value)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to nested plain data (in place) and return it (see :func:`parse_override`
    for merging and replacing, and ``OWNED_OPTIONS`` for options that follow their encoder or dataset)."""
    parsed = [parse_override(text) for text in overrides]
    changed = copy.deepcopy(raw)
    for override in parsed:
        _assign(changed, override)
    for owner, options in OWNED_OPTIONS.items():
        if _lookup(changed, owner) != _lookup(raw, owner) and isinstance(raw.get(options[0]), dict):
            raw[options[0]].pop(options[1], None)
    for override in parsed:
        _assign(raw, override)
    return raw


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in ``path``, or a ConfigError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist (ready-made ones are in configs/)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections (data:, method:, ...), got {type(raw).__name__}"
        )
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (or start from defaults), apply ``--set`` overrides, validate."""
    raw = read_config_file(path) if path is not None else {}
    return config_from_dict(apply_overrides(raw, list(overrides or [])))


def config_yaml(config: Config) -> str:
    """The config as the YAML that config.yaml holds."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(config_yaml(config), encoding="utf-8")
