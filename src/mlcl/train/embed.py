"""Export a trained run's embeddings (the encoder's or one head's) with each row's id and labels.

Formats: ``.npz`` (``embeddings``, ``ids`` and one ``label_<level>`` array per level), ``.csv`` (a header
``id,<levels...>,e0,e1,...``, one row per sample), or bare ``.npy`` / ``.pt`` vectors with the ids and
labels in ``<name>.rows.csv`` beside them. Labels are class names (multi-label: joined by ``|``; empty
when unknown); a file given with ``--input`` has ids (its line numbers) but no labels.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from mlcl.data.tabular import load_inputs
from mlcl.data.types import LabeledSplit, LabelLevel
from mlcl.errors import MlclError
from mlcl.train.config import IMAGE_ENCODERS, TEXT_ENCODERS
from mlcl.train.run import Checkpoint, Run, load_run
from mlcl.train.trained import TrainedModel

SPLITS = ("train", "val", "test")
FORMATS = (".npz", ".csv", ".npy", ".pt")


def _source(run: Run, source: str) -> LabeledSplit:
    """The run's split ``source``, or the inputs of the file ``source`` read as training read its table."""
    if source in SPLITS:
        split = getattr(run.dataset, source)
        if split is None:
            raise MlclError(f"the run's dataset has no {source} split")
        return split
    path = Path(source)
    if not path.exists():
        raise MlclError(f"--input {source!r} is neither one of {', '.join(SPLITS)} nor an existing file")
    if run.config.data.name != "table":
        raise MlclError(
            "--input FILE needs a run trained on a table (data.name=table), so the file's columns are known"
        )
    options = run.config.data.options
    # The training file's input columns, read as training read them; no label column is needed.
    reading = {key: options[key] for key in ("input", "size", "grayscale") if key in options}
    encoder = run.config.model.encoder
    kind = "text" if encoder in TEXT_ENCODERS else ("image" if encoder in IMAGE_ENCODERS else "features")
    return load_inputs(path, input_kind=kind, **reading)


def _label_names(level: LabelLevel, target: torch.Tensor) -> list[str]:
    """Each row's class name at ``level`` (multi-label: names joined by ``|``; unknown: empty)."""
    if level.multi_label:
        return ["|".join(level.classes[i] for i in row.nonzero().flatten().tolist()) for row in target]
    return [level.classes[i] if i >= 0 else "" for i in target.tolist()]


def _rows(split: LabeledSplit, levels: list[LabelLevel]) -> tuple[list[str], dict[str, list[str]]]:
    """The ids (the loader's, else positions in the split) and the label names of every level present."""
    ids = split.ids if split.ids is not None else [str(i) for i in range(len(split))]
    labels = {lv.name: _label_names(lv, split.targets[lv.name]) for lv in levels if lv.name in split.targets}
    return ids, labels


def _write(out: Path, vectors: np.ndarray, ids: list[str], labels: dict[str, list[str]]) -> list[Path]:
    """Write ``out`` in its format; returns the files written."""
    if out.suffix == ".npz":
        arrays = {"embeddings": vectors, "ids": np.array(ids), **{f"label_{k}": np.array(v) for k, v in labels.items()}}
        np.savez(out, **arrays)
        return [out]
    table = out if out.suffix == ".csv" else out.with_suffix(".rows.csv")
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        dims = [f"e{i}" for i in range(vectors.shape[1])] if out.suffix == ".csv" else []
        writer.writerow(["id", *labels, *dims])
        for i, row_id in enumerate(ids):
            values = [f"{v:.6g}" for v in vectors[i]] if dims else []
            writer.writerow([row_id, *(column[i] for column in labels.values()), *values])
    if out.suffix == ".npy":
        np.save(out, vectors)
    elif out.suffix == ".pt":
        torch.save(torch.from_numpy(vectors), out)
    return [out] if out == table else [out, table]


def export_embeddings(run_dir: Path, source: str, head: str, out: Path, checkpoint: Checkpoint = "best",
                      overwrite: bool = False, *, allow_data_change: bool = False) -> tuple[list[Path], int, int]:
    """Write the embeddings of ``source`` by ``head`` (or ``"encoder"``) to ``out``, with ids and labels.

    Returns the files written, the number of rows and the dimension.
    """
    if out.suffix not in FORMATS:
        raise MlclError(f"--out must end in one of {', '.join(FORMATS)}, got {out.name}")
    targets = [out] if out.suffix in (".npz", ".csv") else [out, out.with_suffix(".rows.csv")]
    taken = [str(p) for p in targets if p.exists()]
    if taken and not overwrite:
        raise MlclError(f"{', '.join(taken)} already exist(s); choose another --out or add --overwrite")
    run = load_run(run_dir, checkpoint, allow_data_change=allow_data_change)
    split = _source(run, source)
    trained = TrainedModel.from_run(run)
    vectors = trained.embed(split.inputs, head).numpy()
    ids, labels = _rows(split, run.dataset.levels)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise MlclError(f"--out {out}: {out.parent} is a file, not a folder") from None
    return _write(out, vectors, ids, labels), vectors.shape[0], vectors.shape[1]
