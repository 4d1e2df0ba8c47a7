"""The experiment runner (tiny grid, JSONL schema, resume), the grid definitions, and the report."""

from __future__ import annotations

import argparse
import json
import warnings
from collections import defaultdict

import pytest
import torch
from conftest import QUICKSTART, needs_fashion

from mlcl.errors import ConfigError
from mlcl.experiments import grids
from mlcl.experiments.cli import add_experiment_parser, cmd_experiment
from mlcl.experiments.convergence import record_epochs
from mlcl.experiments.grids import Cell, Experiment
from mlcl.experiments.report import write_report
from mlcl.experiments.runner import COMMON_KEYS, REQUIRED_KEYS, RunOptions, append_line, read_lines, run_experiment
from mlcl.experiments.tables import compare, fmt_stat, stat
from mlcl.train.config import load_config
from mlcl.train.loop import start_run

TINY = (
    "data.options.limit_train=300", "data.options.val_size=200", "data.options.limit_test=300",
    "train.epochs=1", "train.batch_size=64", "model.encoder_options.width=8", "model.proj_hidden=32",
    "model.proj_dim=16", "train.monitor_train_samples=200", "train.threads=1",
)


def _tiny_experiment() -> Experiment:
    return Experiment("tiny", "two tiny cells", (
        Cell("fashion-mnist", "mlcl", 1.0, seed=0, overrides=TINY),
        Cell("fashion-mnist", "supcon", 1.0, seed=0, overrides=TINY),
    ))


@pytest.mark.slow
@needs_fashion
def test_tiny_grid_writes_the_schema_and_resumes(tmp_path):
    messages: list[str] = []
    options = RunOptions(results_dir=tmp_path / "results", runs_dir=tmp_path / "runs", log=messages.append)
    experiment = _tiny_experiment()
    path = tmp_path / "results" / "tiny.jsonl"
    # a run of the first cell that was stopped before its first step: the runner continues it
    stopped = start_run(grids.cell_config(experiment.cells[0]), tmp_path / "runs" / "tiny" / experiment.cells[0].id,
                        progress=False)
    stopped.save("last.pt")
    del stopped

    first = run_experiment(experiment, options, limit=1)  # stop after one cell ...
    assert (first.ran, first.skipped) == (1, 0) and len(read_lines(path)) == 1
    assert any("continuing the interrupted run" in m for m in messages)
    second = run_experiment(experiment, options)  # ... and continue where it stopped
    assert (second.ran, second.skipped) == (1, 1)
    third = run_experiment(experiment, options)
    assert (third.ran, third.skipped) == (0, 2)

    lines = read_lines(path)
    assert [line["method"] for line in lines] == ["mlcl", "supcon"]
    for line in lines:
        assert set(line) == set(REQUIRED_KEYS) | set(COMMON_KEYS)
        assert line["experiment"] == "tiny" and line["dataset"] == "fashion-mnist"
        assert line["fraction"] == 1.0 and line["noise"] == 0.0 and line["seed"] == 0
        assert line["epochs"] == 1 and line["train_seconds"] > 0
        assert line["config"]["method"]["name"] == line["method"]
        assert line["config"]["data"]["options"]["limit_train"] == 300
        for level in ("coarse", "fine"):
            scores = {k: v for k, v in line["metrics"][level].items() if k != "hier_dist_at_k"}
            assert set(scores) == {"linear_top1", "knn_top1", "map_at_r", "precision_at_k"}
            assert all(0.0 <= v <= 1.0 for v in scores.values())
    text = path.read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 2
    assert not any((tmp_path / "runs" / "tiny").iterdir())  # run directories are removed after each line
    assert any("[1/1]" in m and "ETA" in m for m in messages)


def test_append_line_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"cell": "a"}\n{"cell": "b", "metr')  # a run killed while writing
    append_line(path, {"cell": "c"})
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert [line["cell"] for line in read_lines(path)] == ["a", "c"]


def test_every_method_gets_the_same_budget_and_model():
    for name in grids.EXPERIMENTS:
        experiment = grids.get_experiment(name)
        groups = defaultdict(set)
        for cell in experiment.cells:
            if cell.kind == "transfer-raw":
                continue
            config = grids.cell_config(cell).to_dict()
            train = config["train"]
            budget = (train["epochs"], train["batch_size"], train["monitor_every"], train["warmup_epochs"],
                      json.dumps(config["model"], sort_keys=True),
                      json.dumps(config["data"]["options"], sort_keys=True))
            groups[(cell.dataset, cell.fraction, cell.kind, cell.steps)].add(budget)
        for key, budgets in groups.items():
            assert len(budgets) == 1, (name, key, budgets)
    # small fractions train for more epochs so that the number of steps stays comparable
    assert grids.budget_epochs("fashion-mnist", 0.01) > grids.budget_epochs("fashion-mnist", 0.1) >= 1
    for fraction in (0.01, 0.05, 0.1, 1.0):
        per_epoch = grids.DATASETS["fashion-mnist"].steps_per_epoch(fraction)
        steps = grids.budget_epochs("fashion-mnist", fraction) * per_epoch
        assert grids.STEP_BUDGET <= steps < 1.1 * grids.STEP_BUDGET


def test_dry_run_prints_the_exact_command(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_experiment_parser(parser.add_subparsers())
    args = parser.parse_args(["experiment", "label-noise", "--dry-run", "--results-dir", str(tmp_path),
                              "--cells", "*mlcl+instance*hier0.4__s1"])
    assert cmd_experiment(args) == 0
    out = capsys.readouterr().out
    cells = grids.get_experiment("label-noise").cells
    cell = next(c for c in cells if c.id.endswith("mlcl+instance__f0.1__hier0.4__s1"))
    assert f"[todo] {cell.id}" in out
    command = next(line.strip() for line in out.splitlines() if line.strip().startswith("mlcl train"))
    sets = command.split(" --set ")[1:]
    rebuilt = load_config(None, [s.strip("'") for s in sets]).to_dict()
    assert rebuilt == grids.cell_config(cell).to_dict()
    assert rebuilt["method"]["instance_head"] and rebuilt["data"]["noise"] == {"rate": 0.4, "mode": "hierarchical"}


def test_sweep_choice_uses_the_validation_score():
    def line(lr, t, score):
        return {"dataset": "fashion-mnist", "method": "supcon", "hparams": {"lr": lr, "temperature": t},
                "metrics": {"fine": {"linear_top1": score}}}

    chosen, table = grids.select_hparams([line(0.1, 0.1, 0.80), line(0.2, 0.1, 0.85), line(0.05, 0.2, 0.82),
                                          {**line(0.3, 0.3, 0.99), "error": "diverged"}])
    assert chosen[("fashion-mnist", "supcon")]["lr"] == 0.2
    tuned_cell = Cell("fashion-mnist", "supcon", 0.1)
    assert grids.cell_config(tuned_cell, chosen).train.lr == 0.2
    assert len(table[("fashion-mnist", "supcon")]) == 4


def _line(experiment, method, fraction, seed, fine, noise=0.0, **extra):
    return {"experiment": experiment, "dataset": "fashion-mnist", "method": method, "fraction": fraction,
            "noise": noise, "seed": seed, "epochs": 8, "train_seconds": 10.0, "noise_mode": "symmetric",
            "config": {"method": {"name": method}, "data": {"fraction": fraction}},
            "metrics": {"fine": {"linear_top1": fine, "knn_top1": fine},
                        "coarse": {"linear_top1": 0.9, "knn_top1": 0.9}},
            **extra}


def test_report_tables_differences_losses_and_plots(tmp_path):
    results = tmp_path / "results"
    values = {  # fraction -> method -> fine linear top-1 per seed
        0.01: {"supcon": [0.70, 0.71, 0.72], "himulcon": [0.65, 0.66, 0.67], "mlcl": [0.60, 0.61, 0.62]},
        0.1: {"supcon": [0.80, 0.82, 0.84], "himulcon": [0.81, 0.83, 0.85], "mlcl": [0.84, 0.85, 0.86]},
        1.0: {"supcon": [0.90], "mlcl": [0.91]},
    }
    for fraction, methods in values.items():
        for method, scores in methods.items():
            for seed, score in enumerate(scores):
                append_line(results / "limited-data.jsonl", _line("limited-data", method, fraction, seed, score))
    for method, score in (("supcon", 0.6), ("mlcl", 0.65)):
        append_line(results / "label-noise.jsonl", _line("label-noise", method, 0.1, 0, score, noise=0.4))
    curve = [{"epoch": e, "steps": 20 * e, "metrics": {"fine": {"linear_top1": 0.5 + 0.1 * e}}} for e in (1, 2)]
    append_line(results / "convergence.jsonl", _line("convergence", "mlcl", 0.1, 0, 0.7, curve=curve))

    report = write_report(results, tmp_path / "results.md")
    md = (tmp_path / "results.md").read_text()
    # fine linear top-1 is the first table: mean ± sample std (n) in %, then MLCL − best baseline
    row = next(line for line in md.splitlines() if line.startswith("| 10 % "))
    assert "82.00 ± 2.00 (n=3)" in row and "83.00 ± 2.00 (n=3)" in row and "85.00 ± 1.00 (n=3)" in row
    assert row.rstrip(" |").endswith("+2.00 (vs himulcon)")  # 2 points < 2·SE = 2.58: no star
    row = next(line for line in md.splitlines() if line.startswith("| 1 % "))
    assert "71.00 ± 1.00 (n=3)" in row and row.rstrip(" |").endswith("-10.00* (vs supcon)")
    row = next(line for line in md.splitlines() if line.startswith("| 100 % "))
    assert "90.00 (n=1)" in row and "+1.00 (vs supcon)" in row
    assert any("mlcl 61.00 vs supcon 71.00 (-10.00 points, beyond seed noise)" in loss for loss in report.losses)
    assert "Where MLCL loses" in md and "mlcl 61.00 vs supcon 71.00" in md
    assert "`mlcl experiment limited-data --cells 'fashion-mnist__*'`" in md
    names = {path.name for path in report.plots}
    assert names == {"limited-data-fashion-mnist.png", "label-noise.png", "convergence.png"}
    for path in report.plots:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"results/{path.name}" in md


def test_long_budget_rows_sit_next_to_the_usual_budget(tmp_path):
    results = tmp_path / "results"
    for seed, (short, long) in enumerate([(0.80, 0.86), (0.82, 0.88)]):
        append_line(results / "limited-data.jsonl", _line("limited-data", "mlcl", 0.1, seed, short))
        append_line(results / "limited-data.jsonl", _line("limited-data", "himulcon", 0.1, seed, 0.99))
        append_line(results / "long-budget.jsonl", _line("long-budget", "mlcl", 0.1, seed, long, epochs=32))
        append_line(results / "long-budget.jsonl", _line("long-budget", "supcon", 0.1, seed, long + 0.01, epochs=32))
    report = write_report(results, tmp_path / "results.md")
    section = report.markdown.split("## Longer training")[1].split("\n## ")[0]
    per_epoch = grids.DATASETS["fashion-mnist"].steps_per_epoch(0.1)
    assert "| setting |" in section
    short_row = next(line for line in section.splitlines() if line.startswith(f"| 10 %, {8 * per_epoch} steps "))
    long_row = next(line for line in section.splitlines() if line.startswith(f"| 10 %, {32 * per_epoch} steps "))
    assert "81.00 ± 1.41 (n=2)" in short_row and "himulcon" not in section  # only the long-budget methods
    assert "87.00 ± 1.41 (n=2)" in long_row and long_row.rstrip(" |").endswith("-1.00 (vs supcon)")
    assert any("long-budget fine linear-probe top-1" in loss and "-1.00 points" in loss for loss in report.losses)
    assert "long-budget.png" in {path.name for path in report.plots}


def test_wide_encoder_rows_sit_next_to_the_usual_width(tmp_path):
    results = tmp_path / "results"
    for seed in (0, 1):
        for experiment, width, score in (("limited-data", 16, 0.80), ("wide-encoder", 48, 0.84)):
            config = {"model": {"encoder_options": {"width": width}}}
            for method, delta in (("supcon", 0.0), ("mlcl", 0.01)):
                append_line(results / f"{experiment}.jsonl",
                            _line(experiment, method, 0.1, seed, score + delta + 0.01 * seed, config=config))
    report = write_report(results, tmp_path / "results.md")
    section = report.markdown.split("## Wider encoder")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| 10 %, width")]
    assert [row.split(" | ")[0] for row in rows[:2]] == ["| 10 %, width 16", "| 10 %, width 48"]
    assert "85.50 ± 0.71 (n=2)" in rows[1] and rows[1].rstrip(" |").endswith("+1.00 (vs supcon)")
    assert "wide-encoder.png" in {path.name for path in report.plots}


def test_statistics_helpers():
    s = stat([0.80, 0.82, 0.84])
    assert s.n == 3 and s.mean == pytest.approx(0.82) and s.std == pytest.approx(0.02)
    assert fmt_stat(stat([0.5])) == "50.00 (n=1)" and fmt_stat(None) == "—"
    (c,) = compare({"ce": stat([0.5, 0.5]), "supcon": stat([0.7, 0.72]), "mlcl": stat([0.75, 0.77])})
    assert c.baseline == "supcon" and c.diff == pytest.approx(0.05) and c.significant


def test_unknown_experiment_names_the_valid_ones():
    with pytest.raises(ConfigError, match="did you mean 'limited-data'"):
        grids.get_experiment("limited-date")


@pytest.mark.slow
@needs_fashion
def test_convergence_snapshots_every_epoch_of_a_real_run(tmp_path):
    config = load_config(QUICKSTART, [
        "train.epochs=2", "data.options.limit_train=256", "data.options.val_size=64", "data.options.limit_test=64",
        "train.batch_size=64", "model.encoder_options.width=4", "model.proj_hidden=8", "model.proj_dim=4",
        "eval.embedding_map=none", "train.threads=1",
    ])
    trainer = start_run(config, tmp_path / "run", progress=False)
    snapshots = []
    record_epochs(trainer, snapshots)
    trainer.train()
    assert [epoch for epoch, _ in snapshots] == [1, 2]
    final = trainer.model.state_dict()
    assert all(torch.equal(snapshots[-1][1][k], final[k].cpu()) for k in final)
    assert not all(torch.equal(snapshots[0][1][k], final[k].cpu()) for k in final)
