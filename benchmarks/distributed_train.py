"""End-to-end training throughput: one process against ``mlcl train --nproc N`` at the same global batch.

Run:  python benchmarks/distributed_train.py            (add --quick for a smoke run)

Both runs train the quickstart config (MLCL, SmallCNN, two heads) on a Fashion-MNIST slice on the
CPU (gloo) with the same global batch: one process with ``train.batch_size=B`` and all the cores,
N processes with ``train.batch_size=B/N`` and ``cores/N`` threads each (mlcl's default); and one
process on one thread with the learning rate nudged by a factor 1 + 1e-6. Throughput is
training samples per second of the epochs' training time as ``log.csv`` records it (no start-up, no
validation, no final evaluation); the first epoch includes warm-up, so the ratio is also given over
the later epochs. The per-epoch losses are printed side by side: with global-batch BatchNorm and
rank-sliced augmentation the N-process run computes the one-process steps up to float rounding
(docs/distributed.md), and training amplifies such a difference over the steps as much as it amplifies
the 1e-6 nudge of the learning rate: that run is the yardstick. Ratios are what to read: absolute
numbers depend on the machine and its load (on a shared machine, a process with several threads
suffers most from the other load).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(out: Path, nproc: int, batch: int, args: argparse.Namespace, threads: int | None = None,
          lr_scale: float = 1.0):
    """Run ``mlcl train``; its log.csv rows and the wall time of the whole command."""
    overrides: dict[str, object] = {
        "data.options.limit_train": args.limit_train, "data.options.val_size": 500, "data.options.limit_test": 500,
        "train.epochs": args.epochs, "train.batch_size": batch, "train.monitor_every": args.epochs,
        "model.encoder_options.width": args.width, "eval.embedding_map": "none", "seed": 0,
    }
    if threads:
        overrides["train.threads"] = threads
    if lr_scale != 1.0:
        overrides["train.lr"] = repr(0.1 * lr_scale)  # the quickstart's lr, nudged
    command = [sys.executable, "-m", "mlcl", "train", "--config", str(ROOT / "configs" / "quickstart.yaml"),
               "--out", str(out), "--quiet", "--nproc", str(nproc)]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    wall = time.perf_counter() - started
    with open(out / "log.csv", newline="", encoding="utf-8") as handle:
        rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]
    return rows, wall


def throughput(rows: list[dict[str, float]], samples_per_epoch: int, skip_first: bool) -> float:
    timed = rows[1:] if skip_first and len(rows) > 1 else rows
    return samples_per_epoch * len(timed) / sum(r["seconds"] for r in timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256, help="global batch")
    parser.add_argument("--limit-train", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=32, help="SmallCNN width (the quickstart's is 32)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1024 samples, 2 epochs, width 8")
    args = parser.parse_args()
    if args.quick:
        args.limit_train, args.epochs, args.width = 1024, 2, 8
    if args.batch % args.nproc:
        parser.error("--batch must be a multiple of --nproc")
    samples_per_epoch = args.limit_train // args.batch * args.batch
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory(prefix="mlcl-bench-") as folder:
        one, wall_one = train(Path(folder) / "one", 1, args.batch, args)
        # One thread, and the learning rate nudged by 1e-6: a perturbation of the size of float rounding,
        # to show how much training amplifies one (the yardstick for the N-process loss difference).
        single, wall_single = train(Path(folder) / "single", 1, args.batch, args, threads=1, lr_scale=1 + 1e-6)
        many, wall_many = train(Path(folder) / "many", args.nproc, args.batch // args.nproc, args)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    print(f"Fashion-MNIST slice: {samples_per_epoch} training samples/epoch, {args.epochs} epochs, global batch "
          f"{args.batch}, SmallCNN width {args.width}, MLCL (2 heads), CPU with {cores} cores, torch gloo; "
          f"load average {load_before:.1f} before, {load_after:.1f} after (other processes on the machine)\n")
    w = args.nproc
    print("| run | batch per process | threads per process | samples/s (all epochs) | "
          "samples/s (epochs 2+) | wall time of `mlcl train` |")
    print("|---|---|---|---|---|---|")
    for name, rows, wall, per, threads in (
        ("1 process", one, wall_one, args.batch, cores),
        ("1 process, 1 thread (lr x (1+1e-6))", single, wall_single, args.batch, 1),
        (f"{w} processes", many, wall_many, args.batch // w, max(1, cores // w)),
    ):
        print(f"| {name} | {per} | {threads} | {throughput(rows, samples_per_epoch, False):.0f} | "
              f"{throughput(rows, samples_per_epoch, True):.0f} | {wall:.1f} s |")
    print()
    for name, base in (("1 process", one), ("1 process, 1 thread", single)):
        ratio_all = throughput(many, samples_per_epoch, False) / throughput(base, samples_per_epoch, False)
        ratio_late = throughput(many, samples_per_epoch, True) / throughput(base, samples_per_epoch, True)
        print(f"throughput ratio {w} processes / {name}: {ratio_all:.2f} (all epochs), {ratio_late:.2f} (epochs 2+)")
    print()
    print(f"| epoch | loss, 1 process | loss, 1 process, lr x (1+1e-6) (rel. diff.) | "
          f"loss, {w} processes (rel. diff.) |")
    print("|---|---|---|---|")
    for a, b, c in zip(one, single, many):
        rel_b, rel_c = (abs(a["loss"] - x["loss"]) / abs(a["loss"]) for x in (b, c))
        print(f"| {int(a['epoch'])} | {a['loss']:.6f} | {b['loss']:.6f} ({rel_b:.1e}) | "
              f"{c['loss']:.6f} ({rel_c:.1e}) |")


if __name__ == "__main__":
    main()
