"""Interruption and resume, atomic and corrupt checkpoints, non-finite losses, one-line user errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import QUICKSTART, ROOT, cli, needs_fashion
from conftest import train_args as quickstart_args

from mlcl.cli import main
from mlcl.errors import CheckpointError, ConfigError
from mlcl.train.checkpoint import load_checkpoint, save_checkpoint

SMALL = [
    "data.options.limit_train=1024", "data.options.val_size=200", "data.options.limit_test=300",
    "train.batch_size=64", "eval.embedding_map=none", "model.encoder_options.width=8",
    "model.proj_hidden=32", "model.proj_dim=16", "train.threads=1", "train.monitor_train_samples=500",
]


def train_args(out: Path, *overrides: str) -> list[str]:
    return quickstart_args(out, *SMALL, *overrides)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


@pytest.mark.slow
@needs_fashion
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_resumes_to_the_same_weights_and_metrics(tmp_path, signum):
    reference = tmp_path / "reference"
    assert subprocess.run([sys.executable, "-m", "mlcl", *train_args(reference, "train.epochs=3")],
                          capture_output=True, text=True, cwd=ROOT).returncode == 0

    interrupted = tmp_path / "interrupted"
    process = cli(*train_args(interrupted, "train.epochs=3"))
    first_epoch = interrupted / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not first_epoch.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 130, stderr
    assert "mlcl train --resume" in stderr and "Traceback" not in stderr
    state = load_checkpoint(first_epoch)["loop"]
    assert state["epoch"] < 3  # it really stopped before the end

    resumed = subprocess.run([sys.executable, "-m", "mlcl", "train", "--resume", str(interrupted), "--quiet"],
                             capture_output=True, text=True, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr
    expected, actual = final_weights(reference), final_weights(interrupted)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (reference, interrupted)]
    assert metrics[0]["test"] == metrics[1]["test"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"value": 1}, path)

    def crash_midway(obj, handle, *args, **kwargs):
        handle.write(b"partial bytes")
        raise KeyboardInterrupt  # a kill while writing

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"value": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["value"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_corrupt_or_foreign_checkpoint_is_reported(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"value": 1}, path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    torch.save({"weights": 1}, path)
    with pytest.raises(CheckpointError, match="not an mlcl checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.slow
@needs_fashion
def test_resume_with_a_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(run, "train.epochs=1", "data.options.limit_train=256")) == 0
    (run / "checkpoints" / "last.pt").write_bytes(b"garbage")
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlcl: error:") and "corrupt" in err and "\n" not in err


@pytest.mark.slow
@needs_fashion
def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_state(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(train_args(run, "train.epochs=2", "train.lr=1e30", "train.warmup_epochs=0"))
    err = capsys.readouterr().err
    assert code == 2
    assert "step" in err and "train.lr" in err and "temperature" in err
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


@needs_fashion
@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "trian.epochs=1"], "did you mean 'train'"),
        (["--set", "method.temperatures=[0.1,0.2,0.3]"], "3 values but there are 2 heads"),
        (["--set", "method.temperatures=[0.1,-1]"], "must be > 0"),
        (["--set", "train.epochs=many"], "train.epochs must be of type int"),
        (["--set", "data.name=fashion-mnits"], "did you mean 'fashion-mnist'"),
        (["--set", "data.fraction=0.00001"], "larger than the training set"),
        (["--set", "train.batch_size=100000"], "batch_size"),
        (["--set", "method.heads=[coarse,medium]"], "not a level"),
        (["--set", "seed=9223372036854775807"], "seed must be in [0, 4294967295], got 9223372036854775807"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    code = main(["train", "--config", QUICKSTART, "--out", str(tmp_path / "r"), "--quiet",
                 "--set", "data.options.limit_train=500", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("mlcl: error:") and message in err and "\n" not in err and "Traceback" not in err


@needs_fashion
def test_out_must_be_a_fresh_directory(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    assert main(train_args(tmp_path / "a_file", "train.epochs=1")) == 2
    assert "--out" in capsys.readouterr().err
    # another run's best.pt (its last.pt deleted) must not be evaluated as this run's
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    (old / "checkpoints" / "best.pt").write_bytes(b"another run")
    assert main(train_args(old, "train.epochs=1")) == 2
    assert "already holds a run's checkpoints" in capsys.readouterr().err


def test_missing_config_and_missing_data_file_are_reported(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    code = main(["train", "--config", QUICKSTART, "--out", str(tmp_path / "r2"), "--set",
                 "data.name=table", "--set", f"data.path={tmp_path / 'missing.csv'}",
                 "--set", "data.options={input: text, levels: [coarse, fine]}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "missing.csv" in err and "\n" not in err


def test_debug_flag_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError):
        main(["--debug", "train", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")])


@pytest.mark.slow
@needs_fashion
def test_a_checkpoint_with_another_optimiser_layout_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(run, "train.epochs=1")) == 0
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1]  # an older mlcl: one group
    state["loop"]["epoch"] = 0
    save_checkpoint(state, run / "checkpoints" / "last.pt")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlcl: error:") and "optimiser state this version cannot continue" in err
