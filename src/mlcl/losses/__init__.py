"""Contrastive losses: pure math on projections and relations, no training code."""

from mlcl.losses.multilevel import MultiLevelSupConLoss, NTXentLoss, SupConLoss, multilevel_supcon

__all__ = ["MultiLevelSupConLoss", "NTXentLoss", "SupConLoss", "multilevel_supcon"]
