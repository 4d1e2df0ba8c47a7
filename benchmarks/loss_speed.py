"""Speed and memory of the multi-level loss against the matmul floor and against peers.

Run:  python benchmarks/loss_speed.py            (add --quick for a smoke run)

All timings are forward + backward on CPU float32, measured in one process, interleaved (each round
runs every contender once, in turn), median of the rounds. Ratios are what to read: absolute times
depend on the machine and its load.
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
        self_mask = torch.eye(len(rows), dtype=torch.bool)
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


def time_interleaved(contenders: dict[str, Callable], z: torch.Tensor, labels: torch.Tensor, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for name, step in contenders.items():  # warm-up
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--memory-batch", type=int, default=8192)
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 rounds")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(args.memory_child)
        return
    if args.quick:
        args.batch, args.rounds, args.memory_batch = 256, 3, 1024

    contenders = {"floor bmm(z,zT)": floor_step, "mlcl (ours)": make_ours_step(), "per-head SupCon": per_head_supcon_step}
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
