"""The run configuration: typed sections, YAML loading, ``--set`` overrides and validation.

Every check raises :class:`mlcl.errors.ConfigError` with one line naming the key, what was expected
and how to fix it; an unknown key gets the closest valid key as a suggestion.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlcl.errors import ConfigError
from mlcl.train.methods import METHODS
from mlcl.user_input import did_you_mean, fits_type, type_name

IMAGE_ENCODERS = ("small_cnn", "resnet18")
TEXT_ENCODERS = ("minilm", "hf")
ENCODER_NAMES = (*IMAGE_ENCODERS, "mlp", *TEXT_ENCODERS)  # mlcl.models.encoders.ENCODERS


@dataclass
class NoiseConfig:
    rate: float = 0.0
    mode: str = "symmetric"  # symmetric | hierarchical

    def validate(self, key: str) -> None:
        _check_range(f"{key}.rate", self.rate, 0.0, 1.0, low_open=False, high_open=True)
        _check_choice(f"{key}.mode", self.mode, ("symmetric", "hierarchical"))


@dataclass
class DataConfig:
    name: str = "fashion-mnist"  # a built-in dataset, or "table" / "image-folder" with `path`
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # loader options (e.g. depth, val_size)
    fraction: float = 1.0  # stratified fraction of training labels per finest class
    k_shot: int | None = None
    noise: NoiseConfig = field(default_factory=NoiseConfig)

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


@dataclass
class ModelConfig:
    encoder: str = "small_cnn"  # small_cnn | resnet18 | mlp | minilm | hf
    encoder_options: dict[str, Any] = field(default_factory=dict)
    proj_hidden: int = 512
    proj_dim: int = 128
    proj_depth: int = 2

    def validate(self, key: str) -> None:
        _check_choice(f"{key}.encoder", self.encoder, ENCODER_NAMES)
        for name in ("proj_hidden", "proj_dim", "proj_depth"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class MethodConfig:
    name: str = "mlcl"
    heads: list[str] = field(default_factory=list)  # level names (or label groups); [] = every level
    temperatures: list[float] = field(default_factory=lambda: [0.1])  # one per head, or one for all
    weights: list[float] = field(default_factory=list)  # one per head; [] = all 1
    instance_head: bool = False  # add a head whose positives are only a sample's own views
    instance_temperature: float = 0.2
    instance_weight: float = 1.0
    classifier_weight: float = 0.0  # > 0: per-level classifiers trained jointly (end to end)
    learnable_temperatures: bool = False
    overlap: str = "any"  # multi-label positives: any | jaccard
    himulcon_mode: str = "hmce"  # hmc | hce | hmce
    triplet_margin: float = 0.2
    views: int = 2

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
        METHODS[self.name].check_config(self, key)


@dataclass
class AugmentConfig:
    crop_padding: int = 4
    hflip: bool = True
    erase_prob: float = 0.25
    noise_std: float = 0.0
    feature_dropout: float = 0.1  # feature / cached-text views: dropout on the input vector
    feature_noise: float = 0.05  # ... plus Gaussian noise of this std

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
    epochs: int = 10
    batch_size: int = 256
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    grad_clip: float | None = None
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 with loss scaling)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: int | None = None  # torch CPU threads (None = torch's default)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    monitor_every: int = 1  # epochs between validation kNN checks (picks the best checkpoint)
    monitor_train_samples: int = 5000  # the validation kNN's bank: a fixed random sample of the training split
    log_every: int | None = None  # steps between host syncs (logs, non-finite check); None: 1 on CPU, 25 on GPUs

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
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"{key}.threads must be >= 1 or null (torch's default), got {self.threads}")
        self.augment.validate(f"{key}.augment")


@dataclass
class EvalConfig:
    knn_k: int = 20
    probe_epochs: int = 100  # at most this many L-BFGS iterations per linear probe
    embedding_map: str = "pca"  # pca | tsne | none
    map_points: int = 2000

    def validate(self, key: str) -> None:
        _check_choice(f"{key}.embedding_map", self.embedding_map, ("pca", "tsne", "none"))
        for name in ("knn_k", "probe_epochs", "map_points"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name} must be >= 1, got {getattr(self, name)}")


MAX_SEED = 2**32 - 1


@dataclass
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

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


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=5"`` -> ``(["train", "epochs"], 5)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE (for example train.epochs=5), got {text!r}")
    key, value = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE with a non-empty key, got {text!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: the value {value!r} is not valid YAML ({exc.__class__.__name__})") from exc
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set key=value`` overrides to nested plain data (in place) and return it."""
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:  # absent, or an empty section in the file (`train:` with nothing under it)
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {'.'.join(path)}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
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


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
