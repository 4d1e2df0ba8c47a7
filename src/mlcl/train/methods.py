"""Method name -> heads and training objective.

The objective turns a model's projections and logits plus a batch's targets into one scalar loss and
a dict of values to log. Relations are built here from the targets (label -> relation is pluggable);
the losses themselves live in :mod:`mlcl.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mlcl import distributed, relations
from mlcl.data.types import Dataset, LabelLevel
from mlcl.errors import ConfigError
from mlcl.user_input import did_you_mean
from mlcl.losses import MultiLevelSupConLoss
from mlcl.losses.himulcon import HiMulConLoss
from mlcl.losses.mulsupcon import MulSupConLoss
from mlcl.losses.triplet import BatchHardTripletLoss
from mlcl.train.config import INSTANCE_HEAD, MethodConfig


@dataclass(frozen=True)
class Head:
    """One projection head: its name, the level whose labels define its positives (None = instance)."""

    name: str
    level: LabelLevel | None
    temperature: float
    weight: float


def _per_head(values: list[float], count: int, key: str, default: float | None = None) -> list[float]:
    if not values and default is not None:
        return [default] * count
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise ConfigError(
            f"method.{key} lists {len(values)} values but there are {count} heads; give one per head or a single value"
        )
    return list(values)


def plan_heads(method: MethodConfig, dataset: Dataset) -> list[Head]:
    """The projection heads a method trains on ``dataset`` (CE trains none)."""
    levels = {level.name: level for level in dataset.levels}
    finest = dataset.levels[-1]
    if method.name == "ce":
        return []
    if method.name == "simclr":
        return [Head(INSTANCE_HEAD, None, method.temperatures[0], 1.0)]
    if method.name == "himulcon" and dataset.multi_label:
        raise ConfigError(f"method.name=himulcon needs one class per sample at every level, but {dataset.name} is "
                          "multi-label; use mulsupcon, supcon (exact label sets) or mlcl")
    if method.name == "triplet" and finest.multi_label:
        raise ConfigError(f"method.name=triplet needs one class per sample at the finest level, but {finest.name!r} "
                          f"of {dataset.name} is multi-label; use mulsupcon, supcon (exact label sets) or mlcl")
    if method.name in ("supcon", "himulcon", "mulsupcon", "triplet"):
        return [Head(method.name, finest, method.temperatures[0], 1.0)]
    names = method.heads or [level.name for level in dataset.levels]
    for name in names:
        if name not in levels:
            raise ConfigError(
                f"method.heads names {name!r}, which is not a level of {dataset.name}{did_you_mean(name, levels)}; "
                f"levels: {', '.join(levels)} (add an instance head with method.instance_head=true)"
            )
    temps = _per_head(method.temperatures, len(names), "temperatures")
    weights = _per_head(method.weights, len(names), "weights", default=1.0)
    heads = [Head(name, levels[name], t, w) for name, t, w in zip(names, temps, weights)]
    if method.instance_head:
        heads.append(Head(INSTANCE_HEAD, None, method.instance_temperature, method.instance_weight))
    return heads


def _exact_set_ids(multi_hot: torch.Tensor) -> torch.Tensor:
    """Class ids for multi-label rows: two samples share an id iff their label sets are equal."""
    return torch.unique(multi_hot > 0, dim=0, return_inverse=True)[1]


class Objective(nn.Module):
    """The loss of one method: contrastive heads (+ per-level classifiers when trained jointly)."""

    def __init__(self, method: MethodConfig, dataset: Dataset, gather_distributed: bool = False):
        super().__init__()
        self.method = method.name
        self.heads = plan_heads(method, dataset)
        self.levels = dataset.levels
        self.overlap_mode = method.overlap
        self.classifier_weight = 1.0 if method.name == "ce" else method.classifier_weight
        self.gather = gather_distributed
        self.contrastive: nn.Module | None = None
        if method.name == "himulcon":
            self.contrastive = HiMulConLoss(temperature=self.heads[0].temperature, mode=method.himulcon_mode,
                                            gather_distributed=gather_distributed)
        elif method.name == "triplet":
            self.contrastive = BatchHardTripletLoss(margin=method.triplet_margin, gather_distributed=gather_distributed)
        elif method.name == "mulsupcon":
            self.contrastive = MulSupConLoss(temperature=self.heads[0].temperature, gather_distributed=gather_distributed)
        elif self.heads:
            self.contrastive = MultiLevelSupConLoss(
                [h.temperature for h in self.heads],
                [h.weight for h in self.heads],
                gather_distributed=gather_distributed,
                learnable_temperatures=method.learnable_temperatures,
            )

    @property
    def classifier_levels(self) -> dict[str, int]:
        """Levels that get a linear classifier trained with this objective."""
        return {level.name: level.num_classes for level in self.levels} if self.classifier_weight > 0 else {}

    def _relation(self, targets: dict[str, torch.Tensor], batch: int, device: torch.device) -> torch.Tensor:
        """Class labels ``(B, H)`` when every head is single-label, else weights ``(H, B, B_keys)``."""
        rank, world = distributed.rank_and_world() if self.gather else (0, 1)
        exact_sets = self.method == "supcon" and self.heads[0].level.multi_label
        if not exact_sets and not any(h.level is not None and h.level.multi_label for h in self.heads):
            # Class labels: the loss gathers them itself.
            instance_ids = torch.arange(batch, device=device) + rank * batch
            columns = [targets[h.level.name] if h.level is not None else instance_ids for h in self.heads]
            return torch.stack(columns, 1).long()
        # Relations against every rank's samples need every rank's targets.
        gathered = {k: distributed.gather_no_grad(v, 0) for k, v in targets.items()} if world > 1 else targets
        if exact_sets:  # positives: the same label set
            ids = _exact_set_ids(gathered[self.heads[0].level.name])
            return ids[rank * batch : (rank + 1) * batch].unsqueeze(1)
        per_head = []
        for head in self.heads:
            if head.level is None:
                own = torch.zeros(batch, batch * world, dtype=torch.float32, device=device)
                per_head.append(own)
            elif head.level.multi_label:
                local, every = targets[head.level.name], gathered[head.level.name]
                per_head.append(relations.overlap(local, self.overlap_mode, others=every).float())
            else:
                local, every = targets[head.level.name], gathered[head.level.name]
                per_head.append(relations.same_class(local, others=every).float())
        return torch.stack(per_head)

    def forward(
        self,
        projections: torch.Tensor | None,
        logits: dict[str, torch.Tensor],
        targets: dict[str, torch.Tensor],
        n_views: int,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``projections`` ``(H, B, V, D)`` (None without heads); ``logits[level]`` ``(B·V, C)``, sample-major."""
        logs: dict[str, float] = {}
        device = next(iter(targets.values())).device
        total = torch.zeros((), dtype=torch.float32, device=device)
        if self.contrastive is not None:
            batch = projections.shape[1]
            if self.method == "himulcon":
                labels = torch.stack([targets[level.name] for level in self.levels], 1)
                contrastive = self.contrastive(projections[0], labels)
            elif self.method == "triplet":
                contrastive = self.contrastive(projections[0], targets[self.heads[0].level.name])
            elif self.method == "mulsupcon":
                hot = torch.cat([self._multi_hot(targets[level.name], level) for level in self.levels], 1)
                contrastive = self.contrastive(projections[0], hot)
            else:
                relation = self._relation(targets, batch, projections.device)
                contrastive = self.contrastive(projections, relation)
                for head, value in zip(self.heads, self.contrastive.last_head_losses.tolist()):
                    logs[f"loss_{head.name}"] = value
            total = total + contrastive.float()
        for level in self.levels:
            if level.name not in logits or self.classifier_weight == 0:
                continue
            target = targets[level.name].repeat_interleave(n_views, 0)
            if level.multi_label:
                ce = F.binary_cross_entropy_with_logits(logits[level.name].float(), target.float())
            else:
                ce = F.cross_entropy(logits[level.name].float(), target, ignore_index=-1)
                ce = torch.nan_to_num(ce, nan=0.0)  # a batch with no labelled row at this level
            logs[f"ce_{level.name}"] = ce.item()
            total = total + self.classifier_weight * ce
        return total, logs

    @staticmethod
    def _multi_hot(target: torch.Tensor, level: LabelLevel) -> torch.Tensor:
        if level.multi_label:
            return target.float()
        hot = torch.zeros(len(target), level.num_classes, device=target.device)
        labelled = target >= 0
        hot[labelled, target[labelled]] = 1.0
        return hot
