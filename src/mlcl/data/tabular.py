"""A user's labelled table: CSV (with a header row) or JSONL (one JSON object per line).

:func:`load_table` reads the inputs and the labels of such a file in one call. Inputs are a text
column, an image-path column, or numeric feature columns. Labels are one column per hierarchy level,
one leaf column plus a hierarchy, or one multi-label column (optionally split into label groups).
An empty level cell means the label is unknown at that level (-1): a row may stop at any level, and
its coarser labels follow from its finest one through the hierarchy.

Every problem in the file is a one-line :class:`~mlcl.errors.DataError` naming the file, the line
(1-based, as an editor shows it) and the column, what was expected, and how to fix it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mlcl.data.image_folder import IMAGE_SUFFIXES, load_images
from mlcl.data.types import LabeledSplit, LabelLevel
from mlcl.errors import DataError
from mlcl.hierarchy import Hierarchy
from mlcl.user_input import did_you_mean, read_utf8

InputKind = Literal["auto", "text", "image", "features"]
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_MISSING = object()


def _short(value: object, limit: int = 60) -> str:
    """repr of a cell value, cut to ``limit`` characters so an error stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class _Table:
    """The parsed rows of a data file: (line number, column -> value)."""

    path: Path
    columns: list[str]
    rows: list[tuple[int, dict[str, object]]]
    checked_header: bool

    def where(self, line: int, column: str) -> str:
        return f"{self.path}, line {line}, column {column!r}"

    def require(self, columns: Sequence[str]) -> None:
        """For a CSV header: DataError naming a missing column and listing the available ones."""
        for column in columns:
            if column not in self.columns:
                raise DataError(
                    f"{self.path}: no column {column!r}{did_you_mean(column, self.columns)}; "
                    f"available columns: {', '.join(map(repr, self.columns))}"
                )

    def cell(self, line: int, values: dict[str, object], column: str) -> object:
        value = values.get(column, _MISSING)
        if value is _MISSING:
            raise DataError(
                f"{self.path}, line {line}: no column {column!r}{did_you_mean(column, values)}; "
                f"keys on this line: {', '.join(map(repr, values)) or '(none)'}"
            )
        return value

    def column(self, column: str) -> list[tuple[str, object]]:
        """(where, value) for every row of one column."""
        return [(self.where(line, column), self.cell(line, values, column)) for line, values in self.rows]


# ------------------------------------------------------------------------------------- parsing


def _read_csv(path: Path) -> _Table:
    """Parse a CSV file with a header row; blank lines are skipped, ragged rows are errors."""
    # strict: an unclosed quote is an error, not a cell that swallows the rest of the file
    reader = csv.reader(io.StringIO(read_utf8(path, "data file"), newline=""), strict=True)
    records: list[tuple[int, list[str]]] = []
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            if "unexpected end of data" in str(err):  # a quote never closed: it swallowed the rest of the file
                raise DataError(f"{path}, line {start}: a quote opened in the row that starts here is never closed; "
                                "close the quote (a quote inside a field is written twice: \"\")") from None
            raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({err})") from None
        if record:
            records.append((start, record))
    if not records:
        raise DataError(f"{path} is empty; expected a header row, then one row per sample")
    (_, header), body = records[0], records[1:]
    header = [name.strip() for name in header]
    twice = [name for name in header if name and header.count(name) > 1]
    if twice:
        raise DataError(f"{path}, line {records[0][0]}: column {twice[0]!r} appears twice in the header; rename one")
    if not body:
        raise DataError(f"{path} has a header but no data rows")
    for line, record in body:
        if len(record) != len(header):
            raise DataError(
                f"{path}, line {line}: {len(record)} fields but the header has {len(header)}; "
                "quote fields that contain commas"
            )
    return _Table(path, header, [(line, dict(zip(header, record))) for line, record in body], True)


def _read_jsonl(path: Path) -> _Table:
    """Parse a JSONL file: one JSON object per non-blank line."""
    rows: list[tuple[int, dict[str, object]]] = []
    for line, text in enumerate(read_utf8(path, "data file").split("\n"), 1):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}, line {line}: not valid JSON ({err.msg.removesuffix(' at')} at column {err.colno}); "
                "each line must be one JSON object"
            ) from None
        except RecursionError:
            raise DataError(f"{path}, line {line}: JSON nested too deeply") from None
        if not isinstance(value, dict):
            raise DataError(f"{path}, line {line}: expected a JSON object {{...}}, got {type(value).__name__}")
        rows.append((line, value))
    if not rows:
        raise DataError(f"{path} is empty; expected one JSON object per line")
    return _Table(path, list(rows[0][1]), rows, False)


def _read_table(path: Path) -> _Table:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .csv or .jsonl")


# ------------------------------------------------------------------------------------ cell values


def _number(where: str, value: object) -> float:
    """A finite float32-representable number from a JSON number or a numeric string."""
    if isinstance(value, str) and not value.strip():
        raise DataError(f"{where}: empty value; every feature needs a number")
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        number = float(value)
    except (ValueError, OverflowError):
        raise DataError(f"{where}: expected a number, got {_short(value)}") from None
    if not math.isfinite(number) or abs(number) > _FLOAT32_MAX:
        raise DataError(f"{where}: {_short(value)} is not a finite float32 number; fill in or drop the value")
    return number


def _label(where: str, value: object) -> str:
    """A label: a non-empty string (surrounding spaces dropped) or an integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"{where}: expected a label (a string), got {_short(value)}")
    label = value.strip()
    if not label:
        raise DataError(f"{where}: empty label; give every row a label (or drop the row)")
    return label


def _label_list(where: str, value: object, separator: str) -> list[str]:
    """The labels of a multi-label cell: a ``separator``-joined string or a JSON list."""
    if isinstance(value, list):
        labels = [_label(where, v) for v in value]
    elif isinstance(value, str):
        parts = value.split(separator)
        if any(not p.strip() for p in parts):
            raise DataError(
                f"{where}: empty label in {_short(value)}; separate labels with a single {separator!r}"
            )
        labels = [p.strip() for p in parts]
    else:
        raise DataError(f"{where}: expected labels joined by {separator!r} or a list, got {_short(value)}")
    if not labels:
        raise DataError(f"{where}: empty label list; give every row at least one label")
    return list(dict.fromkeys(labels))


def _text(where: str, value: object) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: expected text (a string), got {_short(value)}")
    if not value.strip():
        raise DataError(f"{where}: empty text; fill it in or drop the row")
    return value


# ------------------------------------------------------------------------------------------ inputs


def _input_kind(table: _Table, columns: list[str]) -> InputKind:
    """Guess from the first row: several columns or numbers -> features, an image path -> image, else text."""
    if len(columns) > 1:
        return "features"
    line, values = table.rows[0]
    value = table.cell(line, values, columns[0])
    if isinstance(value, list) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return "features"
    if isinstance(value, str):
        if value.strip().lower().endswith(IMAGE_SUFFIXES):
            return "image"
        try:
            float(value)
            return "features"
        except ValueError:
            pass
    return "text"


def _features(table: _Table, columns: list[str]) -> torch.Tensor:
    """(N, F) float32 from numeric columns, or from one column of JSON number lists."""
    rows = []
    for line, values in table.rows:
        cells = [(table.where(line, c), table.cell(line, values, c)) for c in columns]
        if len(cells) == 1 and isinstance(cells[0][1], list):
            cells = [(cells[0][0], v) for v in cells[0][1]]
        vector = [_number(where, value) for where, value in cells]
        if rows and len(vector) != len(rows[0]):
            raise DataError(
                f"{table.where(line, columns[0])}: {len(vector)} features but the first row has "
                f"{len(rows[0])}; every row needs the same number"
            )
        rows.append(vector)
    if not rows[0]:
        raise DataError(f"{table.where(table.rows[0][0], columns[0])}: empty feature list")
    return torch.tensor(rows, dtype=torch.float32)


def _images(table: _Table, column: str, size: int | None, grayscale: bool | None) -> torch.Tensor:
    """Images from a column of paths (relative to the data file's folder)."""
    sources, paths = [], []
    for where, value in table.column(column):
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: expected an image path, got {_short(value)}")
        sources.append(where)
        paths.append(table.path.parent / value.strip())
    return load_images(paths, size=size, grayscale=grayscale, sources=sources)


def _inputs(
    table: _Table, columns: list[str], kind: InputKind, size: int | None, grayscale: bool | None
) -> torch.Tensor | list[str]:
    guessed = kind == "auto"
    if guessed:
        kind = _input_kind(table, columns)
    if kind == "features":
        try:
            return _features(table, columns)
        except DataError as err:
            if guessed and len(columns) == 1:
                raise DataError(f"{err} (column {columns[0]!r} was read as numbers because its first value is one; "
                                "set input_kind: text if it holds text)") from None
            raise
    if len(columns) != 1:
        raise DataError(f"a {kind} input is one column, got {columns}")
    if kind == "image":
        return _images(table, columns[0], size, grayscale)
    if kind == "text":
        return [_text(where, value) for where, value in table.column(columns[0])]
    raise DataError(f"unknown input kind {kind!r}; use 'auto', 'text', 'image' or 'features'")


# ------------------------------------------------------------------------------------------ labels


def _level_cells(table: _Table, columns: list[str]) -> list[list[tuple[str, str | None]]]:
    """Per row, (where, label) of every label column, coarse -> fine; None where the level is unknown: an
    empty cell, JSON null or a JSONL key the line lacks. A row unknown at every level is an error."""
    rows = []
    for line, values in table.rows:
        cells = []
        for column in columns:
            where, value = table.where(line, column), values.get(column, _MISSING)
            empty = value is None or value is _MISSING or (isinstance(value, str) and not value.strip())
            cells.append((where, None if empty else _label(where, value)))
        if all(label is None for _, label in cells):
            for column in columns:
                table.cell(line, values, column)  # a key this line lacks: name it and the keys it has
            at_every = " at every level" if len(columns) > 1 else ""
            raise DataError(f"{cells[0][0]}: empty label{at_every}; give every row a label (or drop the row)")
        rows.append(cells)
    return rows


def _hierarchy_labels(
    columns: list[str], cells: list[list[tuple[str, str | None]]], hierarchy: Hierarchy, derived: bool
) -> dict[str, torch.Tensor]:
    """Targets for every level: each row's finest given label and its ancestors in the hierarchy (-1 below
    it); the coarser labels the row gives must agree. ``derived``: the hierarchy was read off the rows."""
    if len(columns) not in (1, hierarchy.num_levels):
        raise DataError(
            f"the hierarchy has {hierarchy.num_levels} levels ({', '.join(hierarchy.level_names)}) "
            f"but {len(columns)} label columns were given; give one per level, or only the leaf column"
        )
    names = hierarchy.level_names
    offset = hierarchy.num_levels - len(columns)  # the leaf column alone is the finest level
    index = [{name: i for i, name in enumerate(hierarchy.classes[level])} for level in names]
    parents = [hierarchy.parent_index(level).tolist() for level in names]
    ids = torch.full((len(cells), hierarchy.num_levels), -1, dtype=torch.long)
    for row, row_cells in enumerate(cells):
        deepest = max(k for k, (_, label) in enumerate(row_cells) if label is not None)
        where, label = row_cells[deepest]
        level = deepest + offset
        if label not in index[level]:
            if derived:
                raise DataError(
                    f"{where}: no row labels {label!r} at every level ({', '.join(columns)}), so its place in the "
                    f"hierarchy is unknown; fill in the other levels of this row (or of another {label!r} row)"
                )
            raise DataError(
                f"{where}: label {label!r} is not in the hierarchy{did_you_mean(label, index[level])}; "
                "fix the label or add it to the hierarchy"
            )
        current = index[level][label]
        for k in range(level, -1, -1):
            ids[row, k] = current
            current = parents[k][current]
        for k, (where_k, given) in enumerate(row_cells[:deepest]):
            expected = hierarchy.classes[names[k + offset]][int(ids[row, k + offset])]
            if given is not None and given != expected:
                raise DataError(
                    f"{where_k}: {given!r}, but the hierarchy puts {label!r} under "
                    f"{expected!r}; fix the row or the hierarchy"
                )
    return {name: ids[:, k].contiguous() for k, name in enumerate(names)}


def _columns_hierarchy(table: _Table, columns: list[str], cells: list[list[tuple[str, str | None]]]) -> Hierarchy:
    """The hierarchy spelled out by one label column per level (coarse -> fine), read off the rows that
    are labelled at every level."""
    complete = [(r, [label for _, label in row]) for r, row in enumerate(cells) if all(c[1] for c in row)]
    if not complete:
        raise DataError(f"{table.path}: no row is labelled at every level ({', '.join(columns)}); the hierarchy "
                        "is read off such rows: label some rows at every level, or give a hierarchy")
    rows = [f"{table.path}, line {table.rows[r][0]}" for r, _ in complete]
    return Hierarchy.from_level_columns([path for _, path in complete], columns, row_names=rows)


def _multi_label(
    table: _Table, column: str, groups: Mapping[str, str] | None, separator: str
) -> tuple[dict[str, torch.Tensor], list[LabelLevel]]:
    """Multi-hot targets: one level named after the column, or one level per label group."""
    cells = [(where, _label_list(where, value, separator)) for where, value in table.column(column)]
    if groups is None:
        levels = [LabelLevel(column, sorted({label for _, labels in cells for label in labels}), True)]
        group_of = dict.fromkeys(levels[0].classes, column)
    else:
        group_of = _check_groups(groups)
        names = dict.fromkeys(group_of.values())
        levels = [LabelLevel(g, [label for label in group_of if group_of[label] == g], True) for g in names]
    position = {level.name: {c: i for i, c in enumerate(level.classes)} for level in levels}
    hits: dict[str, tuple[list[int], list[int]]] = {level.name: ([], []) for level in levels}
    for row, (where, labels) in enumerate(cells):
        for label in labels:
            if label not in group_of:
                raise DataError(
                    f"{where}: label {label!r} is in no group{did_you_mean(label, group_of)}; "
                    "add it to groups"
                )
            group = group_of[label]
            hits[group][0].append(row)
            hits[group][1].append(position[group][label])
    targets = {level.name: torch.zeros(len(cells), level.num_classes) for level in levels}
    for name, (rows, cols) in hits.items():
        targets[name][rows, cols] = 1.0
    return targets, levels


def _check_groups(groups: Mapping[str, str]) -> dict[str, str]:
    """label -> group name, both non-empty strings."""
    checked = dict(groups)
    for label, group in checked.items():
        if not isinstance(label, str) or not label or not isinstance(group, str) or not group:
            raise DataError(f"groups must map label names to group names, got {label!r}: {group!r}")
    if not checked:
        raise DataError("groups is empty; map every label to a group name")
    return checked


# -------------------------------------------------------------------------------------------- API


def _as_list(columns: str | Sequence[str], what: str) -> list[str]:
    names = [columns] if isinstance(columns, str) else list(columns)
    if not names or any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
        raise DataError(f"{what} must name one or more distinct columns, got {columns!r}")
    return names


def _check_label_args(
    levels: Sequence[str] | None,
    leaf: str | None,
    hierarchy: object,
    multi_label: str | None,
    groups: object,
) -> None:
    given = {"levels": levels, "leaf": leaf, "multi_label": multi_label}
    chosen = [name for name, arg in given.items() if arg is not None]
    if len(chosen) != 1:
        raise DataError(f"give exactly one of levels=, leaf= or multi_label= (got {chosen or 'none'})")
    if leaf is not None and hierarchy is None:
        raise DataError("leaf= needs hierarchy= (a Hierarchy or a JSON file); for flat labels use levels=[column]")
    if multi_label is not None and hierarchy is not None:
        raise DataError("hierarchy= goes with levels= or leaf=, not with multi_label=")
    if groups is not None and multi_label is None:
        raise DataError("groups= goes with multi_label=")
    if hierarchy is not None and not isinstance(hierarchy, (Hierarchy, str, Path)):
        raise DataError(f"hierarchy= must be a Hierarchy or a JSON file path, got {type(hierarchy).__name__}")


def load_table(
    path: str | Path,
    *,
    input: str | Sequence[str],
    levels: Sequence[str] | None = None,
    leaf: str | None = None,
    hierarchy: Hierarchy | str | Path | None = None,
    multi_label: str | None = None,
    groups: Mapping[str, str] | None = None,
    separator: str = "|",
    input_kind: InputKind = "auto",
    size: int | None = None,
    grayscale: bool | None = None,
) -> tuple[LabeledSplit, list[LabelLevel], Hierarchy | None]:
    """Load a CSV (``.csv``, header row) or JSONL (``.jsonl``/``.ndjson``) file of labelled samples.

    Inputs (``input``): one text column -> list[str]; one column of image paths (relative to the
    file's folder) -> float32 ``(N, C, H, W)`` in [0, 1] (``size`` / ``grayscale`` as in
    :func:`mlcl.data.image_folder.load_images`); several numeric columns, or in JSONL one column of
    number lists -> float32 ``(N, F)``. ``input_kind="auto"`` decides from the first row: several
    columns, a number or a list -> features; a path ending in .png/.jpg/.jpeg -> image; else text.

    Labels, exactly one of:

    * ``levels=[coarse_column, ..., fine_column]``: one column per level; the hierarchy is read off
      the rows (level names = column names, classes sorted), or checked against ``hierarchy``;
    * ``leaf=column`` with ``hierarchy``: the finest label; coarser levels come from the hierarchy;
    * ``multi_label=column``: labels joined by ``separator`` (or a JSON list); one multi-hot level
      named after the column, or with ``groups`` (label -> group) one multi-hot level per group, in
      the order groups first appear, classes in mapping order.

    An empty level cell (or JSON null, or a key a JSONL line lacks) is an unknown label at that level:
    -1 there and at every finer level. The coarser levels of a row follow from its finest label through
    the hierarchy (an empty coarse cell is filled in; a given one must agree). A hierarchy read off the
    columns comes from the rows labelled at every level. A row with no label at all is an error.

    ``hierarchy`` is a :class:`Hierarchy` or a path to its JSON; passing it fixes the class ids, so
    train and test files get the same ids. The split's ``ids`` are the rows' line numbers. Returns
    ``(split, label_levels, hierarchy or None)``.
    """
    _check_label_args(levels, leaf, hierarchy, multi_label, groups)
    if not isinstance(separator, str) or not separator:
        raise DataError(f"separator must be a non-empty string, got {separator!r}")
    input_columns = _as_list(input, "input")
    label_columns = _as_list(levels if levels is not None else (leaf or multi_label), "the label columns")
    both = [column for column in input_columns if column in label_columns]
    if both:
        raise DataError(f"column {both[0]!r} is both an input and a label: the model would be given the answer")
    table = _read_table(Path(path))
    if table.checked_header:
        table.require(input_columns + label_columns)
    inputs = _inputs(table, input_columns, input_kind, size, grayscale)
    ids = [str(line) for line, _ in table.rows]  # line numbers, as an editor (and every error message) shows them
    if multi_label is not None:
        targets, label_levels = _multi_label(table, multi_label, groups, separator)
        return LabeledSplit(inputs, targets, ids), label_levels, None
    if isinstance(hierarchy, (str, Path)):
        hierarchy = Hierarchy.from_json(hierarchy)
    cells = _level_cells(table, label_columns)
    derived = hierarchy is None
    if hierarchy is None:
        hierarchy = _columns_hierarchy(table, label_columns, cells)
    targets = _hierarchy_labels(label_columns, cells, hierarchy, derived)
    return LabeledSplit(inputs, targets, ids), hierarchy.label_levels(), hierarchy


def load_inputs(
    path: str | Path,
    *,
    input: str | Sequence[str],
    input_kind: InputKind = "auto",
    size: int | None = None,
    grayscale: bool | None = None,
) -> LabeledSplit:
    """Only the inputs of a CSV or JSONL file, read as :func:`load_table` reads them, with the rows'
    line numbers as ids and no targets: for embedding new, unlabelled samples with a trained run."""
    input_columns = _as_list(input, "input")
    table = _read_table(Path(path))
    if table.checked_header:
        table.require(input_columns)
    inputs = _inputs(table, input_columns, input_kind, size, grayscale)
    return LabeledSplit(inputs, {}, [str(line) for line, _ in table.rows])
