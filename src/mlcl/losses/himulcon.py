"""HiMulCon: hierarchical multi-label contrastive learning (Zhang, Xu, Xiong, Ramaiah, CVPR 2022,
"Use All The Labels"), on one shared projection head.

Levels are ordered coarse -> fine as everywhere in mlcl (l = 0 … L−1); labels are ``(B, L)``, ``-1`` =
unknown at that level (no anchor there and nobody's positive there). For each level, L_l is the SupCon
loss (docs/loss.md's form, every view an anchor) whose positives share the label at level l:

    hmc  :  (1/L) Σ_l λ_l · L_l
    hce  :  (1/L) Σ_l L̂_l            L̂_l = max(L_l, L̂_{l+1}) = max_{l' ≥ l} L_{l'}   (finer levels)
    hmce :  (1/L) Σ_l λ_l · L̂_l

with the default level penalty λ_l = 2^{1/(L−l)}: 2 at the finest level, falling towards 1 at the
coarsest, i.e. the official code's ``pow_2(1/l)`` with its l counted from the finest level up
(github.com/salesforce/hierarchicalContrastiveLearning, ``losses/losses.py``, class ``HMLC``).

Hierarchy constraint granularity: the max is taken between *per-level batch losses*, exactly as the
official code does (``torch.max(max_loss_lower_layer, layer_loss)`` on the scalar SupCon loss of each
level). The paper writes it over pair losses; a per-pair max cannot be expressed without materialising
every pair's loss, which the fused row-blocked kernel never does. A level with no valid anchor
contributes 0 and is skipped by the max (the running max of finer levels passes through it).

Left out from the official code, on purpose: (i) after each level it keeps only the first sample of
every label prefix (a step the paper does not describe; with many samples per fine class it shrinks
the coarse levels to one sample per fine class); (ii) it scales by τ/0.07 and divides by the number of
label columns including the instance id, constant factors only. Positives here are "same label at
level l"; with labels that are globally unique per level (as :class:`mlcl.Hierarchy` produces) this is
the official "same label prefix down to level l".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mlcl import distributed
from mlcl.losses._validate import check_head_values, check_views
from mlcl.losses.multilevel import multilevel_supcon
from mlcl.losses.precision import statistics_dtype

MODES = ("hmc", "hce", "hmce")


def default_level_penalty(num_levels: int) -> list[float]:
    """λ_l = 2^{1/(L−l)} for levels l = 0 (coarsest) … L−1 (finest): the official ``pow_2(1/l)``."""
    return [2.0 ** (1.0 / (num_levels - level)) for level in range(num_levels)]


def check_level_labels(labels: torch.Tensor, batch: int) -> None:
    """``labels`` must be integer ``(B, L)`` with L >= 1 and values >= -1."""
    if not isinstance(labels, torch.Tensor) or labels.ndim != 2 or labels.shape[0] != batch or labels.shape[1] < 1:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(
            f"labels must have shape (B, L) with B = {batch} and L >= 1 levels (coarse -> fine), got {shape}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class ids (-1 = unknown), got dtype {labels.dtype}")
    if labels.min().item() < -1:
        raise ValueError(f"labels must be >= -1 (-1 = unknown), got {labels.min().item()}")


def levels_with_anchors(labels: torch.Tensor, n_views: int) -> torch.Tensor:
    """``(L,)`` bool: whether some labelled sample at that level has a positive (another view or sample)."""
    if n_views > 1:
        return (labels >= 0).any(0)
    repeated = [torch.unique(column[column >= 0], return_counts=True)[1].gt(1).any() for column in labels.t()]
    return torch.stack(repeated).to(labels.device)


def hierarchy_constrained(
    level_losses: torch.Tensor, has_anchor: torch.Tensor, reference: torch.Tensor | None = None
) -> torch.Tensor:
    """L̂_l = max over levels l' >= l (finer) with anchors of L_{l'}; 0 where level l has no anchor.

    ``reference`` (default ``level_losses``) decides which level is the max; ``level_losses`` supplies
    the value. Under ``gather_distributed`` each rank's ``level_losses`` is its share of the global
    losses, and the max must follow the global ones (``reference``) for DDP to match one process.
    """
    reference = level_losses if reference is None else reference
    masked = torch.where(has_anchor, reference, torch.full_like(reference, float("-inf")))
    finest_first = masked.flip(0).cummax(0).indices.flip(0)  # positions in the flipped order
    winner = len(level_losses) - 1 - finest_first
    picked = level_losses.gather(0, winner)
    return torch.where(has_anchor, picked, torch.zeros_like(picked))


def himulcon(
    z: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    mode: str = "hmce",
    level_penalty: Sequence[float] | None = None,
    block_size: int | None = None,
    gather_distributed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, L_l)``: the HiMulCon loss of ``z`` ``(B, V, D)`` and the ``(L,)`` per-level SupCon losses.

    All levels come from one batched call of the fused kernel on ``z`` shared by L heads. With
    ``gather_distributed`` the keys are every rank's rows (as in :class:`MultiLevelSupConLoss`), the
    hierarchy max follows the global per-level losses, and ``L_l`` are those global values (detached).
    """
    check_views(z, "HiMulConLoss")
    check_level_labels(labels, z.shape[0])
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    num_levels = labels.shape[1]
    penalty = default_level_penalty(num_levels) if level_penalty is None else [float(v) for v in level_penalty]
    check_head_values("level_penalty", penalty, num_levels, positive=False)

    dtype = statistics_dtype(z.dtype)
    shared = z.unsqueeze(0).expand(num_levels, *z.shape)
    temperatures = torch.full((num_levels,), float(temperature), dtype=dtype)
    _, level_losses = multilevel_supcon(
        shared, labels, temperatures, torch.ones(num_levels, dtype=dtype), gather_distributed=gather_distributed,
        block_size=block_size,
    )
    world = distributed.rank_and_world()[1] if gather_distributed else 1
    # This rank's level losses are its share: their mean over ranks is the global per-level loss.
    reference = distributed.all_reduce_sum(level_losses) / world if world > 1 else level_losses
    terms = level_losses
    if mode in ("hce", "hmce"):
        every_label = distributed.gather_no_grad(labels.to(z.device), 0, check_size=False) if world > 1 else labels
        has_anchor = levels_with_anchors(every_label, z.shape[1]).to(z.device)
        terms = hierarchy_constrained(level_losses, has_anchor, reference.detach())
    if mode in ("hmc", "hmce"):
        terms = terms * torch.tensor(penalty, dtype=dtype, device=z.device)
    return terms.sum() / num_levels, reference


class HiMulConLoss(nn.Module):
    """HiMulCon (Zhang et al., CVPR 2022) with ``mode`` ``"hmc"``, ``"hce"`` or ``"hmce"``.

    ``level_penalty``: λ_l per level, coarse -> fine (default 2^{1/(L−l)}; see the module docstring).
    ``gather_distributed``: contrast against every rank's samples (DDP gives one process's gradients).

    Example::

        loss_fn = HiMulConLoss(temperature=0.1, mode="hmce")
        loss = loss_fn(z, labels)        # z: (B, V, D) one shared head; labels: (B, L) coarse -> fine
        loss_fn.last_level_losses        # (L,) detached per-level SupCon losses, before penalty and max
    """

    def __init__(
        self,
        temperature: float = 0.1,
        mode: str = "hmce",
        level_penalty: Sequence[float] | None = None,
        block_size: int | None = None,
        gather_distributed: bool = False,
    ):
        super().__init__()
        check_head_values("temperature", [temperature], 1, positive=True)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if level_penalty is not None:
            check_head_values("level_penalty", list(level_penalty), None, positive=False)
        if block_size is not None and block_size < 1:
            raise ValueError(f"block_size must be >= 1 or None, got {block_size}")
        self.temperature = float(temperature)
        self.mode = mode
        self.level_penalty = None if level_penalty is None else [float(v) for v in level_penalty]
        self.block_size = block_size
        self.gather_distributed = gather_distributed
        self.last_level_losses: torch.Tensor | None = None

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss, level_losses = himulcon(z, labels, self.temperature, self.mode, self.level_penalty, self.block_size,
                                      self.gather_distributed)
        self.last_level_losses = level_losses.detach()
        return loss
