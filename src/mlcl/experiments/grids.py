"""The experiment definitions: every experiment is a list of cells, every cell one training run.

A cell is (dataset, method, label fraction, noise, seed) plus a few ``--set`` overrides. Its config is
built from ``--set`` strings alone, in this order (a later string wins):

    dataset base (data, model, batch, optimiser, eval)      -> DATASETS[dataset].base
    budget (epochs, warm-up, validation checks)               -> budget_epochs(): the same for every method
    method definition                                         -> METHODS[cell.base]
    tuned learning rate and temperature                       -> the `sweep` experiment (validation split)
    protocol (seed, fraction, noise)                          -> the cell
    the cell's own overrides (variants, ablations)            -> cell.overrides
    the runner's extra overrides (mlcl experiment ... --set)

so the exact command of a cell is ``mlcl train --out DIR --set ...`` with those strings
(:func:`train_command`).

Budget rule (identical for every method of a dataset): a run makes about ``DatasetSetup.steps``
optimiser steps whatever the label fraction, ``epochs = clip(ceil(steps / steps_per_epoch), 1,
MAX_EPOCHS)`` with ``steps_per_epoch = floor(n_train / batch)`` (so the smallest fractions are capped
at ``MAX_EPOCHS`` epochs); the learning rate warms up over the first 10 % of the epochs and decays by
cosine; the validation kNN monitor (which picks the best checkpoint) runs ``MONITOR_CHECKS`` times per
run. Cross-entropy sees one view per sample, the contrastive methods two. Every run uses one CPU thread
(``train.threads=1``; why: docs/measurements.md), which also lets two runners work side by side on
disjoint ``--cells``.

Tuning (identical for every method): a shared sweep of learning rate x temperature (learning rate only
for cross-entropy, which has no temperature) at label fraction 0.1, seed 0, scored on the validation
split (never test): fine linear-probe top-1, or fine mAP for the multi-label grid. Every other
experiment then uses, per (dataset, method), the setting with the best validation score; MLCL variants
(instance head, ablations) reuse MLCL's. Without sweep results the defaults ``DEFAULT_HPARAMS`` apply.
"""

from __future__ import annotations

import math
import shlex
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from mlcl.errors import ConfigError
from mlcl.train.config import Config, apply_overrides, config_from_dict
from mlcl.user_input import did_you_mean

STEP_BUDGET = 800  # Fashion-MNIST and WordNet; the grid's 56x56 canvases get 400
MAX_EPOCHS = 400
MONITOR_CHECKS = 5
WARMUP_SHARE = 0.1
SEEDS = (0, 1, 2)
DEFAULT_HPARAMS = {"lr": 0.1, "temperature": 0.1}
DEFAULT_LABELLED_SHARE = 0.5  # of a batch drawn from the finest-labelled samples, until batch-share has chosen
SWEEP_LRS = (0.05, 0.1, 0.2)
SWEEP_TEMPERATURES = (0.1, 0.2)
SWEEP_FRACTION = 0.1

KINDS = ("train", "sweep", "convergence", "transfer", "transfer-raw")


@dataclass(frozen=True)
class DatasetSetup:
    """How one dataset is trained in the experiments: base overrides, size, scoring, cost model."""

    name: str
    train_size: int  # training rows at fraction 1 (after the validation split is carved out)
    batch_size: int
    base: tuple[str, ...]
    score: tuple[str, str]  # (level, metric) the sweep maximises on validation, and the headline metric
    seconds_per_step: float  # one thread, two views (ETAs only; how measured: docs/measurements.md)
    seconds_overhead: float  # data set-up, validation checks, final probes (ETAs only)
    steps: int = STEP_BUDGET  # optimiser steps per run, every method and fraction
    tuned_as: str | None = None  # use this dataset's sweep choice (a variant of it with the same model)

    def steps_per_epoch(self, fraction: float) -> int:
        return max(1, int(max(1, round(fraction * self.train_size)) // self.batch_size))


_COMMON_TRAIN = (
    "train.optimizer=sgd", "train.momentum=0.9", "train.weight_decay=0.0005",
    "train.monitor_train_samples=2000", "train.threads=1", "eval.embedding_map=none", "eval.knn_k=20",
)
_SMALL_CNN = (
    "model.encoder=small_cnn", "model.encoder_options.width=16", "model.encoder_options.out_dim=128",
    "model.proj_hidden=128", "model.proj_dim=64",
    "train.augment.crop_padding=2", "train.augment.hflip=true", "train.augment.erase_prob=0.1",
)

_WORDNET_MODEL = (
    "model.encoder=minilm", "model.encoder_options.hidden=[512]", "model.encoder_options.out_dim=128",
    "model.proj_hidden=128", "model.proj_dim=64", "train.augment.feature_dropout=0.1",
    "train.augment.feature_noise=0.05", "train.batch_size=256",
)

DATASETS: dict[str, DatasetSetup] = {
    "fashion-mnist": DatasetSetup(
        "fashion-mnist", train_size=55000, batch_size=256,
        base=("data.name=fashion-mnist", "data.options.val_size=5000", *_SMALL_CNN, "train.batch_size=256",
              *_COMMON_TRAIN),
        score=("fine", "linear_top1"), seconds_per_step=0.058, seconds_overhead=7.0,
    ),
    # Frozen MiniLM sentence embeddings (computed once, cached on disk) -> a trained MLP encoder.
    "wordnet-nouns": DatasetSetup(
        "wordnet-nouns", train_size=44494, batch_size=256,
        base=("data.name=wordnet-nouns", *_WORDNET_MODEL, *_COMMON_TRAIN),
        score=("fine", "linear_top1"), seconds_per_step=0.014, seconds_overhead=10.0,
    ),
    # The same glosses and model with three levels; the learning rate and temperature are wordnet-nouns'.
    "wordnet-nouns-deep": DatasetSetup(
        "wordnet-nouns-deep", train_size=44494, batch_size=256,
        base=("data.name=wordnet-nouns-deep", *_WORDNET_MODEL, *_COMMON_TRAIN),
        score=("fine", "linear_top1"), seconds_per_step=0.016, seconds_overhead=12.0, tuned_as="wordnet-nouns",
    ),
    "fashion-mnist-grid": DatasetSetup(
        "fashion-mnist-grid", train_size=5000, batch_size=128,
        base=("data.name=fashion-mnist-grid", "data.options.n_train=5000", "data.options.n_val=1000",
              "data.options.n_test=5000", *_SMALL_CNN, "train.batch_size=128", "method.overlap=any",
              *_COMMON_TRAIN),
        score=("fine", "mAP"), seconds_per_step=0.094, seconds_overhead=6.0, steps=400,
    ),
}

# method -> its definition; the temperature (one for every head) and learning rate come from tuning.
METHODS: dict[str, tuple[str, ...]] = {
    "ce": ("method.name=ce", "method.views=1"),
    "supcon": ("method.name=supcon", "method.views=2"),
    "himulcon": ("method.name=himulcon", "method.views=2"),
    "mulsupcon": ("method.name=mulsupcon", "method.views=2"),
    "mlcl": ("method.name=mlcl", "method.views=2", "method.heads=[]"),  # one head per level
}
TEMPERATURE_FREE = ("ce",)


@dataclass(frozen=True)
class Cell:
    """One run of an experiment.

    ``method`` is the label shown in tables (``mlcl+instance``, ``mlcl-heads-fine``, ...); ``base`` is
    the method whose definition and tuned hyper-parameters it starts from (default: ``method``).
    Labels starting with ``mlcl`` are MLCL variants; every other label is a baseline.
    """

    dataset: str
    method: str
    fraction: float = 1.0
    noise: float = 0.0
    seed: int = 0
    noise_mode: str = "symmetric"
    overrides: tuple[str, ...] = ()
    kind: str = "train"
    base: str | None = None
    target: str | None = None  # transfer target dataset
    level_fractions: tuple[tuple[str, float], ...] = ()  # labels kept per level (rows are all kept)
    unseen: int = 0  # finest classes held out of training per parent
    hparams: tuple[tuple[str, float], ...] = ()  # sweep cells: the setting tried
    steps: int | None = None  # optimiser steps; None = the dataset's budget
    step_cost: float = 1.0  # time of a step relative to the dataset's usual model (ETAs only)

    @property
    def base_method(self) -> str:
        return self.base or self.method

    @property
    def id(self) -> str:
        noise = "clean" if self.noise == 0 else f"{'sym' if self.noise_mode == 'symmetric' else 'hier'}{self.noise:g}"
        parts = [self.dataset, self.method, f"f{self.fraction:g}", noise, f"s{self.seed}"]
        if self.target:
            parts.append(f"to-{self.target}")
        if self.level_fractions:
            parts.append("labels-" + "-".join(f"{level}{f:g}" for level, f in self.level_fractions))
        if self.unseen:
            parts.append(f"unseen{self.unseen}")
        if self.hparams:
            parts.append("-".join(f"{k[:2]}{v:g}" for k, v in self.hparams))
        return "__".join(parts)


@dataclass(frozen=True)
class Experiment:
    """A named grid: its cells and a one-line description of what it measures."""

    name: str
    description: str
    cells: tuple[Cell, ...]
    uses_sweep: bool = True  # take lr / temperature from the sweep results

    def __post_init__(self) -> None:
        for cell in self.cells:
            if cell.kind not in KINDS:
                raise ConfigError(f"experiment {self.name}: cell {cell.id} has kind {cell.kind!r}; "
                                  f"kinds: {', '.join(KINDS)}")
            if cell.kind.startswith("transfer") and not cell.target:
                raise ConfigError(f"experiment {self.name}: transfer cell {cell.id} needs a target dataset")
        ids = [cell.id for cell in self.cells]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ConfigError(f"experiment {self.name}: duplicate cells {duplicates[:3]}")


# ---------------------------------------------------------------------------- budget and configs


def budget_epochs(dataset: str, fraction: float, steps: int | None = None) -> int:
    """Epochs giving about ``steps`` (default: the dataset's budget) optimiser steps at ``fraction`` of
    the training set, within 1..MAX_EPOCHS."""
    steps = steps or DATASETS[dataset].steps
    per_epoch = DATASETS[dataset].steps_per_epoch(fraction)
    return int(min(MAX_EPOCHS, max(1, math.ceil(steps / per_epoch))))


def _budget(cell: Cell) -> list[str]:
    epochs = budget_epochs(cell.dataset, cell.fraction, cell.steps)
    monitor = max(1, math.ceil(epochs / MONITOR_CHECKS))
    return [f"train.epochs={epochs}", f"train.warmup_epochs={round(WARMUP_SHARE * epochs, 3)}",
            f"train.monitor_every={monitor}"]


TunedTable = dict[tuple[str, str], dict[str, float]]


def hparams_for(cell: Cell, tuned: TunedTable | None = None) -> dict[str, float]:
    """The learning rate, temperature and labelled share of a batch a cell uses: the defaults, replaced
    by the tuned ones, replaced by the cell's own (the setting a sweep cell tries)."""
    values = {**DEFAULT_HPARAMS, "labelled_share": DEFAULT_LABELLED_SHARE}
    setup = DATASETS.get(cell.dataset)
    dataset = setup.tuned_as if setup is not None and setup.tuned_as else cell.dataset
    chosen = (tuned or {}).get((dataset, cell.base_method), {})
    values.update({k: chosen[k] for k in ("lr", "temperature") if k in chosen})
    # The labelled share is chosen per method label (an MLCL variant may differ from MLCL), else its base's.
    share = (tuned or {}).get((dataset, cell.method), chosen)
    if "labelled_share" in share:
        values["labelled_share"] = share["labelled_share"]
    values.update(dict(cell.hparams))
    return values


def _dedupe(overrides: list[str]) -> list[str]:
    """Drop earlier assignments of a key assigned again later (the later one wins anyway)."""
    last = {text.split("=", 1)[0]: i for i, text in enumerate(overrides)}
    return [text for i, text in enumerate(overrides) if last[text.split("=", 1)[0]] == i]


def cell_overrides(cell: Cell, tuned: TunedTable | None = None, extra: Iterable[str] = ()) -> list[str]:
    """The ``--set`` overrides (on top of the package defaults) that define this cell's run."""
    if cell.dataset not in DATASETS:
        raise ConfigError(f"cell {cell.id}: unknown dataset {cell.dataset!r}{did_you_mean(cell.dataset, DATASETS)}")
    if cell.base_method not in METHODS:
        raise ConfigError(
            f"cell {cell.id}: unknown method {cell.base_method!r}{did_you_mean(cell.base_method, METHODS)}"
        )
    hp = hparams_for(cell, tuned)
    out = [*DATASETS[cell.dataset].base, *_budget(cell), *METHODS[cell.base_method], f"train.lr={hp['lr']:g}"]
    if cell.base_method not in TEMPERATURE_FREE:
        out.append(f"method.temperatures=[{hp['temperature']:g}]")
    out += [f"seed={cell.seed}", f"data.fraction={cell.fraction:g}", f"data.noise.rate={cell.noise:g}",
            f"data.noise.mode={cell.noise_mode}"]
    if cell.level_fractions:
        budgets = ", ".join(f"{level}: {f:g}" for level, f in cell.level_fractions)
        out += [f"data.level_fractions={{{budgets}}}", f"train.labelled_share={hp['labelled_share']:g}"]
    if cell.unseen:
        out.append(f"data.unseen_per_parent={cell.unseen}")
    out += [*resolve_placeholders(list(cell.overrides), hp), *extra]
    return _dedupe(out)


def cell_config_dict(cell: Cell, tuned: TunedTable | None = None, extra: Iterable[str] = ()) -> dict[str, Any]:
    """The nested plain config of a cell (before validation)."""
    return apply_overrides({}, cell_overrides(cell, tuned, extra))


def cell_config(cell: Cell, tuned: TunedTable | None = None, extra: Iterable[str] = ()) -> Config:
    """The validated :class:`mlcl.train.config.Config` of a cell."""
    return config_from_dict(cell_config_dict(cell, tuned, extra))


def train_command(cell: Cell, out_dir: str, tuned: TunedTable | None = None, extra: Iterable[str] = ()) -> str:
    """The ``mlcl train`` command that trains exactly this cell's model."""
    sets = " ".join(f"--set {shlex.quote(o)}" for o in cell_overrides(cell, tuned, extra))
    return f"mlcl train --out {shlex.quote(out_dir)} --quiet {sets}"


def estimate_seconds(cell: Cell) -> float:
    """A rough wall-clock estimate of one cell on 2 quiet CPU cores (for ETAs and the plan)."""
    setup = DATASETS[cell.dataset]
    if cell.kind == "transfer-raw":
        return 20.0
    epochs = budget_epochs(cell.dataset, cell.fraction, cell.steps)
    steps = epochs * setup.steps_per_epoch(cell.fraction)
    per_step = setup.seconds_per_step * cell.step_cost * (0.55 if cell.base_method == "ce" else 1.0)
    seconds = setup.seconds_overhead * (2.0 if cell.fraction >= 1.0 else 1.0) + steps * per_step
    if cell.kind == "convergence":
        seconds += epochs * 2.5  # one probe per epoch
    if cell.kind == "transfer":
        seconds += 30.0
    return seconds


# ---------------------------------------------------------------------------- sweep results -> choice


def sweep_score(line: dict[str, Any]) -> float | None:
    """The validation score of one sweep line (None for a failed run)."""
    setup = DATASETS.get(line.get("dataset", ""))
    if setup is None or line.get("error"):
        return None
    level, metric = setup.score
    value = line.get("metrics", {}).get(level, {}).get(metric)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def select_hparams(lines: Iterable[dict[str, Any]]) -> tuple[TunedTable, dict[tuple[str, str], list[dict[str, Any]]]]:
    """Per (dataset, method): the sweep setting with the best mean validation score.

    Returns ``(chosen, table)``; ``table[(dataset, method)]`` lists every setting tried as
    ``{"lr", "temperature", "score", "n"}`` (for the report). A failed run scores as missing; a setting
    whose every run failed is never chosen. Ties go to the setting listed first.
    """
    scores: dict[tuple[str, str], dict[tuple[float, float], list[float]]] = defaultdict(dict)
    for line in lines:
        hp = line.get("hparams") or {}
        key = (line.get("dataset"), line.get("method"))
        merged = {**DEFAULT_HPARAMS, **hp}
        setting = (float(merged["lr"]), float(merged["temperature"]))
        bucket = scores[key].setdefault(setting, [])
        score = sweep_score(line)
        if score is not None:
            bucket.append(score)
    chosen: TunedTable = {}
    table: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for key, settings in scores.items():
        rows = []
        for (lr, temperature), values in settings.items():
            mean = sum(values) / len(values) if values else None
            rows.append({"lr": lr, "temperature": temperature, "score": mean, "n": len(values)})
        table[key] = rows
        valid = [r for r in rows if r["score"] is not None]
        if valid:
            best = max(valid, key=lambda r: r["score"])
            chosen[key] = {"lr": best["lr"], "temperature": best["temperature"], "score": best["score"]}
    return chosen, table


def select_shares(lines: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """Per (dataset, method): the labelled share of the batch-share sweep with the best mean validation
    score (failed runs are missing; ties go to the smaller share)."""
    scores: dict[tuple[str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for line in lines:
        share = (line.get("hparams") or {}).get("labelled_share")
        score = sweep_score(line)
        if share is not None and score is not None:
            scores[(line["dataset"], line["method"])][float(share)].append(score)
    chosen = {}
    for key, by_share in scores.items():
        means = {share: sum(v) / len(v) for share, v in by_share.items()}
        best = max(sorted(means), key=lambda share: means[share])
        chosen[key] = {"labelled_share": best, "score": means[best]}
    return chosen


# ---------------------------------------------------------------------------- the experiments

FASHION_METHODS = ("ce", "supcon", "himulcon", "mlcl")
WORDNET_METHODS = ("ce", "supcon", "himulcon", "mlcl")
GRID_METHODS = ("ce", "supcon", "mulsupcon", "mlcl")
INSTANCE = ("method.instance_head=true",)


def _seed_major(cells: list[Cell]) -> tuple[Cell, ...]:
    """Seed 0 of every cell first, then seed 1, ...: a stopped grid still covers every cell once."""
    return tuple(sorted(cells, key=lambda c: c.seed))


def _sweep() -> Experiment:
    cells = []
    for dataset, methods in (("fashion-mnist", FASHION_METHODS), ("wordnet-nouns", WORDNET_METHODS),
                             ("fashion-mnist-grid", GRID_METHODS)):
        fraction = 1.0 if dataset == "fashion-mnist-grid" else SWEEP_FRACTION
        for method in methods:
            temperatures = (DEFAULT_HPARAMS["temperature"],) if method in TEMPERATURE_FREE else SWEEP_TEMPERATURES
            for lr in SWEEP_LRS:
                for temperature in temperatures:
                    hp = (("lr", lr),) if method in TEMPERATURE_FREE else (("lr", lr), ("temperature", temperature))
                    cells.append(Cell(dataset, method, fraction, seed=0, kind="sweep", hparams=hp))
    return Experiment("sweep", "shared learning-rate x temperature sweep, scored on the validation split",
                      tuple(cells), uses_sweep=False)


def _limited_data() -> Experiment:
    cells = []
    for method in FASHION_METHODS:
        for fraction in (0.01, 0.05, 0.1):
            cells += [Cell("fashion-mnist", method, fraction, seed=s) for s in SEEDS]
        cells += [Cell("fashion-mnist", method, 1.0, seed=s) for s in SEEDS]
    for method in WORDNET_METHODS:
        for fraction in (0.01, 0.1):
            cells += [Cell("wordnet-nouns", method, fraction, seed=s) for s in SEEDS]
    return Experiment("limited-data", "accuracy per level with 1-100 % of the training labels", _seed_major(cells))


NOISE_FRACTION = 0.1  # noise runs use the fraction-0.1 training subset (same budget as limited-data's 0.1)


def _label_noise() -> Experiment:
    cells = []
    settings = [(0.2, "symmetric"), (0.4, "symmetric"), (0.6, "symmetric"), (0.4, "hierarchical")]
    for rate, mode in settings:
        for method in FASHION_METHODS:
            cells += [Cell("fashion-mnist", method, NOISE_FRACTION, rate, s, mode) for s in SEEDS]
    for rate, mode in [(0.0, "symmetric"), *settings]:
        cells += [Cell("fashion-mnist", "mlcl+instance", NOISE_FRACTION, rate, s, mode, INSTANCE, base="mlcl")
                  for s in SEEDS]
    return Experiment("label-noise", "fine-label noise (symmetric, hierarchy-aware) on 10 % of Fashion-MNIST; "
                      "rate 0 of the four methods = limited-data's fraction-0.1 cells", _seed_major(cells))


def _transfer() -> Experiment:
    cells = []
    for source, target in (("fashion-mnist", "digits"), ("wordnet-nouns", "bbc-news")):
        for method in ("ce", "supcon", "mlcl"):
            cells += [Cell(source, method, 1.0, seed=s, kind="transfer", target=target) for s in SEEDS]
        cells.append(Cell(source, "raw-input", 1.0, seed=0, kind="transfer-raw", target=target, base="ce"))
    return Experiment("transfer", "pre-train on the source, linear probe / kNN on a frozen encoder on the target",
                      _seed_major(cells))


def _multi_label() -> Experiment:
    cells = []
    for method in GRID_METHODS:
        cells += [Cell("fashion-mnist-grid", method, 1.0, seed=s) for s in SEEDS]
    return Experiment("multi-label", "2x2 Fashion-MNIST grids: supcon = exact label-set match, mulsupcon, "
                      "mlcl = one head per level with any-overlap positives", _seed_major(cells))


CONVERGENCE_FRACTION = 0.1


def _convergence() -> Experiment:
    cells = []
    for method in ("supcon", "mlcl"):
        cells += [Cell("fashion-mnist", method, CONVERGENCE_FRACTION, seed=s, kind="convergence") for s in SEEDS]
    return Experiment("convergence", "linear-probe accuracy after every epoch of one run (the usual budget: the "
                      "final epoch is limited-data's fraction-0.1 run)",
                      _seed_major(cells))


ABLATION_FRACTION = 0.1


def _ablations() -> Experiment:
    # Per-head temperatures are relative to the tuned MLCL temperature: {t} and {2t} are replaced by it
    # and by twice it (resolve_placeholders). Head order: coarse, fine.
    variants: dict[str, tuple[str, ...]] = {
        "mlcl": (),
        "mlcl-heads-fine": ("method.heads=[fine]",),
        "mlcl-heads-coarse": ("method.heads=[coarse]",),
        "mlcl+instance": INSTANCE,
        "mlcl-heads-fine+instance": ("method.heads=[fine]", *INSTANCE),
        "mlcl-temps-2x-coarse": ("method.temperatures=[{2t}, {t}]",),
        "mlcl-temps-2x-fine": ("method.temperatures=[{t}, {2t}]",),
        "mlcl-weights-0.5-1": ("method.weights=[0.5, 1.0]",),
        "mlcl-weights-1-0.5": ("method.weights=[1.0, 0.5]",),
    }
    cells = [Cell("fashion-mnist", label, ABLATION_FRACTION, seed=s, overrides=ov, base="mlcl")
             for label, ov in variants.items() for s in SEEDS]
    return Experiment("ablations", "MLCL variants at 10 % of Fashion-MNIST: heads, per-head temperatures, "
                      "head weights, instance head", _seed_major(cells))


LONG_BUDGET_FACTOR = 4


def _long_budget() -> Experiment:
    # The caveat of the 800-step grid: the method's gains may need longer training. Same models, same
    # tuned learning rate / temperature (tuned at the usual budget, for every method alike), 4x the steps.
    steps = LONG_BUDGET_FACTOR * STEP_BUDGET
    cells = []
    for method in ("ce", "supcon", "mlcl"):
        cells += [Cell("fashion-mnist", method, fraction, seed=s, steps=steps) for fraction in (0.1, 1.0)
                  for s in SEEDS]
    return Experiment("long-budget", f"{LONG_BUDGET_FACTOR}x the optimiser steps on Fashion-MNIST (10 % and "
                      "100 % of the labels): do MLCL's gains need longer training?", _seed_major(cells))


WIDE_WIDTH = 48  # SmallCNN channels 48-96-192 instead of 16-32-64
WIDE_STEP_COST = 4.5  # a width-48 step in width-16 steps (ETAs only; docs/measurements.md)


def _wide_encoder() -> Experiment:
    # The other half of the caveat: a 3x wider CNN (about 9x the convolution work) at the usual budget.
    wide = (f"model.encoder_options.width={WIDE_WIDTH}",)
    cells = [Cell("fashion-mnist", method, 0.1, seed=s, overrides=wide, step_cost=WIDE_STEP_COST)
             for method in ("ce", "supcon", "mlcl") for s in SEEDS]
    return Experiment("wide-encoder", f"a {WIDE_WIDTH // 16}x wider CNN on 10 % of Fashion-MNIST at the usual "
                      "budget: do MLCL's gains need a larger model?", _seed_major(cells))


# Methods of the partial-label experiments: a label -> (the method it starts from, its overrides).
PARTIAL_METHODS = ("ce", "supcon", "supcon-coarse", "himulcon", "mlcl", "mlcl+instance")
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    # SupCon on the coarse level sees every sample labelled: no batch composition to choose.
    "supcon-coarse": ("supcon", ("method.level=coarse", "train.labelled_share=0")),
    "supcon-mid": ("supcon", ("method.level=mid",)),
    "mlcl+instance": ("mlcl", INSTANCE),
}
HEAD_FEATURES = ("eval.features=[encoder, heads]",)  # also score each projection head at its own level
MIXED_FRACTIONS = (0.01, 0.05, 0.2)  # fine labels kept; every sample keeps its coarse label
SHARE_FRACTION = 0.05
SHARES = (0.0, 0.5, 1.0)
SHARE_METHODS = ("ce", "supcon", "himulcon", "mlcl")


def _variant(dataset: str, label: str, **fields: Any) -> Cell:
    """A cell of method ``label``: a base method, or a variant of one (:data:`VARIANTS`)."""
    base, overrides = VARIANTS.get(label, (label, ()))
    return Cell(dataset, label, base=None if base == label else base,
                overrides=(*overrides, *fields.pop("overrides", ())), **fields)


def _fine_budget(fraction: float) -> tuple[tuple[str, float], ...]:
    return (("fine", fraction),)


def _batch_share() -> Experiment:
    cells = [_variant(dataset, method, seed=0, kind="sweep", level_fractions=_fine_budget(SHARE_FRACTION),
                      hparams=(("labelled_share", share),))
             for dataset in ("fashion-mnist", "wordnet-nouns") for method in SHARE_METHODS for share in SHARES]
    return Experiment("batch-share", f"share of each batch drawn from the fine-labelled samples ({list(SHARES)}), "
                      f"fine labels for {SHARE_FRACTION:.0%} of the samples, scored on the validation split",
                      tuple(cells))


def _mixed_granularity() -> Experiment:
    cells = [_variant(dataset, method, seed=s, level_fractions=_fine_budget(fraction))
             for dataset in ("fashion-mnist", "wordnet-nouns") for fraction in MIXED_FRACTIONS
             for method in PARTIAL_METHODS for s in SEEDS]
    return Experiment("mixed-granularity", "coarse labels for every training sample, fine labels for 1-20 %",
                      _seed_major(cells))


def _subpopulation_shift() -> Experiment:
    cells = [_variant(dataset, method, seed=s, unseen=1)
             for dataset in ("fashion-mnist", "wordnet-nouns") for method in PARTIAL_METHODS for s in SEEDS]
    return Experiment("subpopulation-shift", "one fine class per coarse class (with several) never seen in "
                      "training: coarse accuracy and few-shot fine accuracy on those classes", _seed_major(cells))


def _per_level_models() -> Experiment:
    cells = []
    for dataset, methods in (("fashion-mnist", ("supcon-coarse", "supcon", "mlcl")),
                             ("wordnet-nouns", ("supcon-coarse", "supcon", "mlcl")),
                             ("wordnet-nouns-deep", ("supcon-coarse", "supcon-mid", "supcon", "mlcl"))):
        cells += [_variant(dataset, method, seed=s, overrides=HEAD_FEATURES) for method in methods for s in SEEDS]
    return Experiment("per-level-models", "one MLCL model for every level against one SupCon model per level "
                      "(all labels): accuracy per level, of the encoder and of each head, and training time",
                      _seed_major(cells))


def _deep_hierarchy() -> Experiment:
    cells = [_variant("wordnet-nouns-deep", method, fraction=fraction, seed=s)
             for method in ("ce", "supcon", "himulcon", "mlcl") for fraction in (0.01, 0.1) for s in SEEDS]
    return Experiment("deep-hierarchy", "WordNet nouns with three levels (one MLCL head per level) at 1 % and "
                      "10 % of the labels", _seed_major(cells))


def resolve_placeholders(overrides: list[str], hparams: dict[str, float]) -> list[str]:
    """Replace ``{t}`` / ``{2t}`` in overrides by the cell's (tuned) temperature and twice it."""
    t = hparams["temperature"]
    return [o.replace("{2t}", f"{2 * t:g}").replace("{t}", f"{t:g}") for o in overrides]


EXPERIMENTS: dict[str, Callable[[], Experiment]] = {
    "sweep": _sweep,
    "limited-data": _limited_data,
    "label-noise": _label_noise,
    "transfer": _transfer,
    "multi-label": _multi_label,
    "convergence": _convergence,
    "ablations": _ablations,
    "long-budget": _long_budget,
    "wide-encoder": _wide_encoder,
    "batch-share": _batch_share,
    "mixed-granularity": _mixed_granularity,
    "subpopulation-shift": _subpopulation_shift,
    "per-level-models": _per_level_models,
    "deep-hierarchy": _deep_hierarchy,
}
# The order to run them in: the sweeps first (the others read their choice).
ORDER = tuple(EXPERIMENTS)


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; ConfigError naming the valid ones otherwise."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}{did_you_mean(name, EXPERIMENTS)}; "
                          f"experiments: {', '.join(EXPERIMENTS)} (or: list, report)")
    return EXPERIMENTS[name]()


__all__ = [
    "Cell", "DatasetSetup", "Experiment", "DATASETS", "METHODS", "EXPERIMENTS", "ORDER", "STEP_BUDGET",
    "budget_epochs", "cell_overrides", "cell_config", "cell_config_dict", "train_command", "estimate_seconds",
    "get_experiment", "hparams_for", "select_hparams", "select_shares", "sweep_score", "resolve_placeholders",
]
