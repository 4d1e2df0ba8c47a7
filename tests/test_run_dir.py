"""Run folders: mlcl writes only into folders it created, and a half-created one can start again."""

from __future__ import annotations

import pytest

from mlcl.errors import CheckpointError, ConfigError
from mlcl.train.run_dir import MARKER, create_run_dir, open_run_dir, prepare_resume


def test_a_new_or_empty_folder_is_created_and_marked(tmp_path):
    for folder in (tmp_path / "new" / "run", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        assert create_run_dir(folder) == folder and (folder / MARKER).is_file()


@pytest.mark.parametrize("out", ["", " "])
def test_an_empty_out_is_refused(out):
    with pytest.raises(ConfigError, match="--out is empty"):
        create_run_dir(out)


def test_a_folder_with_the_users_files_is_refused_and_left_alone(tmp_path):
    (tmp_path / "config.yaml").write_text("# my own config\nseed: 1\n")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"already holds files mlcl did not write \(config.yaml, notes.txt\)"):
        create_run_dir(tmp_path)
    assert (tmp_path / "config.yaml").read_text() == "# my own config\nseed: 1\n"
    assert not (tmp_path / MARKER).exists()


def test_a_file_or_a_folder_inside_a_file_is_refused(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        create_run_dir(tmp_path / "a_file")
    with pytest.raises(ConfigError, match="inside a file"):
        create_run_dir(tmp_path / "a_file" / "run")


def test_a_folder_under_proc_is_one_line():
    with pytest.raises(ConfigError, match="cannot write the run folder /proc/mlcl-run"):
        create_run_dir("/proc/mlcl-run")


def test_an_existing_run_is_refused_with_the_command_that_continues_it(tmp_path):
    run = create_run_dir(tmp_path / "run")
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match=f"already holds a run; continue it with mlcl train --resume {run}"):
        create_run_dir(run)
    (run / MARKER).unlink()  # a run of an older mlcl is recognised by its last.pt
    with pytest.raises(ConfigError, match=f"already holds a run; continue it with mlcl train --resume {run}"):
        create_run_dir(run)


def test_a_run_stopped_before_its_first_checkpoint_starts_anew_with_out(tmp_path):
    run = create_run_dir(tmp_path / "run")
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.pt").write_bytes(b"from the killed attempt")
    (run / "checkpoints" / ".last.pt.abc123.tmp").write_bytes(b"half written")
    assert create_run_dir(run) == run
    assert list((run / "checkpoints").iterdir()) == []


def test_resume_tidies_a_run_killed_before_its_first_checkpoint(tmp_path):
    run = create_run_dir(tmp_path / "run")
    (run / "config.yaml").write_text("seed: 0\n")
    checkpoints = run / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "best.pt").write_bytes(b"from the killed attempt")
    (checkpoints / ".last.pt.abc123.tmp").write_bytes(b"half written")
    assert prepare_resume(run) is False
    assert list(checkpoints.iterdir()) == []
    (checkpoints / "last.pt").write_bytes(b"x")
    (checkpoints / "best.pt").write_bytes(b"y")
    (checkpoints / ".best.pt.def456.tmp").write_bytes(b"half written")
    assert prepare_resume(run) is True
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.pt", "last.pt"]


def test_only_runs_mlcl_made_are_opened(tmp_path):
    with pytest.raises(CheckpointError, match="no config.yaml"):
        open_run_dir(tmp_path)
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(CheckpointError, match="mlcl continues only runs it created"):
        open_run_dir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")  # a run of an older mlcl, without the marker
    assert open_run_dir(tmp_path) is True
