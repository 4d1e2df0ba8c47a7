"""Hierarchy: building from every source, the level mappings, and the tree checks."""

from __future__ import annotations

import json

import pytest
import torch

from mlcl.errors import DataError
from mlcl.hierarchy import Hierarchy

FINE2COARSE = [0, 1, 0, 2, 0, 3, 0, 3, 4, 3]
FMNIST_FINE = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]
FMNIST_COARSE = ["tops", "bottoms", "dresses", "footwear", "bags"]
ANIMALS = {"cat": "mammal", "dog": "mammal", "eagle": "bird", "mammal": None, "bird": None}


def fashion() -> Hierarchy:
    return Hierarchy.from_index(FINE2COARSE, FMNIST_FINE, FMNIST_COARSE)


def test_from_index_keeps_the_given_order() -> None:
    h = fashion()
    assert h.level_names == ["coarse", "fine"]
    assert h.classes == {"coarse": FMNIST_COARSE, "fine": FMNIST_FINE}
    assert h.num_levels == 2 and h.num_classes("fine") == 10 and h.num_classes("coarse") == 5
    assert h.parent_index("fine").tolist() == FINE2COARSE
    assert h.parent_index("fine").dtype == torch.long
    assert h.parent_index("coarse").tolist() == [-1] * 5


def test_leaf_to_levels_maps_every_level_and_keeps_unknown() -> None:
    out = fashion().leaf_to_levels(torch.tensor([0, 9, -1, 8]))
    assert out.dtype == torch.long
    assert out.tolist() == [[0, 0], [3, 9], [-1, -1], [4, 8]]


def test_leaf_to_levels_rejects_out_of_range_and_float() -> None:
    with pytest.raises(DataError, match="leaf label 10 is out of range"):
        fashion().leaf_to_levels(torch.tensor([10]))
    with pytest.raises(DataError, match="integer"):
        fashion().leaf_to_levels(torch.tensor([1.0]))


def test_from_parents_sorts_classes_and_names_levels() -> None:
    h = Hierarchy.from_parents(ANIMALS)
    assert h.classes == {"coarse": ["bird", "mammal"], "fine": ["cat", "dog", "eagle"]}
    assert h.parent_index("fine").tolist() == [1, 1, 0]
    assert h.label_levels()[1].classes == ["cat", "dog", "eagle"]


def test_from_parents_roots_may_be_absent_and_levels_named() -> None:
    h = Hierarchy.from_parents({"cat": "mammal", "dog": "mammal", "eagle": "bird"}, ["kind", "species"])
    assert h.level_names == ["kind", "species"]
    assert h.encode("kind", ["mammal", "bird"]).tolist() == [1, 0]


def test_three_levels_default_names_and_paths() -> None:
    parents = {"cat": "mammal", "eagle": "bird", "mammal": "animal", "bird": "animal", "rose": "flower",
               "flower": "plant"}
    h = Hierarchy.from_parents(parents)
    assert h.level_names == ["level_1", "level_2", "level_3"]
    leaf = h.encode("level_3", ["cat", "rose"])
    rows = h.leaf_to_levels(leaf).tolist()
    names = [[h.classes[lvl][i] for lvl, i in zip(h.level_names, row)] for row in rows]
    assert names == [["animal", "mammal", "cat"], ["plant", "flower", "rose"]]


def test_cycle_is_named() -> None:
    with pytest.raises(DataError, match="cycle: 'a' -> 'b' -> 'c' -> 'a'"):
        Hierarchy.from_parents({"a": "b", "b": "c", "c": "a", "x": None})


def test_self_parent_is_a_cycle() -> None:
    with pytest.raises(DataError, match="cycle"):
        Hierarchy.from_parents({"a": "a"})


def test_unknown_parent_suggests_close_match() -> None:
    with pytest.raises(DataError, match=r"'cat' has parent 'mamal'.*did you mean 'mammal'"):
        Hierarchy.from_parents({"cat": "mamal", "dog": "mammal", "mammal": None})


def test_leaves_at_different_depths_need_pad() -> None:
    parents = {"cat": "mammal", "mammal": "animal", "jellyfish": "animal"}
    with pytest.raises(DataError, match="leaf 'jellyfish' is at depth 1.*pad=True"):
        Hierarchy.from_parents(parents)
    h = Hierarchy.from_parents(parents, pad=True)
    assert h.classes["level_2"] == ["jellyfish", "mammal"]
    assert h.classes["level_3"] == ["cat", "jellyfish"]
    row = h.leaf_to_levels(h.encode("level_3", ["jellyfish"]))[0].tolist()
    assert [h.classes[lvl][i] for lvl, i in zip(h.level_names, row)] == ["animal", "jellyfish", "jellyfish"]
    assert h.is_padded


def test_level_names_must_match_depth() -> None:
    with pytest.raises(DataError, match="2 levels but 3 level names"):
        Hierarchy.from_parents(ANIMALS, ["a", "b", "c"])


def test_empty_hierarchy_and_bad_names() -> None:
    with pytest.raises(DataError, match="empty"):
        Hierarchy.from_parents({})
    with pytest.raises(DataError, match="non-empty"):
        Hierarchy.from_parents({"": "x"})


def test_from_level_columns_builds_and_rejects_two_parents() -> None:
    rows = [["mammal", "cat"], ["bird", "eagle"], ["mammal", "dog"], ["mammal", "cat"]]
    h = Hierarchy.from_level_columns(rows, ["coarse", "fine"])
    assert h == Hierarchy.from_parents(ANIMALS)
    message = r"'cat' \(level 'fine'\) has two parents: 'mammal' \(path 1\) and 'bird' \(path 3\)"
    with pytest.raises(DataError, match=message):
        Hierarchy.from_level_columns([["mammal", "cat"], ["bird", "eagle"], ["bird", "cat"]], ["coarse", "fine"])


def test_from_level_columns_names_unique_across_levels() -> None:
    with pytest.raises(DataError, match="unique across levels"):
        Hierarchy.from_level_columns([["a", "b"], ["b", "c"]], ["coarse", "fine"], row_names=["r1", "r2"])


def test_from_level_columns_row_length_and_empty_label() -> None:
    with pytest.raises(DataError, match="row 2: expected 2 labels"):
        Hierarchy.from_level_columns([["a", "b"], ["a"]], ["coarse", "fine"], row_names=["row 1", "row 2"])
    with pytest.raises(DataError, match="path 1: empty label at level 'fine'"):
        Hierarchy.from_level_columns([["a", ""]], ["coarse", "fine"])


def test_from_index_errors() -> None:
    with pytest.raises(DataError, match="parent id 7"):
        Hierarchy.from_index([0, 7], ["a", "b"], ["p"])
    with pytest.raises(DataError, match="'p2' at level 'coarse' has no child"):
        Hierarchy.from_index([0, 0], ["a", "b"], ["p", "p2"])
    with pytest.raises(DataError, match="unique across levels"):
        Hierarchy.from_index([0], ["p"], ["p"])


def test_encode_unknown_label_suggests() -> None:
    with pytest.raises(DataError, match=r"unknown label 'Sneakers' at level 'fine' \(did you mean 'Sneaker'"):
        fashion().encode("fine", ["Bag", "Sneakers"])
    with pytest.raises(DataError, match="unknown level 'fin'"):
        fashion().encode("fin", ["Bag"])


def test_json_round_trip_keeps_class_order(tmp_path) -> None:
    h = fashion()
    h.to_json(tmp_path / "h.json")
    back = Hierarchy.from_json(tmp_path / "h.json")
    assert back == h and back.classes["fine"] == FMNIST_FINE


def test_json_round_trip_padded(tmp_path) -> None:
    h = Hierarchy.from_parents({"cat": "mammal", "mammal": "animal", "jellyfish": "animal"}, pad=True)
    h.to_json(tmp_path / "h.json")
    assert Hierarchy.from_json(tmp_path / "h.json") == h


def test_json_plain_object(tmp_path) -> None:
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(ANIMALS))
    assert Hierarchy.from_json(path) == Hierarchy.from_parents(ANIMALS)


def test_json_duplicate_key_is_two_parents(tmp_path) -> None:
    path = tmp_path / "dup.json"
    path.write_text('{"levels": ["c", "f"], "parents": {"cat": "mammal", "cat": "bird", "mammal": null, "bird": null}}')
    with pytest.raises(DataError, match=r"dup.json: key 'cat' is listed twice"):
        Hierarchy.from_json(path)


def test_json_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"cat": "mammal",\n "dog": }')
    with pytest.raises(DataError, match=r"bad.json, line 2, column \d+: not valid JSON"):
        Hierarchy.from_json(bad)
    with pytest.raises(DataError, match="hierarchy file not found"):
        Hierarchy.from_json(tmp_path / "missing.json")
    cyc = tmp_path / "cyc.json"
    cyc.write_text('{"a": "b", "b": "a"}')
    with pytest.raises(DataError, match="cyc.json: the hierarchy has a cycle"):
        Hierarchy.from_json(cyc)
    typed = tmp_path / "typed.json"
    typed.write_text('{"cat": 3}')
    with pytest.raises(DataError, match="typed.json: the parent of 'cat'"):
        Hierarchy.from_json(typed)


def test_json_non_utf8_gives_line(tmp_path) -> None:
    path = tmp_path / "latin.json"
    path.write_bytes(b'{\n"caf\xe9": null\n}')
    with pytest.raises(DataError, match="latin.json, line 2: not valid UTF-8"):
        Hierarchy.from_json(path)


def test_json_pad_flag(tmp_path) -> None:
    path = tmp_path / "ragged.json"
    path.write_text(json.dumps({"parents": {"cat": "mammal", "mammal": "animal", "jellyfish": "animal"}}))
    with pytest.raises(DataError, match="pad=True"):
        Hierarchy.from_json(path)
    assert Hierarchy.from_json(path, pad=True).num_levels == 3


def test_json_class_order_must_match_tree(tmp_path) -> None:
    path = tmp_path / "order.json"
    path.write_text(json.dumps({"levels": ["c", "f"], "classes": {"c": ["mammal", "bird"], "f": ["dog", "cat"]},
                                "parents": ANIMALS}))
    with pytest.raises(DataError, match=r"level 'f' does not match the tree: missing \['eagle'\]"):
        Hierarchy.from_json(path)
