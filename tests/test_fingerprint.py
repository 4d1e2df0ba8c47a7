"""The data fingerprint notices a changed file, split, input or label, and says which in words."""

from __future__ import annotations

import copy

import torch

from mlcl.data.fingerprint import data_change, data_fingerprint
from mlcl.data.types import Dataset, LabeledSplit, LabelLevel


def dataset(inputs=None, fine=None, texts=False) -> Dataset:
    inputs = torch.arange(24.0).view(6, 4) if inputs is None else inputs
    fine = torch.tensor([0, 1, 0, 1, 0, 1]) if fine is None else fine
    if texts:
        inputs = [f"text {i}" for i in range(6)]
    split = LabeledSplit(inputs, {"fine": fine})
    return Dataset("d", "features", [LabelLevel("fine", ["a", "b"])], train=split.subset(torch.arange(4)),
                   test=split.subset(torch.arange(4, 6)))


def test_the_same_data_has_the_same_fingerprint(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("x,fine\n1,a\n")
    first = data_fingerprint(dataset(), "table", [data, tmp_path / "not-a-file"], 0)
    assert first == data_fingerprint(dataset(), "table", [data], 0)
    assert data_change(first, copy.deepcopy(first)) is None
    assert list(first["files"]) == [str(data)] and first["splits"]["train"]["samples"] == 4


def test_each_kind_of_change_is_named(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("x,fine\n1,a\n")
    saved = data_fingerprint(dataset(), "table", [data], 0)
    changed_inputs = torch.arange(24.0).view(6, 4)
    changed_inputs[1, 2] = -1
    cases = {
        "the data was loaded by 'table' and now by 'image-folder'":
            data_fingerprint(dataset(), "image-folder", [data], 0),
        "the split seed was 0 and is now 1": data_fingerprint(dataset(), "table", [data], 1),
        f"the data file {data} is no longer there": data_fingerprint(dataset(), "table", [], 0),
        "the train split's inputs changed": data_fingerprint(dataset(changed_inputs), "table", [data], 0),
        "the train split's labels at level 'fine' changed":
            data_fingerprint(dataset(fine=torch.tensor([0, 1, 1, 1, 0, 1])), "table", [data], 0),
    }
    for message, current in cases.items():
        assert message in data_change(saved, current)
    fewer = dataset()
    fewer.train = fewer.train.subset(torch.arange(3))
    now = data_fingerprint(fewer, "table", [data], 0)
    assert data_change(saved, now) == "the train split had 4 samples and now has 3"
    data.write_text("x,fine\n1,b\n")
    now = data_fingerprint(dataset(), "table", [data], 0)
    assert f"the data file {data} changed (SHA-256" in data_change(saved, now)


def test_texts_are_fingerprinted_as_text():
    saved = data_fingerprint(dataset(texts=True), "wordnet-nouns", [], 0)
    current = dataset(texts=True)
    current.test.inputs[0] = "another text"
    assert data_change(saved, data_fingerprint(current, "wordnet-nouns", [], 0)) == \
        "the test split's inputs changed (same count, other content)"
