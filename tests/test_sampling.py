"""Batch composition (train.labelled_share): exact labelled counts, no starved row, today's order at 0,
seeded, an exact resume through the trainer, and one-line errors."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import ROOT
from test_distributed import free_port

from mlcl.data.types import LabeledSplit
from mlcl.errors import ConfigError, DataError
from mlcl.hierarchy import LabelLevel
from mlcl.train.config import load_config
from mlcl.train.loop import Interrupted, Trainer
from mlcl.train.run import build_run
from mlcl.train.runtime import join_local_group, shutdown_distributed
from mlcl.train.sampling import epoch_batches, labelled_mask, labelled_per_batch


def _mask(n: int, n_labelled: int, seed: int = 0) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n_labelled]] = True
    return mask


def test_share_zero_is_the_uniform_permutation_of_before():
    n, batch, seed, epoch = 103, 10, 7, 3
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    expected = torch.randperm(n, generator=generator)[:100].view(10, 10)
    assert torch.equal(epoch_batches(n, batch, seed, epoch), expected)
    assert torch.equal(epoch_batches(n, batch, seed, epoch, _mask(n, 5), share=0.0), expected)


@pytest.mark.parametrize("share, n_labelled", [(0.25, 9), (0.5, 30), (0.1, 200), (1.0, 40), (0.5, 3)])
def test_each_batch_holds_exactly_the_requested_labelled_rows(share, n_labelled):
    n, batch = 400, 32
    mask = _mask(n, n_labelled)
    k = min(round(share * batch), n_labelled)
    for epoch in range(3):
        batches = epoch_batches(n, batch, 0, epoch, mask, share)
        assert batches.shape == (n // batch, batch)  # the epoch length does not change
        assert mask[batches].sum(1).tolist() == [k] * (n // batch)
    # Split into 4 processes' contiguous slices, each gets its share of the labelled rows (give or take one).
    per_rank = mask[batches.view(n // batch, 4, -1)].sum(2)
    assert per_rank.min() >= k // 4 and per_rank.max() <= -(-k // 4)


@pytest.mark.parametrize("share, n_labelled", [(0.5, 20), (0.25, 100), (0.75, 300)])
def test_every_row_of_a_group_appears_equally_often_over_epochs(share, n_labelled):
    n, batch, epochs = 330, 16, 7
    mask = _mask(n, n_labelled, seed=1)
    rows = torch.cat([epoch_batches(n, batch, 3, epoch, mask, share).reshape(-1) for epoch in range(epochs)])
    counts = Counter(rows.tolist())
    k = round(share * batch)
    for group, slots in ((mask, k), (~mask, batch - k)):
        size, drawn = int(group.sum()), slots * (n // batch) * epochs
        seen = [counts.get(row, 0) for row in torch.nonzero(group).flatten().tolist()]
        # Passes of shuffles: every row is drawn floor or ceil of (slots drawn / rows) times, none starved.
        assert set(seen) <= {drawn // size, -(-drawn // size)} and min(seen) >= 1


def test_every_row_labelled_is_uniform_up_to_order():
    n, batch = 96, 12
    mask = torch.ones(n, dtype=torch.bool)
    rows = torch.cat([epoch_batches(n, batch, 0, epoch, mask, 0.5).reshape(-1) for epoch in range(3)])
    assert sorted(rows.tolist()) == sorted(list(range(n)) * 3)


def test_the_order_is_seeded_and_each_epoch_differs():
    mask = _mask(200, 30)
    first = epoch_batches(200, 20, 5, 2, mask, 0.4)
    assert torch.equal(first, epoch_batches(200, 20, 5, 2, mask, 0.4))
    assert not torch.equal(first, epoch_batches(200, 20, 6, 2, mask, 0.4))
    assert not torch.equal(first, epoch_batches(200, 20, 5, 3, mask, 0.4))


def test_labelled_per_batch_rounds_half_up_with_at_least_one():
    assert labelled_per_batch(0.0, 64, 10) == 0
    assert labelled_per_batch(0.25, 10, 100) == 3  # 2.5 -> 3
    assert labelled_per_batch(0.001, 64, 100) == 1
    assert labelled_per_batch(0.5, 64, 5) == 5


LEVELS = [LabelLevel("coarse", ["a", "b"]), LabelLevel("fine", ["a1", "a2", "b1"])]


def test_labelled_rows_and_errors():
    fine = torch.tensor([0, -1, 2, -1])
    tags = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    split = LabeledSplit(torch.zeros(4, 2), {"coarse": torch.tensor([0, 1, 1, 0]), "fine": fine, "tags": tags})
    assert labelled_mask(split, LEVELS, 0.5, None).tolist() == [True, False, True, False]
    assert labelled_mask(split, LEVELS, 0.0, "fine") is None
    multi = [*LEVELS, LabelLevel("tags", ["x", "y"], multi_label=True)]
    assert labelled_mask(split, multi, 0.5, "tags").tolist() == [True, False, True, False]
    with pytest.raises(ConfigError, match=r"train.labelled_level='fien' .* \(did you mean 'fine'\?\)"):
        labelled_mask(split, LEVELS, 0.5, "fien")
    split.targets["fine"] = torch.full((4,), -1)
    with pytest.raises(DataError, match=r"train.labelled_share=0.5 .* no training row has a 'fine' label"):
        labelled_mask(split, LEVELS, 0.5, None)
    for share in ("1.5", "-0.1"):
        with pytest.raises(ConfigError, match=rf"train.labelled_share must be in \[0.0, 1.0\], got {share}"):
            load_config(None, [f"train.labelled_share={share}"])


# --- through the trainer: a small table whose finest labels are mostly unknown ---------------------------------
TABLE = str(ROOT / "configs" / "features_table.yaml")
QUICK = ["train.epochs=3", "train.threads=1", "train.labelled_share=0.5", "eval.embedding_map=none",
         "train.tensorboard=false"]


def _trainer(out: Path, *overrides: str) -> Trainer:
    """A trainer on the table with the finest label of two rows in three removed (as coarse-only labels)."""
    config = load_config(TABLE, [*QUICK, *overrides])
    run = build_run(config, out, progress=False)
    fine = run.dataset.train.targets["condition"]
    fine[torch.arange(len(fine)) % 3 != 0] = -1
    out.mkdir(exist_ok=True)
    return Trainer(run, progress=False)


def _history(trainer: Trainer) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in trainer.state["history"]]


def _recorded(trainer: Trainer) -> list[torch.Tensor]:
    """The row indices of every step the trainer takes (its own slice of each global batch)."""
    seen: list[torch.Tensor] = []
    original = trainer._step
    trainer._step = lambda index: (seen.append(index.clone()), original(index))[1]
    return seen


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_weights_and_log(tmp_path):
    reference = _trainer(tmp_path / "reference")
    seen = _recorded(reference)
    reference.train()
    labelled = reference.labelled
    assert len(seen) == 3 * reference.steps_per_epoch  # the step count is the uniform batches'
    assert all(int(labelled[index].sum()) == 8 for index in seen)  # round(0.5 * 16) rows labelled at 'condition'

    interrupted = _trainer(tmp_path / "interrupted")
    stop_at = interrupted.steps_per_epoch + 1  # mid-way through the second epoch
    interrupted.step_callbacks.append(lambda step, _: os.kill(os.getpid(), signal.SIGINT) if step == stop_at else None)
    with pytest.raises(Interrupted):
        interrupted.train()
    assert interrupted.state["global_step"] == stop_at
    resumed = _trainer(tmp_path / "interrupted")
    resumed.restore(tmp_path / "interrupted" / "checkpoints" / "last.pt")
    resumed.train()
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert _history(reference) == _history(resumed)


def _rank(rank: int, world: int, port: int, out: str) -> None:
    """One process of a 2-process run at train.batch_size=8: its steps' rows and the logged history."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    join_local_group(rank, world, port)
    try:
        trainer = _trainer(Path(out) / "two", "train.batch_size=8")
        seen = _recorded(trainer)
        trainer.train()
        torch.save({"rows": seen, "history": _history(trainer)}, Path(out) / f"rank{rank}.pt")
    finally:
        shutdown_distributed()


@pytest.mark.slow
def test_two_processes_each_get_their_part_and_train_like_one(tmp_path):
    context = mp.start_processes(_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 120
    try:
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            assert time.monotonic() < deadline, "the 2 gloo processes did not finish in 120 s"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    one = _trainer(tmp_path / "one")  # batch 16 in one process: the same global batches
    seen = _recorded(one)
    one.train()
    labelled = one.labelled
    assert len(ranks[0]["rows"]) == len(seen) == 3 * one.steps_per_epoch
    for step, rows in enumerate(seen):
        assert torch.equal(torch.cat([ranks[0]["rows"][step], ranks[1]["rows"][step]]), rows)
        assert [int(labelled[r["rows"][step]].sum()) for r in ranks] == [4, 4]  # 8 labelled rows, 4 per process
    for a, b in zip(_history(one), ranks[0]["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
