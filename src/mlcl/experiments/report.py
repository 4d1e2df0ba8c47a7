"""``docs/results.md`` from ``docs/results/*.jsonl``: one section per experiment, the summary of where
MLCL wins and loses, and the plots.

Numbers and comparisons follow :mod:`mlcl.experiments.tables`; every row where an MLCL variant is below
the best baseline is listed, in words, under "Where MLCL loses".
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcl.experiments import grids
from mlcl.experiments.plots import plot_lines, series_of
from mlcl.experiments.runner import read_lines
from mlcl.experiments.tables import (
    LEVEL_METRICS,
    METRIC_NAMES,
    Collector,
    Stat,
    compare,
    fmt_stat,
    grouped,
    is_mlcl,
    metric_of,
    ok,
    order_methods,
    stat,
    table,
)


def _pct(x: float) -> str:
    return f"{x * 100:g} %"


def _epochs_label(lines: list[dict[str, Any]], **match: Any) -> str:
    epochs = sorted({line.get("epochs") for line in lines if all(line.get(k) == v for k, v in match.items())})
    return f" ({'/'.join(str(e) for e in epochs)} ep)" if epochs else ""


def _command(name: str, patterns: str | None = None) -> str:
    cells = f" --cells '{patterns}'" if patterns else ""
    after = "" if name == "sweep" else " (after `mlcl experiment sweep`)"
    return f"Command: `mlcl experiment {name}{cells}`{after}, then `mlcl experiment report`."


def _rel(path: Path, md: Path) -> str:
    return os.path.relpath(path, md.parent).replace(os.sep, "/")


# ---------------------------------------------------------------------------- sections


@dataclass
class Report:
    markdown: str
    plots: list[Path]
    losses: list[str]


class _Builder:
    def __init__(self, results: dict[str, list[dict[str, Any]]], results_dir: Path, md_path: Path):
        self.results = results
        self.results_dir = results_dir
        self.md = md_path
        self.collector = Collector()
        self.plots: list[Path] = []

    def plot(self, name: str, **kwargs: Any) -> str:
        path = plot_lines(path=self.results_dir / name, **kwargs)
        self.plots.append(path)
        return f"![{name}]({_rel(path, self.md)})"

    # -- sweep
    def sweep(self) -> list[str]:
        lines = self.results.get("sweep", [])
        out = ["## Hyper-parameter sweep (validation split)", ""]
        if not lines:
            return out + ["Not run yet: `mlcl experiment sweep`. Until it is, every run uses lr "
                          f"{grids.DEFAULT_HPARAMS['lr']} and temperature {grids.DEFAULT_HPARAMS['temperature']}.", ""]
        chosen, table_rows = grids.select_hparams(lines)
        out += [f"Learning rate in {list(grids.SWEEP_LRS)} x temperature in {list(grids.SWEEP_TEMPERATURES)} "
                "(learning rate only for ce), one seed, scored on the validation split; the best setting per "
                "(dataset, method) is used by every other experiment (MLCL variants use MLCL's).", "",
                _command("sweep"), "",
                "| dataset | method | lr | temperature | validation score | chosen |", "|---|---|---|---|---|---|"]
        for (dataset, method), rows in sorted(table_rows.items()):
            metric = "/".join(grids.DATASETS[dataset].score) if dataset in grids.DATASETS else "?"
            for r in rows:
                pick = chosen.get((dataset, method))
                mark = "**yes**" if pick and pick["lr"] == r["lr"] and pick["temperature"] == r["temperature"] else ""
                temperature = "—" if method in grids.TEMPERATURE_FREE else f"{r['temperature']:g}"
                score = "failed" if r["score"] is None else f"{r['score'] * 100:.2f} ({metric})"
                out.append(f"| {dataset} | {method} | {r['lr']:g} | {temperature} | {score} | {mark} |")
        return out + [""]

    # -- limited data
    def limited(self) -> list[str]:
        lines = ok(self.results.get("limited-data", []))
        out = ["## Limited labels", ""]
        if not lines:
            return out + ["Not run yet: `mlcl experiment limited-data`.", ""]
        out += ["A stratified fraction of the training labels per fine class (same seed -> same subset for every "
                "method), full test set. Epochs (shown per row) are scaled so that every run of a dataset makes "
                "about the same number of optimiser steps ("
                + ", ".join(f"{n}: {d.steps}" for n, d in grids.DATASETS.items()) + "), "
                f"capped at {grids.MAX_EPOCHS} epochs for the smallest fractions.", ""]
        for dataset in sorted({line["dataset"] for line in lines}):
            subset = [line for line in lines if line["dataset"] == dataset]
            out += [f"### {dataset}", "", _command("limited-data", f"{dataset}__*"), ""]
            for level, metric in LEVEL_METRICS:
                groups = grouped(subset, lambda line: line["fraction"],
                                 lambda line, lv=level, m=metric: metric_of(line, lv, m))
                if not groups:
                    continue
                rows = [(f"{_pct(f)}{_epochs_label(subset, fraction=f)}", groups[f]) for f in sorted(groups)]
                out += [f"**{level} {METRIC_NAMES[metric]}** (%)", "",
                        table("fraction", rows, f"limited-data {dataset} {level} {METRIC_NAMES[metric]}",
                              self.collector), ""]
            series = series_of(subset, lambda line: line["fraction"],
                               lambda line: metric_of(line, "fine", "linear_top1"))
            out += [self.plot(f"limited-data-{dataset}.png", series=series, xlabel="label fraction (log)",
                              ylabel="fine linear-probe top-1 (%)", title=f"{dataset}: accuracy vs label fraction",
                              logx=True), ""]
        return out

    # -- label noise
    def noise(self) -> list[str]:
        lines = ok(self.results.get("label-noise", []))
        out = ["## Label noise", ""]
        if not lines:
            return out + ["Not run yet: `mlcl experiment label-noise`.", ""]
        borrowed = self._clean_reference(lines)
        out += [f"Noise on the fine training labels of the {_pct(grids.NOISE_FRACTION)} training subset "
                "(coarse labels follow the noisy fine label); test labels are clean. `mlcl+instance` adds the "
                "global (instance) head. Rate 0 of the other methods: "
                + ("the matching fraction-0.1 cells of limited-data (identical config apart from noise)."
                   if borrowed else "not available (run limited-data to fill it)."), ""]
        all_lines = lines + borrowed
        for mode in ("symmetric", "hierarchical"):
            subset = [line for line in all_lines if line.get("noise_mode", "symmetric") == mode or line["noise"] == 0]
            if not any(line["noise"] > 0 and line.get("noise_mode") == mode for line in subset):
                continue
            tag = "sym" if mode == "symmetric" else "hier"
            out += [f"### {mode} noise", "", _command("label-noise", f"*__{tag}*,*__clean__*"),
                    f"Rate 0 of the baselines and mlcl: `mlcl experiment limited-data --cells "
                    f"'fashion-mnist__*__f{grids.NOISE_FRACTION:g}__clean__*'`.", ""]
            for level, metric in LEVEL_METRICS[:3]:
                groups = grouped(subset, lambda line: line["noise"],
                                 lambda line, lv=level, m=metric: metric_of(line, lv, m))
                rows = [(f"{r:g}", groups[r]) for r in sorted(groups)]
                out += [f"**{level} {METRIC_NAMES[metric]}** (%)", "",
                        table("noise rate", rows, f"label-noise ({mode}) {level} {METRIC_NAMES[metric]}",
                              self.collector), ""]
        sym = [line for line in all_lines if line.get("noise_mode", "symmetric") == "symmetric" or line["noise"] == 0]
        hier = [line for line in all_lines if line.get("noise_mode") == "hierarchical" and line["noise"] > 0]
        fine = lambda line: metric_of(line, "fine", "linear_top1")  # noqa: E731
        extra = {f"{m} (hierarchical)": pts for m, pts in series_of(hier, lambda line: line["noise"], fine).items()}
        out += [self.plot("label-noise.png", series=series_of(sym, lambda line: line["noise"], fine),
                          xlabel="fine-label noise rate (symmetric; squares: hierarchical)",
                          ylabel="fine linear-probe top-1 (%)", title="Fashion-MNIST: accuracy vs label noise",
                          extra=extra), ""]
        return out

    def _clean_reference(self, noise_lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """limited-data lines usable as rate 0: a method of this experiment, same config (noise and seed aside)."""
        configs: dict[str, set[str]] = defaultdict(set)
        for line in noise_lines:
            configs[line["method"]].add(_config_key(line.get("config")))
        return [line for line in ok(self.results.get("limited-data", []))
                if line["dataset"] == "fashion-mnist" and line["noise"] == 0
                and _config_key(line.get("config")) in configs.get(line["method"], set())]

    # -- transfer
    def transfer(self) -> list[str]:
        lines = ok(self.results.get("transfer", []))
        out = ["## Transfer", ""]
        if not lines:
            return out + ["Not run yet: `mlcl experiment transfer`.", ""]
        out += ["Pre-train on the full source training set, freeze the encoder, then fit a linear probe / kNN on "
                "the target's training split and score its test split. Digits are resized from 8x8 to 28x28; BBC "
                "articles become MiniLM embeddings fed to the MLP trained on WordNet. `raw-input` probes the "
                "target's raw inputs (pixels / MiniLM embeddings) without pre-training, as a reference.", "",
                _command("transfer"), ""]
        row_of = lambda line: f"{line['dataset']} → {line.get('target')}"  # noqa: E731
        for metric in ("linear_top1", "knn_top1"):
            groups = grouped(lines, row_of, lambda line, m=metric: _first_level_metric(line, m))
            rows = [(r, groups[r]) for r in sorted(groups)]
            out += [f"**target {METRIC_NAMES[metric]}** (%)", "",
                    table("source → target", rows, f"transfer target {METRIC_NAMES[metric]}", self.collector), ""]
            for r, cells in rows:
                raw, main = stat(cells.get("raw-input", [])), stat(cells.get("mlcl", []))
                if raw and main and main.mean < raw.mean:
                    self.collector.losses.append(
                        f"transfer {r} {METRIC_NAMES[metric]}: mlcl {main.mean * 100:.2f} is below the raw-input "
                        f"reference {raw.mean * 100:.2f} (pre-training hurts there)")
        return out

    # -- multi-label
    def multilabel(self) -> list[str]:
        lines = ok(self.results.get("multi-label", []))
        out = ["## Multi-label (Fashion-MNIST grids)", ""]
        if not lines:
            return out + ["Not run yet: `mlcl experiment multi-label`.", ""]
        out += ["2x2 canvases with 1-4 items; levels coarse (5) and fine (10) are multi-hot. `supcon`: one head, "
                "positives = exactly the same label set; `mulsupcon`: each label of an anchor acts as its own anchor; "
                "`mlcl`: one head per level, positives = any shared label at that level; `ce`: end-to-end BCE. "
                "Linear probe per level; F1 thresholds chosen on the validation split.", "",
                _command("multi-label"), ""]
        rows = []
        for level in ("fine", "coarse"):
            for metric in ("mAP", "micro_f1", "macro_f1", "subset_accuracy"):
                groups = grouped(lines, lambda line: 0, lambda line, lv=level, m=metric: metric_of(line, lv, m))
                if groups:
                    rows.append((f"{level} {METRIC_NAMES[metric]}", groups[0]))
        return out + ["(%)", "", table("level / metric", rows, "multi-label", self.collector), ""]

    # -- convergence
    def convergence(self) -> list[str]:
        lines = ok(self.results.get("convergence", []))
        out = ["## Convergence", ""]
        if not lines:
            return out + ["Not run yet: `mlcl experiment convergence`.", ""]
        points = []
        for line in lines:
            for point in line.get("curve", []):
                points.append({"method": line["method"], "epoch": point["epoch"],
                               "metrics": point.get("metrics", {}), "steps": point.get("steps")})
        fraction = lines[0]["fraction"]
        out += [f"One run per seed at {_pct(fraction)} of the labels with the usual budget (the config of "
                "limited-data's cells at that fraction); the weights after every epoch are probed (linear probe on "
                "the test split). The learning-rate schedule is the one of the full run, so early epochs run at a "
                "high learning rate.", "", _command("convergence"), ""]
        groups = grouped(points, lambda p: p["epoch"], lambda p: metric_of(p, "fine", "linear_top1"))
        steps = {p["epoch"]: p["steps"] for p in points}
        rows = [(f"{e} ({steps.get(e)} steps)", groups[e]) for e in sorted(groups)]
        out += ["**fine linear-probe top-1 after each epoch** (%)", "",
                table("epoch", rows, "convergence fine linear-probe top-1", None), ""]
        series = series_of(points, lambda p: p["epoch"], lambda p: metric_of(p, "fine", "linear_top1"))
        out += [self.plot("convergence.png", series=series, xlabel="epoch", ylabel="fine linear-probe top-1 (%)",
                          title=f"Fashion-MNIST {_pct(fraction)} labels: probe accuracy per epoch"), ""]
        out += self._convergence_summary(series)
        return out

    def _convergence_summary(self, series: dict[str, list[tuple[float, Stat]]]) -> list[str]:
        finals = {m: max(pts)[1].mean for m, pts in series.items() if pts}
        if "mlcl" not in finals or len(finals) < 2:
            return []
        out = []
        for method, pts in sorted(series.items()):
            target = 0.95 * max(finals.values())
            reached = next((x for x, s in sorted(pts) if s.mean >= target), None)
            out.append(f"- {method}: reaches 95 % of the best final accuracy ({target * 100:.2f}) at epoch "
                       f"{reached if reached is not None else 'never'}.")
        return out + [""]

    # -- ablations
    def ablations(self) -> list[str]:
        lines = ok(self.results.get("ablations", []))
        out = ["## Ablations (MLCL variants)", ""]
        if not lines:
            return out + ["Not run yet: `mlcl experiment ablations`.", ""]
        fraction = lines[0]["fraction"]
        out += [f"Fashion-MNIST at {_pct(fraction)} of the labels, 3 seeds; heads are listed coarse, fine; per-head "
                "temperatures are relative to MLCL's tuned temperature t. These variants were looked at on the test "
                "split, so they are not a fair comparison with the baselines (which got no such extra search).", "",
                _command("ablations"), ""]
        metrics = LEVEL_METRICS[:3]
        stats = {m: [stat(metric_of(line, lv, mt) for line in lines if line["method"] == m) for lv, mt in metrics]
                 for m in order_methods(line["method"] for line in lines)}
        main = stats.get("mlcl", [None])[0]
        header = ["variant", *(f"{lv} {METRIC_NAMES[mt]}" for lv, mt in metrics), "fine linear − mlcl"]
        rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method, values in stats.items():
            same = main is None or values[0] is None or method == "mlcl"
            diff = "—" if same else f"{(values[0].mean - main.mean) * 100:+.2f}"
            rows.append("| " + " | ".join([method, *(fmt_stat(v) for v in values), diff]) + " |")
        reference = [line for line in ok(self.results.get("limited-data", []))
                     if line["dataset"] == "fashion-mnist" and line["fraction"] == fraction and line["noise"] == 0
                     and not is_mlcl(line["method"])]
        baselines = {m: stat(metric_of(line, "fine", "linear_top1") for line in reference if line["method"] == m)
                     for m in {line["method"] for line in reference}}
        note = []
        if main is not None and baselines:
            c = compare({**baselines, "mlcl": main})[0]
            note = [f"For reference, the best baseline in limited-data at this fraction is {c.baseline} with "
                    f"{fmt_stat(c.baseline_stat)} fine linear-probe top-1.", ""]
        return out + ["(%)", "", *rows, "", *note]

    # -- scaling: longer training, wider encoder
    def scaling(self) -> list[str]:
        width = lambda line: (line.get("config") or {}).get("model", {}).get("encoder_options", {}).get("width")  # noqa: E731
        return [
            *self._versus_usual(
                "long-budget", "Longer training (4x the steps)",
                f"The same Fashion-MNIST cells as limited-data (same model, seeds and tuned learning rate / "
                f"temperature) trained for {grids.LONG_BUDGET_FACTOR}x the optimiser steps, to test whether the "
                "method's gains need longer training. Rows at the usual budget are limited-data's cells.",
                lambda line: (line["fraction"], _steps(line)), lambda key: f"{_pct(key[0])}, {key[1]} steps",
                "optimiser steps (log)", "accuracy vs training length"),
            *self._versus_usual(
                "wide-encoder", "Wider encoder",
                f"The same Fashion-MNIST cells as limited-data with a {grids.WIDE_WIDTH // 16}x wider CNN "
                f"(channels {grids.WIDE_WIDTH}-{2 * grids.WIDE_WIDTH}-{4 * grids.WIDE_WIDTH} instead of 16-32-64), "
                "same budget and tuned learning rate / temperature, to test whether the method's gains need a "
                "larger model. Rows with width 16 are limited-data's cells.",
                lambda line: (line["fraction"], width(line)), lambda key: f"{_pct(key[0])}, width {key[1]}",
                "CNN width (log)", "accuracy vs encoder width"),
        ]

    def _versus_usual(self, name: str, title: str, intro: str, row_of: Callable[[dict], tuple],
                      label: Callable[[tuple], str], xlabel: str, plot_title: str) -> list[str]:
        """An experiment that changes one thing of limited-data's Fashion-MNIST cells: both side by side."""
        lines = ok(self.results.get(name, []))
        out = [f"## {title}", ""]
        if not lines:
            return out + [f"Not run yet: `mlcl experiment {name}`.", ""]
        methods = {line["method"] for line in lines}
        fractions = {line["fraction"] for line in lines}
        usual = [line for line in ok(self.results.get("limited-data", []))
                 if line["dataset"] == "fashion-mnist" and line["method"] in methods and line["fraction"] in fractions]
        out += [intro, "", _command(name), ""]
        both = usual + lines
        for level, metric in LEVEL_METRICS:
            groups = grouped(both, row_of, lambda line, lv=level, m=metric: metric_of(line, lv, m))
            rows = [(label(key), groups[key]) for key in sorted(groups)]
            out += [f"**{level} {METRIC_NAMES[metric]}** (%)", "",
                    table("setting", rows, f"{name} {level} {METRIC_NAMES[metric]}", self.collector), ""]
        fraction = min(fractions)
        series = series_of([line for line in both if line["fraction"] == fraction], lambda line: row_of(line)[1],
                         lambda line: metric_of(line, "fine", "linear_top1"))
        out += [self.plot(f"{name}.png", series=series, xlabel=xlabel, ylabel="fine linear-probe top-1 (%)",
                          logx=True, title=f"Fashion-MNIST {_pct(fraction)} labels: {plot_title}"), ""]
        return out

    # -- partial labels: batch composition, mixed granularity
    def batch_share(self) -> list[str]:
        lines = ok(self.results.get("batch-share", []))
        out = ["## Batch composition with partial labels (validation split)", ""]
        if not lines:
            return out + ["Not run yet: `mlcl experiment batch-share`. Until it is, the partial-label experiments "
                          f"draw {grids.DEFAULT_LABELLED_SHARE:g} of every batch from the fine-labelled samples.", ""]
        chosen = grids.select_shares(lines)
        out += [f"Coarse labels for every sample, fine labels for {_pct(grids.SHARE_FRACTION)}; each batch draws "
                f"a share in {list(grids.SHARES)} of its samples from the fine-labelled ones (0: uniform batches, "
                "1: only fine-labelled samples), one seed, scored on the validation split (fine linear probe). "
                "Each method then uses its best share in mixed-granularity (`mlcl+instance` uses mlcl's; "
                "`supcon-coarse` sees every sample labelled and uses uniform batches).", "",
                _command("batch-share"), "",
                "| dataset | method | " + " | ".join(f"share {s:g}" for s in grids.SHARES) + " | chosen |",
                "|---|---|" + "---|" * len(grids.SHARES) + "---|"]
        for (dataset, method) in sorted({(line["dataset"], line["method"]) for line in lines}):
            scores = {float(line["hparams"]["labelled_share"]): grids.sweep_score(line) for line in lines
                      if line["dataset"] == dataset and line["method"] == method}
            cells = [f"{scores[s] * 100:.2f}" if scores.get(s) is not None else "—" for s in grids.SHARES]
            pick = chosen.get((dataset, method), {}).get("labelled_share")
            cells.append("—" if pick is None else f"{pick:g}")
            out.append(f"| {dataset} | {method} | " + " | ".join(cells) + " |")
        return out + [""]

    def mixed(self) -> list[str]:
        lines = ok(self.results.get("mixed-granularity", []))
        out = ["## Labels at mixed granularity", ""]
        if not lines:
            return out + ["Not run yet: `mlcl experiment mixed-granularity`.", ""]
        out += ["Every training sample keeps its coarse label; a stratified, seeded share of them keeps its fine "
                "label (the rest is unknown at the fine level). Every method sees all samples: `supcon` on the "
                "fine level (the samples without a fine label are negatives only), `supcon-coarse` on the coarse "
                "level, `ce` masks the fine loss, `himulcon` and `mlcl` use each level where it is known. Linear "
                "probes and kNN banks of a level are fitted only on the training samples labelled at that level; "
                "the test set is fully labelled. Same step budget as a full-data run. Each method draws the share "
                f"of its batches from the fine-labelled samples that batch-share chose at {_pct(grids.SHARE_FRACTION)} "
                "fine labels, at every fraction: with a share of 1 and 1 % fine labels, every batch comes from "
                "those 1 %, and the other samples' coarse labels are never seen.", ""]
        for dataset in sorted({line["dataset"] for line in lines}):
            subset = [line for line in lines if line["dataset"] == dataset]
            shares = {line["method"]: line.get("labelled_share") for line in subset}
            used = ", ".join(f"{m} {shares[m]:g}" for m in order_methods(shares) if shares[m] is not None)
            out += [f"### {dataset}", "", _command("mixed-granularity", f"{dataset}__*"), "",
                    f"Share of each batch from the fine-labelled samples: {used}.", ""]
            out += self._level_tables(subset, lambda line: _fine_fraction(line), lambda f: f"fine labels {_pct(f)}",
                                      "fine labels", f"mixed-granularity {dataset}")
            series = series_of(subset, _fine_fraction, lambda line: metric_of(line, "fine", "linear_top1"))
            out += [self.plot(f"mixed-granularity-{dataset}.png", series=series, logx=True,
                              xlabel="share of samples with a fine label (log); coarse labels for all",
                              ylabel="fine linear-probe top-1 (%)", title=f"{dataset}: labels at mixed granularity"),
                    ""]
        return out

    def _level_tables(self, lines: list[dict[str, Any]], row_of: Callable[[dict], Any], label: Callable[[Any], str],
                      row_label: str, context: str) -> list[str]:
        """One table per (level, metric) found in ``lines``, rows by ``row_of``."""
        out = []
        levels = _levels(lines)[::-1]  # finest first, as in the other sections
        for metric in ("linear_top1", "knn_top1", "map_at_r"):
            for level in levels:
                groups = grouped(lines, row_of, lambda line, lv=level, m=metric: metric_of(line, lv, m))
                if not groups:
                    continue
                rows = [(label(key), groups[key]) for key in sorted(groups)]
                out += [f"**{level} {METRIC_NAMES[metric]}** (%)", "",
                        table(row_label, rows, f"{context} {level} {METRIC_NAMES[metric]}", self.collector), ""]
        # Lower is better: how far (in tree levels) the wrong predictions and the nearest neighbours land.
        for level, metric, title in (("severity", "linear", "mistake severity of the linear probe"),
                                     (levels[0] if levels else "", "hier_dist_at_k", METRIC_NAMES["hier_dist_at_k"])):
            groups = grouped(lines, row_of, lambda line, lv=level, m=metric: metric_of(line, lv, m))
            if groups:
                rows = [(label(key), groups[key]) for key in sorted(groups)]
                out += [f"**{title}** (tree levels, lower is better; [definitions](metrics.md))", "",
                        table(row_label, rows, f"{context} {title}", self.collector, higher_is_better=False,
                              scale=1.0), ""]
        return out

    # -- sub-population shift
    def shift(self) -> list[str]:
        lines = ok(self.results.get("subpopulation-shift", []))
        out = ["## Unseen fine classes (sub-population shift)", ""]
        if not lines:
            return out + ["Not run yet: `mlcl experiment subpopulation-shift`.", ""]
        out += ["One fine class under every coarse class that has several is held out of training and validation "
                "(chosen by the seed, the same for every method of a seed). On the held-out classes' test samples: "
                "the coarse level by a linear probe / kNN fitted on the seen classes, and the fine level few-shot: "
                "k labelled samples per held-out class (mean of 5 draws), a nearest-centroid classifier or kNN "
                "choosing among the held-out classes only. Seen-class rows: the usual probes on the seen classes' "
                "test samples.", ""]
        for dataset in sorted({line["dataset"] for line in lines}):
            subset = [line for line in lines if line["dataset"] == dataset]
            names = sorted({", ".join(line["metrics"]["unseen"]["classes"]) for line in subset
                            if "unseen" in line["metrics"]})
            rows = []
            for level in _levels(subset)[:-1]:
                for metric in ("linear_top1", "knn_top1"):
                    rows.append((f"unseen: {level} {METRIC_NAMES[metric]}", grouped(
                        subset, lambda line: 0, lambda line, lv=level, m=metric: _unseen(line, lv, m)).get(0, {})))
            finest = _levels(subset)[-1]
            for key in sorted({k for line in subset for k in line["metrics"].get("unseen", {}) if "shot" in k},
                              key=lambda k: int(k.rsplit("_", 1)[1][:-4])):
                for metric, name in (("centroid_top1", "nearest centroid"), ("knn_top1", "kNN")):
                    rows.append((f"unseen: {finest} {key.rsplit('_', 1)[1][:-4]}-shot {name}", grouped(
                        subset, lambda line: 0, lambda line, k=key, m=metric: _unseen(line, k, m)).get(0, {})))
            for level, metric in (("coarse", "linear_top1"), (finest, "linear_top1")):
                rows.append((f"seen: {level} {METRIC_NAMES[metric]}", grouped(
                    subset, lambda line: 0, lambda line, lv=level, m=metric: metric_of(line, lv, m)).get(0, {})))
            ways = sorted({len(line["metrics"]["unseen"]["classes"]) for line in subset if "unseen" in line["metrics"]})
            out += [f"### {dataset}", "", f"Held-out classes per seed: {'; '.join(names)} (so the few-shot rows "
                    f"choose among {'/'.join(map(str, ways))} classes).", "",
                    _command("subpopulation-shift", f"{dataset}__*"), "", "(%)", "",
                    table("metric", [(r, cells) for r, cells in rows if cells], f"subpopulation-shift {dataset}",
                          self.collector), ""]
        return out

    # -- one model for every level
    def per_level(self) -> list[str]:
        lines = ok(self.results.get("per-level-models", []))
        out = ["## One model for every level, or one model per level", ""]
        if not lines:
            return out + ["Not run yet: `mlcl experiment per-level-models`.", ""]
        out += ["All labels. `supcon (own level)`: for each level, the SupCon model trained on that level alone "
                "(`supcon-coarse`, `supcon-mid`, `supcon` = fine); `mlcl`: one model with a head per level. "
                "Features: `encoder` is the encoder's output (what every other table reports); `head` is the "
                "projection head trained for that level (SupCon's single head, MLCL's head of that level), L2-"
                "normalised, as `mlcl embed --head` exports it. The time line is the training time of the whole "
                "option: the sum over the per-level SupCon models against the one MLCL model (seconds on one "
                "CPU thread, mean over seeds).", "", _command("per-level-models"), ""]
        for dataset in sorted({line["dataset"] for line in lines}):
            subset = [line for line in lines if line["dataset"] == dataset]
            rows = [(f"{level} {METRIC_NAMES.get(metric, metric)}", _per_level_cells(subset, level, metric))
                    for metric in ("linear_top1", "knn_top1", "map_at_r") for level in _levels(subset)]
            seconds: dict[str, float] = defaultdict(float)
            seeds: dict[str, set] = defaultdict(set)
            for line in subset:
                key = line["method"] if is_mlcl(line["method"]) else "one SupCon model per level"
                seconds[key] += float(line.get("train_seconds") or 0)
                seeds[key].add(line["seed"])
            timing = ", ".join(f"{k}: {seconds[k] / len(seeds[k]):.0f} s" for k in sorted(seconds))
            out += [f"### {dataset}", "", "(%)", "",
                    table("level / metric", [(r, c) for r, c in rows if c], f"per-level-models {dataset}",
                          self.collector), "", f"Training time per seed: {timing}.", ""]
        return out

    # -- a deeper hierarchy
    def deep(self) -> list[str]:
        lines = ok(self.results.get("deep-hierarchy", []))
        out = ["## A deeper hierarchy (three levels)", ""]
        if not lines:
            return out + ["Not run yet: `mlcl experiment deep-hierarchy`.", ""]
        out += ["WordNet nouns with three levels (lexicographer file → a shallower ancestor → a deeper one); "
                "`mlcl` has one head per level, `himulcon` a term per level; the learning rate and temperature are "
                "those tuned on the two-level WordNet set. A stratified fraction of the training samples (all "
                "their labels), as in limited-data.", "", _command("deep-hierarchy"), ""]
        return out + self._level_tables(lines, lambda line: line["fraction"],
                                        lambda f: f"{_pct(f)}{_epochs_label(lines, fraction=f)}", "fraction",
                                        "deep-hierarchy")

    # -- bookkeeping
    def failures(self) -> list[str]:
        failed = [line for lines in self.results.values() for line in lines if line.get("error")]
        if not failed:
            return []
        out = ["## Failed runs", "", "These runs diverged (non-finite loss) and are left out of the tables:", ""]
        out += [f"- {line['experiment']} `{line.get('cell')}`: {line['error'][:200]}" for line in failed]
        return out + [""]

    def timing(self) -> list[str]:
        out = ["## Run time", "", "| experiment | runs | training time | wall time |", "|---|---|---|---|"]
        for name, lines in self.results.items():
            train = sum(float(line.get("train_seconds") or 0) for line in lines)
            wall = sum(float(line.get("wall_seconds") or 0) for line in lines)
            out.append(f"| {name} | {len(lines)} | {train / 60:.1f} min | {wall / 60:.1f} min |")
        return out + [""]


def _fine_fraction(line: dict[str, Any]) -> float:
    return float((line.get("level_fractions") or {}).get("fine", 1.0))


def _levels(lines: list[dict[str, Any]]) -> list[str]:
    """The single-label levels of the lines' metrics, coarse -> fine (as the runs listed them)."""
    levels: dict[str, None] = {}
    for line in lines:
        for name, values in line.get("metrics", {}).items():
            if isinstance(values, dict) and "linear_top1" in values and name not in ("unseen", "consistency"):
                levels[name] = None
    return list(levels)


_OWN_LEVEL = {"coarse": "supcon-coarse", "mid": "supcon-mid", "fine": "supcon"}


def _per_level_cells(lines: list[dict[str, Any]], level: str, metric: str) -> dict[str, list[float]]:
    """Per-level-models cells of one (level, metric): the level's own SupCon model and MLCL, each by the
    encoder's features and by the head trained for that level."""
    cells: dict[str, list[float]] = defaultdict(list)
    for line in lines:
        own = line["method"] == _OWN_LEVEL.get(level)
        if not (own or is_mlcl(line["method"])):
            continue
        name = "supcon (own level)" if own else line["method"]
        head = "head:supcon" if own else f"head:{level}"
        by_head = line["metrics"].get("features", {}).get(head, {}).get(level, {}).get(metric)
        for label, value in ((f"{name}, encoder", metric_of(line, level, metric)), (f"{name}, head", by_head)):
            if value is not None:
                cells[label].append(float(value))
    return cells


def _unseen(line: dict[str, Any], key: str, metric: str) -> float | None:
    value = line.get("metrics", {}).get("unseen", {}).get(key, {}).get(metric)
    return None if value is None else float(value)


def _steps(line: dict[str, Any]) -> int:
    """Optimiser steps a run made: its epochs times the steps per epoch at its label fraction."""
    return int(line["epochs"]) * grids.DATASETS[line["dataset"]].steps_per_epoch(line["fraction"])


def _first_level_metric(line: dict[str, Any], metric: str) -> float | None:
    for level, values in line.get("metrics", {}).items():
        if level != "consistency" and isinstance(values, dict) and metric in values:
            return float(values[metric])
    return None


def _config_key(config: dict[str, Any] | None) -> str:
    """A config without what differs between a clean and a noisy cell of the same setting."""
    if not config:
        return ""
    config = copy.deepcopy(config)
    config.pop("seed", None)
    config.get("data", {}).pop("noise", None)
    for key in ("threads", "device"):
        config.get("train", {}).pop(key, None)
    return json.dumps(config, sort_keys=True)


def _last_per_cell(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per cell id (the last one written): a cell run twice must not count as two seeds."""
    last = {line.get("cell", id(line)): line for line in lines}
    return list(last.values())


def load_results(results_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Every ``<experiment>.jsonl`` in ``results_dir`` (known experiments first, in run order)."""
    results_dir = Path(results_dir)
    files = sorted(results_dir.glob("*.jsonl")) if results_dir.exists() else []
    found = {path.stem: _last_per_cell(read_lines(path)) for path in files}
    ordered = {name: found[name] for name in grids.ORDER if name in found}
    ordered.update({name: lines for name, lines in found.items() if name not in ordered})
    return ordered


def write_report(results_dir: str | Path = "docs/results", out: str | Path = "docs/results.md") -> Report:
    """Write the markdown report and its plots; returns them (and the loss statements)."""
    results_dir, out = Path(results_dir), Path(out)
    results = load_results(results_dir)
    b = _Builder(results, results_dir, out)
    body = [*b.sweep(), *b.limited(), *b.noise(), *b.transfer(), *b.multilabel(), *b.convergence(),
            *b.ablations(), *b.scaling(), *b.batch_share(), *b.mixed(), *b.shift(), *b.per_level(), *b.deep(),
            *b.failures(), *b.timing()]
    summary = ["## Summary: where MLCL wins and loses", ""]
    for variant, comparisons in sorted(b.collector.tally.items()):
        wins = [c for c in comparisons if c.diff > 0]
        losses = [c for c in comparisons if c.diff < 0]
        summary.append(
            f"- **{variant}** vs the best baseline of each row (every metric of every table counted separately): "
            f"higher in {len(wins)} of {len(comparisons)} rows ({sum(c.significant for c in wins)} beyond seed "
            f"noise), lower in {len(losses)} ({sum(c.significant for c in losses)} beyond seed noise), equal in "
            f"{len(comparisons) - len(wins) - len(losses)}.")
    if not b.collector.tally:
        summary.append("- No comparison yet: no experiment with both MLCL and a baseline has results.")
    summary += ["", "### Where MLCL loses", ""]
    summary += [f"- {text}" for text in b.collector.losses] or ["- Nowhere in the results so far."]
    header = [
        "# Results", "",
        f"Generated by `mlcl experiment report` from `{_rel(results_dir, out)}/*.jsonl` on "
        f"{_dt.date.today().isoformat()}; do not edit by hand. Reproduce with, in this order: "
        + ", ".join(f"`mlcl experiment {name}`" for name in grids.ORDER) + ", then `mlcl experiment report`.", "",
        "Protocol: contrastive pre-training, then a linear probe (and kNN, k=20) per level on the frozen encoder; "
        "cross-entropy is trained end to end and probed the same way. Numbers are % on the test split, "
        "**mean ± sample std over seeds (n = seeds)**. Every method of a dataset gets the same model, batch, "
        f"number of optimiser steps per run (about {grids.STEP_BUDGET}; "
        f"{grids.DATASETS['fashion-mnist-grid'].steps} on the grid) and the same learning-rate x temperature "
        "sweep on the validation split. *MLCL − best baseline*: difference of means against the best baseline of "
        "that row, in points; `*` = larger than twice its standard error over seeds (else within seed noise).", "",
        "Methods: `ce` = end-to-end cross-entropy with one classifier per level (one view per sample; its own "
        "classifier's accuracy is in the JSONL as `classifier_top1`); `supcon` = one head on the finest level; "
        "`himulcon` = one shared head with a SupCon term per level, level penalty and hierarchy-constraint max; "
        "`mulsupcon` = each label of an anchor acts as its own anchor (multi-label only); `mlcl` = one head per "
        "level with one shared temperature and equal weights (per-head temperatures and weights are ablations); "
        "`mlcl+instance` adds the global (instance) head. Lines, configs and commands of every run: "
        f"`{_rel(results_dir, out)}/<experiment>.jsonl`.", "",
    ]
    markdown = "\n".join([*header, *summary, "", *body]).rstrip() + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown, encoding="utf-8")
    return Report(markdown, b.plots, b.collector.losses)
