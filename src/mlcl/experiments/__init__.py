"""Experiments that measure the method's claims side by side with the baselines.

``grids`` defines the experiments (cells and their configs), ``runner`` runs them with resume and
appends one JSON line per finished run to ``docs/results/<experiment>.jsonl``, ``transfer`` and
``convergence`` hold the two evaluations that go beyond one training run, and ``report`` turns the
JSONL files into ``docs/results.md`` with plots. The command line is ``mlcl experiment``.
"""

from mlcl.experiments.grids import EXPERIMENTS, Cell, Experiment, get_experiment
from mlcl.experiments.report import write_report
from mlcl.experiments.runner import RunOptions, dry_run, run_experiment

__all__ = ["EXPERIMENTS", "Cell", "Experiment", "RunOptions", "dry_run", "get_experiment", "run_experiment",
           "write_report"]
