"""WordNet noun glosses as a three-level text hierarchy: ``wordnet-nouns`` with a finer level below it.

The rows and texts are exactly those of ``wordnet-nouns`` with the same options: ``coarse`` is its
coarse level (lexicographer file), ``mid`` its fine level (the ancestor at ``depth`` on the first
hypernym path, split by lexicographer file), and ``fine`` is new. By default the train / val / test
parts are also those of ``wordnet-nouns`` (stratified on ``mid``, its finest level), so results on the
two datasets compare row for row and cached text embeddings of one serve the other; ``stratify="fine"``
stratifies them on the new level instead.

WordNet lets a synset have several hypernyms; like ``wordnet-nouns``, every synset follows only its
first hypernym pointer, so each synset has one path to the root and the levels form a strict tree.

The fine classes of a mid class cut its first-hypernym subtree bottom-up: a node below the mid ancestor
becomes a fine class as soon as it gathers at least ``fine_min_class_size`` synsets (itself and its
descendants that are not in a deeper fine class), so fine classes sit as deep as their size allows. The
synsets left over at the mid ancestor form the class ``<mid class> (other)``; when fewer than
``fine_min_class_size`` are left over, the smallest fine classes right below the mid ancestor (no other
fine class above them) are merged into it until it is large enough. A mid class too small to split has
the one fine class ``<mid class> (all)``. Other fine classes are named after their node's first lemma,
with the lexicographer file, or else the synset offset, appended where names would clash.

With the defaults this gives 22 coarse / 156 mid / 572 fine classes over the 63,563 synsets of
``wordnet-nouns``; 99 mid classes are too small to split.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import torch

from mlcl.data.types import Dataset
from mlcl.data.wordnet import NounRows, lemma_names, noun_rows, split_dataset, unique_names
from mlcl.errors import DataError
from mlcl.hierarchy import Hierarchy

NAME = "wordnet-nouns-deep"
LEVELS = ("coarse", "mid", "fine")
STRATIFY = ("mid", "fine")  # the levels the train / val / test parts may be stratified on


def _cut(
    node: int, rows: list[int], depth: int, paths: dict[int, tuple[int, ...]], min_size: int
) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """Fine classes ``(node, rows)`` in the subtree of ``node`` (at ``depth``), and the rows left for an
    ancestor because no node of at least ``min_size`` rows took them."""
    below: dict[int, list[int]] = defaultdict(list)
    left = []
    for row in rows:
        path = paths[row]
        (below[path[depth + 1]] if len(path) > depth + 1 else left).append(row)
    classes = []
    for child, child_rows in below.items():
        found, rest = _cut(child, child_rows, depth + 1, paths, min_size)
        classes += found
        left += rest
    if len(left) >= min_size:
        return [*classes, (node, left)], []
    return classes, left


def fine_cut(
    ancestor: int, rows: list[int], depth: int, paths: dict[int, tuple[int, ...]], min_size: int
) -> list[tuple[int, list[int]]]:
    """The fine classes ``(node, rows)`` of one mid class: ``rows`` are synsets whose first hypernym
    path passes through ``ancestor`` at ``depth``. Every row is in the class of the deepest class node on
    its path; the class of ``ancestor`` itself holds the rows left over, and has at least ``min_size``
    rows unless ``rows`` has fewer."""
    classes, left = _cut(ancestor, rows, depth, paths, min_size)
    while left and classes and len(left) < min_size:  # too few left: merge the smallest top classes into it
        nodes = {node for node, _ in classes}
        top = [c for c in classes if nodes.isdisjoint(paths[c[0]][depth + 1:-1])]
        smallest = min(top, key=lambda c: len(c[1]))
        classes.remove(smallest)
        left = left + smallest[1]
    return [*classes, (ancestor, left)] if left else classes


def _fine_level(rows: NounRows, depth: int, min_size: int) -> tuple[list[str], list[int], dict[int, int]]:
    """Fine class names, each one's mid parent, and every row's fine class by synset offset."""
    classes = []  # (mid, is the mid's own class, node, members), in the order of the fine ids
    for mid, (_, ancestor, members) in enumerate(rows.classes):
        found = fine_cut(ancestor, members, depth, rows.paths, min_size)
        classes += sorted(((mid, node == ancestor, node, found_rows) for node, found_rows in found),
                          key=lambda c: (c[1], rows.synsets[c[2]].lemmas[0], c[2]))
    names = lemma_names(rows.synsets, [(rows.classes[mid][0], node, members) for mid, _, node, members in classes])
    alone = Counter(mid for mid, _, _, _ in classes)
    names = [f"{rows.class_names[mid]} ({'all' if alone[mid] == 1 else 'other'})" if own else name
             for name, (mid, own, _, _) in zip(names, classes)]
    names = unique_names(names, [node for _, _, node, _ in classes], frozenset(rows.class_names))
    fine_of = {offset: index for index, (_, _, _, members) in enumerate(classes) for offset in members}
    return names, [mid for mid, _, _, _ in classes], fine_of


def load_wordnet_nouns_deep(
    depth: int = 5,
    min_class_size: int = 50,
    fine_min_class_size: int = 50,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    text: str = "gloss",
    stratify: str = "mid",
    data_dir: str | Path | None = None,
) -> Dataset:
    """WordNet noun glosses with levels ``coarse`` (lexicographer file), ``mid`` (ancestor at ``depth``,
    the fine level of ``wordnet-nouns``) and ``fine`` (the deepest ancestors holding at least
    ``fine_min_class_size`` synsets each).

    ``depth``, ``min_class_size``, ``test_fraction``, ``val_fraction``, ``seed`` and ``text`` mean what
    they mean for ``wordnet-nouns`` and give the same rows; ``stratify="mid"`` also gives the same train /
    val / test parts, ``stratify="fine"`` parts stratified on the fine classes instead.
    """
    if fine_min_class_size < 1:
        raise DataError(f"{NAME}: expected fine_min_class_size >= 1, got {fine_min_class_size}")
    if stratify not in STRATIFY:
        raise DataError(f"{NAME}: stratify must be one of {', '.join(STRATIFY)}, got {stratify!r}")
    rows = noun_rows(depth, min_class_size, None, seed, text, data_dir, NAME)
    fine_names, mid_of_fine, fine_of = _fine_level(rows, depth, fine_min_class_size)
    hierarchy = Hierarchy(
        LEVELS,
        {"coarse": rows.coarse_names, "mid": rows.class_names, "fine": fine_names},
        [rows.parent_of, mid_of_fine],
    )
    mid = torch.tensor(rows.fine)
    fine = torch.tensor([fine_of[offset] for offset in rows.offsets])
    targets = {"coarse": torch.tensor(rows.parent_of)[mid], "mid": mid, "fine": fine}
    return split_dataset(NAME, rows.texts, targets, targets[stratify], hierarchy, test_fraction, val_fraction, seed)
