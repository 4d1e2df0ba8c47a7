"""The training loop: a :class:`~mlcl.train.run.Run` optimised epoch by epoch, with checkpoints and logs.

A run directory holds ``config.yaml`` (the resolved config), ``checkpoints/last.pt`` and
``checkpoints/best.pt`` and ``log.csv`` (one row per epoch); :func:`mlcl.train.results.evaluate_run`
adds ``metrics.json`` and PNG plots. The loop checkpoints atomically at every epoch end and when
interrupted (SIGINT / SIGTERM), and ``resume`` continues from the exact step with the same data order
and random state, so an interrupted run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import csv
import math
import time
from contextlib import nullcontext
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from mlcl.errors import CheckpointError, ConfigError, TrainingError
from mlcl.train import ddp
from mlcl.train.checkpoint import save_checkpoint
from mlcl.train.config import Config, load_config, save_config
from mlcl.train.evaluation import monitor_score
from mlcl.train.run import Run, build_run, read_checkpoint
from mlcl.train.runtime import StopRequest, barrier, seed_rank
from mlcl.train.views import ViewMaker


class Interrupted(Exception):
    """Training stopped on a signal after writing a resumable checkpoint."""

    def __init__(self, signal_name: str, out_dir: Path, epoch: int, step: int, world: int = 1):
        nproc = f" --nproc {world}" if world > 1 else ""  # the global batch must not change (resume_run)
        super().__init__(
            f"{signal_name} received: stopped at epoch {epoch + 1}, step {step}; a resumable checkpoint is in "
            f"{out_dir / 'checkpoints' / 'last.pt'}. Continue with: mlcl train --resume {out_dir}{nproc}"
        )


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 0."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Optimises a :class:`Run` in its ``out_dir`` (see the module docstring for the files it writes)."""

    def __init__(self, run: Run, *, progress: bool = True):
        if run.out_dir is None:
            raise ValueError("a run trains in a directory: build it with build_run(config, out_dir)")
        self.run = run
        self.config, self.dataset, self.objective, self.device = run.config, run.dataset, run.objective, run.device
        self.out_dir, self.rank, self.world = run.out_dir, run.rank, run.world
        self.progress = progress
        self.module: nn.Module = run.model
        if self.world > 1:
            # Global-batch BatchNorm (same state-dict keys), so W processes x b train like 1 x W*b.
            run.model = ddp.sync_batchnorm(run.model, self.device)
            # A trainable text encoder has parameters its pooling never uses (e.g. BERT's pooler).
            self.module = ddp.wrap_model(run.model, self.device,
                                         find_unused_parameters=self.dataset.modality == "text")
            seed_rank(self.config.seed, self.rank)  # after the (identical) initial weights
        train = self.config.train
        # The objective's parameters (learnable temperatures) get no weight decay, which would pull log τ to 0.
        params = [{"params": list(self.model.parameters())},
                  {"params": list(self.objective.parameters()), "weight_decay": 0.0}]
        if train.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=train.lr, momentum=train.momentum,
                                             weight_decay=train.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
        self.steps_per_epoch = len(self.dataset.train) // (train.batch_size * self.world)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"train.batch_size={train.batch_size} x {self.world} process(es) is more than the "
                f"{len(self.dataset.train)} training samples; lower train.batch_size"
            )
        total = self.steps_per_epoch * train.epochs
        warmup = int(train.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: _lr_factor(s, total, warmup))
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.views = ViewMaker(self.dataset.modality, self.config.method.views, train.augment, self.generator)
        # Each rank's views are its rows of the views one process would make of the global batch.
        self.views = ddp.distribute_views(self.views, self.rank, self.world)
        # Called on the main process after each epoch's checkpoint, with the trainer and the epoch's record.
        self.epoch_callbacks: list[Callable[[Trainer, dict[str, Any]], None]] = []

    @property
    def model(self) -> nn.Module:
        """The run's model (with global-batch BatchNorm in a distributed run; not the DDP wrapper)."""
        return self.run.model

    @property
    def state(self) -> dict[str, Any]:
        """The run's loop record: position, history, best validation score, training time."""
        return self.run.state

    # ------------------------------------------------------------------ checkpoints
    @property
    def is_main(self) -> bool:
        return self.run.is_main

    def _checkpoint_state(self, torch_rng: list[torch.Tensor]) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loop": self.state,
            "rng": {"torch": torch_rng, "views": self.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "config": self.config.to_dict(),
        }

    def save(self, name: str, *, every_rank: bool = True) -> None:
        """Write ``checkpoints/NAME`` from rank 0. With ``every_rank`` (all ranks call it) the checkpoint
        holds each rank's generator state, so a resumed distributed run continues every rank's stream."""
        torch_rng = [torch.get_rng_state()]
        if every_rank and self.world > 1:
            torch_rng = [torch.empty(0)] * self.world
            dist.all_gather_object(torch_rng, torch.get_rng_state())
        if self.is_main:
            save_checkpoint(self._checkpoint_state(torch_rng), self.out_dir / "checkpoints" / name)

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint of this run: weights, optimiser, schedule, position and RNG."""
        state = read_checkpoint(self.run, path)
        self.model.load_state_dict(state["model"])
        self.objective.load_state_dict(state["objective"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:  # e.g. a checkpoint from an mlcl with one parameter group
            raise CheckpointError(f"{path} holds an optimiser state this version cannot continue ({exc}); "
                                  "start the run again with another --out") from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.run.state = state["loop"]
        torch_rng = state["rng"]["torch"]
        torch_rng = torch_rng if isinstance(torch_rng, list) else [torch_rng]  # older checkpoints: one state
        torch.set_rng_state(torch_rng[self.rank if self.rank < len(torch_rng) else 0].cpu())
        self.generator.set_state(state["rng"]["views"].cpu())
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])

    # ------------------------------------------------------------------ training
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for ``epoch``: a seeded permutation, the same after a resume."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.dataset.train), generator=generator)
        per_step = self.config.train.batch_size * self.world
        order = order[: self.steps_per_epoch * per_step].view(self.steps_per_epoch, self.world, -1)
        return order[:, self.rank]

    def _autocast(self):
        if self.config.train.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _step(self, index: torch.Tensor) -> tuple[float, dict[str, float]]:
        train = self.dataset.train
        inputs = [train.inputs[i] for i in index.tolist()] if isinstance(train.inputs, list) else train.inputs[index]
        targets = {name: t[index].to(self.device) for name, t in train.targets.items()}
        views = self.views(inputs.to(self.device) if isinstance(inputs, torch.Tensor) else inputs)
        # The forward pass updates BatchNorm statistics; keep them to restore the last good state.
        buffers = {name: b.detach().clone() for name, b in self.model.named_buffers()}
        with self._autocast():
            out = self.module(views)
        n_views = self.config.method.views
        projections = out.projections
        if projections is not None:
            projections = projections.view(projections.shape[0], len(index), n_views, projections.shape[-1])
        loss, logs = self.objective(projections, out.logits, targets, n_views)
        # Averaged over ranks: the logged values are the global batch's, and every rank agrees on the check.
        loss_value, *values = ddp.mean_over_ranks([loss.item(), *logs.values()], self.device)
        logs = dict(zip(logs, values))
        if not math.isfinite(loss_value):
            self.model.load_state_dict(buffers, strict=False)
            self.save("last.pt")  # the weights before this step: the last good state
            raise TrainingError(
                f"the loss became {loss_value} at epoch {self.state['epoch'] + 1}, step {self.state['step'] + 1} (the "
                f"weights before this step are in {self.out_dir / 'checkpoints' / 'last.pt'}). Likely causes: a "
                f"learning rate too high (train.lr={self.config.train.lr}) or a temperature too low "
                f"(method.temperatures={self.config.method.temperatures}); start a new run (another --out) with a "
                "lower train.lr or higher temperatures"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ddp.average_gradients(self.objective.parameters())  # outside DDP: e.g. learnable temperatures
        if self.config.train.grad_clip:
            nn.utils.clip_grad_norm_([*self.model.parameters(), *self.objective.parameters()],
                                     self.config.train.grad_clip)
        self.optimizer.step()
        logs["lr"] = self.optimizer.param_groups[0]["lr"]  # the rate this step used (log.csv: the epoch's mean)
        self.scheduler.step()
        return loss_value, logs

    def _accumulate(self, loss: float, logs: dict[str, float]) -> None:
        sums = self.state["epoch_sums"]
        for key, value in {"loss": loss, **logs}.items():
            sums[key] = sums.get(key, 0.0) + value
        sums["steps"] = sums.get("steps", 0) + 1

    def _end_epoch(self, seconds: float) -> None:
        sums = self.state["epoch_sums"]
        steps = max(1, sums.pop("steps", 1))
        record = {"epoch": self.state["epoch"] + 1, **{k: v / steps for k, v in sums.items()},
                  "seconds": seconds}
        train = self.config.train
        last_epoch = self.state["epoch"] + 1 == train.epochs
        if self.is_main and ((self.state["epoch"] + 1) % train.monitor_every == 0 or last_epoch):
            score = monitor_score(self.model, self.dataset, self.device, train.monitor_train_samples, self.config.eval.knn_k)
            if score is not None:
                record["val_knn"] = score
                if self.state["best"] is None or score > self.state["best"]:
                    self.state["best"] = score
                    self.state["best_epoch"] = record["epoch"]
                    self.save("best.pt", every_rank=False)  # rank 0 only; runs resume from last.pt
        self.state["history"].append(record)
        self.state["epoch_sums"] = {}
        self.state["epoch"] += 1
        self.state["step"] = 0
        self.save("last.pt")
        if self.is_main:
            self._write_log()
            for callback in self.epoch_callbacks:
                callback(self, record)
        barrier()  # the other ranks wait here while rank 0 monitors, checkpoints and logs

    def _write_log(self) -> None:
        history = self.state["history"]
        keys = list(dict.fromkeys(k for record in history for k in record))
        with open(self.out_dir / "log.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(history)

    def train(self) -> None:
        """Train until ``train.epochs``; on SIGINT / SIGTERM save ``last.pt`` and raise :class:`Interrupted`."""
        train = self.config.train
        samples_per_step = train.batch_size * self.world
        with StopRequest() as stop:
            while self.state["epoch"] < train.epochs:
                epoch = self.state["epoch"]
                order = self._epoch_order(epoch)
                started = time.perf_counter()
                bar = tqdm(total=self.steps_per_epoch, initial=self.state["step"], desc=f"epoch {epoch + 1}/{train.epochs}",
                           disable=not (self.progress and self.is_main), unit="step", mininterval=1.0, leave=False)
                while self.state["step"] < self.steps_per_epoch:
                    if self._stop_requested(stop):
                        bar.close()
                        self.state["train_seconds"] += time.perf_counter() - started
                        self.save("last.pt")
                        raise Interrupted(stop.signal_name or "a signal on another rank", self.out_dir, epoch,
                                          self.state["step"], self.world)
                    loss, logs = self._step(order[self.state["step"]])
                    self._accumulate(loss, logs)
                    self.state["step"] += 1
                    self.state["global_step"] += 1
                    elapsed = max(1e-9, time.perf_counter() - started)
                    bar.set_postfix(loss=f"{loss:.3f}", samples_s=f"{samples_per_step * bar.n / elapsed:.0f}")
                    bar.update(1)
                bar.close()
                seconds = time.perf_counter() - started
                self.state["train_seconds"] += seconds
                self._end_epoch(seconds)
                if self.is_main and self.progress:
                    record = self.state["history"][-1]
                    extra = f", val kNN {record['val_knn']:.4f}" if "val_knn" in record else ""
                    tqdm.write(f"epoch {record['epoch']}/{train.epochs}: loss {record['loss']:.4f}{extra} "
                               f"({seconds:.1f} s)")

    def _stop_requested(self, stop: StopRequest) -> bool:
        """Whether any rank was asked to stop (all ranks stop at the same step)."""
        if self.world == 1:
            return stop.requested
        flag = torch.tensor([1.0 if stop.requested else 0.0], device=self.device)  # NCCL: a CUDA tensor
        dist.all_reduce(flag)
        return bool(flag.item() > 0)


def start_run(config: Config, out_dir: str | Path, *, progress: bool = True) -> Trainer:
    """A fresh run in ``out_dir`` (refuses to overwrite another run's checkpoints)."""
    out_dir = Path(out_dir)
    if (out_dir / "checkpoints").is_dir() and any((out_dir / "checkpoints").iterdir()):
        raise ConfigError(f"{out_dir} already holds a run's checkpoints; continue it with --resume {out_dir} or "
                          "choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"--out {out_dir} is (or is inside) a file; give a directory for the run") from None
    trainer = Trainer(build_run(config, out_dir, progress=progress), progress=progress)
    if trainer.is_main:
        save_config(config, out_dir / "config.yaml")
    return trainer


def resume_run(out_dir: str | Path, *, progress: bool = True) -> Trainer:
    """The run in ``out_dir``, restored from its last checkpoint."""
    out_dir = Path(out_dir)
    if not (out_dir / "config.yaml").exists():
        raise CheckpointError(f"{out_dir} is not a run directory (no config.yaml); start one with mlcl train --out {out_dir}")
    trainer = Trainer(build_run(load_config(out_dir / "config.yaml"), out_dir, progress=progress), progress=progress)
    trainer.restore(out_dir / "checkpoints" / "last.pt")
    world = trainer.state.get("world", 1)
    if world != trainer.world:  # train.batch_size is per process: another count changes the batch and schedule
        raise CheckpointError(
            f"{out_dir} was trained with {world} process(es) and is resumed with {trainer.world}; the global batch "
            f"(train.batch_size x processes) must not change mid-run: resume it with --nproc {world}"
        )
    return trainer
