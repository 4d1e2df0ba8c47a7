#!/usr/bin/env bash
# The GPU check in one command (see benchmarks/gpu_check.py): correctness in every precision, loss speed
# against the matmul floor and peers, quickstart training speed, two processes on one GPU.
#   bash benchmarks/gpu_check.sh [OUT_DIR] [--baseline-src OTHER_MLCL/src]
# Writes OUT_DIR/gpu_check.json (default: gpu_check_out/). Runs from a checkout without installing it.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check_out}"
shift || true
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu_check.py --out "$out" "$@"
