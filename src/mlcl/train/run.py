"""A run: the config, data, objective and model that training optimises and evaluation reads.

:func:`build_run` assembles a run from a config (checking that the encoder can read the data);
:func:`load_run` rebuilds a saved run from its directory and loads its weights. Which checkpoint
``"best"`` means is decided in one place, :func:`checkpoint_path`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from mlcl.data.fingerprint import data_change, data_fingerprint
from mlcl.data.protocols import labelled_rows
from mlcl.data.types import Dataset
from mlcl.errors import CheckpointError, ConfigError, DataError
from mlcl.models.model import ModelSpec, MultiLevelModel
from mlcl.progress import note
from mlcl.train.checkpoint import check_run_checkpoint, load_checkpoint, load_weights
from mlcl.train.config import IMAGE_ENCODERS, TEXT_ENCODERS, Config, DataConfig, load_config
from mlcl.train.data_setup import frozen_text_options, load_data, prepare_dataset, uses_frozen_text_encoder
from mlcl.train.methods import Head, Objective
from mlcl.train.run_dir import open_run_dir
from mlcl.train.runtime import configure_threads, init_distributed, resolve_device, seed_everything

Checkpoint = Literal["best", "last"]


def new_loop_state(world: int = 1) -> dict[str, Any]:
    """The training loop's record of a run that has not trained yet (saved as a checkpoint's ``loop``)."""
    return {"epoch": 0, "step": 0, "global_step": 0, "history": [], "best": None, "epoch_sums": {},
            "train_seconds": 0.0, "world": world}


@dataclass
class Run:
    """One configured run. ``state`` is the training loop's record (epochs done, history, best score);
    ``out_dir`` holds its config, checkpoints and results (None for a run that is never saved);
    ``data_fingerprint`` identifies the data as loaded (:mod:`mlcl.data.fingerprint`), saved in checkpoints;
    ``loaded_from`` is the checkpoint whose weights the model holds (None: as built or trained)."""

    config: Config
    dataset: Dataset
    objective: Objective
    model: MultiLevelModel
    device: torch.device
    out_dir: Path | None = None
    rank: int = 0
    world: int = 1
    state: dict[str, Any] = field(default_factory=new_loop_state)
    data_fingerprint: dict[str, Any] | None = None
    loaded_from: Path | None = None

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0

    @property
    def heads(self) -> list[Head]:
        return self.objective.heads

    def checkpoint_file(self, name: str) -> Path:
        """``out_dir/checkpoints/NAME``."""
        if self.out_dir is None:
            raise CheckpointError("this run has no directory to hold checkpoints")
        return self.out_dir / "checkpoints" / name

    def load_weights(self, which: Checkpoint) -> Path:
        """Load the model weights of this run's ``which`` checkpoint (see :func:`checkpoint_path`)."""
        path = checkpoint_path(self, which)
        load_weights(self.model, read_checkpoint(self, path)["model"], path)
        self.loaded_from = path
        return path


def checkpoint_path(run: Run, which: Checkpoint) -> Path:
    """``best.pt`` when asked for ``"best"`` and this run's validation monitor wrote one, else ``last.pt``.

    A ``best.pt`` that the run's record does not know of (no best score) is never used.
    """
    best = run.checkpoint_file("best.pt")
    if which == "best" and run.state.get("best") is not None and best.exists():
        return best
    return run.checkpoint_file("last.pt")


def read_checkpoint(run: Run, path: Path) -> dict[str, Any]:
    """A checkpoint of this run, refused when another config wrote it or a part is missing."""
    state = load_checkpoint(path, map_location=run.device)
    check_run_checkpoint(state, path)
    if state["config"] != run.config.to_dict():
        raise CheckpointError(f"{path} was written by a different config than {run.out_dir / 'config.yaml'}")
    return state


def check_same_data(run: Run, state: dict[str, Any], path: Path, allow_change: bool = False) -> None:
    """Refuse (or, with ``allow_change``, warn about) data that differs from what ``path`` was trained on.
    Checkpoints of an mlcl without fingerprints are not checked."""
    saved = state.get("data")
    change = data_change(saved, run.data_fingerprint) if saved and run.data_fingerprint else None
    if change is None:
        return
    if not allow_change:
        raise DataError(f"the data changed since {path} was written: {change}; use the data it was trained on, or "
                        "pass --allow-data-change to go on with the data as it is now")
    if run.is_main:
        print(f"mlcl: warning: the data changed since {path} was written ({change}); going on as "
              "--allow-data-change asks", file=sys.stderr)


def data_files(data: DataConfig) -> list[str]:
    """The paths the data config names (``data.path`` and any option naming a path, e.g. a hierarchy)."""
    return [value for value in (data.path, *data.options.values()) if isinstance(value, str) and value]


def check_encoder(config: Config, dataset: Dataset) -> None:
    """Refuse a ``model.encoder`` that cannot read the data's inputs (before any text is embedded)."""
    encoder, modality = config.model.encoder, dataset.modality
    if encoder in TEXT_ENCODERS and modality == "features" and config.data.name == "table" \
            and "input_kind" not in config.data.options:
        raise ConfigError(f"model.encoder={encoder} reads text, but the input column of {dataset.name} was read as "
                          "numbers (its first value is one); if it holds text set data.options.input_kind=text, "
                          "else use model.encoder=mlp")
    if encoder in TEXT_ENCODERS and modality != "text":
        raise ConfigError(f"model.encoder={encoder} reads text, but {dataset.name} gives {modality}; use "
                          + ("small_cnn or resnet18" if modality == "image" else "mlp"))
    if modality == "image" and encoder not in IMAGE_ENCODERS:
        raise ConfigError(f"model.encoder={encoder} cannot read images; use one of {', '.join(IMAGE_ENCODERS)}")
    if modality == "features" and encoder in IMAGE_ENCODERS:
        raise ConfigError(f"model.encoder={encoder} needs images, but {dataset.name} gives feature vectors "
                          "(or frozen text embeddings); use model.encoder=mlp")
    if modality == "text" and encoder not in TEXT_ENCODERS:
        raise ConfigError(f"{dataset.name} is text: use model.encoder=minilm (or hf), not {encoder}")


def _with_data_size(options: dict[str, Any], key: str, value: int) -> dict[str, Any]:
    """The encoder options plus the input size the data fixes (which the user must not set)."""
    if key in options:
        raise ConfigError(f"model.encoder_options.{key} is set from the data ({value} here); remove it")
    return {**options, key: value}


def model_spec(config: Config, dataset: Dataset, objective: Objective) -> ModelSpec:
    """Encoder for the data's modality, one projection head per objective head, optional classifiers.

    ``dataset`` is the prepared one: a frozen text encoder's texts are already embeddings, read by an MLP.
    """
    model_cfg = config.model
    name, options = model_cfg.encoder, dict(model_cfg.encoder_options)
    if dataset.modality == "image":
        options = _with_data_size(options, "in_channels", dataset.train.inputs.shape[1])
    elif dataset.modality == "features":
        if uses_frozen_text_encoder(config):  # the sentence encoder's options were used by prepare_dataset
            options = frozen_text_options(model_cfg)[1]
        name, options = "mlp", _with_data_size(options, "in_dim", dataset.train.inputs.shape[1])
    return ModelSpec(name, options, [h.name for h in objective.heads], model_cfg.proj_hidden, model_cfg.proj_dim,
                     model_cfg.proj_depth, objective.classifier_levels)


def build_model(config: Config, dataset: Dataset, objective: Objective) -> MultiLevelModel:
    """The model of :func:`model_spec`, freshly initialised."""
    return model_spec(config, dataset, objective).build()


def build_run(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> Run:
    """A fresh run of ``config``: this process's rank and device, the prepared data, objective and model.

    Joins the process group under torchrun, sets torch's threads and seeds everything from ``config.seed``
    (before the data and the model's initial weights are drawn).
    """
    rank, local_rank, world = init_distributed(config.train.device)
    device = resolve_device(config.train.device, local_rank)
    configure_threads(config.train.threads)  # default: the cores shared out between local processes
    seed_everything(config.seed)
    dataset = load_data(config)
    fingerprint = data_fingerprint(dataset, config.data.name, data_files(config.data), config.seed)
    check_encoder(config, dataset)
    dataset = prepare_dataset(dataset, config, progress=progress and rank == 0)  # one progress bar
    labelled = labelled_rows(dataset.train)
    if any(count < len(dataset.train) for count in labelled.values()):
        hint = ("" if config.train.labelled_share > 0 else "; batches are uniform, so few of their rows have every "
                "label: train.labelled_share=0.5 draws half of each batch from the rows with a finest label")
        note(progress and rank == 0, f"data: {dataset.name}, {len(dataset.train)} training samples, labelled per "
                                     f"level: {', '.join(f'{name} {count}' for name, count in labelled.items())}"
                                     + hint)
    if dataset.multi_label and (dataset.val is None or len(dataset.val) == 0):
        raise ConfigError(
            f"{dataset.name} is multi-label: its F1 thresholds are chosen on a validation split, and it has "
            "none; give it one (data.options.val_fraction for a table, n_val for fashion-mnist-grid)"
        )
    objective = Objective(config.method, dataset, gather_distributed=world > 1).to(device)
    model = build_model(config, dataset, objective).to(device)
    return Run(config, dataset, objective, model, device, Path(out_dir) if out_dir is not None else None,
               rank, world, new_loop_state(world), fingerprint)


def load_run(run_dir: str | Path, checkpoint: Checkpoint = "best", *, progress: bool = False,
             allow_data_change: bool = False) -> Run:
    """The saved run in ``run_dir`` with the weights of its ``checkpoint`` (``"best"``: see
    :func:`checkpoint_path`) and the loop record of its last checkpoint. Data that changed since the run
    was trained is refused unless ``allow_data_change``."""
    run_dir = Path(run_dir)
    if not open_run_dir(run_dir):
        raise CheckpointError(f"{run_dir} has no checkpoint yet (the run stopped before its first one); start it "
                              f"again with mlcl train --resume {run_dir}")
    run = build_run(load_config(run_dir / "config.yaml"), run_dir, progress=progress)
    path = run.checkpoint_file("last.pt")
    last = read_checkpoint(run, path)
    check_same_data(run, last, path, allow_data_change)
    run.state = last["loop"]
    load_weights(run.objective, last["objective"], path, "objective")
    load_weights(run.model, last["model"], path)
    run.loaded_from = path
    if checkpoint_path(run, checkpoint) != run.checkpoint_file("last.pt"):
        run.load_weights(checkpoint)
    return run
