"""load_image_folder on real PNG / JPEG trees: order, labels, channels, resizing and errors."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from mlcl.data.image_folder import load_image_folder
from mlcl.errors import DataError

TREE = {"animal": {"dog": 2, "cat": 1}, "vehicle": {"car": 2}}


def make_tree(root: Path, shape=(6, 4), tree=TREE) -> None:
    """Gray PNGs written with matplotlib; pixel value encodes (fine folder, file index)."""
    for coarse, fines in tree.items():
        for fine, count in fines.items():
            folder = root / coarse / fine
            folder.mkdir(parents=True)
            for i in range(count):
                value = (len(fine) * 10 + i) / 255.0
                plt.imsave(folder / f"img{i}.png", np.full(shape, value), cmap="gray", vmin=0, vmax=1)


def test_sorted_order_labels_and_hierarchy(tmp_path) -> None:
    make_tree(tmp_path)
    split, levels, h = load_image_folder(tmp_path)
    assert h.classes == {"coarse": ["animal", "vehicle"], "fine": ["car", "cat", "dog"]}
    assert [lv.name for lv in levels] == ["coarse", "fine"]
    # animal/cat/img0, animal/dog/img0, animal/dog/img1, vehicle/car/img0, vehicle/car/img1
    assert split.targets["fine"].tolist() == [1, 2, 2, 0, 0]
    assert split.targets["coarse"].tolist() == [0, 0, 0, 1, 1]
    assert split.inputs.shape == (5, 1, 6, 4) and split.inputs.dtype == torch.float32
    assert split.inputs[2].mean().item() == pytest.approx(31 / 255, abs=1 / 255)


def test_deterministic(tmp_path) -> None:
    make_tree(tmp_path)
    a, _, _ = load_image_folder(tmp_path)
    b, _, _ = load_image_folder(tmp_path)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets["fine"], b.targets["fine"])


def test_grayscale_flag_and_resize(tmp_path) -> None:
    make_tree(tmp_path)
    rgb, _, _ = load_image_folder(tmp_path, grayscale=False, size=3)
    assert rgb.inputs.shape == (5, 3, 3, 3)
    assert 0.0 <= rgb.inputs.min() and rgb.inputs.max() <= 1.0


def test_colour_jpeg_and_mixed_channels(tmp_path) -> None:
    make_tree(tmp_path, tree={"a": {"x": 1}})
    folder = tmp_path / "b" / "y"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((6, 4, 3), [200, 10, 10], np.uint8)).save(folder / "red.jpg", quality=95)
    split, _, _ = load_image_folder(tmp_path)
    assert split.inputs.shape == (2, 3, 6, 4)
    assert torch.equal(split.inputs[0, 0], split.inputs[0, 2])  # the gray one was broadcast to RGB
    assert split.inputs[1, 0].mean() > 0.7 and split.inputs[1, 1].mean() < 0.1
    gray, _, _ = load_image_folder(tmp_path, grayscale=True)
    assert gray.inputs.shape == (2, 1, 6, 4)


def test_hidden_files_are_skipped(tmp_path) -> None:
    make_tree(tmp_path)
    (tmp_path / ".DS_Store").write_text("x")
    (tmp_path / "animal" / "cat" / ".thumbs").write_text("x")
    split, _, _ = load_image_folder(tmp_path)
    assert len(split) == 5


def test_mixed_sizes_need_size(tmp_path) -> None:
    make_tree(tmp_path)
    plt.imsave(tmp_path / "vehicle" / "car" / "wide.png", np.zeros((6, 9)), cmap="gray")
    with pytest.raises(DataError, match=r"wide.png is 9x6 pixels but .* is 4x6.*pass size="):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, size=5)[0].inputs.shape == (6, 1, 5, 5)


@pytest.mark.parametrize("break_it, message", [
    (lambda r: (r / "animal" / "cat" / "notes.txt").write_text("x"), r"notes.txt: not an image file"),
    (lambda r: (r / "animal" / "cat" / "bad.png").write_text("x"), r"bad.png: .*bad.png is not a readable PNG/JPEG"),
    (lambda r: (r / "vehicle" / "bike").mkdir(), r"bike: empty folder"),
    (lambda r: (r / "empty").mkdir(), r"empty: no fine-class folders"),
    (lambda r: (r / "animal" / "stray.png").write_text("x"), r"stray.png: a file where fine-class folders belong"),
    (lambda r: (r / "animal" / "cat" / "sub").mkdir(), r"sub: not an image file"),
])
def test_layout_errors(tmp_path, break_it, message) -> None:
    make_tree(tmp_path)
    break_it(tmp_path)
    with pytest.raises(DataError, match=message):
        load_image_folder(tmp_path)


def test_missing_and_empty_root(tmp_path) -> None:
    with pytest.raises(DataError, match="image folder not found"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="no coarse-class folders"):
        load_image_folder(tmp_path)


def test_fine_name_under_two_coarse_folders(tmp_path) -> None:
    make_tree(tmp_path, tree={"animal": {"jaguar": 1}, "vehicle": {"jaguar": 1}})
    with pytest.raises(DataError, match=r"'jaguar' \(level 'fine'\) has two parents: 'animal' .* and 'vehicle'"):
        load_image_folder(tmp_path)
