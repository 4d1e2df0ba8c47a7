"""Shared test set-up: the helpers in this folder are importable, and torch runs on one thread."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)
