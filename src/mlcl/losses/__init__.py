"""Contrastive losses: pure math on projections and relations, no training code."""

from mlcl.losses._validate import check_finite
from mlcl.losses.himulcon import HiMulConLoss, himulcon
from mlcl.losses.mulsupcon import MulSupConLoss, mulsupcon
from mlcl.losses.multilevel import MultiLevelSupConLoss, NTXentLoss, SupConLoss, multilevel_supcon
from mlcl.losses.triplet import BatchHardTripletLoss, batch_hard_triplet

__all__ = [
    "BatchHardTripletLoss",
    "HiMulConLoss",
    "MulSupConLoss",
    "MultiLevelSupConLoss",
    "NTXentLoss",
    "SupConLoss",
    "batch_hard_triplet",
    "check_finite",
    "himulcon",
    "multilevel_supcon",
    "mulsupcon",
]
