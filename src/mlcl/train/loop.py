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
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from mlcl import progress
from mlcl.errors import CheckpointError, ConfigError, TrainingError
from mlcl.train import ddp
from mlcl.train.checkpoint import load_weights, restore_state, save_checkpoint
from mlcl.train.config import Config, load_config, save_config
from mlcl.train.evaluation import monitor_score
from mlcl.train.run import Run, build_run, check_same_data, read_checkpoint
from mlcl.train.run_dir import create_run_dir, is_writer, prepare_resume
from mlcl.train.runtime import StopRequest, barrier, seed_rank
from mlcl.train.sampling import epoch_batches, labelled_mask
from mlcl.train.selection import MIN_VALIDATION_ROWS, replaces_best
from mlcl.train.tensorboard import TensorBoardLogger, open_logger
from mlcl.train.views import ViewMaker


class Interrupted(Exception):
    """A command stopped on a signal; the message (one line) says what to run to go on, if anything."""


def stopped_training(signal_name: str, out_dir: Path, epoch: int, step: int, world: int = 1) -> Interrupted:
    """Training stopped on a signal after writing a resumable checkpoint."""
    nproc = f" --nproc {world}" if world > 1 else ""  # the global batch must not change (resume_run)
    return Interrupted(
        f"{signal_name} received: stopped at epoch {epoch + 1}, step {step}; a resumable checkpoint is in "
        f"{out_dir / 'checkpoints' / 'last.pt'}. Continue with: mlcl train --resume {out_dir}{nproc}"
    )


# Inputs larger than this (in absolute value) overflow float32 after a few layers: the data is the likely cause.
LARGE_INPUT = 1e6


def _non_finite_causes(inputs: torch.Tensor | list[str], first_step: bool, config: Config) -> str:
    """The likely causes of a non-finite loss: the data first when the training inputs are huge."""
    if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
        largest = inputs.detach().abs().max().item()
        if not math.isfinite(largest) or largest > LARGE_INPUT:
            return (f"The training inputs reach {largest:.3g} in absolute value, too large for the network: scale the "
                    f"data (e.g. standardise each feature column of {config.data.path or config.data.name}) and "
                    "start a new run (another --out)")
    if first_step:
        return ("It happened before any weight update, so the learning rate is not the cause: check the data "
                f"and method.temperatures={config.method.temperatures}, then start a new run (another --out)")
    return (f"Likely causes: a learning rate too high (train.lr={config.train.lr}) or a temperature too low "
            f"(method.temperatures={config.method.temperatures}); start a new run (another --out) with a lower "
            "train.lr or higher temperatures")


GPU_LOG_EVERY = 25  # default steps between host syncs on a GPU
DEVICE_DATA_SHARE = 0.25  # training tensors move to the GPU when they take at most this share of its free memory


def _training_tensors(split: Any, device: torch.device) -> tuple[Any, dict[str, torch.Tensor]]:
    """The training inputs and targets, on ``device`` when they fit (a GPU then indexes its own batches)."""
    inputs, targets = split.inputs, split.targets
    if device.type != "cuda" or not isinstance(inputs, torch.Tensor):
        return inputs, targets
    size = inputs.numel() * inputs.element_size() + sum(t.numel() * t.element_size() for t in targets.values())
    if size > DEVICE_DATA_SHARE * torch.cuda.mem_get_info(device)[0]:
        return inputs, targets
    return inputs.to(device), {name: t.to(device) for name, t in targets.items()}


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
        # The rows each batch's labelled share is drawn from (None: uniform batches).
        self.labelled = labelled_mask(self.dataset.train, self.dataset.levels, train.labelled_share,
                                      train.labelled_level)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.views = ViewMaker(self.dataset.modality, self.config.method.views, train.augment, self.generator)
        # Each rank's views are its rows of the views one process would make of the global batch.
        self.views = ddp.distribute_views(self.views, self.rank, self.world)
        # fp16 autocast scales the loss so that small gradients survive float16 (a no-op otherwise).
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=train.precision == "fp16")
        # Values reach the host every `log_every` steps: a sync per step would leave a GPU waiting.
        self.log_every = train.log_every or (1 if self.device.type == "cpu" else GPU_LOG_EVERY)
        self._pending: list[tuple[torch.Tensor, dict[str, torch.Tensor], float]] = []  # (loss, logs, lr) per step
        self._train_inputs, self._train_targets = _training_tensors(self.dataset.train, self.device)
        # Called on the main process after each epoch's checkpoint, with the trainer and the epoch's record.
        self.epoch_callbacks: list[Callable[[Trainer, dict[str, Any]], None]] = []
        # Called on the main process with (global step, values) for every step, when the values reach the host.
        self.step_callbacks: list[Callable[[int, dict[str, float]], None]] = []
        self.tensorboard = train.tensorboard  # the CLI's --no-tensorboard turns it off for a resumed run too

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
            "scaler": self.scaler.state_dict(),
            "loop": self.state,
            "rng": {"torch": torch_rng, "views": self.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "config": self.config.to_dict(),
            "data": self.run.data_fingerprint,
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

    def restore(self, path: Path, *, allow_data_change: bool = False) -> None:
        """Continue from a checkpoint of this run: weights, optimiser, schedule, position and RNG. Data
        that changed since it was written is refused unless ``allow_data_change``."""
        state = read_checkpoint(self.run, path)
        check_same_data(self.run, state, path, allow_data_change)
        load_weights(self.model, state["model"], path)
        load_weights(self.objective, state["objective"], path, "objective")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:  # e.g. a checkpoint from an mlcl with one parameter group
            raise CheckpointError(f"{path} holds an optimiser state this version cannot continue ({exc}); "
                                  "start the run again with another --out") from None
        restore_state(self.scheduler.load_state_dict, state["scheduler"], path, "learning-rate schedule")
        if state.get("scaler"):  # fp16 runs; older checkpoints have none
            restore_state(self.scaler.load_state_dict, state["scaler"], path, "loss-scaler state")
        self.run.state = state["loop"]
        rng = state["rng"]
        torch_rng = rng.get("torch")
        torch_rng = torch_rng if isinstance(torch_rng, list) else [torch_rng]  # older checkpoints: one state
        own = torch_rng[self.rank if self.rank < len(torch_rng) else 0]
        restore_state(lambda s: torch.set_rng_state(s.cpu()), own, path, "random-number state")
        restore_state(lambda s: self.generator.set_state(s.cpu()), rng.get("views"), path, "random-number state")
        if rng.get("cuda") is not None and torch.cuda.is_available():
            restore_state(lambda s: torch.cuda.set_rng_state_all([t.cpu() for t in s]), rng["cuda"], path,
                          "random-number state")

    # ------------------------------------------------------------------ training
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for ``epoch`` (its slice of each global batch): seeded, the same after
        a resume (see :mod:`mlcl.train.sampling`)."""
        order = epoch_batches(len(self.dataset.train), self.config.train.batch_size * self.world, self.config.seed,
                              epoch, self.labelled, self.config.train.labelled_share)
        return order.view(self.steps_per_epoch, self.world, -1)[:, self.rank]

    def _autocast(self):
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
        if self.config.train.precision in dtypes:
            return torch.autocast(device_type=self.device.type, dtype=dtypes[self.config.train.precision])
        return nullcontext()

    def _step(self, index: torch.Tensor) -> None:
        """One optimisation step on the samples ``index``; its values wait on the device for :meth:`_flush`."""
        inputs = self._train_inputs
        if isinstance(inputs, list):
            inputs = [inputs[i] for i in index.tolist()]
        else:
            inputs = inputs[index].to(self.device, non_blocking=True)
        targets = {name: t[index].to(self.device, non_blocking=True) for name, t in self._train_targets.items()}
        views = self.views(inputs)
        n_views = self.config.method.views
        with self._autocast():  # the model and the objective: the loss computes its matmuls in that precision
            out = self.module(views)
            projections = out.projections
            if projections is not None:
                projections = projections.view(projections.shape[0], len(index), n_views, projections.shape[-1])
            loss, logs = self.objective(projections, out.logits, targets, n_views)
        self._pending.append((loss.detach(), logs, self.optimizer.param_groups[0]["lr"]))
        if len(self._pending) >= self.log_every:
            self._flush()  # before the update: on the CPU a non-finite loss never reaches the weights
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        ddp.average_gradients(self.objective.parameters())  # outside DDP: e.g. learnable temperatures
        if self.config.train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([*self.model.parameters(), *self.objective.parameters()],
                                     self.config.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def _flush(self) -> None:
        """Bring the pending steps' values to the host (one sync, one all-reduce across ranks), add them to
        the epoch's sums and stop at the first non-finite loss."""
        if not self._pending:
            return
        names = list(self._pending[0][1])
        values = torch.stack([torch.stack([loss.float(), *(logs[n].float() for n in names)])
                              for loss, logs, _ in self._pending])
        # Averaged over ranks: the logged values are the global batch's, and every rank agrees on the check.
        rows = ddp.mean_over_ranks(values, self.device).tolist()
        first_step = self.state["global_step"] - len(self._pending) + 1
        for offset, ((_, _, lr), (loss, *logged)) in enumerate(zip(self._pending, rows)):
            if not math.isfinite(loss):
                self._pending = []
                self._diverged(loss, first_step + offset)
            record = {"loss": loss, **dict(zip(names, logged)), "lr": lr}
            self._accumulate(record)
            if self.is_main:
                for callback in self.step_callbacks:
                    callback(first_step + offset, record)
        self._pending = []

    def _diverged(self, loss: float, global_step: int) -> None:
        epoch, step = divmod(global_step - 1, self.steps_per_epoch)
        last = self.out_dir / "checkpoints" / "last.pt"
        raise TrainingError(
            f"the loss became {loss} at epoch {epoch + 1}, step {step + 1}; {last} holds the last checkpoint before "
            f"it (the end of epoch {self.state['epoch']}, or the start of the run). "
            + _non_finite_causes(self.dataset.train.inputs, global_step == 1, self.config)
        )

    def _accumulate(self, record: dict[str, float]) -> None:
        sums = self.state["epoch_sums"]
        for key, value in record.items():
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
            score = monitor_score(self.model, self.dataset, self.device, train.monitor_train_samples,
                                  self.config.eval.knn_k)
            if score is not None:
                record["val_knn"] = score
                n_val = len(self.dataset.val)
                if n_val < MIN_VALIDATION_ROWS:  # too noisy to choose by: the last epoch is reported
                    self.state["best"] = None
                    self.state.pop("best_epoch", None)
                elif replaces_best(score, self.state["best"], n_val):  # ties within noise go to the later epoch
                    self.state["best"] = score if self.state["best"] is None else max(score, self.state["best"])
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

    def _temperatures(self) -> dict[str, float]:
        """Each head's temperature (learnable ones change), when the loss has one per head."""
        temperatures = getattr(self.objective.contrastive, "temperatures", None)
        if not isinstance(temperatures, torch.Tensor) or temperatures.numel() != len(self.objective.heads):
            return {}
        return {f"temperature_{h.name}": t for h, t in zip(self.objective.heads, temperatures.tolist())}

    def train(self) -> None:
        """Train until ``train.epochs``; on SIGINT / SIGTERM save ``last.pt`` and raise :class:`Interrupted`."""
        logger = open_logger(self.out_dir, self.tensorboard and self.is_main, self.state["global_step"])
        if logger is not None:  # each step's values as they reach the host (temperatures: as of that moment)
            log_step = lambda step, values: logger.log(step, {**values, **self._temperatures()})  # noqa: E731
            self.step_callbacks.append(log_step)
        try:
            self._train(logger)
        finally:
            if logger is not None:
                self.step_callbacks.remove(log_step)
                logger.close()

    def _train(self, logger: TensorBoardLogger | None) -> None:
        train = self.config.train
        samples_per_step = train.batch_size * self.world
        if self.state["global_step"] == 0 and self.is_main:
            self.save("last.pt", every_rank=False)  # the start: a run that diverges early still has a good state
        with StopRequest() as stop:
            while self.state["epoch"] < train.epochs:
                epoch = self.state["epoch"]
                order = self._epoch_order(epoch)
                if isinstance(self._train_inputs, torch.Tensor):  # index where the data is (on a GPU: no copy)
                    order = order.to(self._train_inputs.device)
                started = time.perf_counter()
                bar = progress.bar(self.progress and self.is_main, total=self.steps_per_epoch,
                                   initial=self.state["step"], desc=f"epoch {epoch + 1}/{train.epochs}", unit="step",
                                   mininterval=1.0, leave=False)
                while self.state["step"] < self.steps_per_epoch:
                    if self._stop_requested(stop):
                        bar.close()
                        self._flush()
                        self.state["train_seconds"] += time.perf_counter() - started
                        self.save("last.pt")
                        raise stopped_training(stop.signal_name or "a signal on another rank", self.out_dir, epoch,
                                               self.state["step"], self.world)
                    self.state["step"] += 1
                    self.state["global_step"] += 1
                    self._step(order[self.state["step"] - 1])
                    bar.update(1)
                    if not self._pending:  # values just reached the host
                        sums = self.state["epoch_sums"]
                        elapsed = max(1e-9, time.perf_counter() - started)
                        bar.set_postfix(loss=f"{sums['loss'] / sums['steps']:.3f}",
                                        samples_s=f"{samples_per_step * bar.n / elapsed:.0f}")
                self._flush()
                bar.close()
                seconds = time.perf_counter() - started
                self.state["train_seconds"] += seconds
                self._end_epoch(seconds)
                record = self.state["history"][-1]
                if logger is not None:
                    logger.log(self.state["global_step"], {k: v for k, v in record.items() if k != "epoch"}, "epoch")
                    logger.flush()
                if self.is_main and self.progress:
                    extra = f", val kNN {record['val_knn']:.4f}" if "val_knn" in record else ""
                    tqdm.write(f"epoch {record['epoch']}/{train.epochs}: loss {record['loss']:.4f}{extra} "
                               f"({seconds:.1f} s)")
            if self._stop_requested(stop):  # during the last step or the last monitor: do not evaluate
                raise Interrupted(f"{stop.signal_name or 'a signal on another rank'} received after the last epoch; "
                                  f"training is complete (checkpoints in {self.out_dir / 'checkpoints'}) but not "
                                  f"evaluated: evaluate it with mlcl eval {self.out_dir}")

    def _stop_requested(self, stop: StopRequest) -> bool:
        """Whether any rank was asked to stop (all ranks stop at the same step). Across ranks this is a
        collective, asked only when values reach the host (every ``log_every`` steps)."""
        if self.world == 1:
            return stop.requested
        if self._pending:
            return False
        flag = torch.tensor([1.0 if stop.requested else 0.0], device=self.device)  # NCCL: a CUDA tensor
        dist.all_reduce(flag)
        return bool(flag.item() > 0)


def start_run(config: Config, out_dir: str | Path, *, progress: bool = True) -> Trainer:
    """A fresh run in ``out_dir``: a new or empty folder (see :mod:`mlcl.train.run_dir`). Its config is
    saved first, so a run stopped while it is built can be started again with ``--resume``."""
    out_dir = create_run_dir(out_dir)
    if is_writer():
        save_config(config, out_dir / "config.yaml")
    return Trainer(build_run(config, out_dir, progress=progress), progress=progress)


def resume_run(out_dir: str | Path, *, progress: bool = True, allow_data_change: bool = False) -> Trainer:
    """The run in ``out_dir``, restored from its last checkpoint; a run stopped before its first
    checkpoint starts again from its saved config."""
    out_dir = Path(out_dir)
    resumable = prepare_resume(out_dir)
    trainer = Trainer(build_run(load_config(out_dir / "config.yaml"), out_dir, progress=progress), progress=progress)
    if not resumable:
        if trainer.is_main:
            print(f"mlcl: {out_dir} has no checkpoint yet (it stopped before its first one): starting it again "
                  "from its saved config", file=sys.stderr)
        return trainer
    trainer.restore(out_dir / "checkpoints" / "last.pt", allow_data_change=allow_data_change)
    world = trainer.state.get("world", 1)
    if world != trainer.world:  # train.batch_size is per process: another count changes the batch and schedule
        raise CheckpointError(
            f"{out_dir} was trained with {world} process(es) and is resumed with {trainer.world}; the global batch "
            f"(train.batch_size x processes) must not change mid-run: resume it with --nproc {world}"
        )
    return trainer
