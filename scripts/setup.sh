#!/usr/bin/env bash
# Create .venv and install mousse with its test and plot extras. Picks torch's CPU build on
# machines without an NVIDIA GPU (a few hundred MB instead of several GB), the CUDA build and
# Triton otherwise. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    $PIP install "torch>=2.9" triton
  else
    $PIP install --timeout 15 --retries 1 --extra-index-url https://download.pytorch.org/whl/cpu \
      "torch==2.13.0+cpu" || $PIP install "torch>=2.9"
  fi
fi
$PIP install -e ".[test,plot]"
