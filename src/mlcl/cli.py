"""The ``mlcl`` command line: ``train``, ``eval``, ``embed``, ``config``, ``datasets`` and ``experiment``.

User mistakes (a bad config value, a missing dataset, a malformed file) print one line and exit with
status 2; ``--debug`` shows the traceback instead. An interrupted run exits with status 130 after
saving a checkpoint that ``mlcl train --resume DIR`` continues.

Each command imports its implementation when it runs, so ``mlcl --help`` and ``mlcl datasets`` do not load
the training, plotting and scikit-learn stack.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlcl.errors import MlclError
from mlcl.train.launch import distributed_worker, launch_local
from mlcl.train.runtime import Stopped, stop_on_signals

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
ALLOW_DATA_CHANGE_HELP = ("go on although the data differs from what the run was trained on (by default that is "
                          "an error naming what changed)")


def _summary_table(metrics: dict[str, Any]) -> str:
    """Per-level test results (the encoder's, then any head features') as an aligned text table."""
    rows = []
    blocks = [("", metrics.get("test", {}))] + [(f"{f} ", v) for f, v in metrics.get("features", {}).items()]
    for prefix, block in blocks:
        for level, values in block.items():
            for name, value in values.items():
                rows.append((prefix + level, name, "-" if value is None else f"{value:.4f}"))
    for level, values in metrics.get("classifier", {}).items():
        rows.append((level, "classifier_top1", f"{values['top1']:.4f}"))
    if not rows:
        return "(no metrics)"
    widths = [max(len(r[i]) for r in rows + [("level", "metric", "value")]) for i in range(3)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format("level", "metric", "value"), line.format(*("-" * w for w in widths))]
    out += [line.format(*row) for row in rows]
    return "\n".join(out)


SET_ENV = "MLCL_SET"


def _overrides(given: list[str]) -> list[str]:
    """The command's ``--set`` values, then those in ``$MLCL_SET`` (shell-quoted, space-separated): for
    settings every run of a shell should get, such as a quick smoke test of documented commands."""
    extra = shlex.split(os.environ.get(SET_ENV, ""))
    if extra and int(os.environ.get("RANK", "0")) == 0:
        print(f"mlcl: {SET_ENV} adds " + " ".join(f"--set {shlex.quote(o)}" for o in extra), file=sys.stderr)
    return [*given, *extra]


def _listing(folder: Path) -> str:
    """The files and folders in ``folder``, folders with a trailing slash (hidden ones, such as the run
    folder's marker, left out)."""
    shown = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return ", ".join(p.name + "/" * p.is_dir() for p in sorted(shown, key=lambda p: (p.is_dir(), p.name)))


def _launch_distributed(nproc: int, argv: list[str], debug: bool = False) -> int:
    """Re-run this command as ``nproc`` processes on this machine: ``torchrun --standalone`` run in this
    process (:func:`mlcl.train.launch.launch_local`), which sums up a failed worker in one line."""
    forwarded = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        forwarded.append(arg)
    return launch_local(nproc, forwarded, debug=debug)


@contextmanager
def _stopped_then(advice: Callable[[], str]) -> Iterator[None]:
    """A signal (:class:`Stopped`) in the block becomes a one-line ``Interrupted`` saying what to run next."""
    from mlcl.train.loop import Interrupted

    try:
        yield
    except Stopped as exc:
        raise Interrupted(f"{exc.signal_name} received {advice()}") from None


def _restart_advice(out: str) -> str:
    if (Path(out) / "config.yaml").is_file():
        return f"while the run was being prepared; nothing was trained: start it again with mlcl train --resume {out}"
    return "before the run folder was written; run the same command again"


@distributed_worker  # in a torchrun worker: report a failure to the launcher, close the process group
def cmd_train(args: argparse.Namespace) -> int:
    from mlcl.train.config import load_config
    from mlcl.train.loop import resume_run, start_run
    from mlcl.train.results import evaluate_run

    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_distributed(args.nproc, args.argv, debug=args.debug)
    if args.resume:
        if args.config or args.set:
            raise MlclError("--resume continues a run with its saved config; drop --config / --set")
        out = args.resume
        with _stopped_then(lambda: f"while the run was being restored; continue with mlcl train --resume {out}"):
            trainer = resume_run(out, progress=not args.quiet, allow_data_change=args.allow_data_change)
    else:
        if args.out is None:
            raise MlclError("mlcl train needs --out DIR (where checkpoints, logs and metrics go)")
        if args.allow_data_change:
            raise MlclError("--allow-data-change goes with --resume (a new run records the data as it is)")
        if args.config is None and int(os.environ.get("RANK", "0")) == 0:
            print("mlcl train: no --config, so this run starts from the built-in defaults (fashion-mnist, small_cnn, "
                  "method mlcl, 10 epochs) plus any --set; `mlcl config` prints them, configs/ has ready-made files",
                  file=sys.stderr)
        out = args.out
        overrides = _overrides(args.set) + (["train.tensorboard=false"] if args.no_tensorboard else [])
        config = load_config(args.config, overrides)
        with _stopped_then(lambda: _restart_advice(out)):
            trainer = start_run(config, out, progress=not args.quiet)
    if args.no_tensorboard:  # a resumed run too
        trainer.tensorboard = False
    with _stopped_then(lambda: f"a second time: stopped at once; continue from the last epoch's checkpoint with "
                               f"mlcl train --resume {out}"):
        trainer.train()
    if not trainer.is_main:
        return 0
    with _stopped_then(lambda: f"during evaluation; training is complete: evaluate it with mlcl eval {out}"):
        trainer.run.load_weights("best")  # chosen on validation
        metrics = evaluate_run(trainer.run, progress=not args.quiet)
    epochs = metrics["epochs"]
    print(f"\n{trainer.dataset.name} / {trainer.config.method.name}: {epochs} epoch{'s' * (epochs != 1)} in "
          f"{metrics['train_seconds']:.1f} s; test results (best epoch {metrics['best_epoch']}):")
    print(_summary_table(metrics))
    print(f"\nwritten to {trainer.out_dir}: {_listing(trainer.out_dir)}")
    return 0


def _eval_folder(run_dir: Path, out: str | None, checkpoint: str, overwrite: bool) -> Path:
    """Where ``mlcl eval`` writes: ``--out``, else ``RUN/eval-CHECKPOINT`` (``-2``, ``-3``, ... when taken),
    never over earlier results unless ``--overwrite``."""
    if out is not None:
        folder = Path(out)
        if (folder / "metrics.json").exists() and not overwrite:
            raise MlclError(f"{folder / 'metrics.json'} exists; add --overwrite or choose another --out")
        return folder
    folder, n = run_dir / f"eval-{checkpoint}", 1
    while (folder / "metrics.json").exists() and not overwrite:
        n += 1
        folder = run_dir / f"eval-{checkpoint}-{n}"
    return folder


def cmd_eval(args: argparse.Namespace) -> int:
    from mlcl.train.results import evaluate_run
    from mlcl.train.run import load_run

    run_dir = Path(args.run_dir)
    folder = _eval_folder(run_dir, args.out, args.checkpoint, args.overwrite)
    with _stopped_then(lambda: f"during evaluation; evaluate again with mlcl eval {args.run_dir}"):
        run = load_run(run_dir, args.checkpoint, progress=not args.quiet, allow_data_change=args.allow_data_change)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise MlclError(f"--out {folder} is (or is inside) a file; give a folder") from None
        metrics = evaluate_run(run, folder, progress=not args.quiet)
    print(_summary_table(metrics))
    print(f"\nwritten to {folder}: {_listing(folder)}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from mlcl.train.embed import export_embeddings

    with _stopped_then(lambda: "before the embeddings were complete; run the same mlcl embed command again"):
        paths, count, dims = export_embeddings(Path(args.run_dir), args.input, args.head, Path(args.out),
                                               args.checkpoint, args.overwrite,
                                               allow_data_change=args.allow_data_change)
    print(f"wrote {count} embeddings of dimension {dims} with their ids and labels to {', '.join(map(str, paths))}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mlcl.train.export import export_run

    out = export_run(args.run_dir, args.out, args.checkpoint, allow_data_change=args.allow_data_change)
    print(f"exported {args.run_dir} ({args.checkpoint} checkpoint) to {out}: {_listing(out)}; "
          f"load it with mlcl.load_run({str(out)!r})")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from mlcl.data.registry import DATASETS

    rows = []
    for info in DATASETS.values():
        found, where = info.is_available()
        rows.append((info.name, info.modality, info.structure, "yes" if found else "no", where))
    if args.json:
        keys = ("name", "modality", "structure", "available", "where")
        print(json.dumps([dict(zip(keys, row)) for row in rows], indent=2))
        return 0
    rows.insert(0, ("name", "modality", "structure", "data here", "where / how to get it"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4])
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from mlcl.train.config import config_yaml, load_config

    if args.reference:
        from mlcl.train.config_reference import config_reference

        print(config_reference(), end="")
        return 0
    print(config_yaml(load_config(args.config, _overrides(args.set))), end="")
    return 0


SET_HELP = ("override a config value, e.g. --set train.epochs=5 (repeatable); a mapping is merged key by key, "
            "KEY:=VALUE replaces it (see docs/config.md)")


def build_parser() -> argparse.ArgumentParser:
    from mlcl import __version__

    parser = argparse.ArgumentParser(prog="mlcl", description="Multi-level supervised contrastive learning.")
    parser.add_argument("--version", action="version", version=f"mlcl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model from a config, then evaluate it")
    train.add_argument("--config", help="YAML config file (see configs/; without it: the defaults in docs/config.md)")
    train.add_argument("--out", help="run directory for checkpoints, logs, metrics and plots")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    train.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR")
    train.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine (torchrun)")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.add_argument("--allow-data-change", action="store_true", help=ALLOW_DATA_CHANGE_HELP)
    train.add_argument("--no-tensorboard", action="store_true",
                       help="write no TensorBoard event files (the same as --set train.tensorboard=false)")
    train.set_defaults(func=cmd_train)

    checkpoint = dict(choices=("best", "last"), default="best",
                      help="best (by the validation monitor; last when the run has none) or last "
                           "(default: %(default)s)")
    evaluate = sub.add_parser("eval", help="evaluate a trained run again, into a new folder")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--checkpoint", **checkpoint)
    evaluate.add_argument("--out", help="folder for metrics.json and plots (default: RUN/eval-CHECKPOINT, numbered "
                                        "when taken)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace the results already in that folder")
    evaluate.add_argument("--quiet", action="store_true", help="no progress output")
    evaluate.add_argument("--allow-data-change", action="store_true", help=ALLOW_DATA_CHANGE_HELP)
    evaluate.set_defaults(func=cmd_eval)

    embed = sub.add_parser("embed", help="export embeddings of a trained run, with ids and labels")
    embed.add_argument("run_dir")
    embed.add_argument("--input", default="test",
                       help="train, val or test (the run's own splits) or a CSV/JSONL file with the run's input column")
    embed.add_argument("--head", default="encoder", help="a head name (see the run's config) or 'encoder'")
    embed.add_argument("--out", required=True,
                       help="output file: .npz or .csv (vectors, ids, labels), or .npy / .pt (ids and labels in "
                            "NAME.rows.csv beside)")
    embed.add_argument("--checkpoint", **checkpoint)
    embed.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    embed.add_argument("--allow-data-change", action="store_true", help=ALLOW_DATA_CHANGE_HELP)
    embed.set_defaults(func=cmd_embed)

    export = sub.add_parser("export", help="write a run's weights as safetensors with their config (no pickle)")
    export.add_argument("run_dir")
    export.add_argument("--out", required=True, help="a new (or empty) folder")
    export.add_argument("--checkpoint", **checkpoint)
    export.add_argument("--allow-data-change", action="store_true", help=ALLOW_DATA_CHANGE_HELP)
    export.set_defaults(func=cmd_export)

    config = sub.add_parser("config", help="print the resolved config of --config and --set (nothing runs)")
    config.add_argument("--config", help="YAML config file (without it: the defaults)")
    config.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    config.add_argument("--reference", action="store_true",
                        help="print the reference of every key and option instead (docs/config.md)")
    config.set_defaults(func=cmd_config)

    datasets = sub.add_parser("datasets", help="list the built-in datasets and whether their data is here")
    datasets.add_argument("--json", action="store_true")
    datasets.set_defaults(func=cmd_datasets)

    from mlcl.experiments.cli import add_experiment_parser

    add_experiment_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    from mlcl.train.loop import Interrupted

    with stop_on_signals():
        try:
            return args.func(args)
        except MlclError as exc:
            if args.debug:
                raise
            print(f"mlcl: error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        except Interrupted as exc:
            print(f"mlcl: {exc}", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Stopped as exc:
            print(f"mlcl: {exc.signal_name} received: stopped", file=sys.stderr)
            return EXIT_INTERRUPTED
        except KeyboardInterrupt:
            print("mlcl: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
