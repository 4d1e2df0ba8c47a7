"""Speed and memory of the multi-level loss against the matmul floor and against peers.

Run:  python benchmarks/loss_speed.py            (CPU float32; add --quick for a smoke run)
      python benchmarks/loss_speed.py --device cuda --dtype bf16 --batch 1024,4096,16384,65536

All timings are forward + backward, measured in one process, interleaved (each round runs every
contender once, in turn), median of the rounds; on CUDA with CUDA events, and peak memory is
``torch.cuda.max_memory_allocated`` per contender. Ratios are what to read: absolute times depend on
the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mlcl import MultiLevelSupConLoss


def floor_step(z: torch.Tensor, labels: torch.Tensor) -> None:
    """The bare batched similarity matmul bmm(z, zᵀ), forward + backward."""
    flat = z.reshape(z.shape[0], -1, z.shape[-1])
    torch.bmm(flat, flat.transpose(1, 2)).sum().backward()


def per_head_supcon_step(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> None:
    """A straightforward dense SupCon (the reference formulation), one head at a time."""
    total = 0.0
    num_heads, batch, n_views, _ = z.shape
    for h in range(num_heads):
        rows = F.normalize(z[h], dim=-1).reshape(batch * n_views, -1)
        lab = labels[:, h].repeat_interleave(n_views)
        logits = rows @ rows.t() / temperature
        self_mask = torch.eye(len(rows), dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        pos = (lab[:, None] == lab[None, :]) & ~self_mask
        mean_pos = (log_prob.masked_fill(~pos, 0).sum(1)) / pos.sum(1).clamp_min(1)
        total = total - mean_pos[pos.any(1)].mean()
    total.backward()


def make_pml_step() -> Callable[[torch.Tensor, torch.Tensor], None] | None:
    try:
        from pytorch_metric_learning.losses import SupConLoss
    except ImportError:
        return None
    pml = SupConLoss(temperature=0.1)

    def step(z: torch.Tensor, labels: torch.Tensor) -> None:
        num_heads, batch, n_views, _ = z.shape
        total = sum(
            pml(z[h].reshape(batch * n_views, -1), labels[:, h].repeat_interleave(n_views)) for h in range(num_heads)
        )
        total.backward()

    return step


def make_ours_step() -> Callable[[torch.Tensor, torch.Tensor], None]:
    loss_fn = MultiLevelSupConLoss([0.1, 0.1, 0.1])

    def step(z: torch.Tensor, labels: torch.Tensor) -> None:
        loss_fn(z, labels).backward()

    return step


def time_interleaved(
    contenders: dict[str, Callable], z: torch.Tensor, labels: torch.Tensor, rounds: int
) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for step in contenders.values():  # warm-up
        step(z, labels)
        z.grad = None
    for _ in range(rounds):
        for name, step in contenders.items():
            start = time.perf_counter()
            step(z, labels)
            times[name].append(time.perf_counter() - start)
            z.grad = None
    return {name: statistics.median(values) for name, values in times.items()}


def _high_water_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it does not survive exec)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_child(batch: int) -> None:
    """Run in a fresh process: one forward + backward at ``batch`` samples, print peak RSS in MB."""
    torch.manual_seed(0)
    z = torch.randn(3, batch, 2, 128, requires_grad=True)
    labels = torch.randint(0, 100, (batch, 3))
    before = _high_water_mb()
    MultiLevelSupConLoss([0.1, 0.1, 0.1])(z, labels).backward()
    print(json.dumps({"peak_rss_mb": _high_water_mb(), "before_loss_mb": before}))


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CUDA_CLASSES = (5, 20, 100)  # one head each


def time_cuda(step: Callable, z: torch.Tensor, labels: torch.Tensor, rounds: int) -> tuple[float, float] | None:
    """Median milliseconds (CUDA events) and peak MB allocated above the inputs; None if out of memory."""
    try:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        step(z, labels)  # warm-up, and the peak-memory measurement
        z.grad = None
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - baseline) / 2**20
        times = []
        for _ in range(rounds):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(z, labels)
            stop.record()
            z.grad = None
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop))
        return statistics.median(times), peak_mb
    except torch.cuda.OutOfMemoryError:
        z.grad = None
        torch.cuda.empty_cache()
        return None


def cuda_main(args: argparse.Namespace) -> dict:
    """One table row per batch size: every contender's time and peak memory, ratios to the floor."""
    dtype = DTYPES[args.dtype]
    contenders = {"floor": floor_step, "mlcl": make_ours_step(), "dense SupCon": per_head_supcon_step}
    pml = make_pml_step()
    if pml is not None:
        contenders["pytorch-metric-learning"] = pml
    name = torch.cuda.get_device_name()
    print(f"torch {torch.__version__}, {name}; 3 heads ({'/'.join(map(str, CUDA_CLASSES))} classes) x 2 views x "
          f"D=128, {args.dtype}, forward+backward, median of {args.rounds} rounds (CUDA events)\n")
    print("| B | " + " | ".join(f"{c} ms (peak MB)" for c in contenders) + " | mlcl / floor | mlcl / dense |")
    print("|" + "---|" * (len(contenders) + 3))
    rows = []
    for batch in args.batch_list:
        torch.manual_seed(batch)
        z = torch.randn(3, batch, 2, 128, device="cuda", dtype=dtype, requires_grad=True)
        labels = torch.stack([torch.randint(0, c, (batch,), device="cuda") for c in CUDA_CLASSES], 1)
        results = {c: (time_cuda(step, z, labels, args.rounds) if batch <= args.peer_limit or c == "mlcl" or
                       c == "floor" else None) for c, step in contenders.items()}
        cells = " | ".join("OOM/skipped" if r is None else f"{r[0]:.2f} ({r[1]:.0f})" for r in results.values())
        ours, floor, dense = results["mlcl"], results["floor"], results["dense SupCon"]
        vs_floor = f"{ours[0] / floor[0]:.2f}x" if ours and floor else "-"
        vs_dense = f"{ours[0] / dense[0]:.2f}x" if ours and dense else "-"
        print(f"| {batch} | {cells} | {vs_floor} | {vs_dense} |", flush=True)
        rows.append({"batch": batch, "dtype": args.dtype,
                     **{c: None if r is None else {"ms": r[0], "peak_mb": r[1]} for c, r in results.items()}})
        del z, labels
    return {"device": name, "torch": torch.__version__, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="CUDA: the projections' dtype")
    parser.add_argument("--batch", default="1024", help="samples per batch; CUDA takes a comma-separated list")
    parser.add_argument("--peer-limit", type=int, default=16384, help="CUDA: largest batch for the dense peers")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--memory-batch", type=int, default=8192)
    parser.add_argument("--json", help="CUDA: also write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 rounds")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(args.memory_child)
        return
    try:
        args.batch_list = [int(b) for b in args.batch.split(",")]
    except ValueError:
        parser.error(f"--batch takes whole numbers separated by commas, got {args.batch!r}")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda but CUDA is not available here")
        if args.quick:
            args.batch_list, args.rounds = [1024], 3
        results = cuda_main(args)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump(results, handle, indent=2)
        return
    if len(args.batch_list) != 1:
        parser.error("the CPU mode takes one --batch")
    args.batch = args.batch_list[0]
    if args.quick:
        args.batch, args.rounds, args.memory_batch = 256, 3, 1024

    contenders = {
        "floor bmm(z,zT)": floor_step, "mlcl (ours)": make_ours_step(), "per-head SupCon": per_head_supcon_step
    }
    pml = make_pml_step()
    if pml is not None:
        contenders["pytorch-metric-learning SupConLoss"] = pml
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; B={args.batch} x 2 views x 3 heads x D=128, "
          f"float32, forward+backward, median of {args.rounds} interleaved rounds\n")
    header = "| classes | " + " | ".join(f"{name} (ms)" for name in contenders) + " | ours / floor | peer / ours |"
    print(header)
    print("|" + "---|" * (len(contenders) + 3))
    for classes in (5, 20, 100):
        torch.manual_seed(classes)
        z = torch.randn(3, args.batch, 2, 128, requires_grad=True)
        labels = torch.randint(0, classes, (args.batch, 3))
        med = time_interleaved(contenders, z, labels, args.rounds)
        ours = med["mlcl (ours)"]
        peer = med.get("pytorch-metric-learning SupConLoss", float("nan"))
        cells = " | ".join(f"{1000 * med[name]:.1f}" for name in contenders)
        print(f"| {classes} | {cells} | {ours / med['floor bmm(z,zT)']:.2f}x | {peer / ours:.2f}x |")

    result = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(args.memory_batch)], capture_output=True, text=True, check=True
    )
    memory = json.loads(result.stdout)
    print(f"\nmemory: B={args.memory_batch} x 2 views x 3 heads x D=128 forward+backward: "
          f"peak RSS {memory['peak_rss_mb']:.0f} MB (process before the loss: {memory['before_loss_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
