#!/usr/bin/env bash
# GPU verification in one call, for a machine with an NVIDIA GPU:
#   env    the GPU, driver, torch and triton versions
#   tests  the Triton kernels compiled for this GPU against torch (tests/test_kernels_cuda.py)
#   kernels each kernel against torch per size, bf16 (JSON): where dispatch should send work
#   bench  `mousse bench --device cuda --preset 160m --compile --json`: optimizer step of Mousse vs
#          our Muon vs torch.optim.Muon, the per-size kernel table and the dispatch thresholds
#   train  `mousse bench --device cuda --preset 160m --train --steps N`: whole 160m training steps,
#          Muon vs Mousse (fwd+bwd and optimizer split, peak memory); N = $GPU_CHECK_STEPS (10)
# Every part writes into OUTDIR as it goes, under a share of the time limit, so whatever finished
# is kept when a later part fails or runs out of time. Uses .venv when there is one, else the
# python3 that holds torch with this checkout on PYTHONPATH (nothing is downloaded).
#
# Usage: scripts/gpu_check.sh OUTDIR [SECONDS=540] [PARTS=env,tests,kernels,bench,train]
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUTDIR [SECONDS] [PARTS]}
BUDGET=${2:-540}
PARTS=,${3:-env,tests,kernels,bench,train},
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
$PY -c "import mousse" 2>/dev/null || export PYTHONPATH="$PWD/core:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
END=$((SECONDS + BUDGET))

# part NAME CAP CMD...: run CMD for at most CAP seconds (less if the budget runs out), stdout to
# OUT/NAME.out, stderr to OUT/NAME.log, and a status line to OUT/summary.txt.
part() {
  local name=$1 cap=$2
  shift 2
  [[ $PARTS == *,$name,* ]] || return 0
  local left=$((END - SECONDS - 5))
  ((left < cap)) && cap=$left
  if ((cap < 10)); then
    echo "$name: skipped, out of time" | tee -a "$OUT/summary.txt"
    return 0
  fi
  local t0=$SECONDS
  if declare -F "$1" >/dev/null; then  # a function of this script: quick, no time limit needed
    "$@" >"$OUT/$name.out" 2>"$OUT/$name.log"
  else
    timeout -k 15 "$cap" "$@" >"$OUT/$name.out" 2>"$OUT/$name.log"
  fi
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s (limit $cap s)" | tee -a "$OUT/summary.txt"
}

env_report() {
  nvidia-smi || true
  $PY - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton missing")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(p.name, f"{p.total_memory / 2**30:.1f} GiB", p.multi_processor_count, "SMs")
EOF
}

MOUSSE=("$PY" -m mousse_cli)
part env 30 env_report
part tests 180 env TRITON_INTERPRET=0 "$PY" -m pytest -p no:cacheprovider -rs tests/test_kernels_cuda.py
part kernels 120 "$PY" -c "import json, torch; from mousse.experiments.bench import bench_kernels
print(json.dumps(bench_kernels(torch.device('cuda'), 10, sizes=(512, 768, 1024, 2048, 3072, 4096, 8192))))"
part bench 240 "${MOUSSE[@]}" bench --device cuda --preset 160m --compile --repeats 5 --json
part train 300 "${MOUSSE[@]}" bench --device cuda --preset 160m --train --steps "${GPU_CHECK_STEPS:-10}" --repeats 3 --json
