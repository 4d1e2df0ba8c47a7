"""Interruption and resume, atomic and corrupt checkpoints, non-finite losses, one-line user errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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
    assert "already holds files mlcl did not write (checkpoints)" in capsys.readouterr().err


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


# ------------------------------------------------------------------ loading never runs code, never overwrites

def run_once(tmp_path_factory, name: str, *overrides: str) -> Path:
    """A finished one-epoch Fashion-MNIST run (for tests that only read it or copy it)."""
    run = tmp_path_factory.mktemp(name) / "run"
    assert main(train_args(run, "train.epochs=1", "data.options.limit_train=256", *overrides)) == 0
    return run


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    return run_once(tmp_path_factory, "finished")


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


@pytest.mark.slow
@needs_fashion
@pytest.mark.parametrize("command", [["eval", "{run}", "--quiet"], ["train", "--resume", "{run}", "--quiet"],
                                     ["embed", "{run}", "--out", "{tmp}/e.npy"]])
def test_a_crafted_checkpoint_never_runs_its_payload(finished_run, tmp_path, capsys, command):
    from test_checkpoint_safety import craft

    run = copy_run(finished_run, tmp_path / "run")
    marker = tmp_path / "payload-ran"
    for name in ("last.pt", "best.pt"):
        craft(run / "checkpoints" / name, marker)
    capsys.readouterr()
    assert main([part.format(run=run, tmp=tmp_path) for part in command]) == 2
    err = capsys.readouterr().err.strip()
    assert not marker.exists()
    assert err.startswith("mlcl: error:") and "could run code" in err and "\n" not in err


@needs_fashion
def test_out_never_overwrites_the_users_files(tmp_path, capsys, monkeypatch):
    own = "# my own config, with comments\nseed: 1\n"
    (tmp_path / "config.yaml").write_text(own)
    monkeypatch.chdir(tmp_path)
    for out in (".", ""):
        assert main(["train", "--config", QUICKSTART, "--out", out, "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mlcl: error:") and "\n" not in err
    assert (tmp_path / "config.yaml").read_text() == own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


@needs_fashion
@pytest.mark.parametrize("out", ["/proc/mlcl-run", "/proc/self/mlcl/run"])
def test_an_unwritable_out_is_one_line(capsys, out):
    assert main(train_args(Path(out), "train.epochs=1")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mlcl: error: cannot write the run folder {out}") and "\n" not in err


@pytest.mark.slow
@needs_fashion
def test_a_run_killed_before_its_first_checkpoint_resumes_or_restarts(tmp_path, capsys):
    from mlcl.train.config import load_config
    from mlcl.train.loop import start_run

    run = tmp_path / "run"
    config = load_config(QUICKSTART, [*SMALL, "train.epochs=1", "data.options.limit_train=256"])
    # what kill -9 during the first best.pt write leaves: the config, a complete or partial best.pt, no last.pt
    start_run(config, run, progress=False).save("best.pt")
    (run / "checkpoints" / ".best.pt.x1y2z3.tmp").write_bytes(b"half written")
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "starting it again from its saved config" in capsys.readouterr().err
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert load_checkpoint(run / "checkpoints" / "last.pt")["loop"]["epoch"] == 1
    again = tmp_path / "again"
    start_run(config, again, progress=False).save("best.pt")  # ... or a new run in the same --out
    assert main(train_args(again, "train.epochs=1", "data.options.limit_train=256")) == 0


# ------------------------------------------------------------------ damaged checkpoints and changed data

@pytest.mark.slow
@needs_fashion
@pytest.mark.parametrize("damage, message", [
    (lambda s: s.pop("optimizer"), "lacks the 'optimizer' part"),
    (lambda s: s["loop"].pop("epoch"), "lacks the 'loop.epoch' part"),
    (lambda s: s["model"].pop(next(iter(s["model"]))), "lacks the model tensor"),
    (lambda s: s["model"].update({k: torch.zeros(3) for k in list(s["model"])[:1]}), "has shape (3,) but this run's"),
    (lambda s: s["rng"].update(views=torch.zeros(7, dtype=torch.uint8)), "random-number state this run cannot restore"),
    (lambda s: s["rng"].update(torch=["not a state"]), "random-number state this run cannot restore"),
])
def test_a_damaged_checkpoint_is_one_line_on_resume(finished_run, tmp_path, capsys, damage, message):
    run = copy_run(finished_run, tmp_path / "run")
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    damage(state)
    save_checkpoint(state, run / "checkpoints" / "last.pt")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlcl: error:") and message in err and "\n" not in err


@pytest.mark.slow
@needs_fashion
def test_a_corrupt_best_checkpoint_says_delete_it_and_then_eval_works(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:100])
    capsys.readouterr()
    assert main(["eval", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "best.pt is corrupt" in err and "delete it" in err and "another --out" not in err
    best.unlink()
    assert main(["eval", str(run), "--quiet"]) == 0


def feature_table(path: Path, classes: tuple[str, ...] = ("a1", "a2", "b1", "b2"), rows: int = 24) -> Path:
    """A CSV of 4 numeric features and two label levels (coarse = the fine name's first letter)."""
    generator = np.random.default_rng(0)
    lines = ["x0,x1,x2,x3,coarse,fine"]
    for i, fine in enumerate(classes):
        lines += [",".join(f"{v:.5f}" for v in generator.normal(i, 1.0, 4)) + f",{fine[0]},{fine}" for _ in range(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def table_args(out: Path, data: Path, *overrides: str) -> list[str]:
    settings = ["data.name=table", f"data.path={data}",
                "data.options={input: [x0, x1, x2, x3], levels: [coarse, fine]}",
                "model.encoder=mlp", "model.encoder_options={}", "model.proj_hidden=16", "model.proj_dim=8",
                "train.batch_size=16", "train.epochs=1", "eval.embedding_map=none", "eval.knn_k=3",
                "train.monitor_train_samples=50", "train.threads=1", *overrides]
    return quickstart_args(out, *settings)


@pytest.mark.slow
def test_eval_and_resume_on_changed_data_stop_naming_the_change(tmp_path, capsys):
    data, run = feature_table(tmp_path / "d.csv"), tmp_path / "run"
    assert main(table_args(run, data, "method.classifier_weight=0.5")) == 0
    metrics = (run / "metrics.json").read_text()
    feature_table(data, classes=("a1", "a2", "b1", "b2", "b3"))  # the file gained a class
    capsys.readouterr()
    for command in (["eval", str(run), "--quiet"], ["train", "--resume", str(run), "--quiet"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mlcl: error: the data changed since") and f"the data file {data} changed" in err
        assert "--allow-data-change" in err and "\n" not in err
    assert (run / "metrics.json").read_text() == metrics  # nothing re-evaluated on other data
    # told to go on, the classifier for 5 classes cannot take the 4-class weights: one line, not a traceback
    assert main(["eval", str(run), "--quiet", "--allow-data-change"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "warning: the data changed" in err[0]
    assert err[-1].startswith("mlcl: error:") and "has shape (4," in err[-1] and "number of classes" in err[-1]


@pytest.mark.slow
def test_allow_data_change_evaluates_on_the_new_data(tmp_path, capsys):
    data, run = feature_table(tmp_path / "d.csv"), tmp_path / "run"
    assert main(table_args(run, data)) == 0
    feature_table(data, rows=30)  # more rows of the same classes
    assert main(["eval", str(run), "--quiet", "--allow-data-change"]) == 0
    assert "warning: the data changed" in capsys.readouterr().err


@pytest.mark.slow
def test_huge_features_name_the_data_not_the_learning_rate(tmp_path, capsys):
    data = feature_table(tmp_path / "d.csv")
    text = data.read_text().splitlines()
    text[1:] = [f"3e38,{line.split(',', 1)[1]}" for line in text[1:]]
    data.write_text("\n".join(text) + "\n")
    assert main(table_args(tmp_path / "run", data)) == 2
    err = capsys.readouterr().err
    assert "inputs reach 3e+38" in err and "scale the data" in err and "train.lr" not in err


# ------------------------------------------------------------------ signals from start-up to the last line

def wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.time() + timeout_s
    while not path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, f"the command ended before {path.name} appeared: {process.communicate()}"


@pytest.mark.slow
@needs_fashion
def test_sigterm_while_the_data_loads_is_one_line_and_the_run_restarts(tmp_path):
    run = tmp_path / "run"
    process = cli(*train_args(run, "train.epochs=1", "data.options.limit_train=256"))
    wait_for(run / "config.yaml", process)  # written before the data is loaded
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 130, stderr
    assert stderr.strip() == (f"mlcl: SIGTERM received while the run was being prepared; nothing was trained: start it "
                              f"again with mlcl train --resume {run}")
    resumed = subprocess.run([sys.executable, "-m", "mlcl", "train", "--resume", str(run), "--quiet"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "metrics.json").is_file()


@pytest.mark.slow
@needs_fashion
def test_sigint_during_evaluation_says_how_to_evaluate(tmp_path):
    run = tmp_path / "run"
    process = cli(*train_args(run, "train.epochs=1", "data.options.limit_train=256"))
    wait_for(run / "log.csv", process)  # the last epoch is written; evaluation follows
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "training is complete" in lines[0] and f"mlcl eval {run}" in lines[0]
    assert not (run / "metrics.json").exists()
    assert main(["eval", str(run), "--quiet"]) == 0


@pytest.mark.slow
@needs_fashion
def test_a_signal_during_the_last_epochs_monitor_is_not_swallowed(tmp_path):
    from mlcl.train.config import load_config
    from mlcl.train.loop import Interrupted, start_run

    config = load_config(QUICKSTART, [*SMALL, "train.epochs=1", "data.options.limit_train=256"])
    trainer = start_run(config, tmp_path / "run", progress=False)
    # runs at the end of the last epoch, as a Ctrl-C during its monitor or checkpoint would arrive
    trainer.epoch_callbacks.append(lambda *_: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(Interrupted, match=f"SIGINT received after the last epoch; .* mlcl eval {tmp_path / 'run'}"):
        trainer.train()
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["loop"]["epoch"] == 1
