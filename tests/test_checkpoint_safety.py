"""Checkpoints never run code when loaded, and a damaged one is a one-line error naming what is wrong."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from mlcl.errors import CheckpointError
from mlcl.train.checkpoint import FORMAT_VERSION, load_checkpoint, load_weights, restore_state, save_checkpoint


class Payload:
    """Unpickling this creates ``marker`` (the way a crafted checkpoint would run any code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (str(self.marker),)


def craft(path: Path, marker: Path) -> None:
    """A checkpoint file in mlcl's format whose unpickling would run the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format_version": FORMAT_VERSION, "model": {"w": torch.zeros(1)}, "evil": Payload(marker)}, path)


def test_a_crafted_checkpoint_does_not_run_its_payload(tmp_path):
    marker, path = tmp_path / "payload-ran", tmp_path / "last.pt"
    craft(path, marker)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert not marker.exists()
    message = str(caught.value)
    assert "\n" not in message and "makedirs" in message and "not written by mlcl" in message


def test_real_checkpoints_load_with_their_values(tmp_path):
    path = tmp_path / "last.pt"
    state = {"model": nn.Linear(3, 2).state_dict(), "loop": {"epoch": 2, "history": [{"loss": 1.5}], "best": None},
             "rng": {"torch": [torch.get_rng_state()], "cuda": None}, "config": {"seed": 3, "heads": ["a", "b"]}}
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert loaded["loop"] == state["loop"] and loaded["config"] == state["config"]
    assert torch.equal(loaded["rng"]["torch"][0], state["rng"]["torch"][0])


@pytest.mark.parametrize("name, advice", [("best.pt", "evaluation then uses"), ("last.pt", "mlcl train --resume")])
def test_a_corrupt_checkpoint_says_what_to_do_by_which_one_it_is(tmp_path, name, advice):
    path = tmp_path / "run" / "checkpoints" / name
    save_checkpoint({"value": 1}, path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as caught:
        load_checkpoint(path)
    assert advice in str(caught.value) and "another --out" not in str(caught.value)


def test_weights_that_do_not_fit_are_named():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    weights = model.state_dict()
    bigger = {**weights, "1.weight": torch.zeros(5, 3)}
    with pytest.raises(CheckpointError, match=r"'1.weight' has shape \(5, 3\) but this run's has \(2, 3\)"):
        load_weights(model, bigger, Path("best.pt"))
    with pytest.raises(CheckpointError, match=r"lacks the model tensor '0.bias'"):
        load_weights(model, {k: v for k, v in weights.items() if k != "0.bias"}, Path("best.pt"))
    with pytest.raises(CheckpointError, match=r"holds a model tensor 'extra'"):
        load_weights(model, {**weights, "extra": torch.zeros(1)}, Path("best.pt"))
    load_weights(model, weights, Path("best.pt"))  # a fitting state loads


def test_a_bad_rng_state_is_one_line():
    generator = torch.Generator()
    with pytest.raises(CheckpointError, match="random-number state") as caught:
        restore_state(generator.set_state, torch.zeros(3, dtype=torch.uint8), Path("run/checkpoints/last.pt"),
                      "random-number state")
    assert "\n" not in str(caught.value)
