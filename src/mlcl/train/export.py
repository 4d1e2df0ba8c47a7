"""Exported models: a trained run's weights as ``model.safetensors`` beside ``model.json`` (how to rebuild
the model, its heads, levels and classes) and ``config.yaml``, loadable without pickle and without the
data the run trained on.

:func:`export_run` writes the folder (``mlcl export RUN --out DIR``); :func:`load_trained` (the
top-level :func:`mlcl.load_run`) reads a run folder or an exported one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mlcl import __version__
from mlcl.data.types import LabelLevel
from mlcl.errors import CheckpointError, MlclError
from mlcl.models.model import ModelSpec
from mlcl.train.config import load_config, save_config
from mlcl.train.run import Checkpoint, checkpoint_path, load_run
from mlcl.train.trained import TrainedModel

FORMAT = "mlcl-export"
FORMAT_VERSION = 1
WEIGHTS, MANIFEST, CONFIG = "model.safetensors", "model.json", "config.yaml"


def is_export(folder: Path) -> bool:
    """Whether ``folder`` holds an exported model (rather than a run)."""
    return (folder / MANIFEST).is_file()


def _refuse_used(out: Path) -> None:
    """Refuse an ``out`` that holds anything: nothing of the user's is overwritten."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MlclError(f"--out {out} already exists and is not an empty folder; choose a new one")


def write_export(trained: TrainedModel, out: Path, source: dict[str, Any]) -> None:
    """Write ``trained`` into the empty or new folder ``out``; ``source`` says where it came from."""
    _refuse_used(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise MlclError(f"--out {out} is inside a file; give a folder path") from None
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in trained.model.state_dict().items()}
    save_file(weights, str(out / WEIGHTS), metadata={"format": FORMAT})
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mlcl_version": __version__,
        "model": trained.spec.to_dict(),
        "levels": [{"name": lv.name, "classes": lv.classes, "multi_label": lv.multi_label} for lv in trained.levels],
        "heads": [{"name": name, "level": level} for name, level in trained.head_levels.items()],
        "source": source,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    save_config(trained.config, out / CONFIG)


def export_run(run_dir: str | Path, out: str | Path, checkpoint: Checkpoint = "best", *,
               allow_data_change: bool = False) -> Path:
    """Export the weights of ``run_dir``'s ``checkpoint`` (``"best"``: chosen on validation) to ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    _refuse_used(out)  # before loading the run and its data
    run = load_run(run_dir, checkpoint, allow_data_change=allow_data_change)
    path = checkpoint_path(run, checkpoint)
    source = {"run": str(run_dir), "checkpoint": path.name, "epoch": run.state.get("epoch"),
              "best_epoch": run.state.get("best_epoch")}
    write_export(TrainedModel.from_run(run), out, source)
    return out


def read_export(folder: Path, device: str | torch.device = "cpu") -> TrainedModel:
    """The model in an exported folder (no pickle: JSON, YAML and safetensors only)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{folder / MANIFEST} is not readable JSON ({exc.__class__.__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{folder / MANIFEST} is not an mlcl export")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{folder} is export format {manifest.get('format_version')}; this mlcl reads "
                              f"format {FORMAT_VERSION} (upgrade mlcl)")
    spec = ModelSpec(**manifest["model"])
    try:
        weights = load_file(str(folder / WEIGHTS), device=str(device))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{folder / WEIGHTS} is missing or damaged ({exc}); export the run again") from None
    model = spec.build().to(device)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{folder / WEIGHTS} does not fit the model in {MANIFEST}: "
                              f"{str(exc).splitlines()[0]}") from None
    levels = [LabelLevel(lv["name"], lv["classes"], lv["multi_label"]) for lv in manifest["levels"]]
    heads = {head["name"]: head["level"] for head in manifest["heads"]}
    return TrainedModel(model, spec, load_config(folder / CONFIG), levels, heads)


def load_trained(path: str | Path, checkpoint: Checkpoint = "best", device: str | torch.device = "cpu") -> TrainedModel:
    """A trained model ready for inference, from an exported folder or a run folder.

    An exported folder holds one set of weights and needs nothing else; a run folder is rebuilt with
    its data (which must be where it was) and ``checkpoint`` chooses ``"best"`` (by validation) or
    ``"last"``.
    """
    path = Path(path)
    if is_export(path):
        return read_export(path, device)
    if not (path / CONFIG).is_file():
        raise MlclError(f"{path} is neither an exported model ({MANIFEST}) nor a run folder ({CONFIG})")
    trained = TrainedModel.from_run(load_run(path, checkpoint))
    return trained.to(device)
