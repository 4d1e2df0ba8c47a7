"""The GPU check: correctness, loss speed, training speed and two processes on one GPU, in one run.

Run:  bash benchmarks/gpu_check.sh [OUT_DIR]        (needs one CUDA GPU and Fashion-MNIST)
      python benchmarks/gpu_check.py --smoke         (the same code paths on the CPU, small sizes)

Sections (each recorded in OUT_DIR/gpu_check.json, a failing section does not stop the others):

1. ``correctness``: the loss on CUDA against the brute-force per-pair reference (float64, small batch)
   and, at B=4096, every precision (float32, bfloat16, float16, autocast bf16 / fp16) against CUDA
   float64: relative loss error, gradient cosine, finiteness; also τ = 0.01.
2. ``speed``: ``benchmarks/loss_speed.py --device cuda`` in float32 and bfloat16 (floor, mlcl, dense
   SupCon, pytorch-metric-learning; CUDA events and peak memory), up to B=131072 for mlcl.
3. ``training``: ``configs/quickstart.yaml`` on ``train.device=cuda`` in fp32, bf16 and fp16; steps/s
   from log.csv (epochs after the first) and the test accuracies. With ``--baseline-src DIR`` (another
   mlcl's ``src``) the same fp32 run of that version is timed first, for a before/after ratio.
4. ``ddp``: two processes sharing the GPU over gloo (NCCL refuses two ranks on one GPU): the gradients
   of a model under DDP with the gathering loss against one process on the whole batch, and
   ``mlcl train --nproc 2`` on CUDA (rank devices, global-batch BatchNorm, checkpointed CUDA RNG).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from queue import Empty

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import mlcl
from mlcl import MultiLevelSupConLoss
from mlcl.train.runtime import join_local_group

ROOT = Path(__file__).resolve().parent.parent
CHECKOUT = Path(mlcl.__file__).resolve().parents[2]  # the mlcl checkout: its tests hold the brute-force reference

PRECISIONS = {
    "fp32": (torch.float32, None),
    "bf16": (torch.bfloat16, None),
    "fp16": (torch.float16, None),
    "autocast-bf16": (torch.float32, torch.bfloat16),
    "autocast-fp16": (torch.float32, torch.float16),
}


def _loss_and_grad(loss_fn, z, labels, autocast_dtype=None):
    z = z.detach().clone().requires_grad_(True)
    with torch.autocast(z.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        value = loss_fn(z, labels)
    value.backward()
    return value.detach().double(), z.grad.double()


def correctness(device: str, batch: int) -> dict:
    sys.path.insert(0, str(CHECKOUT / "tests"))
    from loss_reference import dense_from_labels, reference_loss

    results: dict = {}
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 24, 2, 16, generator=gen, dtype=torch.float64)
    labels = torch.randint(-1, 4, (24, 3), generator=gen)
    temps = [0.5, 0.1, 0.05]
    ours, our_grad = _loss_and_grad(MultiLevelSupConLoss(temps).to(device), z.to(device), labels.to(device))
    zr = z.clone().requires_grad_(True)
    ref = reference_loss(zr, dense_from_labels(labels), temps, [1.0] * 3, labelled=labels.t() >= 0)[0]
    ref.backward()
    results["brute_force_float64"] = {
        "loss_rel_err": abs(ours.item() - ref.item()) / abs(ref.item()),
        "grad_max_rel_err": ((our_grad.cpu() - zr.grad).abs().max() / zr.grad.abs().max()).item(),
    }
    first = torch.randn(3, batch, 128, device=device, dtype=torch.float64)
    z = torch.stack([first, first + 0.5 * torch.randn_like(first)], 2)
    labels = torch.stack([torch.randint(0, c, (batch,), device=device) for c in (5, 20, 100)], 1)
    for temps in ([0.1, 0.1, 0.1], [0.3, 0.1, 0.01]):
        loss_fn = MultiLevelSupConLoss(temps).to(device)
        ref, ref_grad = _loss_and_grad(loss_fn, z, labels)
        for name, (dtype, autocast_dtype) in PRECISIONS.items():
            value, grad = _loss_and_grad(loss_fn, z.to(dtype), labels, autocast_dtype)
            results[f"B{batch}_tau{min(temps)}_{name}"] = {
                "loss_rel_err": abs(value.item() - ref.item()) / abs(ref.item()),
                "grad_cosine": F.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0).item(),
                "finite": bool(torch.isfinite(value) and torch.isfinite(grad).all()),
            }
    collapsed = torch.ones(1, 4 * batch, 2, 8, device=device, dtype=torch.float16)  # float16's worst case
    value, grad = _loss_and_grad(MultiLevelSupConLoss([0.01]).to(device), collapsed, labels[:, :1].repeat(4, 1))
    results[f"collapsed_fp16_B{4 * batch}_tau0.01"] = {"loss": value.item(), "finite": bool(torch.isfinite(grad).all())}
    return results


def speed(out: Path) -> dict:
    results = {}
    for dtype, batches in (("fp32", "1024,4096,16384,65536,131072"), ("bf16", "1024,4096,16384,65536")):
        target = out / f"loss_speed_{dtype}.json"
        command = [sys.executable, str(ROOT / "benchmarks" / "loss_speed.py"), "--device", "cuda", "--dtype", dtype,
                   "--batch", batches, "--rounds", "5", "--json", str(target)]
        subprocess.run(command, check=True)
        results[dtype] = json.loads(target.read_text())
    return results


SMOKE_TRAINING = ["train.epochs=2", "data.options.limit_train=2048", "eval.embedding_map=none", "train.threads=1"]


def _train(out: Path, name: str, overrides: list[str], src: Path, device: str, nproc: int = 1,
           env: dict | None = None) -> dict:
    run = out / name
    command = [sys.executable, "-m", "mlcl", "train", "--config", str(ROOT / "configs" / "quickstart.yaml"),
               "--out", str(run), "--set", f"train.device={device}", *[a for o in overrides for a in ("--set", o)]]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    environment = {**os.environ, **(env or {}), "PYTHONPATH": str(src)}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=environment)
    wall = time.perf_counter() - started
    with open(run / "log.csv", encoding="utf-8") as handle:
        epochs = list(csv.DictReader(handle))
    metrics = json.loads((run / "metrics.json").read_text())
    batch = next((int(o.split("=")[1]) for o in overrides if o.startswith("train.batch_size=")), 256)
    steps = metrics["train_samples"] // (batch * nproc)
    later = epochs[1:] or epochs
    seconds = sum(float(e["seconds"]) for e in later)
    return {
        "steps_per_s": steps * len(later) / seconds,
        "wall_s": wall,
        "test": {level: {k: v for k, v in m.items() if "top1" in k} for level, m in metrics["test"].items()
                 if isinstance(m, dict)},
        "loss_per_epoch": [float(e["loss"]) for e in epochs],
    }


def training(out: Path, baseline_src: Path | None, device: str, extra: list[str]) -> dict:
    results = {}
    if baseline_src is not None:
        results["before_fp32"] = _train(out, "qs_before_fp32", extra, baseline_src, device)
    for precision in ("fp32", "bf16", "fp16"):
        results[precision] = _train(out, f"qs_{precision}", [*extra, f"train.precision={precision}"], ROOT / "src",
                                    device)
    if "before_fp32" in results:
        before = results["before_fp32"]["steps_per_s"]
        results["speedup_vs_before"] = {p: results[p]["steps_per_s"] / before for p in ("fp32", "bf16", "fp16")}
    return results


class _Net(nn.Module):
    def __init__(self, loss: nn.Module):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU())
        self.heads = nn.Linear(64, 2 * 16)
        self.loss = loss

    def forward(self, x, labels):
        b, v, _ = x.shape
        hidden = self.encoder(x.reshape(b * v, -1))
        z = self.heads(hidden).view(b, v, 2, 16).permute(2, 0, 1, 3)
        return self.loss(z, labels)


def _global_batch():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(64, 2, 32, generator=gen, dtype=torch.float64), torch.randint(0, 4, (64, 2), generator=gen)


def _ddp_rank(rank: int, world: int, port: int, device_name: str, queue) -> None:
    from mlcl.train import ddp

    join_local_group(rank, world, port)
    device = torch.device(device_name)
    torch.manual_seed(0)
    net = _Net(MultiLevelSupConLoss([0.2, 0.1], gather_distributed=True)).double().to(device)
    net = ddp.sync_batchnorm(net, device)
    model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    x, labels = _global_batch()
    per_rank = len(x) // world
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    model(x[rows].to(device), labels[rows].to(device)).backward()
    if rank == 0:
        queue.put({name: p.grad.cpu().numpy() for name, p in net.named_parameters()})  # by value, not shared
    dist.barrier()
    dist.destroy_process_group()


def _result_of(queue, processes, timeout_s: float = 300.0) -> dict:
    """Rank 0's result, or an error as soon as a rank has failed (instead of waiting out the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return queue.get(timeout=2)
        except Empty:
            codes = [p.exitcode for p in processes]
            if any(code not in (None, 0) for code in codes) or time.monotonic() > deadline:
                raise RuntimeError(f"the two-process gradient check failed (exit codes {codes})") from None


def ddp_check(out: Path, device: str, extra: list[str]) -> dict:
    rank_device = "cuda:0" if device == "cuda" else device  # both ranks share the one GPU
    torch.manual_seed(0)
    net = _Net(MultiLevelSupConLoss([0.2, 0.1])).double().to(rank_device)
    x, labels = _global_batch()
    net(x.to(rank_device), labels.to(rank_device)).backward()
    reference = {name: p.grad.cpu() for name, p in net.named_parameters()}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_ddp_rank, args=(r, 2, port, rank_device, queue)) for r in range(2)]
    for p in processes:
        p.start()
    grads = {name: torch.from_numpy(g) for name, g in _result_of(queue, processes).items()}
    for p in processes:
        p.join(timeout=60)
    # Relative to the largest gradient overall: the Linear bias before BatchNorm has a zero gradient.
    largest = max(g.abs().max().item() for g in reference.values())
    worst = max((grads[n] - g).abs().max().item() for n, g in reference.items()) / largest
    overrides = ["train.epochs=2", "train.batch_size=128", "data.options.limit_train=8192", "eval.embedding_map=none",
                 *extra]
    run = _train(out, "qs_ddp2", overrides, ROOT / "src", device, nproc=2, env={"MLCL_DIST_BACKEND": "gloo"})
    state = torch.load(out / "qs_ddp2" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    return {"grad_max_rel_err_2proc_vs_1proc": worst, "trainer_2proc": run,
            "checkpoint_has_cuda_rng": state["rng"]["cuda"] is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check_out", help="folder for the runs and gpu_check.json")
    parser.add_argument("--baseline-src", type=Path, help="another mlcl's src/ to time as 'before'")
    parser.add_argument("--only", nargs="+", choices=["correctness", "speed", "training", "ddp"])
    parser.add_argument("--smoke", action="store_true", help="run on the CPU at small sizes (no speed section)")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: CUDA is not available here; run it on a machine with a GPU (or try --smoke)")
    device, extra = ("cpu", SMOKE_TRAINING) if args.smoke else ("cuda", [])
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sections = {
        "correctness": lambda: correctness(device, 256 if args.smoke else 4096),
        "speed": lambda: speed(out),
        "training": lambda: training(out, args.baseline_src, device, extra),
        "ddp": lambda: ddp_check(out, device, extra),
    }
    if args.smoke:
        del sections["speed"]
    summary: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
                     "date": time.strftime("%Y-%m-%d")}
    for name, section in sections.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            summary[name] = section()
        except Exception:
            summary[name] = {"error": traceback.format_exc()}
        summary[f"{name}_seconds"] = round(time.perf_counter() - started, 1)
        (out / "gpu_check.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        print(json.dumps(summary[name], indent=1)[:3000], flush=True)
    print(f"wrote {out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
