"""Export a trained run's embeddings (the encoder's or one head's) for retrieval or analysis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mlcl.data.tabular import load_inputs
from mlcl.errors import MlclError
from mlcl.train.config import IMAGE_ENCODERS, TEXT_ENCODERS
from mlcl.train.data_setup import frozen_text_embedder, uses_frozen_text_encoder
from mlcl.train.evaluation import extract
from mlcl.train.run import Run, load_run
from mlcl.user_input import did_you_mean

SPLITS = ("train", "val", "test")
FORMATS = (".npy", ".pt", ".csv")


def _inputs(run: Run, source: str):
    if source in SPLITS:
        split = getattr(run.dataset, source)
        if split is None:
            raise MlclError(f"the run's dataset has no {source} split")
        return split.inputs
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
    inputs = load_inputs(path, input_kind=kind, **reading)
    if kind == "text" and uses_frozen_text_encoder(run.config):
        return frozen_text_embedder(run.config.model, progress=False)(inputs)  # what the trained MLP reads
    return inputs


def export_embeddings(run_dir: Path, source: str, head: str, out: Path, *,
                      allow_data_change: bool = False) -> tuple[Path, int, int]:
    """Write embeddings of ``source`` by ``head`` (or ``"encoder"``) to ``out``; returns (path, N, D)."""
    if out.suffix not in FORMATS:
        raise MlclError(f"--out must end in one of {', '.join(FORMATS)}, got {out.name}")
    run = load_run(run_dir, "best", allow_data_change=allow_data_change)
    inputs = _inputs(run, source)
    names = [h.name for h in run.heads]
    if head == "encoder":
        vectors = extract(run.model, inputs, run.device)
    elif head in names:
        vectors = extract(run.model, inputs, run.device, what="projections")[names.index(head)]
        vectors = torch.nn.functional.normalize(vectors, dim=1)
    else:
        raise MlclError(f"--head {head!r} is not a head of this run{did_you_mean(head, names)}; "
                        f"heads: encoder, {', '.join(names)}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise MlclError(f"--out {out}: {out.parent} is a file, not a folder") from None
    if out.suffix == ".npy":
        np.save(out, vectors.numpy())
    elif out.suffix == ".pt":
        torch.save(vectors, out)
    else:
        np.savetxt(out, vectors.numpy(), delimiter=",", fmt="%.6g")
    return out, vectors.shape[0], vectors.shape[1]
