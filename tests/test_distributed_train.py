"""Data-parallel training end to end: ``mlcl train --nproc 2`` in real processes (gloo on the CPU).

A 2-process run at ``train.batch_size=b`` computes the steps of a 1-process run at ``2b`` (global-batch
BatchNorm, rank-sliced augmentation, the loss gathering all ranks' keys), so its per-epoch losses agree
up to float rounding (LOSS_RTOL; why 1e-4: docs/measurements.md); it writes the same files, from rank 0
only; an interrupted run resumes to the same weights; and a failing or killed rank stops the run with one
line instead of a hang. The tests that start processes are ``slow``.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES, cli, needs_fashion
from conftest import train_args as quickstart_args

from mlcl.cli import main
from mlcl.data.augment import ImageAugment, make_views
from mlcl.train import ddp, launch, runtime
from mlcl.train.checkpoint import load_checkpoint
from mlcl.train.config import AugmentConfig
from mlcl.train.run_dir import MARKER
from mlcl.train.views import ViewMaker

PER_RANK = 32  # train.batch_size of each of the 2 processes; the 1-process run uses 2 * PER_RANK
SMALL = [
    "data.options.limit_train=512", "data.options.val_size=200", "data.options.limit_test=300",
    "model.encoder_options.width=8", "model.proj_hidden=32", "model.proj_dim=16", "train.epochs=3",
    "train.monitor_train_samples=300", "eval.embedding_map=pca", "eval.map_points=200",
]
LOSS_RTOL = 1e-4
TIMEOUT_S = 180  # no test waits longer for a run: a hang fails instead of blocking the suite


def train_args(out: Path, batch: int, *extra: str) -> list[str]:
    return quickstart_args(out, *SMALL, f"train.batch_size={batch}", *extra)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    return process.returncode, stdout, stderr


def log_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def files(run: Path) -> set[str]:
    """The run's files; a TensorBoard event file's name (time, host, pid) becomes its folder's."""
    names = (str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    return {name.split("events.out.tfevents.")[0] + "events" if "events.out.tfevents." in name else name
            for name in names}


def wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.time() + TIMEOUT_S
    while not path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"{path} never appeared"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same training, in 1 process at batch 2b and in 2 processes at b each."""
    base = tmp_path_factory.mktemp("ddp")
    two = cli(*train_args(base / "two", PER_RANK), "--nproc", "2")
    assert main(train_args(base / "one", 2 * PER_RANK)) == 0
    code, stdout, stderr = finish(two)
    assert code == 0, stderr
    return base / "one", base / "two", stdout, stderr


@pytest.mark.slow
@needs_fashion
def test_two_processes_write_the_files_of_one_from_rank_0_only(runs):
    one, two, stdout, stderr = runs
    assert files(two) == files(one)
    assert {"log.csv", "metrics.json", "curves.png", "embeddings.png", "checkpoints/best.pt"} <= files(two)
    assert stdout.count("written to") == 1 and stdout.count("linear_top1") == 2  # one summary table
    assert "Traceback" not in stderr and "[rank" not in stderr
    checkpoint = load_checkpoint(two / "checkpoints" / "last.pt")
    assert checkpoint["loop"]["world"] == 2
    # each rank has its own stream of torch's generator (dropout, token masking), saved for the resume
    streams = checkpoint["rng"]["torch"]
    assert len(streams) == 2 and not torch.equal(streams[0], streams[1])
    assert len(load_checkpoint(one / "checkpoints" / "last.pt")["rng"]["torch"]) == 1


@pytest.mark.slow
@needs_fashion
def test_two_processes_train_like_one_process_at_the_same_global_batch(runs):
    one, two, _, _ = runs
    rows_one, rows_two = log_rows(one), log_rows(two)
    assert len(rows_one) == len(rows_two) == 3 and rows_one[0].keys() == rows_two[0].keys()
    for a, b in zip(rows_one, rows_two):
        for key in ("loss", "loss_coarse", "loss_fine", "lr"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=LOSS_RTOL), (a["epoch"], key)


@pytest.mark.slow
@needs_fashion
def test_an_interrupted_two_process_run_resumes_to_the_same_weights(runs, tmp_path, capsys):
    _, reference, _, _ = runs
    run = tmp_path / "interrupted"
    process = cli(*train_args(run, PER_RANK), "--nproc", "2")
    wait_for(run / "log.csv", process)  # the first epoch is done
    process.send_signal(signal.SIGINT)  # Ctrl-C reaches the launcher, which forwards it to the workers
    code, _, stderr = finish(process)
    assert code == 130, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("mlcl:")]
    assert len(lines) == 1 and f"mlcl train --resume {run} --nproc 2" in lines[0], stderr
    assert "Traceback" not in stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["loop"]["epoch"] < 3

    # The global batch is train.batch_size x processes: another process count is refused.
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "resume it with --nproc 2" in capsys.readouterr().err

    code, _, stderr = finish(cli("train", "--resume", str(run), "--quiet", "--nproc", "2"))
    assert code == 0, stderr
    expected = load_checkpoint(reference / "checkpoints" / "last.pt")["model"]
    actual = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert [r["loss"] for r in log_rows(run)] == [r["loss"] for r in log_rows(reference)]


@pytest.mark.slow
def test_two_processes_train_a_frozen_text_run_like_one_process(tmp_path, tiny_model_dir, monkeypatch):
    # Rank 0 embeds the texts and fills the disk cache; rank 1 reads it. The MLP then trains on the
    # global batch exactly as one process does.
    monkeypatch.setenv("MLCL_CACHE_DIR", str(tmp_path / "cache"))
    def args(out: Path, batch: int) -> list[str]:
        text = ["data.name=table", f"data.path={EXAMPLES / 'tiny_hierarchy.csv'}",
                "data.options={input: text, levels: [coarse, fine], test_fraction: 0.34, val_fraction: 0.0}",
                "model.encoder=hf", f"model.encoder_options={{model_name_or_path: {tiny_model_dir}, hidden: [16], "
                "out_dim: 8}", "model.proj_hidden=16", "model.proj_dim=8", "train.epochs=3",
                f"train.batch_size={batch}", "eval.embedding_map=none", "train.monitor_train_samples=8", "eval.knn_k=2"]
        return quickstart_args(out, *text)

    two = cli(*args(tmp_path / "two", 2), "--nproc", "2")
    assert main(args(tmp_path / "one", 4)) == 0
    code, _, stderr = finish(two)
    assert code == 0, stderr
    rows_one, rows_two = log_rows(tmp_path / "one"), log_rows(tmp_path / "two")
    assert len(rows_one) == len(rows_two) == 3
    for a, b in zip(rows_one, rows_two):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=LOSS_RTOL), a["epoch"]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2  # train and test split, embedded once each


@pytest.mark.slow
@needs_fashion
def test_a_rank_that_fails_stops_the_others_with_one_line(tmp_path):
    # A real rank-0-only failure: rank 0 alone writes log.csv, here a directory. Rank 1 waits for rank 0
    # at the end of the epoch and must not hang there.
    run = tmp_path / "run"
    (run / "log.csv").mkdir(parents=True)
    (run / MARKER).write_text("{}")  # an mlcl run folder that never got a checkpoint: --out may take it
    code, _, stderr = finish(cli(*train_args(run, PER_RANK), "--nproc", "2"))  # a hang fails at TIMEOUT_S
    assert code == 1
    lines = [line for line in stderr.splitlines() if line.startswith("mlcl:")]
    assert len(lines) == 1 and lines[0].startswith("mlcl: error: rank 0 failed with IsADirectoryError"), stderr
    assert "[rank1]" not in stderr  # rank 1 only lost its peer: it says nothing
    assert "[rank0]: IsADirectoryError" in stderr  # the failing rank's traceback is shown
    # Rank 1 stopped at the end of epoch 1 with rank 0, instead of training on alone.
    assert load_checkpoint(run / "checkpoints" / "last.pt")["loop"]["epoch"] == 1


def worker_with_rank(launcher: int, rank: int) -> int:
    """The pid of the launcher's child process that has ``RANK=rank`` in its environment (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0") if parent == launcher else []
        except (OSError, IndexError, ValueError):
            continue
        if f"RANK={rank}".encode() in environ:
            found.append(int(stat.parent.name))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
@needs_fashion
def test_a_killed_rank_stops_the_run(tmp_path):
    if not Path("/proc/self/environ").exists():
        pytest.skip("finds the worker processes through /proc")
    run = tmp_path / "run"
    process = cli(*train_args(run, 16, "train.epochs=50"), "--nproc", "2")
    try:
        wait_for(run / "log.csv", process)
        os.kill(worker_with_rank(process.pid, 1), signal.SIGKILL)  # as the out-of-memory killer would
        epochs_at_kill = len(log_rows(run))
        code, _, stderr = finish(process)  # a hang fails at TIMEOUT_S
        # Rank 0 stops at its next collective: at most the epoch under way is finished, not the 50.
        assert len(log_rows(run)) <= epochs_at_kill + 1
    finally:
        if process.poll() is None:  # the launcher stops its workers on SIGTERM
            process.terminate()
            process.communicate(timeout=TIMEOUT_S)
    assert code == 1
    lines = [line for line in stderr.splitlines() if line.startswith("mlcl:")]
    assert lines == ["mlcl: error: rank 1 was killed by SIGKILL (out of memory?); the other processes were stopped"]
    assert "Traceback" not in stderr


@pytest.mark.slow
@needs_fashion
def test_a_user_error_on_every_rank_is_one_line(tmp_path):
    code, _, stderr = finish(cli(*train_args(tmp_path / "run", 300), "--nproc", "2"))
    assert code == 2
    assert stderr.strip().splitlines() == [
        "mlcl: error: train.batch_size=300 x 2 process(es) is more than the 512 training samples; "
        "lower train.batch_size"
    ]


# ---------------------------------------------------------------------- the pieces, in one process
def test_each_rank_augments_its_rows_of_the_global_batch():
    images = torch.rand(6, 1, 28, 28)
    augment = ImageAugment(crop_padding=2, hflip=True, erase_prob=0.5, noise_std=0.1, brightness=0.2)
    whole = make_views(images, 2, augment, torch.Generator().manual_seed(3))
    config = AugmentConfig(crop_padding=2, hflip=True, erase_prob=0.5, noise_std=0.1)
    expected = ViewMaker("image", 2, config, torch.Generator().manual_seed(3))(images)
    for world in (2, 3):
        b = 6 // world
        parts = []
        for rank in range(world):
            views = ViewMaker("image", 2, config, torch.Generator().manual_seed(3))
            parts.append(ddp.distribute_views(views, rank, world)(images[rank * b : (rank + 1) * b]))
        assert torch.equal(torch.cat(parts), expected)
    assert whole.shape == (6, 2, 1, 28, 28)

    features = torch.randn(6, 5)
    expected = ViewMaker("features", 2, config, torch.Generator().manual_seed(4))(features)
    parts = [ddp.distribute_views(ViewMaker("features", 2, config, torch.Generator().manual_seed(4)), r, 2)(
        features[r * 3 : (r + 1) * 3]) for r in range(2)]
    assert torch.equal(torch.cat(parts), expected)


def test_global_batchnorm_conversion_keeps_the_state_and_is_batchnorm_without_a_group():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 8), torch.nn.BatchNorm1d(8))
    x = torch.randn(5, 1, 8, 8)
    expected = model(x)
    keys, weight = list(model.state_dict()), model[1].weight
    converted = ddp.sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(converted[1], ddp.GlobalBatchNorm) and isinstance(converted[4], ddp.GlobalBatchNorm)
    assert list(converted.state_dict()) == keys and converted[1].weight is weight
    assert torch.allclose(converted(x), expected, atol=1e-6)


def test_threads_are_shared_out_between_local_processes(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert runtime.configure_threads(None) == max(1, runtime.cpu_cores() // 2)
        assert runtime.configure_threads(3) == 3
    finally:
        torch.set_num_threads(before)


def test_the_failure_summary_names_the_rank_that_failed_first():
    crash = {"rank": 1, "kind": "crash", "message": "RuntimeError: boom", "time": 10.0}
    lost = {"rank": 0, "kind": "lost_peer", "message": "RuntimeError: Connection closed by peer", "time": 10.5}
    assert launch.summarise_failure({0: lost, 1: crash}, {0: 1, 1: 1}, 2) == (
        "mlcl: error: rank 1 failed with RuntimeError: boom (traceback above); the other processes were stopped", 1)
    error = {"kind": "error", "message": "train.lr must be > 0", "time": 1.0}
    everywhere = {r: {**error, "rank": r} for r in range(4)}
    assert launch.summarise_failure(everywhere, {r: 2 for r in range(4)}, 4) == (
        "mlcl: error: train.lr must be > 0", 2)
    assert launch.summarise_failure({2: {**error, "rank": 2}}, {2: 2, 0: -15}, 4)[0] == (
        "mlcl: error: rank 2: train.lr must be > 0")
    assert launch.summarise_failure({0: lost}, {0: 1, 1: -9}, 2)[0].startswith(
        "mlcl: error: rank 1 was killed by SIGKILL")
    stopped = {"kind": "interrupted", "time": 1.0}
    reports = {0: {**stopped, "rank": 0, "message": "a signal on another rank received: ..."},
               1: {**stopped, "rank": 1, "message": "SIGINT received: ..."}}
    assert launch.summarise_failure(reports, {}, 2) == ("mlcl: SIGINT received: ...", 130)
