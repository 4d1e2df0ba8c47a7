"""A fingerprint of the data a run was trained on, to notice when it has changed since.

The fingerprint names the loader, hashes the files the data came from (a table, a hierarchy file),
and, per split, counts the samples and hashes the inputs and every level's labels as loaded (texts
before any sentence encoder embeds them, so it does not depend on the machine). It is plain data, saved
in checkpoints; :func:`data_change` compares two of them and says what changed, in words.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from mlcl.data.types import Dataset, LabeledSplit

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _tensor_sha256(tensor: torch.Tensor) -> str:
    digest = hashlib.sha256(f"{tuple(tensor.shape)} {tensor.dtype}".encode())
    array = tensor.detach().cpu().contiguous().numpy()
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def _inputs_sha256(inputs: torch.Tensor | list[str]) -> str:
    if isinstance(inputs, torch.Tensor):
        return _tensor_sha256(inputs)
    digest = hashlib.sha256()
    for text in inputs:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


def split_fingerprint(split: LabeledSplit) -> dict[str, Any]:
    """Sample count, inputs hash and one hash per level's labels of one split."""
    return {"samples": len(split), "inputs": _inputs_sha256(split.inputs),
            "labels": {level: _tensor_sha256(target) for level, target in split.targets.items()}}


def data_fingerprint(dataset: Dataset, loader: str, files: Iterable[str | Path], split_seed: int) -> dict[str, Any]:
    """The fingerprint of ``dataset`` as loaded by ``loader`` from ``files`` (those that are files are
    hashed) with the split seed ``split_seed``."""
    hashed = {str(path): file_sha256(Path(path)) for path in files if Path(path).is_file()}
    splits = {name: split_fingerprint(split) for name, split in
              (("train", dataset.train), ("val", dataset.val), ("test", dataset.test)) if split is not None}
    return {"loader": loader, "files": hashed, "split_seed": split_seed, "splits": splits}


def _short(digest: str) -> str:
    return digest[:12]


def data_change(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """What differs between the fingerprint ``saved`` with a checkpoint and ``current`` (None: nothing)."""
    if saved.get("loader") != current.get("loader"):
        return f"the data was loaded by {saved.get('loader')!r} and now by {current.get('loader')!r}"
    if saved.get("split_seed") != current.get("split_seed"):
        return f"the split seed was {saved.get('split_seed')} and is now {current.get('split_seed')}"
    for path, digest in saved.get("files", {}).items():
        now = current.get("files", {}).get(path)
        if now is None:
            return f"the data file {path} is no longer there"
        if now != digest:
            return f"the data file {path} changed (SHA-256 {_short(digest)}... then, {_short(now)}... now)"
    saved_splits, current_splits = saved.get("splits", {}), current.get("splits", {})
    for name in dict.fromkeys([*saved_splits, *current_splits]):
        before, now = saved_splits.get(name), current_splits.get(name)
        if before is None or now is None:
            return f"the {name} split {'appeared' if before is None else 'is gone'}"
        if before["samples"] != now["samples"]:
            return f"the {name} split had {before['samples']} samples and now has {now['samples']}"
        if before["inputs"] != now["inputs"]:
            return f"the {name} split's inputs changed (same count, other content)"
        for level in dict.fromkeys([*before["labels"], *now["labels"]]):
            if before["labels"].get(level) != now["labels"].get(level):
                return f"the {name} split's labels at level {level!r} changed"
    return None
