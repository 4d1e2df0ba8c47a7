"""Run an experiment's cells in this process, resume where it stopped, append one JSON line per run.

Each finished run becomes one line of ``<results_dir>/<experiment>.jsonl``::

    {"experiment", "dataset", "method", "fraction", "noise", "seed",
     "metrics": {LEVEL: {"linear_top1", "knn_top1"} | {"mAP", "micro_f1", ...}, "consistency": {...}},
     "epochs", "train_seconds", "config",
     "cell", "noise_mode", "kind", "split", "best_epoch", "train_samples", "wall_seconds", "finished_at",
     "command", ...kind-specific keys: "hparams" (sweep), "target" + "source_metrics" (transfer),
     "curve" (convergence), "error" (a run whose loss diverged), "level_fractions" + "labelled_share"
     (partial labels), "unseen_per_parent" (held-out classes)}

``metrics`` are on the test split, except for the sweep (``"split": "val"``: the validation split, so
that tuning never sees test). A line is written with one ``write`` + ``flush`` + ``fsync`` under an
exclusive ``flock``; a cell whose id is already in the file is skipped, so re-running the same command
continues the grid. A cell interrupted mid-run continues from its run directory's last checkpoint
(if its config is unchanged). Run directories live in ``<runs_dir>/<experiment>/<cell id>/`` and are
deleted after the line is written unless ``keep_runs``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import fnmatch
import gc
import json
import os
import shlex
import shutil
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mlcl.errors import ConfigError, TrainingError
from mlcl.experiments.convergence import evaluate_snapshots, record_epochs
from mlcl.experiments.grids import (
    Cell,
    Experiment,
    TunedTable,
    cell_config,
    estimate_seconds,
    hparams_for,
    select_hparams,
    select_shares,
    train_command,
)
from mlcl.experiments.transfer import evaluate_raw_target, evaluate_target
from mlcl.train.config import Config, load_config
from mlcl.train.evaluation import evaluate_model
from mlcl.train.loop import Trainer, resume_run, start_run
from mlcl.train.results import evaluate_run, flatten_metrics
from mlcl.train.run import Run

REQUIRED_KEYS = ("experiment", "dataset", "method", "fraction", "noise", "seed", "metrics", "epochs",
                 "train_seconds", "config")
COMMON_KEYS = ("cell", "noise_mode", "kind", "split", "best_epoch", "train_samples", "wall_seconds",
               "finished_at", "command")
KIND_KEYS = ("hparams", "target", "source_metrics", "curve", "error", "level_fractions", "labelled_share",
             "unseen_per_parent")


# ---------------------------------------------------------------------------- JSONL


def read_lines(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file; a torn or malformed line is skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{number}: not a JSON line (a run stopped while writing?); ignored", stacklevel=2)
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def append_line(path: str | Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line: a single write, flushed and fsynced, under an exclusive lock.

    If the file does not end with a newline (a torn last line), a newline is written first so the new
    record stays on its own line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, sort_keys=False, allow_nan=True) + "\n"
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    text = "\n" + text
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def results_path(results_dir: str | Path, experiment: str) -> Path:
    return Path(results_dir) / f"{experiment}.jsonl"


def load_tuned(results_dir: str | Path) -> TunedTable:
    """The sweeps' choices per (dataset, method): learning rate / temperature (``sweep``) and the labelled
    share of a batch (``batch-share``); {} without sweeps."""
    tuned = select_hparams(read_lines(results_path(results_dir, "sweep")))[0]
    for key, chosen in select_shares(read_lines(results_path(results_dir, "batch-share"))).items():
        tuned.setdefault(key, {})["labelled_share"] = chosen["labelled_share"]
    return tuned


# ---------------------------------------------------------------------------- options and plan


@dataclass
class RunOptions:
    results_dir: Path = Path("docs/results")
    runs_dir: Path = Path("runs/experiments")
    keep_runs: bool = False
    extra: list[str] = field(default_factory=list)  # --set overrides for every cell
    progress: bool = False  # the trainer's own progress bars
    log: Callable[[str], None] = print


@dataclass
class PlannedCell:
    cell: Cell
    done: bool
    estimate: float


def select_cells(cells: Iterable[Cell], patterns: Iterable[str] | None) -> list[Cell]:
    """Cells whose id matches any glob in ``patterns`` (comma-separated allowed) or contains it; all when
    none. A pattern that is a cell's whole id selects that cell only (``…__la0`` is also part of ``…__la0.5``)."""
    globs = [p.strip() for text in (patterns or []) for p in text.split(",") if p.strip()]
    cells = list(cells)
    if not globs:
        return cells
    ids = {c.id for c in cells}
    chosen = [c for c in cells
              if any(fnmatch.fnmatchcase(c.id, g) or (g not in ids and g in c.id) for g in globs)]
    if not chosen:
        raise ConfigError(f"--cells {','.join(globs)} matches no cell; see the ids with --dry-run "
                          f"(for example {cells[0].id if cells else '(none)'})")
    return chosen


def plan(experiment: Experiment, options: RunOptions, patterns: Iterable[str] | None = None,
         limit: int | None = None) -> list[PlannedCell]:
    """The selected cells in run order, each marked done (already in the JSONL) or not.

    ``limit`` keeps the first ``limit`` cells that are not done yet (done ones stay listed).
    """
    finished = {line.get("cell") for line in read_lines(results_path(options.results_dir, experiment.name))}
    out, todo = [], 0
    for cell in select_cells(experiment.cells, patterns):
        done = cell.id in finished
        if not done:
            if limit is not None and todo >= limit:
                continue
            todo += 1
        out.append(PlannedCell(cell, done, estimate_seconds(cell)))
    return out


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def cell_command(experiment: str, cell: Cell) -> str:
    return f"mlcl experiment {experiment} --cells {shlex.quote(cell.id)}"


# ---------------------------------------------------------------------------- running one cell


def _trainer(config: Config, out_dir: Path, progress: bool, fresh: bool) -> tuple[Trainer, bool]:
    """A trainer for ``out_dir``: continue an interrupted run of the same config, else start anew."""
    last = out_dir / "checkpoints" / "last.pt"
    if not fresh and last.exists() and (out_dir / "config.yaml").exists():
        try:
            same = load_config(out_dir / "config.yaml").to_dict() == config.to_dict()
        except Exception:  # an unreadable old config: start over
            same = False
        if same:
            return resume_run(out_dir, progress=progress), True
    if out_dir.exists():
        shutil.rmtree(out_dir)
    return start_run(config, out_dir, progress=progress), False


def _validation_metrics(run: Run) -> dict[str, Any]:
    """Frozen-feature probes scored on the validation split (the sweep's criterion; test unused)."""
    dataset = run.dataset
    if dataset.val is None or len(dataset.val) == 0:
        raise ConfigError(f"{dataset.name} has no validation split; the sweep needs one (data.options.val_size)")
    on_val = dataclasses.replace(dataset, test=dataset.val)
    run.load_weights("best")
    metrics = evaluate_model(run.model, on_val, run.device, run.config.eval.knn_k, run.config.eval.probe_epochs)
    return flatten_metrics(metrics)


def run_cell(experiment: str, cell: Cell, options: RunOptions, tuned: TunedTable | None) -> dict[str, Any]:
    """Train and evaluate one cell; returns its JSON line (not yet written)."""
    started = time.perf_counter()
    hp = hparams_for(cell, tuned)
    line: dict[str, Any] = {
        "experiment": experiment, "dataset": cell.dataset, "method": cell.method, "fraction": cell.fraction,
        "noise": cell.noise, "seed": cell.seed, "metrics": {}, "epochs": 0, "train_seconds": 0.0, "config": None,
        "cell": cell.id, "noise_mode": cell.noise_mode, "kind": cell.kind,
        "split": "val" if cell.kind == "sweep" else "test", "best_epoch": None, "train_samples": None,
    }
    if cell.kind == "sweep":
        line["hparams"] = {k: hp[k] for k, _ in cell.hparams}
    if cell.target:
        line["target"] = cell.target
    if cell.level_fractions:
        line["level_fractions"] = dict(cell.level_fractions)
    if cell.unseen:
        line["unseen_per_parent"] = cell.unseen
    if cell.kind == "transfer-raw":
        line["metrics"], line["train_samples"] = evaluate_raw_target(cell.target)
        return _finish(line, experiment, cell, started)

    config = cell_config(cell, tuned, options.extra)
    line["config"] = config.to_dict()
    if cell.level_fractions:  # as run: a variant's own override (supcon-coarse: 0) wins over the tuned share
        line["labelled_share"] = config.train.labelled_share
    out_dir = Path(options.runs_dir) / experiment / cell.id
    trainer, resumed = _trainer(config, out_dir, options.progress, fresh=cell.kind == "convergence")
    if resumed:
        options.log(f"  continuing the interrupted run in {out_dir} (epoch {trainer.state['epoch']})")
    snapshots: list[tuple[int, dict[str, torch.Tensor]]] = []
    if cell.kind == "convergence":
        record_epochs(trainer, snapshots)
    try:
        trainer.train()
    except TrainingError as exc:  # a diverged run is a result too: recorded, not retried
        line["error"] = str(exc)
        line["epochs"] = trainer.state["epoch"]
        line["train_seconds"] = round(trainer.state["train_seconds"], 2)
        _cleanup(out_dir, options)
        return _finish(line, experiment, cell, started)
    run = trainer.run
    line["epochs"] = run.state["epoch"]
    line["train_seconds"] = round(run.state["train_seconds"], 2)
    line["best_epoch"] = run.state.get("best_epoch", run.state["epoch"])
    line["train_samples"] = len(run.dataset.train)
    if cell.kind == "sweep":
        line["metrics"] = _validation_metrics(run)
    else:
        if cell.kind == "convergence":
            line["curve"] = evaluate_snapshots(run, snapshots, trainer.steps_per_epoch)
        run.load_weights("best")  # chosen on validation
        line["metrics"] = flatten_metrics(evaluate_run(run))
        if cell.kind == "transfer":
            line["source_metrics"] = line["metrics"]
            line["metrics"] = evaluate_target(run.model, cell.target, run.device, config.eval.knn_k, config.model)
    _cleanup(out_dir, options)
    return _finish(line, experiment, cell, started)


def _cleanup(out_dir: Path, options: RunOptions) -> None:
    """Remove the run directory (unless ``keep_runs``)."""
    if not options.keep_runs and out_dir.exists():
        shutil.rmtree(out_dir, ignore_errors=True)


def _finish(line: dict[str, Any], experiment: str, cell: Cell, started: float) -> dict[str, Any]:
    line["wall_seconds"] = round(time.perf_counter() - started, 2)
    line["finished_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    line["command"] = cell_command(experiment, cell)
    return line


def _headline(line: dict[str, Any]) -> str:
    if line.get("error"):
        return "DIVERGED"
    parts = []
    for level, values in line.get("metrics", {}).items():
        if level == "consistency" or not isinstance(values, dict):
            continue
        for key, short in (("linear_top1", "lin"), ("knn_top1", "knn"), ("mAP", "mAP")):
            if key in values and values[key] is not None:
                parts.append(f"{level} {short} {values[key]:.4f}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------- the grid


@dataclass
class RunSummary:
    ran: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    lines: list[dict[str, Any]] = field(default_factory=list)


def dry_run(experiment: Experiment, options: RunOptions, patterns: Iterable[str] | None = None,
            limit: int | None = None) -> list[PlannedCell]:
    """Print every selected cell: done / to do, estimated time, and the exact commands."""
    planned = plan(experiment, options, patterns, limit)
    tuned = load_tuned(options.results_dir) if experiment.uses_sweep else {}
    todo = [p for p in planned if not p.done]
    options.log(f"# {experiment.name}: {experiment.description}")
    options.log(f"# {len(planned)} cells selected, {len(planned) - len(todo)} finished, {len(todo)} to run, "
                f"estimated {format_seconds(sum(p.estimate for p in todo))} (one CPU thread)")
    if experiment.uses_sweep:
        source = (f"tuned by the sweep in {results_path(options.results_dir, 'sweep')}" if tuned
                  else "defaults (no sweep results yet: run `mlcl experiment sweep` first)")
        options.log(f"# hyper-parameters: {source}")
    for p in planned:
        cell = p.cell
        status = "done" if p.done else "todo"
        options.log(f"[{status}] {cell.id}  (~{format_seconds(p.estimate)})")
        options.log(f"    {cell_command(experiment.name, cell)}")
        if cell.kind != "transfer-raw":
            out_dir = str(Path(options.runs_dir) / experiment.name / cell.id)
            note = {"sweep": "  # then probes on the validation split",
                    "transfer": f"  # then a frozen-encoder probe on {cell.target}",
                    "convergence": "  # plus a probe of every epoch's weights"}.get(cell.kind, "")
            options.log(f"    {train_command(cell, out_dir, tuned, options.extra)}{note}")
    return planned


def run_experiment(experiment: Experiment, options: RunOptions, patterns: Iterable[str] | None = None,
                   limit: int | None = None) -> RunSummary:
    """Run the selected cells that are not finished yet, appending a line after each."""
    path = results_path(options.results_dir, experiment.name)
    planned = plan(experiment, options, patterns, limit)
    todo = [p for p in planned if not p.done]
    summary = RunSummary(skipped=len(planned) - len(todo))
    tuned = load_tuned(options.results_dir) if experiment.uses_sweep else {}
    if experiment.uses_sweep and not tuned:
        options.log("note: no sweep results in "
                    f"{results_path(options.results_dir, 'sweep')}; using the default lr / temperature")
    _warn_stale(experiment, planned, tuned, options, path)
    remaining = sum(p.estimate for p in todo)
    options.log(f"{experiment.name}: {len(planned)} cells, {summary.skipped} already in {path}, {len(todo)} to run "
                f"(estimated {format_seconds(remaining)})")
    began = time.perf_counter()
    done_estimate = 0.0
    for index, p in enumerate(todo, 1):
        if p.cell.id in {line.get("cell") for line in read_lines(path)}:  # finished by a runner beside this one
            summary.skipped += 1
            remaining -= p.estimate
            options.log(f"[{index}/{len(todo)}] {p.cell.id}: finished meanwhile by another runner; skipped")
            continue
        line = run_cell(experiment.name, p.cell, options, tuned)
        gc.collect()  # the finished run's dataset and model
        append_line(path, line)
        summary.lines.append(line)
        summary.ran += 1
        summary.failed += bool(line.get("error"))
        done_estimate += p.estimate
        remaining -= p.estimate
        elapsed = time.perf_counter() - began
        eta = remaining * elapsed / max(done_estimate, 1e-9)
        options.log(f"[{index}/{len(todo)}] {p.cell.id}: {_headline(line)}  ({line['wall_seconds']:.1f} s; "
                    f"elapsed {format_seconds(elapsed)}, ETA {format_seconds(eta)})")
    summary.seconds = time.perf_counter() - began
    return summary


def _first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    """The first key path where two nested configs differ, as ``key: old -> new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(dict.fromkeys([*old, *new])):
            found = _first_difference(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
            if found:
                return found
        return None
    return None if old == new else f"{prefix}: {old!r} -> {new!r}"


def _warn_stale(experiment: Experiment, planned: list[PlannedCell], tuned: TunedTable, options: RunOptions,
                path: Path) -> None:
    """Say when finished lines were trained with another config than this command would use now
    (typically: the sweep's choice changed after they ran)."""
    by_id = {line.get("cell"): line for line in read_lines(path)}
    stale = []
    for p in planned:
        line = by_id.get(p.cell.id)
        if not p.done or line is None or not line.get("config"):
            continue
        difference = _first_difference(line["config"], cell_config(p.cell, tuned, options.extra).to_dict())
        if difference:
            stale.append((p.cell.id, difference))
    if stale:
        cell_id, difference = stale[0]
        options.log(f"warning: {len(stale)} finished cells ran with another config than this command would use "
                    f"now (e.g. {cell_id}, {difference}); they are kept: delete their lines from {path} to "
                    "re-run them")

