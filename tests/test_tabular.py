"""load_table on real CSV / JSONL files: inputs, label modes, and one-line errors naming file, line, column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlcl.data.tabular import load_table
from mlcl.errors import DataError
from mlcl.hierarchy import Hierarchy

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GROUPS = {"indoor": "scene", "outdoor": "scene", "beach": "place", "city": "place", "mountain": "place",
          "food": "topic", "sport": "topic", "night": "topic"}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def test_example_csv_level_columns() -> None:
    split, levels, h = load_table(EXAMPLES / "tiny_hierarchy.csv", input="text", levels=["coarse", "fine"])
    assert isinstance(split.inputs, list) and len(split) == 12
    assert [lv.name for lv in levels] == ["coarse", "fine"] and h.level_names == ["coarse", "fine"]
    assert split.targets["fine"].dtype == torch.long
    fine, coarse = split.targets["fine"], split.targets["coarse"]
    assert torch.equal(h.parent_index("fine")[fine], coarse)
    assert levels[1].classes[fine[0]] == "shirt" and levels[0].classes[coarse[0]] == "clothing"


def test_example_csv_leaf_plus_hierarchy_file_matches_level_columns() -> None:
    by_columns = load_table(EXAMPLES / "tiny_hierarchy.csv", input="text", levels=["coarse", "fine"])
    by_leaf = load_table(EXAMPLES / "tiny_hierarchy.csv", input="text", leaf="fine",
                         hierarchy=EXAMPLES / "tiny_hierarchy.json")
    assert by_leaf[2] == by_columns[2]
    for name in ("coarse", "fine"):
        assert torch.equal(by_leaf[0].targets[name], by_columns[0].targets[name])


def test_example_jsonl_multi_label_groups() -> None:
    split, levels, h = load_table(EXAMPLES / "tiny_multilabel.jsonl", input="text", multi_label="labels",
                                  groups=GROUPS)
    assert h is None
    assert [(lv.name, lv.multi_label) for lv in levels] == [("scene", True), ("place", True), ("topic", True)]
    assert levels[2].classes == ["food", "sport", "night"]
    assert split.targets["place"].shape == (12, 3) and split.targets["place"].dtype == torch.float32
    # "Night market with street food stalls": outdoor|city|food|night
    assert split.targets["topic"][10].tolist() == [1.0, 0.0, 1.0]
    assert split.targets["scene"].sum(1).tolist() == [1.0] * 12


def test_multi_label_without_groups_and_list_cells() -> None:
    split, levels, _ = load_table(EXAMPLES / "tiny_multilabel.jsonl", input="text", multi_label="labels")
    assert levels[0].name == "labels" and levels[0].classes == sorted(GROUPS)
    beach = levels[0].classes.index("beach")
    assert split.targets["labels"][7, beach] == 1.0  # the row given as a JSON list


def test_multi_label_unknown_group_and_empty_token(tmp_path) -> None:
    path = write(tmp_path / "ml.csv", "text,tags\nhello,indoor|beach\nbye,indoor|snow\n")
    with pytest.raises(DataError, match=r"ml.csv, line 3, column 'tags': label 'snow' is in no group"):
        load_table(path, input="text", multi_label="tags", groups=GROUPS)
    path = write(tmp_path / "ml2.csv", "text,tags\nhello,indoor||beach\n")
    with pytest.raises(DataError, match=r"ml2.csv, line 2, column 'tags': empty label"):
        load_table(path, input="text", multi_label="tags")


def test_custom_separator(tmp_path) -> None:
    path = write(tmp_path / "sep.csv", "text,tags\nhello,a;b\nbye,b\n")
    split, levels, _ = load_table(path, input="text", multi_label="tags", separator=";")
    assert levels[0].classes == ["a", "b"] and split.targets["tags"].tolist() == [[1, 1], [0, 1]]


def test_numeric_feature_columns(tmp_path) -> None:
    path = write(tmp_path / "feat.csv", "x1,x2,label\n0.5,1e3,a\n-2, 3 ,b\n")
    split, levels, _ = load_table(path, input=["x1", "x2"], levels=["label"])
    assert split.inputs.dtype == torch.float32 and split.inputs.tolist() == [[0.5, 1000.0], [-2.0, 3.0]]
    assert levels[0].name == "label" and split.targets["label"].tolist() == [0, 1]


def test_jsonl_feature_lists_and_integer_labels(tmp_path) -> None:
    path = write_jsonl(tmp_path / "f.jsonl", [{"x": [1, 2.5], "y": 3}, {"x": [0, 0], "y": 7}])
    split, levels, _ = load_table(path, input="x", levels=["y"])
    assert split.inputs.shape == (2, 2) and levels[0].classes == ["3", "7"]


@pytest.mark.parametrize("value, message", [
    ("nan", "is not a finite float32 number"),
    ("inf", "is not a finite float32 number"),
    ("1e40", "is not a finite float32 number"),
    ("abc", "expected a number, got 'abc'"),
    ("", "empty value"),
])
def test_bad_feature_values_name_line_and_column(tmp_path, value, message) -> None:
    path = write(tmp_path / "feat.csv", f"x1,x2,label\n1,2,a\n3,{value},b\n")
    with pytest.raises(DataError, match=rf"feat.csv, line 3, column 'x2': .*{message}"):
        load_table(path, input=["x1", "x2"], levels=["label"])


def test_jsonl_ragged_feature_lists(tmp_path) -> None:
    path = write_jsonl(tmp_path / "f.jsonl", [{"x": [1, 2], "y": "a"}, {"x": [1], "y": "a"}])
    with pytest.raises(DataError, match="f.jsonl, line 2, column 'x': 1 features but the first row has 2"):
        load_table(path, input="x", levels=["y"])


def test_missing_column_lists_available(tmp_path) -> None:
    path = write(tmp_path / "d.csv", "text,coarse,fine_label\nhi,a,b\n")
    message = (r"d.csv: no column 'fine' \(did you mean 'fine_label'\?\); "
               r"available columns: 'text', 'coarse', 'fine_label'")
    with pytest.raises(DataError, match=message):
        load_table(path, input="text", levels=["coarse", "fine"])


def test_jsonl_missing_key_names_line(tmp_path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "fine": "x"}, {"text": "b", "fin": "x"}])
    with pytest.raises(DataError, match=r"d.jsonl, line 2: no column 'fine'.*keys on this line: 'text', 'fin'"):
        load_table(path, input="text", levels=["fine"])


def test_empty_label_names_line_as_in_editor(tmp_path) -> None:
    # line 3 is blank and the quoted text on line 4 spans two lines: the bad row starts on line 6
    # (an empty fine cell alone is an unknown fine label; a row needs a label at some level)
    text = 'text,coarse,fine\nhi,a,b\n\n"two\nlines",a,b\nbye, ,  \n'
    path = write(tmp_path / "d.csv", text)
    with pytest.raises(DataError, match=r"d.csv, line 6, column 'coarse': empty label at every level"):
        load_table(path, input="text", levels=["coarse", "fine"])


def test_label_not_in_hierarchy_suggests(tmp_path) -> None:
    path = write(tmp_path / "d.csv", "text,fine\nhi,shirt\nyo,sneakers\n")
    message = r"d.csv, line 3, column 'fine': label 'sneakers' is not in the hierarchy \(did you mean 'sneaker'\?\)"
    with pytest.raises(DataError, match=message):
        load_table(path, input="text", leaf="fine", hierarchy=EXAMPLES / "tiny_hierarchy.json")


def test_level_columns_disagree_with_given_hierarchy(tmp_path) -> None:
    path = write(tmp_path / "d.csv", "text,coarse,fine\nhi,clothing,shirt\nyo,clothing,boot\n")
    h = Hierarchy.from_json(EXAMPLES / "tiny_hierarchy.json")
    message = r"d.csv, line 3, column 'coarse': 'clothing', but the hierarchy puts 'boot' under 'footwear'"
    with pytest.raises(DataError, match=message):
        load_table(path, input="text", levels=["coarse", "fine"], hierarchy=h)


def test_given_hierarchy_fixes_class_ids(tmp_path) -> None:
    path = write(tmp_path / "test.csv", "text,fine\nhi,laptop\n")
    split, levels, _ = load_table(path, input="text", leaf="fine", hierarchy=EXAMPLES / "tiny_hierarchy.json")
    assert levels[1].classes == ["boot", "jeans", "laptop", "phone", "shirt", "sneaker"]
    assert split.targets["fine"].tolist() == [2] and split.targets["coarse"].tolist() == [1]


def test_rows_giving_two_parents_are_named(tmp_path) -> None:
    path = write(tmp_path / "d.csv", "text,coarse,fine\na,animal,cat\nb,plant,rose\nc,plant,cat\n")
    message = r"'cat' \(level 'fine'\) has two parents: 'animal' \(.*d.csv, line 2\) and 'plant' \(.*d.csv, line 4\)"
    with pytest.raises(DataError, match=message):
        load_table(path, input="text", levels=["coarse", "fine"])


def test_ragged_row(tmp_path) -> None:
    path = write(tmp_path / "d.csv", "text,coarse,fine\nhi,a,b\nhello, world,a,b\n")
    with pytest.raises(DataError, match="d.csv, line 3: 4 fields but the header has 3; quote fields"):
        load_table(path, input="text", levels=["coarse", "fine"])


def test_an_unclosed_quote_is_an_error_not_a_swallowed_rest_of_file(tmp_path) -> None:
    rows = "".join(f"row{i},{'ab'[i % 2]}\n" for i in range(20))
    path = write(tmp_path / "d.csv", "text,fine\n" + rows.replace("row4,a", 'row4,"a'))
    # reported where the quote opened (row4 is line 6), not at the end of the file it swallowed
    with pytest.raises(DataError, match="d.csv, line 6: a quote opened in the row that starts here is never closed"):
        load_table(path, input="text", levels=["fine"])


def test_a_text_column_starting_with_a_number_says_how_to_read_it_as_text(tmp_path) -> None:
    path = write(tmp_path / "d.csv", "text,fine\n42,a\nhello world,b\n")
    with pytest.raises(DataError, match="expected a number, got 'hello world'.*set input_kind: text"):
        load_table(path, input="text", levels=["fine"])
    split, _, _ = load_table(path, input="text", levels=["fine"], input_kind="text")
    assert split.inputs == ["42", "hello world"]


def test_non_utf8_line(tmp_path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,fine\nhi,a\ncaf\xe9,b\n")
    with pytest.raises(DataError, match="d.csv, line 3: not valid UTF-8"):
        load_table(path, input="text", levels=["fine"])


def test_utf8_bom_is_accepted(tmp_path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("text,fine\ncafé,a\n".encode("utf-8-sig"))
    split, _, _ = load_table(path, input="text", levels=["fine"])
    assert split.inputs == ["café"]


@pytest.mark.parametrize("name, content, message", [
    ("e.csv", "", "e.csv is empty"),
    ("e.csv", "\n\n", "e.csv is empty"),
    ("h.csv", "text,fine\n", "h.csv has a header but no data rows"),
    ("e.jsonl", "\n  \n", "e.jsonl is empty"),
])
def test_empty_files(tmp_path, name, content, message) -> None:
    with pytest.raises(DataError, match=message):
        load_table(write(tmp_path / name, content), input="text", levels=["fine"])


def test_bad_jsonl_lines(tmp_path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "a", "fine": "x"}\n\n{"text": "b", fine: 1}\n')
    with pytest.raises(DataError, match=r"d.jsonl, line 3: not valid JSON"):
        load_table(path, input="text", levels=["fine"])
    path = write(tmp_path / "u.jsonl", '{"text": "a", "fine": "x"}\n{"text": "b", "fine": "x"}\n{"text": "c}\n')
    with pytest.raises(DataError, match=r"line 3: not valid JSON \(Unterminated string starting at column 10\)"):
        load_table(path, input="text", levels=["fine"])
    path = write(tmp_path / "l.jsonl", '["a", "b"]\n')
    with pytest.raises(DataError, match=r"l.jsonl, line 1: expected a JSON object"):
        load_table(path, input="text", levels=["fine"])
    path = write_jsonl(tmp_path / "n.jsonl", [{"text": "a", "fine": None}])
    with pytest.raises(DataError, match=r"n.jsonl, line 1, column 'fine': empty label"):
        load_table(path, input="text", levels=["fine"])


def test_duplicate_header_and_unsupported_suffix(tmp_path) -> None:
    with pytest.raises(DataError, match="column 'a' appears twice"):
        load_table(write(tmp_path / "d.csv", "a,a\n1,2\n"), input="a", levels=["b"])
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        load_table(write(tmp_path / "d.txt", "a\n"), input="a", levels=["b"])


def test_argument_errors(tmp_path) -> None:
    path = EXAMPLES / "tiny_hierarchy.csv"
    with pytest.raises(DataError, match="exactly one of"):
        load_table(path, input="text")
    with pytest.raises(DataError, match="exactly one of"):
        load_table(path, input="text", levels=["fine"], multi_label="fine")
    with pytest.raises(DataError, match="leaf= needs hierarchy="):
        load_table(path, input="text", leaf="fine")
    with pytest.raises(DataError, match="groups= goes with multi_label="):
        load_table(path, input="text", levels=["fine"], groups={"a": "b"})


def test_text_must_be_non_empty(tmp_path) -> None:
    path = write(tmp_path / "d.csv", 'text,fine\nhi,a\n"   ",b\n')
    with pytest.raises(DataError, match="d.csv, line 3, column 'text': empty text"):
        load_table(path, input="text", levels=["fine"], input_kind="text")


# --------------------------------------------------------------------------------------------- images


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_column_relative_paths(tmp_path) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    save_png(tmp_path / "img" / "a.png", gray)
    save_png(tmp_path / "img" / "b.png", np.zeros((6, 5), np.uint8))
    path = write(tmp_path / "d.csv", "image,fine\nimg/a.png,x\nimg/b.png,y\n")
    split, _, _ = load_table(path, input="image", levels=["fine"])
    assert split.inputs.shape == (2, 1, 6, 5) and split.inputs.dtype == torch.float32
    assert torch.allclose(split.inputs[0, 0], torch.from_numpy(gray / 255.0).float())


def test_image_column_rgb_and_resize(tmp_path) -> None:
    save_png(tmp_path / "a.png", np.full((8, 8, 3), [255, 0, 0], np.uint8))
    save_png(tmp_path / "b.png", np.zeros((4, 4, 3), np.uint8))
    path = write_jsonl(tmp_path / "d.jsonl", [{"img": "a.png", "y": "r"}, {"img": "b.png", "y": "k"}])
    split, _, _ = load_table(path, input="img", levels=["y"], size=4)
    assert split.inputs.shape == (2, 3, 4, 4)
    assert split.inputs[0, 0].min() == 1.0 and split.inputs[0, 1].max() == 0.0


def test_image_errors(tmp_path) -> None:
    save_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    save_png(tmp_path / "big.png", np.zeros((5, 4), np.uint8))
    write(tmp_path / "fake.png", "not an image")
    cases = [
        ("a.png\nmissing.png", r"line 3, column 'image': image file not found: .*missing.png"),
        ("a.png\nfake.png", r"line 3, column 'image': [^']*fake.png is not a readable PNG/JPEG image "
                            r"\(cannot identify image file\)$"),  # the path is named once
        ("a.png\nbig.png", r"line 3, column 'image': image .*big.png is 4x5 pixels but .*a.png is 4x4"),
    ]
    for rows, message in cases:
        path = write(tmp_path / "d.csv", "image,y\n" + "\n".join(f"{r},c" for r in rows.split("\n")) + "\n")
        with pytest.raises(DataError, match=message):
            load_table(path, input="image", levels=["y"])
