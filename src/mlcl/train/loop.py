"""The training loop: one run from config to checkpoints, logs, metrics and plots.

A run directory holds ``config.yaml`` (the resolved config), ``checkpoints/last.pt`` and
``checkpoints/best.pt``, ``log.csv`` (one row per epoch), ``metrics.json`` and PNG plots. The loop
checkpoints atomically at every epoch end and when interrupted (SIGINT / SIGTERM), and ``resume``
continues from the exact step with the same data order and random state, so an interrupted run ends
with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from mlcl.data.types import Dataset
from mlcl.errors import CheckpointError, ConfigError, TrainingError
from mlcl.models.encoders import build_encoder
from mlcl.models.heads import MultiHeadProjector
from mlcl.models.model import MultiLevelModel
from mlcl.train import ddp, plots
from mlcl.train.checkpoint import load_checkpoint, save_checkpoint
from mlcl.train.config import IMAGE_ENCODERS, TEXT_ENCODERS, Config, load_config, save_config
from mlcl.train.data_setup import frozen_text_options, prepare_dataset, uses_frozen_text_encoder
from mlcl.train.evaluation import evaluate_model, monitor_score
from mlcl.train.methods import Objective
from mlcl.train.runtime import (
    StopRequest, barrier, configure_threads, init_distributed, resolve_device, seed_everything, seed_rank,
)
from mlcl.train.views import ViewMaker



class Interrupted(Exception):
    """Training stopped on a signal after writing a resumable checkpoint."""

    def __init__(self, signal_name: str, out_dir: Path, epoch: int, step: int, world: int = 1):
        nproc = f" --nproc {world}" if world > 1 else ""  # the global batch must not change (resume_run)
        super().__init__(
            f"{signal_name} received: stopped at epoch {epoch + 1}, step {step}; a resumable checkpoint is in "
            f"{out_dir / 'checkpoints' / 'last.pt'}. Continue with: mlcl train --resume {out_dir}{nproc}"
        )


def _with_data_size(options: dict[str, Any], key: str, value: int) -> dict[str, Any]:
    """The encoder options plus the input size the data fixes (which the user must not set)."""
    if key in options:
        raise ConfigError(f"model.encoder_options.{key} is set from the data ({value} here); remove it")
    return {**options, key: value}


def build_model(config: Config, dataset: Dataset, objective: Objective) -> MultiLevelModel:
    """Encoder for the data's modality, one projection head per objective head, optional classifiers."""
    model_cfg = config.model
    options = dict(model_cfg.encoder_options)
    if dataset.modality == "image":
        if model_cfg.encoder not in IMAGE_ENCODERS:
            raise ConfigError(f"model.encoder={model_cfg.encoder} cannot read images; use one of {', '.join(IMAGE_ENCODERS)}")
        encoder = build_encoder(model_cfg.encoder, **_with_data_size(options, "in_channels", dataset.train.inputs.shape[1]))
    elif dataset.modality == "features":
        if model_cfg.encoder in IMAGE_ENCODERS:
            raise ConfigError(
                f"model.encoder={model_cfg.encoder} needs images, but {dataset.name} gives feature vectors "
                "(or frozen text embeddings); use model.encoder=mlp"
            )
        if uses_frozen_text_encoder(config):  # the sentence encoder's options were used by prepare_dataset
            options = frozen_text_options(model_cfg)[1]
        encoder = build_encoder("mlp", **_with_data_size(options, "in_dim", dataset.train.inputs.shape[1]))
    else:
        if model_cfg.encoder not in TEXT_ENCODERS:
            raise ConfigError(f"{dataset.name} is text: use model.encoder=minilm (or hf), not {model_cfg.encoder}")
        encoder = build_encoder(model_cfg.encoder, **options)
    projector = None
    if objective.heads:
        projector = MultiHeadProjector(
            encoder.out_dim, len(objective.heads), hidden_dim=model_cfg.proj_hidden, out_dim=model_cfg.proj_dim,
            depth=model_cfg.proj_depth, head_names=[h.name for h in objective.heads],
        )
    return MultiLevelModel(encoder, projector, classifiers=objective.classifier_levels)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 0."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Runs one configured training job in ``out_dir`` (see the module docstring for its files)."""

    def __init__(self, config: Config, out_dir: str | Path, *, progress: bool = True):
        self.config = config
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.rank, local_rank, self.world = init_distributed(config.train.device)
        self.device = resolve_device(config.train.device, local_rank)
        configure_threads(config.train.threads)  # default: the cores shared out between local processes
        seed_everything(config.seed)
        self.dataset = prepare_dataset(config, progress=progress and self.rank == 0)  # one progress bar
        if self.dataset.multi_label and (self.dataset.val is None or len(self.dataset.val) == 0):
            raise ConfigError(
                f"{self.dataset.name} is multi-label: its F1 thresholds are chosen on a validation split, and it has "
                "none; give it one (data.options.val_fraction for a table, n_val for fashion-mnist-grid)"
            )
        self.objective = Objective(config.method, self.dataset, gather_distributed=self.world > 1).to(self.device)
        self.model = build_model(config, self.dataset, self.objective).to(self.device)
        self.module: nn.Module = self.model
        if self.world > 1:
            # Global-batch BatchNorm (same state-dict keys), so W processes x b train like 1 x W*b.
            self.model = ddp.sync_batchnorm(self.model, self.device)
            # A trainable text encoder has parameters its pooling never uses (e.g. BERT's pooler).
            self.module = ddp.wrap_model(self.model, self.device,
                                         find_unused_parameters=self.dataset.modality == "text")
            seed_rank(config.seed, self.rank)  # after the (identical) initial weights
        train = config.train
        # The objective's parameters (learnable temperatures) get no weight decay, which would pull log τ to 0.
        params = [{"params": list(self.model.parameters())},
                  {"params": list(self.objective.parameters()), "weight_decay": 0.0}]
        if train.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
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
        self.generator = torch.Generator().manual_seed(config.seed)
        self.views = ViewMaker(self.dataset.modality, config.method.views, train.augment, self.generator)
        # Each rank's views are its rows of the views one process would make of the global batch.
        self.views = ddp.distribute_views(self.views, self.rank, self.world)
        # Called on the main process after each epoch's checkpoint, with the trainer and the epoch's record.
        self.epoch_callbacks: list[Callable[[Trainer, dict[str, Any]], None]] = []
        self.state: dict[str, Any] = {"epoch": 0, "step": 0, "global_step": 0, "history": [], "best": None,
                                      "epoch_sums": {}, "train_seconds": 0.0, "world": self.world}

    # ------------------------------------------------------------------ checkpoints
    @property
    def is_main(self) -> bool:
        return self.rank == 0

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
        state = load_checkpoint(path, map_location=self.device)
        if state["config"] != self.config.to_dict():
            raise CheckpointError(f"{path} was written by a different config than {self.out_dir / 'config.yaml'}")
        self.model.load_state_dict(state["model"])
        self.objective.load_state_dict(state["objective"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:  # e.g. a checkpoint from an mlcl with one parameter group
            raise CheckpointError(f"{path} holds an optimiser state this version cannot continue ({exc}); "
                                  "start the run again with another --out") from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.state = state["loop"]
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

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, Any]:
        """Evaluate the best checkpoint (chosen on validation), write metrics.json and plots."""
        best = self.out_dir / "checkpoints" / "best.pt"
        if self.state["best"] is not None and best.exists():  # written by this run's validation monitor
            self.model.load_state_dict(load_checkpoint(best, map_location=self.device)["model"])
        metrics = evaluate_model(self.model, self.dataset, self.device, self.config.eval.knn_k,
                                 self.config.eval.probe_epochs)
        metrics.update({
            "dataset": self.dataset.name,
            "method": self.config.to_dict()["method"],
            "epochs": self.state["epoch"],
            "best_epoch": self.state.get("best_epoch", self.state["epoch"]),
            "train_samples": len(self.dataset.train),
            "train_seconds": round(self.state["train_seconds"], 2),
            "seed": self.config.seed,
        })
        (self.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        plots.training_curves(self.state["history"], self.out_dir / "curves.png")
        if self.config.eval.embedding_map != "none":
            plots.embedding_maps(self.model, self.dataset, self.objective.heads, self.device,
                                 self.out_dir / "embeddings.png", self.config.eval)
        return metrics


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
    trainer = Trainer(config, out_dir, progress=progress)
    if trainer.is_main:
        save_config(config, out_dir / "config.yaml")
    return trainer


def resume_run(out_dir: str | Path, *, progress: bool = True) -> Trainer:
    """The run in ``out_dir``, restored from its last checkpoint."""
    out_dir = Path(out_dir)
    if not (out_dir / "config.yaml").exists():
        raise CheckpointError(f"{out_dir} is not a run directory (no config.yaml); start one with mlcl train --out {out_dir}")
    trainer = Trainer(load_config(out_dir / "config.yaml"), out_dir, progress=progress)
    trainer.restore(out_dir / "checkpoints" / "last.pt")
    world = trainer.state.get("world", 1)
    if world != trainer.world:  # train.batch_size is per process: another count changes the batch and schedule
        raise CheckpointError(
            f"{out_dir} was trained with {world} process(es) and is resumed with {trainer.world}; the global batch "
            f"(train.batch_size x processes) must not change mid-run: resume it with --nproc {world}"
        )
    return trainer
