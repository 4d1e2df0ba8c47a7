#!/usr/bin/env bash
# The main job: MLCL on Fashion-MNIST (5 coarse -> 10 fine), then per-level linear-probe and kNN results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="${1:-runs/quickstart}"
if [ -f "$out/checkpoints/last.pt" ] && [ ! -f "$out/metrics.json" ]; then
  exec .venv/bin/mlcl train --resume "$out"
fi
if [ -f "$out/.mlcl-run" ]; then rm -rf "$out"; fi  # an earlier run made by mlcl: start it afresh
exec .venv/bin/mlcl train --config configs/quickstart.yaml --out "$out"
