"""Statistics over seeds and the markdown tables of the report.

Every number is a percentage (x100) of a test-split metric, shown as ``mean ± std (n=seeds)`` with
the sample standard deviation over seeds. "MLCL − best baseline" is the difference of means between
an MLCL variant and the best baseline *of that row* (highest mean; the ``raw-input`` reference is
not a baseline). A ``*`` marks a difference larger than twice its standard error
(``2·sqrt(s1²/n1 + s2²/n2)``, both n >= 2); without it the difference is within seed noise.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

BASELINE_ORDER = ("raw-input", "ce", "simclr", "triplet", "supcon", "himulcon", "mulsupcon")
REFERENCES = ("raw-input",)  # shown, but not a baseline MLCL is compared with
LEVEL_METRICS = (("fine", "linear_top1"), ("coarse", "linear_top1"), ("fine", "knn_top1"), ("coarse", "knn_top1"))
METRIC_NAMES = {"linear_top1": "linear-probe top-1", "knn_top1": "kNN top-1", "mAP": "mAP", "map_at_r": "MAP@R",
                "precision_at_k": "precision@k", "hier_dist_at_k": "tree distance of the k nearest neighbours",
                "micro_f1": "micro-F1", "macro_f1": "macro-F1", "subset_accuracy": "subset accuracy",
                "classifier_top1": "end-to-end classifier top-1"}


def is_mlcl(method: str) -> bool:
    return method.startswith("mlcl")


# ---------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # sample standard deviation (ddof=1); 0 for a single value
    n: int


def stat(values: Iterable[float]) -> Stat | None:
    """Mean, sample std and count of the finite values; None when there are none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return Stat(mean, std, len(xs))


def fmt_stat(s: Stat | None, scale: float = 100.0) -> str:
    """``81.23 ± 0.45 (n=3)`` (a single seed: ``81.23 (n=1)``; nothing: an em dash)."""
    if s is None:
        return "—"
    if s.n == 1:
        return f"{s.mean * scale:.2f} (n=1)"
    return f"{s.mean * scale:.2f} ± {s.std * scale:.2f} (n={s.n})"


@dataclass(frozen=True)
class Comparison:
    variant: str
    baseline: str
    diff: float  # how much better the variant is than the best baseline (mean difference, sign: + = better)
    significant: bool
    variant_stat: Stat
    baseline_stat: Stat


def compare(stats: dict[str, Stat | None], higher_is_better: bool = True) -> list[Comparison]:
    """Each MLCL variant of a row against the best baseline of that row (the lowest, for a metric where
    lower is better such as mistake severity)."""
    baselines = {m: s for m, s in stats.items() if s is not None and not is_mlcl(m) and m not in REFERENCES}
    if not baselines:
        return []
    sign = 1.0 if higher_is_better else -1.0
    best = max(baselines, key=lambda m: sign * baselines[m].mean)
    b = baselines[best]
    out = []
    for method, s in stats.items():
        if s is None or not is_mlcl(method):
            continue
        diff = sign * (s.mean - b.mean)
        significant = False
        if s.n >= 2 and b.n >= 2:
            se = math.sqrt(s.std**2 / s.n + b.std**2 / b.n)
            significant = abs(diff) > 2 * se
        out.append(Comparison(method, best, diff, significant, s, b))
    return out


def fmt_diff(c: Comparison, scale: float = 100.0) -> str:
    return f"{c.diff * scale:+.2f}{'*' if c.significant else ''} (vs {c.baseline})"


# ---------------------------------------------------------------------------- tables


def order_methods(methods: Iterable[str]) -> list[str]:
    methods = list(dict.fromkeys(methods))
    base = [m for m in BASELINE_ORDER if m in methods]
    others = sorted(m for m in methods if m not in base and not is_mlcl(m))
    mlcl = sorted((m for m in methods if is_mlcl(m)), key=lambda m: (m != "mlcl", m))
    return base + others + mlcl


@dataclass
class Collector:
    """Collects every comparison of the report for the "where MLCL loses" summary."""

    losses: list[str] = field(default_factory=list)
    tally: dict[str, list[Comparison]] = field(default_factory=lambda: defaultdict(list))


def table(row_label: str, rows: list[tuple[str, dict[str, list[float]]]], context: str,
          collector: Collector | None, *, higher_is_better: bool = True, scale: float = 100.0) -> str:
    """A markdown table: one row per setting, one column per method, then MLCL − best baseline (for a
    lower-is-better metric: best baseline − MLCL, so that + always means MLCL is better). Values are
    shown times ``scale`` (100: percentages; 1: distances)."""
    methods = order_methods(m for _, cells in rows for m in cells)
    variants = [m for m in methods if is_mlcl(m)]
    has_baseline = any(not is_mlcl(m) and m not in REFERENCES for m in methods)
    diff_columns = variants if has_baseline else []
    difference = "{} − best baseline" if higher_is_better else "best baseline − {}"
    header = [row_label, *methods, *(difference.format(v) for v in diff_columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    unit = " points" if scale == 100.0 else ""
    direction = "" if higher_is_better else " (lower is better)"
    for label, cells in rows:
        stats = {m: stat(cells.get(m, [])) for m in methods}
        comparisons = {c.variant: c for c in compare(stats, higher_is_better)}
        row = [label, *(fmt_stat(stats[m], scale) for m in methods)]
        row += [fmt_diff(comparisons[v], scale) if v in comparisons else "—" for v in diff_columns]
        lines.append("| " + " | ".join(row) + " |")
        if collector is not None:
            for c in comparisons.values():
                collector.tally[c.variant].append(c)
                if c.diff < 0:
                    collector.losses.append(
                        f"{context}, {row_label} {label}: {c.variant} {c.variant_stat.mean * scale:.2f} vs "
                        f"{c.baseline} {c.baseline_stat.mean * scale:.2f}{direction} ({c.diff * scale:+.2f}{unit}, "
                        f"{'beyond' if c.significant else 'within'} seed noise)"
                    )
    return "\n".join(lines)


def metric_of(line: dict[str, Any], level: str, metric: str) -> float | None:
    value = line.get("metrics", {}).get(level, {}).get(metric)
    return None if value is None else float(value)


def grouped(lines: Iterable[dict[str, Any]], row_of: Callable[[dict], Any], value_of: Callable[[dict], float | None]
            ) -> dict[Any, dict[str, list[float]]]:
    out: dict[Any, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for line in lines:
        value = value_of(line)
        if value is not None:
            out[row_of(line)][line["method"]].append(value)
    return out


def ok(lines: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if not line.get("error") and line.get("metrics")]
