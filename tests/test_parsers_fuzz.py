"""Fuzzing the file parsers: whatever bytes a user's file holds, the outcome is a result or a DataError.

Any other exception (KeyError, IndexError, UnicodeDecodeError, csv.Error, OSError, ...) would reach the
user as a traceback instead of a one-line message, so it fails these tests.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mlcl.data.tabular import load_table
from mlcl.errors import DataError
from mlcl.hierarchy import Hierarchy

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

NAMES = st.sampled_from(["a", "b", "c", "cat", "dog", "animal", "", " ", "a|b", "x y", "é", "1"])
CSV_PIECES = st.sampled_from(
    [",", '"', "\n", "\r\n", "\r", "|", "a", "b", "cat", "text", "coarse", "fine", "x1", "1.5", "-2",
     "nan", "inf", "1e99", "1e40", " ", "", "\x00", "é", "img.png", "coarse,fine", "text,coarse,fine\n"]
)
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=True, allow_infinity=True),
    NAMES, st.text(max_size=5),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=3), max_leaves=6
)
COLUMNS = st.sampled_from(["text", "coarse", "fine", "x1", "x2", "tags", "img"])


def outcome(load) -> object:
    """Run a loader; a DataError is an accepted outcome, any other exception propagates."""
    try:
        return load()
    except DataError as err:
        assert "\n" not in str(err), "error messages are one line"
        return err


def check_split(result) -> None:
    if isinstance(result, DataError):
        return
    split, levels, _ = result
    assert len(split) > 0
    for level in levels:
        target = split.targets[level.name]
        assert len(target) == len(split)
        if not level.multi_label:
            assert target.dtype == torch.long and 0 <= int(target.min()) and int(target.max()) < level.num_classes


LOADS = [
    dict(input="text", levels=["coarse", "fine"]),
    dict(input=["x1", "x2"], levels=["fine"]),
    dict(input="text", multi_label="tags"),
    dict(input="text", multi_label="tags", groups={"a": "g", "b": "g", "cat": "h"}),
    dict(input="x1", input_kind="auto", levels=["coarse", "fine"]),
    dict(input="img", levels=["fine"]),
]


HEADER = ["text", "coarse", "fine", "x1", "x2", "tags", "img"]
VALID_ROWS = [
    {"text": "hello world", "coarse": "animal", "fine": "cat", "x1": "1.5", "x2": "-2", "tags": "a|b",
     "img": "img.png"},
    {"text": "a rose", "coarse": "plant", "fine": "rose", "x1": "3", "x2": "0", "tags": "cat", "img": "img.png"},
    {"text": "the dog", "coarse": "animal", "fine": "dog", "x1": "-1e3", "x2": "2.5", "tags": "b|cat",
     "img": "img.png"},
]
CELLS = st.sampled_from(
    ["hello world", "a", "b", "cat", "dog", "animal", "plant", "1.5", "3", "a|b", "cat|dog", "img.png", "",
     " ", "nan", "inf", "1e40", "x", '"', "a||b", "|", "line\nbreak", "é", "missing.png", "bad.png", "a,b"]
)
DELETE = object()


def mutated_rows(cells: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly valid rows, each with a few cells replaced by a random value (or DELETE)."""
    mutations = st.lists(st.tuples(st.sampled_from(HEADER), cells), max_size=2)
    row = st.tuples(st.sampled_from(VALID_ROWS), mutations).map(lambda t: {**t[0], **dict(t[1])})
    return st.lists(row, max_size=5)


def write_images(folder: Path) -> None:
    """img.png: a valid 2x2 PNG; bad.png: a truncated one."""
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(folder / "img.png")
    (folder / "bad.png").write_bytes((folder / "img.png").read_bytes()[:20])


def to_csv(header: list[str], rows: list[dict], quote: bool) -> str:
    """Rows as CSV text: properly quoted, or naively joined (so commas and quotes break the layout)."""
    table = [header] + [[r[c] for c in header if r[c] is not DELETE] for r in rows]
    if quote:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(table)
        return out.getvalue()
    return "".join(",".join(r) + "\n" for r in table)


@FUZZ
@given(header=st.permutations(HEADER).flatmap(lambda h: st.sampled_from([h, h[:-1]])),
       rows=mutated_rows(CELLS | st.just(DELETE)), quote=st.booleans(),
       junk=st.sampled_from([b"", b"", b"\xff", b"\n\n", b'"', b"\x00"]), load=st.sampled_from(LOADS))
def test_random_csv(tmp_path: Path, header, rows, quote, junk, load) -> None:
    path = tmp_path / "fuzz.csv"
    path.write_bytes(to_csv(header, rows, quote).encode("utf-8") + junk)
    write_images(tmp_path)
    check_split(outcome(lambda: load_table(path, **load)))


@FUZZ
@given(pieces=st.lists(CSV_PIECES, max_size=40), junk=st.binary(max_size=4), load=st.sampled_from(LOADS))
def test_random_csv_bytes(tmp_path: Path, pieces, junk, load) -> None:
    path = tmp_path / "fuzz.csv"
    path.write_bytes(b"text,coarse,fine,x1,x2,tags,img\n" + "".join(pieces).encode("utf-8") + junk)
    check_split(outcome(lambda: load_table(path, **load)))


@FUZZ
@given(rows=st.lists(st.sampled_from(VALID_ROWS), min_size=1, max_size=8), data=st.data())
def test_an_unclosed_quote_is_reported_on_the_row_it_opens(tmp_path: Path, rows, data) -> None:
    broken = data.draw(st.integers(0, len(rows) - 1))
    column = data.draw(st.sampled_from(["text", "fine"]))
    lines = to_csv(HEADER, rows, quote=True).splitlines()
    cells = lines[broken + 1].split(",")
    index = HEADER.index(column)
    cells[index] = '"' + cells[index]  # opens a quote that nothing closes
    lines[broken + 1] = ",".join(cells)
    path = tmp_path / "fuzz.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"fuzz.csv, line {broken + 2}: a quote opened in the row that starts here"):
        load_table(path, input="text", levels=["coarse", "fine"])


JSON_CELLS = st.one_of(CELLS, JSON_VALUES, st.lists(st.sampled_from(["a", "b", 1, 2.5, None, ""]), max_size=3))


@FUZZ
@given(rows=mutated_rows(JSON_CELLS | st.just(DELETE)),
       junk=st.sampled_from(["", "", "{", "[1]", "null", '{"a": }', "\n\n", "\x00"]), load=st.sampled_from(LOADS))
def test_random_jsonl(tmp_path: Path, rows, junk, load) -> None:
    lines = [{k: v for k, v in r.items() if v is not DELETE} for r in rows]
    path = tmp_path / "fuzz.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + junk, encoding="utf-8")
    write_images(tmp_path)
    check_split(outcome(lambda: load_table(path, **load)))


@FUZZ
@given(rows=st.lists(st.fixed_dictionaries({"text": st.just("hi") | JSON_CELLS,
                                             "fine": st.sampled_from(["cat", "dog", "b", 1]) | JSON_CELLS}),
                     min_size=1, max_size=5))
def test_random_jsonl_against_a_hierarchy(tmp_path: Path, rows) -> None:
    h = Hierarchy.from_parents({"cat": "animal", "dog": "animal", "b": "a"})
    path = tmp_path / "fuzz.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    check_split(outcome(lambda: load_table(path, input="text", leaf="fine", hierarchy=h)))


PARENT_MAPS = st.dictionaries(NAMES, st.one_of(st.none(), NAMES, JSON_SCALARS), max_size=8)


@FUZZ
@given(parents=PARENT_MAPS, structured=st.booleans(),
       levels=st.one_of(st.none(), st.lists(NAMES, max_size=4), JSON_SCALARS),
       extra=st.dictionaries(st.sampled_from(["classes", "pad", "other"]), JSON_VALUES, max_size=2),
       pad=st.booleans())
def test_random_hierarchy_json(tmp_path: Path, parents, structured, levels, extra, pad) -> None:
    data = {"levels": levels, "parents": parents, **extra} if structured else parents
    path = tmp_path / "h.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    result = outcome(lambda: Hierarchy.from_json(path, pad=pad))
    if isinstance(result, Hierarchy):
        leaves = torch.arange(result.num_classes(result.level_names[-1]))
        paths = result.leaf_to_levels(leaves)
        for k in range(1, result.num_levels):
            assert torch.equal(result.parent_index(result.level_names[k])[paths[:, k]], paths[:, k - 1])
        result.to_json(tmp_path / "back.json")
        assert Hierarchy.from_json(tmp_path / "back.json") == result


@FUZZ
@given(raw=st.binary(max_size=60) | st.text(max_size=60).map(str.encode))
def test_random_hierarchy_bytes(tmp_path: Path, raw) -> None:
    path = tmp_path / "h.json"
    path.write_bytes(raw)
    outcome(lambda: Hierarchy.from_json(path))


@FUZZ
@given(paths=st.lists(st.lists(NAMES, min_size=1, max_size=3), max_size=6))
def test_random_level_columns(paths) -> None:
    result = outcome(lambda: Hierarchy.from_level_columns(paths, ["coarse", "fine"]))
    if isinstance(result, Hierarchy):
        fine = result.encode("fine", [p[1] for p in paths])
        assert result.encode("coarse", [p[0] for p in paths]).tolist() == result.leaf_to_levels(fine)[:, 0].tolist()


def test_fuzz_strategies_reach_valid_results(tmp_path: Path) -> None:
    """Guard against a fuzz suite that only ever sees errors: a well-formed file still loads."""
    path = tmp_path / "ok.csv"
    path.write_text("text,coarse,fine,x1,x2,tags,img\nhi,a,cat,1.5,-2,a|b,img.png\n", encoding="utf-8")
    split, _, _ = load_table(path, **LOADS[0])
    assert split.inputs == ["hi"]
    with pytest.raises(DataError):
        load_table(path, **LOADS[-1])
