"""What the data fingerprint adds to a run's start: the quickstart's data loaded, then fingerprinted.

Run:  python benchmarks/fingerprint_cost.py
"""

from __future__ import annotations

import time
from pathlib import Path

from mlcl.data.fingerprint import data_fingerprint
from mlcl.train.config import load_config
from mlcl.train.data_setup import load_data
from mlcl.train.run import data_files

config = load_config(Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml")
started = time.perf_counter()
dataset = load_data(config)
loaded = time.perf_counter()
data_fingerprint(dataset, config.data.name, data_files(config.data), config.seed)
print(f"load {loaded - started:.3f} s, fingerprint {time.perf_counter() - loaded:.3f} s")
