"""A Lightning ``LightningModule`` around an encoder, a :class:`~mlcl.models.heads.MultiHeadProjector`
and an mlcl loss, for people who train with Lightning (``pip install 'mlcl[lightning]'``).

It runs under any Lightning strategy; under ``strategy="ddp"`` build the loss with
``gather_distributed=True`` so every process's anchors see the whole global batch as negatives.
``examples/lightning_fashion_mnist.py`` trains one on Fashion-MNIST.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

try:
    import lightning as L
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError("mlcl.lightning needs Lightning: pip install 'mlcl[lightning]'") from None

from mlcl.losses import MultiLevelSupConLoss, NTXentLoss, SupConLoss
from mlcl.models.heads import MultiHeadProjector

Views = Callable[[torch.Tensor], torch.Tensor]


class ContrastiveModule(L.LightningModule):
    """Encoder -> multi-head projector -> mlcl loss, with per-head losses logged.

    A training batch is ``(inputs, targets)``. ``inputs`` are ``(B, V, ...)`` views, or ``(B, ...)``
    samples when ``views`` (``(B, ...) -> (B, V, ...)``, e.g. ``mlcl.data.augment.make_views``) makes
    the views on the device. ``targets`` are what the loss takes: ``(B, H)`` labels or an ``(H, B, B)``
    relation for :class:`~mlcl.losses.MultiLevelSupConLoss`, ``(B,)`` labels for the one-head losses
    (SupCon, triplet, ...), nothing for NT-Xent.

    A :class:`~mlcl.losses.MultiLevelSupConLoss` gets the projections of every head, ``(H, B, V, D)``,
    and each head's loss is logged as ``train/loss_<head name>``; any other mlcl loss works on one head
    and gets ``(B, V, D)``. The optimiser is AdamW over the encoder, projector and loss (learnable
    temperatures, without weight decay); override ``configure_optimizers`` for another.
    """

    def __init__(self, encoder: nn.Module, projector: MultiHeadProjector, loss: nn.Module, *,
                 views: Views | None = None, lr: float = 1e-3, weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.multi_head = isinstance(loss, MultiLevelSupConLoss) and not isinstance(loss, SupConLoss)
        if self.multi_head and loss.num_heads != projector.n_heads:
            raise ValueError(f"the loss has {loss.num_heads} heads (temperatures) but the projector "
                             f"{projector.n_heads}")
        if not self.multi_head and projector.n_heads != 1:
            raise ValueError(f"{type(loss).__name__} works on one head, but the projector has {projector.n_heads}; "
                             "use MultiLevelSupConLoss for several heads")
        self.encoder, self.projector, self.loss = encoder, projector, loss
        self.views = views
        self.save_hyperparameters(ignore=["encoder", "projector", "loss", "views"])

    def forward(self, x: Any) -> torch.Tensor:
        """Every head's projections ``(H, B, D)`` of samples ``x`` (not normalised)."""
        return self.projector(self.encoder(x))

    def encode(self, x: Any) -> torch.Tensor:
        """The encoder's features ``(B, F)``: what a probe, kNN or retrieval uses after training."""
        return self.encoder(x)

    def training_step(self, batch: tuple[torch.Tensor, Any], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        views = self.views(inputs) if self.views is not None else inputs
        batch_size, n_views = views.shape[:2]
        z = self(views.flatten(0, 1))
        z = z.view(z.shape[0], batch_size, n_views, z.shape[-1])
        if self.multi_head:
            total, head_losses = self.loss(z, targets, return_head_losses=True)
            for name, value in zip(self.projector.head_names, head_losses.unbind()):
                self.log(f"train/loss_{name}", value, batch_size=batch_size, sync_dist=True)
            for name, temperature in zip(self.projector.head_names, self.loss.temperatures.unbind()):
                self.log(f"train/temperature_{name}", temperature.float(), batch_size=batch_size)
        elif isinstance(self.loss, NTXentLoss):
            total = self.loss(z[0])
        else:
            total = self.loss(z[0], targets)
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size, sync_dist=True)
        return total

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Learnable temperatures get no weight decay, which would pull log τ towards 0.
        groups = [{"params": [*self.encoder.parameters(), *self.projector.parameters()]},
                  {"params": list(self.loss.parameters()), "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
