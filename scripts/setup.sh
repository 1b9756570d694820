#!/usr/bin/env bash
# Create .venv and install mousse with its test, plot, hf (Hugging Face models), tensorboard and
# wandb (dashboards) extras. Picks torch's CPU build on machines without an NVIDIA GPU (a few
# hundred MB instead of several GB), the CUDA build and Triton otherwise. Triton is installed on
# CPU machines too (~300 MB wheel, ~1 GB installed): the kernel tests run it under its
# interpreter; where it cannot be installed they skip. About 2.5 GB on a CPU machine: what CI
# (.ci/run) and GPU machines use.
#
# --cpu-light, for a CPU-only machine: torch's CPU build and the test and plot extras only, about
# 1.2 GB. Left out: Triton (the kernel tests skip) and the hf, tensorboard and wandb extras
# (`--model hf:...` and `--log tensorboard|wandb` name the extra to install; their tests skip).
# Running the script again without the flag adds them. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
LIGHT=0
case "${1:-}" in
  "") ;;
  --cpu-light) LIGHT=1 ;;
  *) echo "setup.sh: unknown option '$1'; use --cpu-light (a CPU-only machine) or nothing" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ "$LIGHT" = 0 ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    $PIP install "torch>=2.9" triton
  else
    $PIP install --timeout 15 --retries 1 --extra-index-url https://download.pytorch.org/whl/cpu \
      "torch==2.13.0+cpu" || $PIP install "torch>=2.9"
  fi
fi
if [ "$LIGHT" = 1 ]; then
  $PIP install -e ".[test,plot]"
  exit 0
fi
$PIP install -e ".[test,plot,hf,tensorboard,wandb]"
.venv/bin/python -c "import triton" 2>/dev/null || $PIP install "triton>=3" \
  || echo "setup.sh: triton not installed; tests/optim/test_kernels.py will skip the kernel tests" >&2
