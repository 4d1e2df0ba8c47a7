"""Hierarchy-aware metrics: tree distance between classes, mistake severity, and retrieval quality.

* :func:`lca_heights`: the height of the lowest common ancestor of two finest classes (0 = same class,
  1 = siblings, ..., L = different at the top level of an L-level hierarchy).
* :func:`mistake_severity`: how far wrong predictions land from the truth in that tree (Bertinetto et al.,
  "Making Better Mistakes", CVPR 2020).
* :func:`retrieval_metrics`: MAP@R (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020) and
  precision@k per level, and the hierarchical distance of the k nearest neighbours, by cosine similarity
  of queries against a reference bank, in chunks so a 10k x 55k similarity matrix never exists at once.

Inputs are numpy arrays or torch tensors; results are plain Python floats (``None`` where undefined).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mlcl.errors import DataError, MlclError
from mlcl.eval.metrics import ArrayLike, _check_same_shape, _numpy


def lca_heights(parents: Sequence[ArrayLike]) -> np.ndarray:
    """``(C, C)`` int matrix: the LCA height of every pair of finest classes.

    ``parents`` lists the child -> parent maps from the second level down to the finest:
    ``parents[i][c]`` is the class at level ``i`` of class ``c`` at level ``i + 1``. An empty list is a
    flat (one-level) label set, where every pair of different classes is at height 1.
    """
    maps = [_numpy(p).astype(np.int64) for p in parents]
    num_fine = len(maps[-1]) if maps else None
    for i in range(len(maps) - 1):
        if maps[i + 1].size and (maps[i + 1].min() < 0 or maps[i + 1].max() >= len(maps[i])):
            raise MlclError(f"parents[{i + 1}] holds classes outside parents[{i}] (0..{len(maps[i]) - 1})")
    if num_fine is None:
        raise MlclError("lca_heights: give at least one child -> parent map (one per level below the top)")
    # ancestors[:, j]: each finest class's class at level j (top = 0), built from the finest level upwards
    columns = [np.arange(num_fine)]
    for parent in reversed(maps):
        columns.append(parent[columns[-1]])
    ancestors = np.stack(columns[::-1], axis=1)
    same = ancestors[:, None, :] == ancestors[None, :, :]
    # In a tree, classes that share a level-j ancestor share every coarser one too.
    return ancestors.shape[1] - same.sum(axis=2)


def mistake_severity(pred: ArrayLike, target: ArrayLike, heights: ArrayLike) -> dict[str, float | None]:
    """Mean LCA height of the wrong predictions, and the share of them within the true class's parent.

    Rows with ``target == -1`` are ignored. ``{"severity": mean height over mistakes,
    "within_parent": share of mistakes at height 1}``; both ``None`` when there is no mistake.
    """
    pred, target, heights = _numpy(pred), _numpy(target), _numpy(heights)
    _check_same_shape(pred, target, "pred and target")
    labelled = target != -1
    if not labelled.any():
        raise DataError("mistake_severity: no labelled rows (every target is -1)")
    wrong = labelled & (pred != target)
    if not wrong.any():
        return {"severity": None, "within_parent": None}
    h = heights[target[wrong], pred[wrong]]
    return {"severity": float(h.mean()), "within_parent": float((h == 1).mean())}


_NEG_INF_BITS = int(np.array(-np.inf, dtype=np.float32).view(np.int32))


def _encode(sims: torch.Tensor, relevant: torch.Tensor, excluded: torch.Tensor | None) -> torch.Tensor:
    """Similarities with each reference's relevance in the lowest mantissa bit (each value moves by at
    most 1 ulp), and -inf in the columns ``excluded``.

    Sorting the values alone then carries the relevance along, several times faster than an argsort;
    only exact ties (to the ulp) may be ordered differently, and those are arbitrary anyway.
    """
    bits = sims.view(torch.int32).bitwise_and_(~1).bitwise_or_(relevant.to(torch.int32))
    if excluded is not None:
        bits.masked_fill_(excluded, _NEG_INF_BITS)
    return bits.view(torch.float32)


def _top(encoded: np.ndarray, depth: int) -> np.ndarray:
    """``(B, depth)``: each row's ``depth`` largest encoded similarities, largest first."""
    top = np.partition(encoded, encoded.shape[1] - depth, axis=1)[:, encoded.shape[1] - depth:]
    return np.sort(top, axis=1)[:, ::-1]


def _sum_average_precision_at_r(rel: np.ndarray) -> float:
    """Sum over rows of ``(1/R) sum_i rel_i * precision@i`` for ``(B, R)`` relevance in rank order."""
    ranks = np.nonzero(rel)[1]  # row-major: ranks ascend within each row
    counts = rel.sum(axis=1)
    # how many relevant items each row has up to and including this rank
    hits = np.arange(len(ranks)) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    return float((hits / (ranks + 1)).sum() / rel.shape[1])


def _labels(labels: Mapping[str, ArrayLike], n: int, what: str) -> dict[str, torch.Tensor]:
    out = {}
    for level, y in labels.items():
        y = torch.as_tensor(_numpy(y)).long()
        if y.shape != (n,):
            raise MlclError(f"{what} labels of level {level!r} must have shape ({n},), got {tuple(y.shape)}")
        out[level] = y
    return out


class _LevelTally:
    """Running sums of one level's per-query MAP@R, precision@k and (optionally) hierarchical distance@k."""

    def __init__(self, ref_y: torch.Tensor, self_retrieval: bool, k: int, heights: np.ndarray | None) -> None:
        self.ref_y = ref_y
        self.unlabelled = ref_y == -1
        self.counts = torch.bincount(ref_y[~self.unlabelled], minlength=1)
        self.bank = int((~self.unlabelled).sum()) - int(self_retrieval)
        self.k = min(k, self.bank)
        self.self_retrieval = self_retrieval
        self.heights = None if heights is None else torch.as_tensor(heights, dtype=torch.float64)
        self.sums = {"map_at_r": 0.0, "precision_at_k": 0.0, "hier_dist_at_k": 0.0}
        self.queries = 0

    def add(self, block: torch.Tensor, query_y: torch.Tensor, start: int) -> None:
        """Score the queries of one chunk; ``block`` holds their similarities to every reference."""
        for c in torch.unique(query_y[query_y != -1]).tolist():
            r = (int(self.counts[c]) if c < len(self.counts) else 0) - int(self.self_retrieval)
            if r < 1:
                continue  # no other reference of this class: MAP@R and precision@k are undefined
            rows = torch.nonzero(query_y == c).flatten()
            encoded = _encode(block[rows], self.ref_y == c, self.unlabelled if self.unlabelled.any() else None)
            if self.self_retrieval:
                encoded[torch.arange(len(rows)), rows + start] = -torch.inf
            rel = (_top(encoded.numpy(), max(r, self.k)).view(np.int32) & 1).astype(bool)
            self.sums["map_at_r"] += _sum_average_precision_at_r(rel[:, :r])
            self.sums["precision_at_k"] += float(rel[:, :self.k].mean(axis=1).sum())
            if self.heights is not None:
                neighbours = encoded.topk(self.k, dim=1, sorted=False).indices
                self.sums["hier_dist_at_k"] += float(self.heights[c, self.ref_y[neighbours]].mean(dim=1).sum())
            self.queries += len(rows)

    def result(self) -> dict[str, float | None]:
        keys = list(self.sums) if self.heights is not None else ["map_at_r", "precision_at_k"]
        return {key: self.sums[key] / self.queries if self.queries else None for key in keys}


def retrieval_metrics(
    queries: ArrayLike,
    query_labels: Mapping[str, ArrayLike],
    references: ArrayLike | None = None,
    reference_labels: Mapping[str, ArrayLike] | None = None,
    *,
    k: int = 20,
    heights: ArrayLike | None = None,
    height_level: str | None = None,
    chunk_size: int = 512,
) -> dict[str, dict[str, float | None]]:
    """Per level ``{"map_at_r", "precision_at_k"}`` of cosine-similarity retrieval, queries vs references.

    ``query_labels`` / ``reference_labels`` map each level to ``(N,)`` class ids (-1: unknown; such
    queries are skipped and such references left out of that level's bank). ``references=None`` searches
    the queries themselves, each query's own row excluded (leave-one-out). MAP@R of a query: with R its
    class's references in the bank, the mean over the first R ranks of precision-at-that-rank at the
    correct ones. precision@k: the share of the k most similar references that are of the query's class
    (k capped at the bank). Queries whose class has no reference are skipped (all ``None`` when no query
    is left). With ``heights`` (:func:`lca_heights`) and ``height_level`` (the finest level), that level
    also gets ``"hier_dist_at_k"``: the mean LCA height between a query's class and its k nearest
    references' classes.
    """
    q = F.normalize(torch.as_tensor(_numpy(queries), dtype=torch.float32), dim=1)
    self_retrieval = references is None
    refs = q if self_retrieval else F.normalize(torch.as_tensor(_numpy(references), dtype=torch.float32), dim=1)
    if q.ndim != 2 or refs.ndim != 2 or q.shape[1] != refs.shape[1]:
        raise MlclError(f"queries and references must be (N, D) with the same D, got {tuple(q.shape)} "
                        f"and {tuple(refs.shape)}")
    if k < 1:
        raise MlclError(f"retrieval_metrics: k must be >= 1, got {k}")
    qy = _labels(query_labels, len(q), "query")
    ry = qy if self_retrieval else _labels(reference_labels or {}, len(refs), "reference")
    if set(qy) != set(ry):
        raise MlclError(f"query and reference labels name different levels: {sorted(qy)} vs {sorted(ry)}")
    if height_level is not None and (heights is None or height_level not in qy):
        raise MlclError(f"height_level {height_level!r} needs heights and must be one of {sorted(qy)}")
    height_matrix = None if height_level is None else _numpy(heights)
    tallies = {level: _LevelTally(ry[level], self_retrieval, k, height_matrix if level == height_level else None)
               for level in qy}
    for start in range(0, len(q), chunk_size):
        block = q[start:start + chunk_size] @ refs.T
        for level, tally in tallies.items():
            tally.add(block, qy[level][start:start + chunk_size], start)
    results = {level: tally.result() for level, tally in tallies.items()}
    return results
