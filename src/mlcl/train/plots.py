"""Plots of a run: training curves and a 2-D map of the test embeddings per head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import torch
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from mlcl.data.types import Dataset
from mlcl.train.config import EvalConfig
from mlcl.train.evaluation import extract


def training_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Loss (total and per head) and the validation kNN score per epoch."""
    if not history:
        return
    epochs = [record["epoch"] for record in history]
    loss_keys = [k for k in history[0] if k == "loss" or k.startswith(("loss_", "ce_"))]
    has_val = any("val_knn" in record for record in history)
    fig = Figure(figsize=(11 if has_val else 6, 4))  # drawn without pyplot: no GUI backend, no global state
    axes = fig.subplots(1, 2 if has_val else 1, squeeze=False)
    for key in loss_keys:
        label = "total (weighted sum)" if key == "loss" else key.replace("loss_", "head ").replace("ce_", "classifier ")
        axes[0, 0].plot(epochs, [record.get(key, float("nan")) for record in history], marker="o", label=label)
    axes[0, 0].set(xlabel="epoch", ylabel="training loss (epoch mean)", title="training loss")
    axes[0, 0].legend()
    if has_val:
        points = [(r["epoch"], r["val_knn"]) for r in history if "val_knn" in r]
        axes[0, 1].plot(*zip(*points), marker="o", color="tab:green")
        axes[0, 1].set(xlabel="epoch", ylabel="kNN score (mean over levels)", title="validation kNN")
    for ax in axes[0]:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def class_colours(count: int) -> list[tuple[float, ...]]:
    """``count`` colours as far apart as matplotlib's qualitative palettes allow: tab10, then each next
    colour the one of tab20 / Dark2 / Set1-3 / Accent farthest (RGB) from all chosen so far. tab20 alone
    pairs a dark and a light shade of one hue, which are hard to tell apart on a scatter plot."""
    pool = [tuple(c[:3]) for name in ("tab20", "Dark2", "Set1", "Set2", "Set3", "Accent")
            for c in matplotlib.colormaps[name].colors]
    chosen = [tuple(c[:3]) for c in matplotlib.colormaps["tab10"].colors][:count]
    while len(chosen) < count:
        chosen.append(max(pool, key=lambda c: min(sum((a - b) ** 2 for a, b in zip(c, x)) for x in chosen)))
    return chosen


MAX_LEGEND = 20  # more classes than this: no legend (it would cover the map)


def _colour_labels(
    dataset: Dataset, level_name: str | None, index: torch.Tensor
) -> tuple[torch.Tensor, str, list[str]]:
    level = next((lv for lv in dataset.levels if lv.name == level_name), dataset.levels[-1])
    target = dataset.test.targets[level.name][index]
    if level.multi_label:  # colour by the first label present
        return target.argmax(1), f"{level.name} (first label)", level.classes
    return target, level.name, level.classes


def embedding_maps(model: torch.nn.Module, dataset: Dataset, heads: list, device: torch.device, path: Path,
                   config: EvalConfig) -> None:
    """One panel per head (and the encoder), test points reduced to 2-D, coloured by that head's labels."""
    generator = torch.Generator().manual_seed(0)
    index = torch.randperm(len(dataset.test), generator=generator)[: config.map_points]
    subset = dataset.test.subset(index)
    panels = [("encoder features", extract(model, subset.inputs, device), dataset.levels[-1].name)]
    if heads:
        projections = extract(model, subset.inputs, device, what="projections")
        panels += [(f"head {h.name}", projections[i], h.level.name if h.level else None) for i, h in enumerate(heads)]
    fig = Figure(figsize=(4.6 * len(panels), 5.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, points, level_name) in zip(axes[0], panels):
        points = torch.nn.functional.normalize(points, dim=1).numpy()
        if config.embedding_map == "tsne":
            tsne = TSNE(n_components=2, init="pca", random_state=0, perplexity=min(30, len(points) - 1))
            xy = tsne.fit_transform(points)
        else:
            xy = PCA(n_components=2, random_state=0).fit_transform(points)
        colours, label_name, classes = _colour_labels(dataset, level_name, index)
        palette = class_colours(len(classes))
        for class_id in colours.unique().tolist():
            if class_id < 0:
                continue
            mask = (colours == class_id).numpy()
            ax.scatter(xy[mask, 0], xy[mask, 1], color=palette[class_id], s=5, alpha=0.8, label=classes[class_id])
        if len(classes) <= MAX_LEGEND:
            ax.legend(fontsize=8, markerscale=3, loc="upper center", bbox_to_anchor=(0.5, -0.02), frameon=False,
                      ncol=min(3, len(classes)), handletextpad=0.2, columnspacing=0.8)
        ax.set_title(f"{title}\ncoloured by {label_name}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{dataset.name}: test embeddings ({config.embedding_map.upper()})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
