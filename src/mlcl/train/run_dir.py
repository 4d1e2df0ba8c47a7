"""Run folders that mlcl owns, so it never writes over files it did not write.

``mlcl train --out DIR`` creates ``DIR`` (or takes an empty one) and marks it with :data:`MARKER`. mlcl
writes only into marked folders: a folder holding anything else is refused, and so is a folder that
holds a run already (continue it with ``--resume``). A run stopped before its first complete
``last.pt`` has nothing to continue: ``mlcl train --resume DIR`` starts it again from its saved config,
and ``mlcl train --out DIR`` starts it again with a new one. Temp files a kill left behind (``.*.tmp``)
are removed when a run starts or resumes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mlcl.errors import CheckpointError, ConfigError

MARKER = ".mlcl-run"
CHECKPOINTS = "checkpoints"


def is_writer() -> bool:
    """Whether this process writes the run folder (rank 0 of a torchrun job, or the only process)."""
    return int(os.environ.get("RANK", "0")) == 0


def _listing(folder: Path, limit: int = 3) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _last_checkpoint(folder: Path) -> Path:
    return folder / CHECKPOINTS / "last.pt"


def create_run_dir(out: str | Path) -> Path:
    """The folder for a new run: created (or an empty one taken) and marked as mlcl's.

    A one-line :class:`ConfigError` for an empty ``--out``, a file, a folder that holds other files or
    another run, or a folder that cannot be written.
    """
    if str(out).strip() == "":
        raise ConfigError("--out is empty; give the folder the run should be written to (a new or empty one)")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file; give a folder for the run")
    if _last_checkpoint(folder).is_file():
        raise ConfigError(f"{folder} already holds a run; continue it with mlcl train --resume {folder} or choose "
                          "another --out")
    if (folder / MARKER).is_file():  # a run of ours stopped before its first checkpoint: start it anew
        _remove_partial_run(folder)
        return folder
    if folder.is_dir() and any(folder.iterdir()):
        raise ConfigError(f"--out {folder} already holds files mlcl did not write ({_listing(folder)}); mlcl writes "
                          "only into a new or empty folder: choose another --out")
    if is_writer():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / MARKER).write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n",
                                         encoding="utf-8")
        except (FileExistsError, NotADirectoryError):
            raise ConfigError(f"--out {folder} is inside a file; give a folder for the run") from None
        except OSError as exc:
            raise ConfigError(f"cannot write the run folder {folder} ({exc.strerror or exc.__class__.__name__}); "
                              "choose an --out you can write to") from None
    return folder


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete the ``.*.tmp`` files a killed checkpoint write left in ``folder`` and its checkpoints;
    returns them."""
    stale = [p for where in (folder, folder / CHECKPOINTS) if where.is_dir() for p in where.glob(".*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _remove_partial_run(folder: Path) -> None:
    """Delete the temp files and checkpoints of a run that has no ``last.pt`` (nothing to continue)."""
    if is_writer():
        remove_temp_files(folder)
        if (folder / CHECKPOINTS).is_dir():
            for partial in (folder / CHECKPOINTS).glob("*.pt"):
                partial.unlink()


def open_run_dir(run_dir: str | Path) -> bool:
    """Check that ``run_dir`` is a run mlcl made (its marker, or the ``config.yaml`` and ``last.pt`` of
    a run of an older mlcl); returns whether it has a checkpoint (``last.pt``) to continue from."""
    folder = Path(run_dir)
    if not (folder / "config.yaml").is_file():
        raise CheckpointError(f"{folder} is not a run folder (no config.yaml); give the --out folder of an mlcl "
                              "train run")
    resumable = _last_checkpoint(folder).is_file()
    if not (resumable or (folder / MARKER).is_file()):
        raise CheckpointError(f"{folder} holds a config.yaml but no mlcl run (no {MARKER} marker, no "
                              f"{CHECKPOINTS}/last.pt); mlcl continues only runs it created")
    return resumable


def prepare_resume(run_dir: str | Path) -> bool:
    """:func:`open_run_dir` for ``--resume``, which also removes the temp files a kill left behind and,
    when the run has no ``last.pt`` yet (killed before its first complete one), its partial checkpoints:
    it then starts again from its saved config. Returns whether there is a checkpoint to continue from."""
    folder = Path(run_dir)
    resumable = open_run_dir(folder)
    if resumable:
        if is_writer():
            remove_temp_files(folder)
    else:
        _remove_partial_run(folder)
    return resumable
