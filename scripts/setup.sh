#!/usr/bin/env bash
# Create .venv and install mousse with its test, plot, hf (Hugging Face models), tensorboard and
# wandb (dashboards) extras. Picks torch's CPU build on machines without an NVIDIA GPU (a few
# hundred MB instead of several GB), the CUDA build and Triton otherwise. Triton is installed on
# CPU machines too (~300 MB wheel, ~1 GB installed): the kernel tests run it under its
# interpreter; where it cannot be installed they skip. Safe to re-run.
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
$PIP install -e ".[test,plot,hf,tensorboard,wandb]"
.venv/bin/python -c "import triton" 2>/dev/null || $PIP install "triton>=3" \
  || echo "setup.sh: triton not installed; tests/optim/test_kernels.py will skip the kernel tests" >&2
