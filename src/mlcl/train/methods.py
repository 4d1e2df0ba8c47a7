"""Training methods as classes in a registry, and the objective that trains one.

A method decides which projection heads a run trains (:meth:`Method.plan_heads`), which contrastive loss
compares their projections (:meth:`Method.build_loss`), what that loss compares samples by
(:meth:`Method.relation`), and checks its own config (:meth:`Method.check_config`). Adding a method is
one subclass and one line in :data:`METHODS`. The losses themselves live in :mod:`mlcl.losses`; the
:class:`Objective` adds the optional per-level classifiers' cross-entropy to the method's loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mlcl import distributed, relations
from mlcl.data.types import Dataset, LabelLevel
from mlcl.errors import ConfigError
from mlcl.losses import MultiLevelSupConLoss
from mlcl.losses.himulcon import HiMulConLoss, default_level_penalty
from mlcl.losses.mulsupcon import MulSupConLoss
from mlcl.losses.triplet import BatchHardTripletLoss
from mlcl.user_input import did_you_mean

if TYPE_CHECKING:  # the config imports this module's registry
    from mlcl.train.config import MethodConfig

INSTANCE_HEAD = "instance"

# (this rank's targets of one level, every rank's targets) -> (B, B') positive weights
RelationFn = Callable[..., torch.Tensor]


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


def _gather_targets(targets: dict[str, torch.Tensor], world: int) -> dict[str, torch.Tensor]:
    """Every rank's targets (relations against every rank's samples need them)."""
    return {k: distributed.gather_no_grad(v, 0) for k, v in targets.items()} if world > 1 else targets


def _multi_hot(target: torch.Tensor, level: LabelLevel) -> torch.Tensor:
    if level.multi_label:
        return target.float()
    hot = torch.zeros(len(target), level.num_classes, device=target.device)
    labelled = target >= 0
    hot[labelled, target[labelled]] = 1.0
    return hot


class Method:
    """A training method: its heads, its contrastive loss and the relation that loss reads."""

    name: ClassVar[str]
    takes_level: ClassVar[bool] = False  # whether method.level picks the level of its single head

    def __init__(self, config: MethodConfig, dataset: Dataset, gather_distributed: bool = False):
        self.config = config
        self.levels = dataset.levels
        self.gather_distributed = gather_distributed
        self.heads = self.plan_heads(dataset)

    @classmethod
    def check_config(cls, config: MethodConfig, key: str) -> None:
        """Refuse method options that this method cannot train with (when the config is read)."""

    @property
    def classifier_weight(self) -> float:
        """Weight of the per-level classifiers' cross-entropy (0: no classifiers)."""
        return self.config.classifier_weight

    def plan_heads(self, dataset: Dataset) -> list[Head]:
        """The projection heads this method trains on ``dataset``."""
        return []

    def build_loss(self) -> nn.Module | None:
        """The contrastive loss over the heads' projections (None: no contrastive term)."""
        return None

    def relation(self, targets: dict[str, torch.Tensor], batch: int, device: torch.device) -> torch.Tensor:
        """What the loss compares this batch's samples by (labels, label sets or positive weights)."""
        raise NotImplementedError

    def contrastive_loss(
        self, loss: nn.Module, projections: torch.Tensor, targets: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of the single head's projections ``(B, V, D)`` against :meth:`relation`, and values to
        log (detached 0-d tensors, left on the device: the trainer syncs them when it logs)."""
        return loss(projections[0], self.relation(targets, projections.shape[1], projections.device)), {}

    def _finest_head(self, dataset: Dataset) -> list[Head]:
        """One head on the finest level, or on ``method.level`` for methods that take it."""
        level = dataset.levels[-1]
        chosen = self.config.level if self.takes_level else None
        if chosen is not None:
            levels = {lv.name: lv for lv in dataset.levels}
            if chosen not in levels:
                raise ConfigError(f"method.level={chosen!r} is not a level of {dataset.name}"
                                  f"{did_you_mean(chosen, levels)}; levels: {', '.join(levels)}")
            level = levels[chosen]
        return [Head(self.name, level, self.config.temperatures[0], 1.0)]


class CrossEntropy(Method):
    """Per-level linear classifiers trained with cross-entropy; no projection heads."""

    name = "ce"

    @property
    def classifier_weight(self) -> float:
        return 1.0


class _SupConHeads(Method):
    """Methods trained with the multi-level SupCon loss: one relation per head, summed with head weights.

    ``multi_label_relation`` is the policy for a multi-label level's positive weights (default: the
    configured ``method.overlap`` of :func:`mlcl.relations.overlap`).
    """

    def __init__(self, config: MethodConfig, dataset: Dataset, gather_distributed: bool = False,
                 multi_label_relation: RelationFn | None = None):
        super().__init__(config, dataset, gather_distributed)
        self.multi_label_relation = multi_label_relation or partial(relations.overlap, mode=config.overlap)

    def build_loss(self) -> nn.Module:
        return MultiLevelSupConLoss(
            [h.temperature for h in self.heads],
            [h.weight for h in self.heads],
            gather_distributed=self.gather_distributed,
            learnable_temperatures=self.config.learnable_temperatures,
        )

    def relation(self, targets: dict[str, torch.Tensor], batch: int, device: torch.device) -> torch.Tensor:
        """Class labels ``(B, H)`` when every head is single-label, else weights ``(H, B, B_keys)``."""
        rank, world = distributed.rank_and_world() if self.gather_distributed else (0, 1)
        if not any(h.level is not None and h.level.multi_label for h in self.heads):
            # Class labels: the loss gathers them itself.
            instance_ids = torch.arange(batch, device=device) + rank * batch
            columns = [targets[h.level.name] if h.level is not None else instance_ids for h in self.heads]
            return torch.stack(columns, 1).long()
        gathered = _gather_targets(targets, world)
        per_head = []
        for head in self.heads:
            if head.level is None:
                per_head.append(torch.zeros(batch, batch * world, dtype=torch.float32, device=device))
                continue
            local, every = targets[head.level.name], gathered[head.level.name]
            relation = self.multi_label_relation if head.level.multi_label else relations.same_class
            per_head.append(relation(local, others=every).float())
        return torch.stack(per_head)

    def contrastive_loss(
        self, loss: nn.Module, projections: torch.Tensor, targets: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        value, head_losses = loss(projections, self.relation(targets, projections.shape[1], projections.device),
                                  return_head_losses=True)
        return value, {f"loss_{h.name}": v for h, v in zip(self.heads, head_losses)}


class SimCLR(_SupConHeads):
    """Instance discrimination: a sample's only positives are its own other views."""

    name = "simclr"

    @classmethod
    def check_config(cls, config: MethodConfig, key: str) -> None:
        if config.views < 2:
            raise ConfigError(f"{key}.views must be >= 2 for simclr (its only positives are other views)")

    def plan_heads(self, dataset: Dataset) -> list[Head]:
        return [Head(INSTANCE_HEAD, None, self.config.temperatures[0], 1.0)]


class SupCon(_SupConHeads):
    """SupCon on one level (``method.level``, default the finest); on a multi-label level, positives share
    the exact label set."""

    name = "supcon"
    takes_level = True

    def plan_heads(self, dataset: Dataset) -> list[Head]:
        return self._finest_head(dataset)

    def relation(self, targets: dict[str, torch.Tensor], batch: int, device: torch.device) -> torch.Tensor:
        level = self.heads[0].level
        if not level.multi_label:
            return super().relation(targets, batch, device)
        rank, world = distributed.rank_and_world() if self.gather_distributed else (0, 1)
        every = _gather_targets(targets, world)[level.name]
        ids = torch.unique(every > 0, dim=0, return_inverse=True)[1]  # equal label sets share an id
        return ids[rank * batch : (rank + 1) * batch].unsqueeze(1)


class MultiLevel(_SupConHeads):
    """mlcl: one head per configured level (``method.heads``, default all), plus an optional instance head."""

    name = "mlcl"

    def plan_heads(self, dataset: Dataset) -> list[Head]:
        config = self.config
        levels = {level.name: level for level in dataset.levels}
        names = config.heads or list(levels)
        for name in names:
            if name not in levels:
                raise ConfigError(
                    f"method.heads names {name!r}, which is not a level of {dataset.name}{did_you_mean(name, levels)}; "
                    f"levels: {', '.join(levels)} (add an instance head with method.instance_head=true)"
                )
        temps = _per_head(config.temperatures, len(names), "temperatures")
        weights = _per_head(config.weights, len(names), "weights", default=1.0)
        heads = [Head(name, levels[name], t, w) for name, t, w in zip(names, temps, weights)]
        if config.instance_head:
            heads.append(Head(INSTANCE_HEAD, None, config.instance_temperature, config.instance_weight))
        return heads


class HiMulCon(Method):
    """HiMulCon on one shared head over every level. ``level_penalty`` maps the number of levels to the
    per-level penalty λ (coarse -> fine; default :func:`mlcl.losses.himulcon.default_level_penalty`)."""

    name = "himulcon"

    def __init__(self, config: MethodConfig, dataset: Dataset, gather_distributed: bool = False,
                 level_penalty: Callable[[int], Sequence[float]] = default_level_penalty):
        super().__init__(config, dataset, gather_distributed)
        self.level_penalty = level_penalty

    def plan_heads(self, dataset: Dataset) -> list[Head]:
        if dataset.multi_label:
            raise ConfigError(f"method.name=himulcon needs one class per sample at every level, but {dataset.name} "
                              "is multi-label; use mulsupcon, supcon (exact label sets) or mlcl")
        return self._finest_head(dataset)

    def build_loss(self) -> nn.Module:
        return HiMulConLoss(temperature=self.heads[0].temperature, mode=self.config.himulcon_mode,
                            level_penalty=self.level_penalty(len(self.levels)),
                            gather_distributed=self.gather_distributed)

    def relation(self, targets: dict[str, torch.Tensor], batch: int, device: torch.device) -> torch.Tensor:
        return torch.stack([targets[level.name] for level in self.levels], 1)


class MulSupCon(Method):
    """MulSupCon on one head: every label of every level, multi-hot."""

    name = "mulsupcon"

    def plan_heads(self, dataset: Dataset) -> list[Head]:
        return self._finest_head(dataset)

    def build_loss(self) -> nn.Module:
        return MulSupConLoss(temperature=self.heads[0].temperature, gather_distributed=self.gather_distributed)

    def relation(self, targets: dict[str, torch.Tensor], batch: int, device: torch.device) -> torch.Tensor:
        return torch.cat([_multi_hot(targets[level.name], level) for level in self.levels], 1)


class Triplet(Method):
    """Batch-hard triplet loss on one level's classes (``method.level``, default the finest)."""

    name = "triplet"
    takes_level = True

    def plan_heads(self, dataset: Dataset) -> list[Head]:
        heads = self._finest_head(dataset)
        level = heads[0].level
        if level.multi_label:
            where = "the finest level" if self.config.level is None else "method.level"
            raise ConfigError(f"method.name=triplet needs one class per sample at {where}, but "
                              f"{level.name!r} of {dataset.name} is multi-label; use mulsupcon, supcon (exact label "
                              "sets) or mlcl")
        return heads

    def build_loss(self) -> nn.Module:
        return BatchHardTripletLoss(margin=self.config.triplet_margin, gather_distributed=self.gather_distributed)

    def relation(self, targets: dict[str, torch.Tensor], batch: int, device: torch.device) -> torch.Tensor:
        return targets[self.heads[0].level.name]


METHODS: dict[str, type[Method]] = {
    method.name: method for method in (CrossEntropy, SupCon, SimCLR, HiMulCon, MulSupCon, Triplet, MultiLevel)
}


class Objective(nn.Module):
    """The loss of one method: its contrastive loss (+ per-level classifiers when trained jointly)."""

    def __init__(self, method: MethodConfig, dataset: Dataset, gather_distributed: bool = False):
        super().__init__()
        self.method = METHODS[method.name](method, dataset, gather_distributed)
        self.heads = self.method.heads
        self.levels = dataset.levels
        self.classifier_weight = self.method.classifier_weight
        self.contrastive = self.method.build_loss()

    @property
    def classifier_levels(self) -> dict[str, int]:
        """Levels that get a linear classifier trained with this objective."""
        return {level.name: level.num_classes for level in self.levels} if self.classifier_weight > 0 else {}

    def forward(
        self,
        projections: torch.Tensor | None,
        logits: dict[str, torch.Tensor],
        targets: dict[str, torch.Tensor],
        n_views: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``projections`` ``(H, B, V, D)`` (None without heads); ``logits[level]`` ``(B·V, C)``, sample-major.
        Returns the loss and the values to log, as detached 0-d tensors on the loss's device."""
        logs: dict[str, torch.Tensor] = {}
        device = next(iter(targets.values())).device
        total = torch.zeros((), dtype=torch.float32, device=device)
        if self.contrastive is not None:
            contrastive, logs = self.method.contrastive_loss(self.contrastive, projections, targets)
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
            logs[f"ce_{level.name}"] = ce.detach()
            total = total + self.classifier_weight * ce
        return total, logs
