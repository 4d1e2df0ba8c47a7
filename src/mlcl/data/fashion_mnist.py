"""Fashion-MNIST as a two-level hierarchy (5 coarse -> 10 fine), read from IDX files with plain torch."""

from __future__ import annotations

import functools
import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from mlcl.data.paths import Downloader, find_data_file, offline, urllib_download
from mlcl.data.splits import stratified_split
from mlcl.data.types import Dataset, LabeledSplit, LabelLevel
from mlcl.errors import DataError
from mlcl.hierarchy import Hierarchy

NAME = "fashion-mnist"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
COARSE_CLASSES = ["tops", "bottoms", "dresses", "footwear", "bags"]
FINE2COARSE = [0, 1, 0, 2, 0, 3, 0, 3, 4, 3]
IMAGE_SIZE = 28

# IDX type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> torch.Tensor:
    """Decode an IDX file (gzipped or plain) into a tensor of its native shape and dtype.

    Decoded files are cached per process (keyed by path, size and mtime) because several runs reuse
    them; treat the returned tensor as read-only.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc.strerror}); check the path") from exc
    return _read_idx_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> torch.Tensor:
    raw = _read_bytes(Path(path))
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'}); "
                        "expected 00 00 <type code> <ndim>; re-download or reinstall the file")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header truncated ({len(raw)} bytes, expected {header}); "
                        "re-download or reinstall the file")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: IDX file has {len(raw)} bytes but its header (dims {dims}) implies "
                        f"{expected}; the file is truncated or corrupt, re-download or reinstall it")
    data = np.frombuffer(raw, dtype=dtype, offset=header).astype(dtype.newbyteorder("="))
    return torch.from_numpy(data.reshape(dims))


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc.strerror}); check the path") from exc
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        message = f"{path}: corrupt or truncated gzip file ({exc}); re-download or reinstall it"
        raise DataError(message) from exc


def hierarchy() -> Hierarchy:
    """The Fashion-MNIST label tree: 5 coarse groups over the 10 classes."""
    return Hierarchy.from_index(FINE2COARSE, CLASSES, COARSE_CLASSES, ("coarse", "fine"))


def _locate(stem: str, data_dir: str | Path | None, download: Downloader | None) -> Path:
    return find_data_file(NAME, [f"{stem}.gz", stem], DEBIAN_DIRS, DEBIAN_PACKAGE, URL + stem + ".gz",
                          data_dir=data_dir, download=download)


def load_raw(split: str, data_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64 of the official ``train`` or ``test`` split."""
    image_stem, label_stem = FILES[split]
    image_path = _locate(image_stem, data_dir, urllib_download)
    label_path = _locate(label_stem, data_dir, urllib_download)
    images, labels = read_idx(image_path), read_idx(label_path)
    fix = f"re-download it or reinstall {DEBIAN_PACKAGE}"
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{image_path}: expected uint8 images of shape (N, 28, 28), got "
                        f"{images.dtype} {tuple(images.shape)}; {fix}")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{label_path}: expected {images.shape[0]} labels (one per image in "
                        f"{image_path.name}), got shape {tuple(labels.shape)}; {fix}")
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise DataError(f"{label_path}: labels must lie in 0..9, found "
                        f"{labels.min().item()}..{labels.max().item()}; {fix}")
    return images, labels


def is_available(data_dir: str | Path | None = None) -> tuple[bool, str]:
    """Whether all four files are present locally (never downloads), and where / what to install."""
    try:
        found = [_locate(stem, data_dir, None) for pair in FILES.values() for stem in pair]
    except DataError as exc:
        return False, str(exc) if offline() else f"{exc}; or let mlcl download it from {URL} on first use"
    return True, f"found in {found[0].parent}"


def _labeled(images: torch.Tensor, fine: torch.Tensor, index: torch.Tensor) -> LabeledSplit:
    fine = fine[index]
    inputs = images[index].unsqueeze(1).float().div_(255.0)
    ids = [str(i) for i in index.tolist()]  # the image's index in its official file
    return LabeledSplit(inputs, {"coarse": torch.tensor(FINE2COARSE)[fine], "fine": fine}, ids)


def _limited(labels: torch.Tensor, index: torch.Tensor, limit: int | None, seed: int) -> torch.Tensor:
    if limit is None:
        return index
    if limit < 0:
        raise DataError(f"{NAME}: a limit must be >= 0 or None, got {limit}")
    return index[stratified_split(labels[index], [min(limit, len(index))], seed)[0]]


def load_fashion_mnist(
    val_size: int = 5000,
    limit_train: int | None = None,
    limit_test: int | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> Dataset:
    """Fashion-MNIST with levels ``coarse`` (5) and ``fine`` (10); images ``(N, 1, 28, 28)`` in [0, 1].

    ``val_size`` images are carved from the official training set (stratified by class, seeded);
    ``limit_train`` / ``limit_test`` keep a stratified subset of at most that many (for quick runs).
    """
    train_images, train_labels = load_raw("train", data_dir)
    test_images, test_labels = load_raw("test", data_dir)
    if not 0 <= val_size < len(train_labels):
        raise DataError(f"{NAME}: val_size must lie in 0..{len(train_labels) - 1} (it is carved from the "
                        f"training images), got {val_size}")
    val_index, train_index = stratified_split(train_labels, [val_size], seed)
    train_index = _limited(train_labels, train_index, limit_train, seed)
    test_index = _limited(test_labels, torch.arange(len(test_labels)), limit_test, seed)
    return Dataset(
        name=NAME,
        modality="image",
        levels=[LabelLevel("coarse", list(COARSE_CLASSES)), LabelLevel("fine", list(CLASSES))],
        train=_labeled(train_images, train_labels, train_index),
        test=_labeled(test_images, test_labels, test_index),
        val=_labeled(train_images, train_labels, val_index) if val_size > 0 else None,
        hierarchy=hierarchy(),
    )
