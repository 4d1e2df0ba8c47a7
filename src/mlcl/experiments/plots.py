"""The report's line plots: one line per method, mean ± std over seeds as error bars."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from mlcl.experiments.tables import Stat, grouped, order_methods, stat


def plot_lines(series: dict[str, list[tuple[float, Stat]]], path: Path, xlabel: str, ylabel: str, title: str,
                logx: bool = False, extra: dict[str, list[tuple[float, Stat]]] | None = None) -> Path:
    extra = extra or {}
    names = order_methods([*series, *(name.split(" ")[0] for name in extra)])
    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}
    fig = Figure(figsize=(6.4, 4.2))  # drawn without pyplot: no GUI backend, no global state
    ax = fig.subplots()
    for method in order_methods(series):
        points = sorted(series[method])
        xs = [x for x, _ in points]
        ax.errorbar(xs, [s.mean * 100 for _, s in points], yerr=[s.std * 100 for _, s in points], marker="o",
                    capsize=3, label=method, color=colors[method], linewidth=2.2 if method == "mlcl" else 1.3)
    for method, points in extra.items():
        points = sorted(points)
        ax.errorbar([x for x, _ in points], [s.mean * 100 for _, s in points], yerr=[s.std * 100 for _, s in points],
                    marker="s", fillstyle="none", linestyle="none", capsize=3, label=method,
                    color=colors[method.split(" ")[0]])
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def series_of(lines: list[dict[str, Any]], x_of: Callable[[dict], float], value_of: Callable[[dict], float | None]
            ) -> dict[str, list[tuple[float, Stat]]]:
    groups = grouped(lines, x_of, value_of)
    series: dict[str, list[tuple[float, Stat]]] = defaultdict(list)
    for x, cells in groups.items():
        for method, values in cells.items():
            s = stat(values)
            if s is not None:
                series[method].append((x, s))
    return series
