"""Label hierarchies: a tree of class names whose depths are the label levels of the heads.

A :class:`Hierarchy` maps a leaf (finest-level) label to its ancestor at every level, so data labelled
only at the finest level gets one target per head. Levels are ordered coarse -> fine; level 0 holds
the roots and the last level the leaves. A class id is an index into ``classes[level]``.

Trees are checked when built: every class has one parent, there is no cycle, class names are unique
across levels and all leaves sit at the same depth (or the caller asks for ``pad=True``, which repeats
a shallow leaf down to the finest level under its own name). Every problem is a
:class:`~mlcl.errors.DataError` that names the offending class.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mlcl.errors import DataError
from mlcl.user_input import did_you_mean, read_utf8

ParentMap = Mapping[str, "str | None"]


@dataclass
class LabelLevel:
    """One level of a hierarchy, or one label group of a multi-label problem."""

    name: str
    classes: list[str]
    multi_label: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _default_level_names(num_levels: int) -> list[str]:
    """["fine"], ["coarse", "fine"], or ["level_1", ..., "level_L"] for deeper trees."""
    if num_levels == 1:
        return ["fine"]
    if num_levels == 2:
        return ["coarse", "fine"]
    return [f"level_{k + 1}" for k in range(num_levels)]


def _check_node_names(parents: ParentMap) -> None:
    """Every child is a non-empty string and every parent a non-empty string or None."""
    for child, parent in parents.items():
        if not isinstance(child, str) or not child:
            raise DataError(f"hierarchy class names must be non-empty strings, got {child!r}")
        if parent is not None and (not isinstance(parent, str) or not parent):
            raise DataError(
                f"the parent of {child!r} must be a non-empty class name or null, got {parent!r}"
            )


def _nodes(parents: ParentMap) -> list[str]:
    """Every class named in the map (children, then parents that are not children), in map order."""
    nodes = dict.fromkeys(parents)
    nodes.update(dict.fromkeys(p for p in parents.values() if p is not None))
    return list(nodes)


def _check_unknown_parents(parents: ParentMap) -> None:
    """When roots are listed explicitly (parent None), a parent that is not listed is a typo."""
    if None not in parents.values():
        return
    for child, parent in parents.items():
        if parent is not None and parent not in parents:
            raise DataError(
                f"class {child!r} has parent {parent!r}, which is not in the hierarchy"
                f"{did_you_mean(parent, parents)}; list every class (roots with a null parent)"
            )


def _depths(parents: ParentMap) -> dict[str, int]:
    """The depth of every class (roots: 0); DataError naming the classes of a cycle."""
    depth: dict[str, int] = {}
    for start in _nodes(parents):
        path: list[str] = []
        on_path: set[str] = set()
        node: str | None = start
        while node is not None and node not in depth:
            if node in on_path:
                cycle = path[path.index(node):] + [node]
                raise DataError(
                    f"the hierarchy has a cycle: {' -> '.join(map(repr, cycle))} (child -> parent); "
                    "a class cannot be its own ancestor"
                )
            path.append(node)
            on_path.add(node)
            node = parents.get(node)
        base = -1 if node is None else depth[node]
        for offset, name in enumerate(reversed(path), 1):
            depth[name] = base + offset
    return depth


def _shallow_leaves(parents: ParentMap, depth: Mapping[str, int], pad: bool) -> list[str]:
    """Leaves above the deepest level; DataError naming one unless ``pad``."""
    has_child = {p for p in parents.values() if p is not None}
    leaves = [n for n in depth if n not in has_child]
    deepest = max(leaves, key=lambda n: depth[n])
    shallow = [n for n in leaves if depth[n] < depth[deepest]]
    if shallow and not pad:
        leaf = shallow[0]
        raise DataError(
            f"leaf {leaf!r} is at depth {depth[leaf]} but leaf {deepest!r} is at depth "
            f"{depth[deepest]}; all leaves must be on the finest level: add the missing levels, "
            "or pass pad=True to repeat a shallow leaf down to the finest level"
        )
    return shallow


def _check_level_names(level_names: Sequence[str], num_levels: int) -> list[str]:
    """Level names: one non-empty, unique string per level."""
    names = list(level_names)
    if len(names) != num_levels:
        raise DataError(
            f"the hierarchy has {num_levels} levels but {len(names)} level names were given "
            f"({names}); give one name per level, coarse -> fine"
        )
    if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
        raise DataError(f"level names must be unique non-empty strings, got {names}")
    return names


def _order_classes(
    computed: list[list[str]], level_names: list[str], given: Mapping[str, Sequence[str]] | None
) -> dict[str, list[str]]:
    """Sorted class lists per level, or the given order after checking it names the same classes."""
    if given is None:
        return {name: sorted(nodes) for name, nodes in zip(level_names, computed)}
    classes = {}
    for name, nodes in zip(level_names, computed):
        order = list(given.get(name, ()))
        if sorted(order) != sorted(nodes):
            missing = sorted(set(nodes) - set(order))
            extra = sorted(set(order) - set(nodes))
            raise DataError(
                f"the class list of level {name!r} does not match the tree: missing {missing}, "
                f"not in the tree {extra} (or listed twice)"
            )
        classes[name] = order
    return classes


class Hierarchy:
    """A label tree with one level per head, coarse -> fine.

    ``level_names`` lists the levels coarse -> fine and ``classes[level]`` the class names of a level
    (index = label id). Build one with :meth:`from_parents`, :meth:`from_level_columns`,
    :meth:`from_index` or :meth:`from_json`; the constructor takes the already-indexed tree.
    """

    def __init__(
        self,
        level_names: Sequence[str],
        classes: Mapping[str, Sequence[str]],
        parent_ids: Sequence[Sequence[int]],
    ) -> None:
        """``parent_ids[k - 1][i]`` is the id at level ``k - 1`` of the parent of class ``i`` at level ``k``."""
        self.level_names = _check_level_names(level_names, len(level_names))
        if not self.level_names:
            raise DataError("a hierarchy needs at least one level")
        missing = [name for name in self.level_names if name not in classes]
        if missing:
            raise DataError(f"no class list for level {missing[0]!r}")
        self.classes = {name: list(classes[name]) for name in self.level_names}
        if len(parent_ids) != self.num_levels - 1:
            raise DataError(f"expected {self.num_levels - 1} parent lists, got {len(parent_ids)}")
        self._ids = {name: self._index_of(name) for name in self.level_names}
        self._parents = [torch.full((self.num_classes(self.level_names[0]),), -1, dtype=torch.long)]
        for k, ids in enumerate(parent_ids, 1):
            self._parents.append(self._checked_parents(k, ids))
        self._paths = self._leaf_paths()

    def _index_of(self, level: str) -> dict[str, int]:
        names = self.classes[level]
        if not names:
            raise DataError(f"level {level!r} has no classes")
        index = {name: i for i, name in enumerate(names)}
        if len(index) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise DataError(f"class {twice!r} is listed twice at level {level!r}")
        return index

    def _checked_parents(self, k: int, ids: Sequence[int]) -> torch.Tensor:
        """Parent ids of level ``k`` as a tensor; every class above the leaves must have a child."""
        level, up = self.level_names[k], self.level_names[k - 1]
        parents = torch.as_tensor(list(ids), dtype=torch.long)
        if parents.shape != (self.num_classes(level),):
            raise DataError(f"level {level!r} has {self.num_classes(level)} classes but {len(parents)} parent ids")
        if len(parents) and (parents.min() < 0 or parents.max() >= self.num_classes(up)):
            raise DataError(f"a parent id of level {level!r} is outside 0..{self.num_classes(up) - 1}")
        childless = set(range(self.num_classes(up))) - set(parents.tolist())
        if childless:
            name = self.classes[up][min(childless)]
            raise DataError(f"class {name!r} at level {up!r} has no child at level {level!r}")
        return parents

    def _leaf_paths(self) -> torch.Tensor:
        """(num_leaves, L) table: the id of every leaf's ancestor at each level."""
        paths = torch.empty(self.num_classes(self.level_names[-1]), self.num_levels, dtype=torch.long)
        current = torch.arange(len(paths))
        for k in range(self.num_levels - 1, -1, -1):
            paths[:, k] = current
            current = self._parents[k][current]
        return paths

    # ----------------------------------------------------------------------------------- builders

    @classmethod
    def from_parents(
        cls,
        parents: Mapping[str, str | None],
        level_names: Sequence[str] | None = None,
        *,
        pad: bool = False,
        classes: Mapping[str, Sequence[str]] | None = None,
    ) -> Hierarchy:
        """A hierarchy from a child -> parent map.

        Roots map to ``None`` or are left out. When at least one root is listed explicitly, all must
        be, and a parent that is not a key is reported as unknown (this catches typos). All leaves must
        be at the same depth; ``pad=True`` instead repeats a shallow leaf, under the same name, on every
        deeper level. Level names default to ``["coarse", "fine"]`` for two levels (``["fine"]`` for
        one, ``level_1 .. level_L`` otherwise). Classes are sorted by name unless ``classes`` gives
        the order per level.
        """
        parents = dict(parents)
        if not parents:
            raise DataError("the hierarchy is empty: give at least one class")
        _check_node_names(parents)
        _check_unknown_parents(parents)
        depth = _depths(parents)
        shallow = _shallow_leaves(parents, depth, pad)
        num_levels = max(depth.values()) + 1
        names = _default_level_names(num_levels) if level_names is None else level_names
        names = _check_level_names(names, num_levels)
        per_level = [[n for n in depth if depth[n] == k] for k in range(num_levels)]
        for k in range(1, num_levels):
            per_level[k] += [leaf for leaf in shallow if depth[leaf] < k]
        ordered = _order_classes(per_level, names, classes)
        parent_ids = []
        for k in range(1, num_levels):
            up = {name: i for i, name in enumerate(ordered[names[k - 1]])}
            parent_ids.append(
                [up[parents[c] if depth[c] == k else c] for c in ordered[names[k]]]
            )
        return cls(names, ordered, parent_ids)

    @classmethod
    def from_level_columns(
        cls,
        paths: Sequence[Sequence[str]],
        level_names: Sequence[str],
        *,
        row_names: Sequence[str] | None = None,
    ) -> Hierarchy:
        """A hierarchy from rows that each give one path coarse -> fine (e.g. the label columns of a table).

        Rows that give a class two different parents, or use a name on two levels, are a DataError
        naming both rows; ``row_names[i]`` says how to name row ``i`` (default ``"path i+1"``).
        """
        names = _check_level_names(level_names, len(level_names))
        if not names:
            raise DataError("give at least one level name")
        parents: dict[str, str | None] = {}
        first_seen: dict[str, tuple[int, str]] = {}
        for r, path in enumerate(paths):
            where = row_names[r] if row_names is not None else f"path {r + 1}"
            path = list(path)
            if len(path) != len(names):
                raise DataError(f"{where}: expected {len(names)} labels ({', '.join(names)}), got {len(path)}")
            for k, name in enumerate(path):
                if not isinstance(name, str) or not name:
                    raise DataError(f"{where}: empty label at level {names[k]!r}; every level needs a label")
                parent = path[k - 1] if k else None
                if name not in first_seen:
                    first_seen[name] = (k, where)
                    parents[name] = parent
                    continue
                k0, where0 = first_seen[name]
                if k0 != k:
                    raise DataError(
                        f"class name {name!r} is used at level {names[k0]!r} ({where0}) and at level "
                        f"{names[k]!r} ({where}); class names must be unique across levels: rename one"
                    )
                if parents[name] != parent:
                    raise DataError(
                        f"class {name!r} (level {names[k]!r}) has two parents: {parents[name]!r} "
                        f"({where0}) and {parent!r} ({where}); a class needs exactly one parent: fix one row"
                    )
        if not parents:
            raise DataError("the hierarchy is empty: no rows given")
        return cls.from_parents(parents, names)

    @classmethod
    def from_index(
        cls,
        parent_of: Sequence[int],
        leaf_names: Sequence[str],
        parent_names: Sequence[str],
        level_names: Sequence[str] = ("coarse", "fine"),
    ) -> Hierarchy:
        """A two-level hierarchy from leaf id -> parent id (e.g. Fashion-MNIST ``FINE2COARSE``).

        The class order is the given one: leaf ``i`` is ``leaf_names[i]``, parent ``j`` is
        ``parent_names[j]``.
        """
        leaves, roots = list(leaf_names), list(parent_names)
        ids = [operator.index(p) for p in parent_of]
        if len(ids) != len(leaves):
            raise DataError(f"{len(ids)} parent ids for {len(leaves)} leaf names; give one per leaf")
        for leaf, p in zip(leaves, ids):
            if not 0 <= p < len(roots):
                raise DataError(f"leaf {leaf!r} has parent id {p}, outside 0..{len(roots) - 1}")
        both = sorted(set(leaves) & set(roots))
        if both:
            raise DataError(
                f"class name {both[0]!r} is both a leaf and a parent; class names must be unique "
                "across levels: rename one"
            )
        classes = dict(zip(_check_level_names(level_names, 2), (roots, leaves)))
        return cls(list(level_names), classes, [ids])

    @classmethod
    def from_json(cls, path: str | Path, *, pad: bool = False) -> Hierarchy:
        """Read ``{"levels": [...], "parents": {child: parent}}`` or a plain ``{child: parent}`` object.

        The structured form may also hold ``"classes": {level: [names]}`` (the class order, as written
        by :meth:`to_json`) and ``"pad": true``. A key listed twice in one object is an error (it would
        give a class two parents). Errors name the file.
        """
        text = read_utf8(path, "hierarchy file")
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys)
            if not isinstance(data, dict):
                raise DataError(f"expected a JSON object, got {type(data).__name__}")
            parents, levels, classes, pad_flag = _parse_hierarchy_json(data)
            return cls.from_parents(parents, levels, pad=pad or pad_flag, classes=classes)
        except RecursionError:
            raise DataError(f"{path}: JSON nested too deeply to be a hierarchy") from None
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}, line {err.lineno}, column {err.colno}: not valid JSON ({err.msg})"
            ) from None
        except DataError as err:
            raise DataError(f"{path}: {err}") from None

    def to_json(self, path: str | Path) -> None:
        """Write the structured JSON form (levels, class order, parents) that :meth:`from_json` reads back."""
        parents: dict[str, str | None] = dict.fromkeys(self.classes[self.level_names[0]])
        for k in range(1, self.num_levels):
            up = self.classes[self.level_names[k - 1]]
            for name, p in zip(self.classes[self.level_names[k]], self._parents[k].tolist()):
                if up[p] != name:  # a padded copy of a shallow leaf is implied by "pad"
                    parents[name] = up[p]
        data: dict[str, object] = {"levels": self.level_names, "classes": self.classes, "parents": parents}
        if self.is_padded:
            data["pad"] = True
        Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    # ------------------------------------------------------------------------------------ queries

    @property
    def num_levels(self) -> int:
        return len(self.level_names)

    @property
    def is_padded(self) -> bool:
        """Whether some shallow leaf was repeated down to the finest level (``pad=True``)."""
        return any(
            self.classes[self.level_names[k - 1]][p] == name
            for k in range(1, self.num_levels)
            for name, p in zip(self.classes[self.level_names[k]], self._parents[k].tolist())
        )

    def level_index(self, level: str) -> int:
        """Position of ``level`` in ``level_names`` (0 = coarsest); DataError for an unknown level."""
        if level not in self._ids:
            raise DataError(
                f"unknown level {level!r}{did_you_mean(level, self.level_names)}; "
                f"the levels are {self.level_names}"
            )
        return self.level_names.index(level)

    def num_classes(self, level: str) -> int:
        return len(self.classes[self.level_names[self.level_index(level)]])

    def parent_index(self, level: str) -> torch.Tensor:
        """(num_classes(level),) long: class id at ``level`` -> its parent's id one level up (-1 at the top)."""
        return self._parents[self.level_index(level)].clone()

    def leaf_to_levels(self, leaf_labels: torch.Tensor) -> torch.Tensor:
        """(N,) leaf ids -> (N, L) long ids at every level, coarse -> fine; -1 stays -1 in every column."""
        labels = torch.as_tensor(leaf_labels)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise DataError(f"leaf labels must be integer class ids, got dtype {labels.dtype}")
        labels = labels.long()
        num_leaves = len(self._paths)
        bad = (labels < -1) | (labels >= num_leaves)
        if bad.any():
            raise DataError(
                f"leaf label {labels[bad][0].item()} is out of range: level {self.level_names[-1]!r} "
                f"has ids 0..{num_leaves - 1} (-1 = unknown)"
            )
        out = self._paths.to(labels.device)[labels.clamp(min=0)]
        out[labels < 0] = -1
        return out

    def encode(self, level: str, names: Sequence[str]) -> torch.Tensor:
        """Class names at ``level`` -> (len(names),) long ids; DataError naming an unknown label."""
        if isinstance(names, str):
            raise DataError(f"encode expects a list of class names, got the string {names!r}")
        index = self._ids[self.level_names[self.level_index(level)]]
        ids = []
        for name in names:
            if name not in index:
                raise DataError(
                    f"unknown label {name!r} at level {level!r}{did_you_mean(name, index)}; "
                    f"it is not in the hierarchy ({len(index)} classes at this level)"
                )
            ids.append(index[name])
        return torch.tensor(ids, dtype=torch.long)

    def label_levels(self) -> list[LabelLevel]:
        """One single-label :class:`LabelLevel` per level, coarse -> fine."""
        return [LabelLevel(name, list(self.classes[name])) for name in self.level_names]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Hierarchy):
            return NotImplemented
        return (
            self.level_names == other.level_names
            and self.classes == other.classes
            and all(torch.equal(a, b) for a, b in zip(self._parents, other._parents))
        )

    __hash__ = None  # type: ignore[assignment]  # mutable: compared by value

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}: {self.num_classes(name)}" for name in self.level_names)
        return f"Hierarchy({sizes})"


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """json object hook: a key listed twice is an error, not a silent overwrite."""
    data: dict[str, object] = {}
    for key, value in pairs:
        if key in data:
            raise DataError(
                f"key {key!r} is listed twice in one object ({data[key]!r} and {value!r}); "
                "a class has exactly one parent: keep one entry"
            )
        data[key] = value
    return data


def _parse_hierarchy_json(
    data: dict,
) -> tuple[dict, list[str] | None, dict[str, list[str]] | None, bool]:
    """(parents, levels, classes, pad) from a parsed hierarchy JSON object, types checked."""
    if not isinstance(data.get("parents"), dict):
        return data, None, None, False
    unknown = sorted(set(data) - {"levels", "parents", "classes", "pad"})
    if unknown:
        raise DataError(f"unknown key {unknown[0]!r}; expected 'levels', 'parents', 'classes', 'pad'")
    levels, classes, pad = data.get("levels"), data.get("classes"), data.get("pad", False)
    if levels is not None and not _is_str_list(levels):
        raise DataError(f"'levels' must be a list of level names, got {levels!r}")
    if classes is not None and not (
        isinstance(classes, dict) and all(_is_str_list(v) for v in classes.values())
    ):
        raise DataError("'classes' must map each level name to a list of class names")
    if not isinstance(pad, bool):
        raise DataError(f"'pad' must be true or false, got {pad!r}")
    return data["parents"], levels, classes, pad


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
