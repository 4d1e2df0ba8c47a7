"""Images sorted into class folders, ``root/<coarse>/<fine>/*.png|jpg``, and the image decoding that
the table loader shares.

Images become one float32 ``(N, C, H, W)`` tensor in [0, 1]. Decoding uses Pillow (a dependency of
matplotlib); resizing uses torch, so every image mode is handled the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mlcl.data.types import LabeledSplit, LabelLevel
from mlcl.errors import DataError
from mlcl.hierarchy import Hierarchy

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_LAYOUT = "expected root/<coarse>/<fine>/<image>.png|jpg"


def load_images(
    paths: Sequence[Path],
    *,
    size: int | None = None,
    grayscale: bool | None = None,
    sources: Sequence[str] | None = None,
) -> torch.Tensor:
    """Decode image files into one float32 ``(N, C, H, W)`` tensor in [0, 1].

    ``size`` resizes every image to ``size x size`` (bilinear, antialiased); without it all images
    must have the same size. ``grayscale=None`` gives one channel when every image is grayscale
    (mode L, or R = G = B, as matplotlib writes gray images) and three otherwise; True / False force
    one / three channels. An alpha channel is dropped. ``sources[i]`` names where path ``i`` came
    from in error messages (default: the path itself).
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DataError(f"image size must be a positive integer, got {size!r}")
    if not paths:
        raise DataError("no image files to load")
    images: list[torch.Tensor] = []
    for i, path in enumerate(paths):
        where = sources[i] if sources is not None else str(path)
        image = _decode(Path(path), where, grayscale)
        if size is not None:
            image = _resize(image, size)
        elif images and image.shape[1:] != images[0].shape[1:]:
            h, w = image.shape[1:]
            h0, w0 = images[0].shape[1:]
            raise DataError(
                f"{where}: image {path} is {w}x{h} pixels but {paths[0]} is {w0}x{h0}; all images "
                "must have the same size: resize them or pass size="
            )
        images.append(image)
    channels = max(image.shape[0] for image in images)
    return torch.stack([image.expand(channels, -1, -1) for image in images])


def _decode(path: Path, where: str, grayscale: bool | None) -> torch.Tensor:
    """One image file -> (C, H, W) float32 in [0, 1]; DataError if missing or not an image."""
    if not path.is_file():
        raise DataError(f"{where}: image file not found: {path}; paths are relative to the data file")
    try:
        with Image.open(path) as img:
            img.load()
            return torch.from_numpy(_pixels(img, grayscale))
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        reason = reason.replace(f" {str(path)!r}", "").replace(str(path), "the file")  # the path is named once
        raise DataError(f"{where}: {path} is not a readable PNG/JPEG image ({reason})") from None


def _pixels(img: Image.Image, grayscale: bool | None) -> np.ndarray:
    """(C, H, W) float32 in [0, 1]: 16-bit gray is scaled by 65535, everything else goes via L / RGB."""
    if img.mode.startswith("I;16"):
        gray = np.asarray(img, dtype=np.float32)[None] / 65535.0
        return gray if grayscale is not False else np.repeat(gray, 3, axis=0)
    if grayscale:
        return np.asarray(img.convert("L"), dtype=np.float32)[None] / 255.0
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    if grayscale is None and (rgb[0] == rgb[1]).all() and (rgb[1] == rgb[2]).all():
        rgb = rgb[:1]
    return np.ascontiguousarray(rgb)


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    resized = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized[0].clamp_(0.0, 1.0)


def _entries(folder: Path) -> list[Path]:
    """The entries of a folder in sorted order, hidden ones (.DS_Store, .ipynb_checkpoints) skipped."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _subfolders(folder: Path, what: str) -> list[Path]:
    """The class folders inside ``folder``; DataError for a stray file or no folder at all."""
    entries = _entries(folder)
    stray = [p for p in entries if not p.is_dir()]
    if stray:
        raise DataError(f"{stray[0]}: a file where {what} folders belong; {_LAYOUT}")
    if not entries:
        raise DataError(f"{folder}: no {what} folders; {_LAYOUT}")
    return entries


def _image_files(folder: Path) -> list[Path]:
    """The image files of a fine-class folder; DataError for an empty folder or a non-image entry."""
    entries = _entries(folder)
    for entry in entries:
        if entry.is_dir() or entry.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(
                f"{entry}: not an image file (expected {', '.join(IMAGE_SUFFIXES)}); {_LAYOUT}"
            )
    if not entries:
        raise DataError(f"{folder}: empty folder; put images in it or remove it")
    return entries


def load_image_folder(
    root: str | Path, *, size: int | None = None, grayscale: bool | None = None
) -> tuple[LabeledSplit, list[LabelLevel], Hierarchy]:
    """Load ``root/<coarse>/<fine>/*.png|jpg`` as a two-level dataset ("coarse", "fine").

    Folders and files are read in sorted order, so the result is deterministic; class ids follow
    the sorted folder names. A fine folder name must be unique across coarse folders. ``size`` and
    ``grayscale`` are as in :func:`load_images`. Returns the split, its levels and the hierarchy.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}; {_LAYOUT}")
    paths: list[tuple[str, str]] = []
    folders: list[str] = []
    files: list[Path] = []
    fine_names: list[str] = []
    for coarse in _subfolders(root, "coarse-class"):
        for fine in _subfolders(coarse, "fine-class"):
            images = _image_files(fine)
            paths.append((coarse.name, fine.name))
            folders.append(f"folder {fine}")
            files += images
            fine_names += [fine.name] * len(images)
    hierarchy = Hierarchy.from_level_columns(paths, ["coarse", "fine"], row_names=folders)
    inputs = load_images(files, size=size, grayscale=grayscale)
    labels = hierarchy.leaf_to_levels(hierarchy.encode("fine", fine_names))
    targets = {name: labels[:, k].contiguous() for k, name in enumerate(hierarchy.level_names)}
    ids = [file.relative_to(root).as_posix() for file in files]
    return LabeledSplit(inputs, targets, ids), hierarchy.label_levels(), hierarchy
