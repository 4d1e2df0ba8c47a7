"""Loss-only throughput at one global batch: one process against W gloo processes (CPU).

Run:  python benchmarks/distributed_loss.py            (add --quick for a smoke run)

Each step is MultiLevelSupConLoss forward + backward on random float32 projections (no model). The
W-process run uses ``gather_distributed=True``: every rank holds N/W samples, gathers all keys, and
contrasts only its own anchors, so each rank does 1/W of the similarity work plus a gather of the keys
and an all-reduce of their gradient. Compared against one process with 1 thread and with W threads
(the same cores). Median step time over the timed steps; ratios are what to read — absolute times
depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mlcl import MultiLevelSupConLoss
from mlcl.train.runtime import join_local_group

TEMPERATURES = [0.5, 0.2, 0.1]


def make_batch(args: argparse.Namespace, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(len(TEMPERATURES), args.batch, args.views, args.dim, generator=gen)
    labels = torch.stack([torch.randint(0, c, (args.batch,), generator=gen) for c in (5, 20, 100)], dim=1)
    return z[:, rows].contiguous(), labels[rows].contiguous()


def time_steps(loss_fn, z: torch.Tensor, labels: torch.Tensor, args, barrier=None) -> list[float]:
    times = []
    for step in range(args.warmup + args.steps):
        leaf = z.detach().requires_grad_(True)
        if barrier is not None:
            barrier()
        start = time.perf_counter()
        loss_fn(leaf, labels).backward()
        if barrier is not None:
            barrier()  # a step ends when the slowest rank is done
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return times


def one_process(args: argparse.Namespace, threads: int) -> float:
    torch.set_num_threads(threads)
    z, labels = make_batch(args, slice(None))
    return statistics.median(time_steps(MultiLevelSupConLoss(TEMPERATURES), z, labels, args))


def rank_main(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    join_local_group(rank, world, port, timeout_s=120)
    try:
        per_rank = args.batch // world
        z, labels = make_batch(args, slice(rank * per_rank, (rank + 1) * per_rank))
        loss_fn = MultiLevelSupConLoss(TEMPERATURES, gather_distributed=True)
        times = time_steps(loss_fn, z, labels, args, barrier=dist.barrier)
        if rank == 0:
            Path(out).write_text(json.dumps(times))
    finally:
        dist.destroy_process_group()


def multi_process(args: argparse.Namespace, world: int) -> float:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "times.json")
        mp.start_processes(rank_main, args=(world, port, args, out), nprocs=world, start_method="spawn")
        return statistics.median(json.loads(Path(out).read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024, help="global batch (samples)")
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--world", type=int, default=2, help="number of gloo processes")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="batch 256, 5 steps")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.steps, args.warmup = 256, 5, 1
    if args.batch % args.world:
        parser.error(f"--batch {args.batch} must be a multiple of --world {args.world}")

    print(
        f"global batch {args.batch} x {args.views} views, {len(TEMPERATURES)} heads, dim {args.dim}, "
        f"float32, CPU, forward + backward, median of {args.steps} steps"
    )
    single_1 = one_process(args, threads=1)
    single_w = one_process(args, threads=args.world)
    multi = multi_process(args, args.world)
    rows = [
        ("1 process x 1 thread", single_1),
        (f"1 process x {args.world} threads", single_w),
        (f"{args.world} gloo processes x 1 thread", multi),
    ]
    for name, seconds in rows:
        print(f"  {name:32s} {seconds * 1e3:9.2f} ms/step  {args.batch / seconds:10.0f} samples/s")
    print(f"speed-up of {args.world} processes over 1 process x 1 thread: {single_1 / multi:.2f}x")
    print(f"speed-up of {args.world} processes over 1 process x {args.world} threads: {single_w / multi:.2f}x")


if __name__ == "__main__":
    main()
