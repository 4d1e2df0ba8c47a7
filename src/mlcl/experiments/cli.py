"""``mlcl experiment NAME | list | report``: run a grid (resumable), list the grids, write the report.

Wire into :mod:`mlcl.cli` with ``add_experiment_parser(sub)``; the parser sets ``func=cmd_experiment``.
As in :mod:`mlcl.cli`, each command imports its implementation when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlcl.errors import MlclError

EXIT_INTERRUPTED = 130


def add_experiment_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``experiment`` sub-command to ``subparsers``."""
    parser = subparsers.add_parser(
        "experiment", help="run a grid of experiments (resumable), list them, or write docs/results.md",
        description="Run NAME's cells that are not in RESULTS_DIR/NAME.jsonl yet, appending one JSON line per "
                    "finished run (re-run the same command to continue). `mlcl experiment list` shows the "
                    "experiments; `mlcl experiment report` writes docs/results.md and its plots.",
    )
    parser.add_argument("name", help="an experiment (see `mlcl experiment list`), or `list`, or `report`")
    parser.add_argument("--dry-run", action="store_true", help="print the cells and their exact commands; run nothing")
    parser.add_argument("--cells", action="append", default=[], metavar="PATTERN",
                        help="only cells whose id matches this glob or contains this text (repeatable, "
                             "comma-separated), e.g. 'fashion-mnist__mlcl__*'")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="run at most N unfinished cells")
    parser.add_argument("--keep-runs", action="store_true", help="keep each run's directory (checkpoints, logs)")
    parser.add_argument("--results-dir", default="docs/results", help="where the JSONL files go (default: %(default)s)")
    parser.add_argument("--runs-dir", default="runs/experiments", help="run directories (default: %(default)s)")
    parser.add_argument("--out", default="docs/results.md", help="report: the markdown file (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every cell, e.g. --set train.threads=2 (recorded in each line)")
    parser.add_argument("--progress", action="store_true", help="show each run's progress bars")
    parser.set_defaults(func=cmd_experiment)
    return parser


def _list(results_dir: Path) -> int:
    from mlcl.experiments.grids import EXPERIMENTS, get_experiment
    from mlcl.experiments.runner import RunOptions, format_seconds, plan

    options = RunOptions(results_dir=results_dir)
    rows = []
    for name in EXPERIMENTS:
        experiment = get_experiment(name)
        planned = plan(experiment, options)
        todo = [p for p in planned if not p.done]
        rows.append((name, str(len(planned)), str(len(planned) - len(todo)),
                     format_seconds(sum(p.estimate for p in todo)), experiment.description))
    header = ("experiment", "cells", "done", "est. left", "what it measures")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4])
    print("\nestimates: one torch thread per runner, measured on the shared 2-core machine; run the sweep first "
          "(the others use its lr / temperature)")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    results_dir = Path(args.results_dir)
    if args.name == "list":
        return _list(results_dir)
    if args.name == "report":
        from mlcl.experiments.report import write_report

        report = write_report(results_dir, args.out)
        print(f"wrote {args.out} and {len(report.plots)} plots in {results_dir}; "
              f"{len(report.losses)} rows where MLCL is below the best baseline")
        return 0
    from mlcl.experiments.grids import get_experiment
    from mlcl.experiments.runner import RunOptions, dry_run, format_seconds, run_experiment
    from mlcl.train.loop import Interrupted

    if args.limit is not None and args.limit < 0:
        raise MlclError(f"--limit must be >= 0, got {args.limit}")
    experiment = get_experiment(args.name)
    options = RunOptions(results_dir=results_dir, runs_dir=Path(args.runs_dir), keep_runs=args.keep_runs,
                         extra=list(args.set), progress=args.progress)
    if args.dry_run:
        dry_run(experiment, options, args.cells, args.limit)
        return 0
    try:
        summary = run_experiment(experiment, options, args.cells, args.limit)
    except Interrupted as exc:
        print(f"mlcl: {exc}\nmlcl: the finished cells are in {results_dir / (args.name + '.jsonl')}; run the same "
              f"`mlcl experiment {args.name}` command again to continue (the interrupted cell resumes from its "
              "checkpoint)")
        return EXIT_INTERRUPTED
    print(f"{args.name}: ran {summary.ran} cells in {format_seconds(summary.seconds)} ({summary.failed} diverged), "
          f"skipped {summary.skipped} finished; results in {results_dir / (args.name + '.jsonl')}")
    return 0
