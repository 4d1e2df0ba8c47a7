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


_EXCLUDED = np.iinfo(np.int32).min


def _class_masks(ref_y: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """``(keep, put)`` int32 masks over the references for queries of class ``c`` (see :func:`_rank_keys`)."""
    unlabelled = ref_y == -1
    keep = np.where(unlabelled, np.int32(0), np.int32(~1))
    put = np.where(unlabelled, np.int32(_EXCLUDED), (ref_y != c).astype(np.int32))
    return keep, put


def _rank_keys(shifted: np.ndarray, keep: np.ndarray, put: np.ndarray) -> np.ndarray:
    """int32 keys that order like the similarities, with each reference's relevance in the lowest bit (0:
    of the query's class) and unlabelled references at the minimum; ``shifted`` (similarities + 2, so all
    positive: their float32 bits then order like the values) is overwritten.

    Sorting the keys alone carries the relevance along, several times faster than an argsort. The lowest
    bit of the similarity is given up for it, so similarities closer than about 5e-7 count as tied, and
    ties rank the other classes first: a collapsed embedding (all similarities equal) scores 0, not 1.
    """
    keys = shifted.view(np.int32)
    keys &= keep
    keys |= put
    return keys


def _top(keys: np.ndarray, depth: int) -> np.ndarray:
    """``(B, depth)``: each row's ``depth`` largest keys, largest first (``keys`` is partitioned in place)."""
    keys.partition(keys.shape[1] - depth, axis=1)
    return np.sort(keys[:, keys.shape[1] - depth:], axis=1)[:, ::-1]


def _sum_average_precision_at_r(rel: np.ndarray) -> float:
    """Sum over rows of ``(1/R) sum_i rel_i * precision@i`` for ``(B, R)`` relevance in rank order."""
    ranks = np.nonzero(rel)[1]  # row-major: ranks ascend within each row
    counts = rel.sum(axis=1)
    # how many relevant items each row has up to and including this rank
    hits = np.arange(len(ranks)) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    return float((hits / (ranks + 1)).sum() / rel.shape[1])


def _labels(labels: Mapping[str, ArrayLike], n: int, what: str) -> dict[str, np.ndarray]:
    out = {}
    for level, y in labels.items():
        y = _numpy(y).astype(np.int64)
        if y.shape != (n,):
            raise MlclError(f"{what} labels of level {level!r} must have shape ({n},), got {y.shape}")
        out[level] = y
    return out


class _LevelTally:
    """Running sums of one level's per-query MAP@R, precision@k and (optionally) hierarchical distance@k."""

    def __init__(self, ref_y: np.ndarray, self_retrieval: bool, k: int, heights: np.ndarray | None) -> None:
        self.ref_y = ref_y
        labelled = ref_y != -1
        self.counts = np.bincount(ref_y[labelled], minlength=1)
        self.bank = int(labelled.sum()) - int(self_retrieval)
        self.k = min(k, self.bank)
        self.self_retrieval = self_retrieval
        self.heights = None if heights is None else np.asarray(heights, dtype=np.float64)
        self.sums = {"map_at_r": 0.0, "precision_at_k": 0.0, "hier_dist_at_k": 0.0}
        self.queries = 0

    def add(self, block: np.ndarray, query_y: np.ndarray, start: int) -> None:
        """Score the queries of one chunk; ``block`` holds their similarities to every reference, plus 2."""
        for c in np.unique(query_y[query_y != -1]).tolist():
            r = (int(self.counts[c]) if c < len(self.counts) else 0) - int(self.self_retrieval)
            if r < 1:
                continue  # no other reference of this class: MAP@R and precision@k are undefined
            rows = np.flatnonzero(query_y == c)
            keys = _rank_keys(block[rows], *_class_masks(self.ref_y, c))
            if self.self_retrieval:
                keys[np.arange(len(rows)), rows + start] = _EXCLUDED
            if self.heights is not None:
                neighbours = torch.from_numpy(keys).topk(self.k, dim=1, sorted=False).indices.numpy()
                self.sums["hier_dist_at_k"] += float(self.heights[c, self.ref_y[neighbours]].mean(axis=1).sum())
            rel = (_top(keys, max(r, self.k)) & 1) == 0
            self.sums["map_at_r"] += _sum_average_precision_at_r(rel[:, :r])
            self.sums["precision_at_k"] += float(rel[:, :self.k].mean(axis=1).sum())
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
        block = (q[start:start + chunk_size] @ refs.T).add_(2.0).numpy()
        for level, tally in tallies.items():
            tally.add(block, qy[level][start:start + chunk_size], start)
    results = {level: tally.result() for level, tally in tallies.items()}
    return results
