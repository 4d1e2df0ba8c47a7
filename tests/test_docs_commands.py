"""Every shell command in README.md and docs/*.md runs as written.

Each ```bash block's commands run in order, in a fresh folder holding copies of configs/, examples/
and benchmarks/, with `mlcl`, `torchrun` and `python` on PATH meaning this checkout. Three things make
them quick without changing a command:

* `$MLCL_DATA_DIR` (where every loader looks first) holds a slice of the real Fashion-MNIST files:
  the first 6400 training and 600 test images (the quickstart holds out 5000 for validation).
* `$MLCL_SET` (extra `--set` values every `mlcl train` adds, see docs/config.md) asks for one epoch
  and short linear probes.
* Commands that install software (`bash scripts/setup.sh`, `bash scripts/quickstart.sh`, `pip install`,
  activating the virtual environment) are not run here: they need the network and a fresh machine,
  and `.ci/run` runs set-up from nothing on a clean clone. Nor are the contributor commands `.ci/run`
  runs itself: the linter and the test suite (this test is part of it).

A template that needs the reader's own values (a multi-node rendezvous address) is a ```text block.
"""

from __future__ import annotations

import gzip
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlcl.data.fashion_mnist import is_available as fashion_available

ROOT = Path(__file__).parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN_HERE = ("bash scripts/setup.sh", "bash scripts/quickstart.sh", "pip install", "source .venv/bin/activate",
                ".venv/bin/python -m pytest", ".venv/bin/ruff")
FASHION = Path("/usr/share/datasets/fashion-mnist")
SLICE = {"train": 6400, "t10k": 600}
QUICK = "train.epochs=1 eval.probe_epochs=20"
QUICKSTART = "mlcl train --config configs/quickstart.yaml --out runs/qs "  # the README's sample output is its

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not fashion_available()[0], reason="needs: apt-get install dataset-fashion-mnist")]


def shell_commands(markdown: str) -> list[str]:
    """The commands of every ```bash block, continuation lines joined, comment-only lines dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, re.S | re.M):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            pending = f"{pending}\n{line}" if pending else line.strip()
            try:
                shlex.split(pending, comments=True)  # a quoted string may span lines
            except ValueError:
                continue
            commands.append(pending)
            pending = ""
    return commands


def test_shell_commands_are_found():
    readme = shell_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "mlcl datasets" in readme[0] or any(c.startswith("mlcl datasets") for c in readme)
    joined = [c for c in readme if "--out runs/mine" in c]
    assert len(joined) == 1 and "--set model.encoder=minilm" in joined[0]  # continuation lines joined


def _idx_slice(source: Path, target: Path, count: int) -> None:
    """The first ``count`` items of an IDX file (header: magic, then one 4-byte size per dimension)."""
    data = gzip.decompress(source.read_bytes())
    dims = data[3]
    sizes = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    item = 1
    for size in sizes[1:]:
        item *= size
    header = data[:4] + count.to_bytes(4, "big") + data[8: 4 + 4 * dims]
    target.write_bytes(gzip.compress(header + data[4 + 4 * dims: 4 + 4 * dims + count * item]))


@pytest.fixture(scope="module")
def environment(tmp_path_factory) -> dict[str, str]:
    """PATH with this checkout's mlcl / torchrun / python, a sliced Fashion-MNIST, a private cache."""
    base = tmp_path_factory.mktemp("docs-env")
    data = base / "data" / "fashion-mnist"
    data.mkdir(parents=True)
    for split, count in SLICE.items():
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            name = f"{split}-{kind}.gz"
            _idx_slice(FASHION / name, data / name, count)
    bin_dir = base / "bin"
    bin_dir.mkdir()
    for name, module in (("mlcl", "-m mlcl"), ("torchrun", "-m torch.distributed.run"), ("python", "")):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" {module} "$@"\n')
        script.chmod(0o755)
    env = dict(os.environ)
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT / "src"),
               MLCL_DATA_DIR=str(base / "data"), MLCL_OFFLINE="1", MLCL_CACHE_DIR=str(base / "cache"),
               MLCL_SET=QUICK)
    return env


def _workdir(tmp_path: Path) -> Path:
    for name in ("configs", "examples", "benchmarks"):
        shutil.copytree(ROOT / name, tmp_path / name)
    return tmp_path


def _run(command: str, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(["bash", "-e", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, (f"`{command}` exited with {result.returncode}:\n{result.stdout[-3000:]}\n"
                                    f"{result.stderr[-3000:]}")
    return result.stdout


def _table_rows(text: str) -> list[tuple[str, str]]:
    """(level, metric) of each row of the results table that `mlcl train` prints."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:3] == ["level", "metric", "value"])
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        rows.append(tuple(line.split()[:2]))
    return rows


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_shell_command_runs_as_written(document, environment, tmp_path):
    workdir = _workdir(tmp_path)
    markdown = document.read_text(encoding="utf-8")
    for command in shell_commands(markdown):
        if command.startswith(NOT_RUN_HERE):
            continue
        output = _run(command, workdir, environment)
        if document.name == "README.md" and command.startswith(QUICKSTART):
            # the README's sample output of the quickstart lists the rows this command prints, in order
            sample = re.search(r"^```text\n([^`]*?test results.*?)^```", markdown, re.S | re.M)
            assert sample, "README.md has no sample quickstart output"
            assert _table_rows(sample.group(1)) == _table_rows(output)
            files_written = [text.strip().splitlines()[-1].split(": ", 1)[1] for text in (output, sample.group(1))]
            assert files_written[0] == files_written[1]
