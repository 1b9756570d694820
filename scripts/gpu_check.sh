#!/usr/bin/env bash
# GPU verification in one call, for a machine with an NVIDIA GPU:
#   env    the GPU, driver, torch and triton versions
#   lean   `mousse bench --device cuda --preset 160m --lean --steps 10`: whole 160m training
#          steps of Muon, Mousse and Mousse with its refresh off the critical path (staggered,
#          one step late): p50/p99, refresh steps and the others apart, peak memory (~3 minutes)
#   small  `mousse bench --device cuda --preset small`: the optimizer step of every row side by
#          side with its p50/p99, and each shape's refresh by eigh, qr, root and eigh on the host
#          (where refresh_device=auto should draw its line)
#   tests  the Triton kernels compiled for this GPU against torch (tests/gpu/test_kernels_cuda.py)
#          and the refresh off the critical path on a GPU (tests/gpu/test_refresh_cuda.py)
#   kernels each kernel against torch per size, bf16 (JSON): where dispatch should send work
#   bench  `mousse bench --device cuda --preset 160m --compile --json`: optimizer step of Mousse vs
#          our Muon vs torch.optim.Muon, the per-size kernel table and the dispatch thresholds
#   train  `mousse bench --device cuda --preset 160m --train --steps N`: whole 160m training steps,
#          Muon vs Mousse (fwd+bwd and optimizer split, peak memory); N = $GPU_CHECK_STEPS (10)
#   scale  (only when asked) the tuned decisive set, ablations/decisive.toml (Muon, Mousse Nesterov,
#          Mousse heavy-ball; lr tuned per budget on its own seed, 3 comparison seeds), on the GPU
#          ladder's rungs in turn, each run cooled down at 0.125, 0.25, 0.5 and 1 times 20 tokens
#          per non-embedding parameter (`--budgets`), as many rungs as fit the time limit (about
#          5 and 8 minutes, docs/scaling.md): OUT/scale-PRESET/ (ablation dir),
#          OUT/scale-PRESET.md (tables of whatever finished), and a line per preset in
#          OUT/scale.txt (done, stopped at the time limit with what finished, or not run).
#          $GPU_CHECK_SCALE_PRESETS (1.4m,2.2m), $GPU_CHECK_SCALE_BUDGETS (0.125,0.25,0.5,1;
#          empty: no --budgets, each run at its preset's 1x), $GPU_CHECK_PARALLEL (4 runs at a
#          time), $GPU_CHECK_DEVICE (cuda) and $GPU_CHECK_SCALE_ARGS (extra `ablate` flags, e.g.
#          --dry-run) change it.
#   evidence (only when asked) the recorded evidence of docs/comparisons.md, ablations/budgets.toml
#          (the decisive set, lr tuned per budget, WSD branches at 0.25, 0.5, 1 and 2 times 20
#          tokens per parameter), on $GPU_CHECK_EVIDENCE_PRESETS (small,tiny) in turn, the way
#          scale runs its rungs (the same $GPU_CHECK_PARALLEL, $GPU_CHECK_DEVICE and
#          $GPU_CHECK_SCALE_ARGS): OUT/evidence-PRESET/, OUT/evidence-PRESET.md, OUT/evidence.txt.
# Every part writes into OUTDIR as it goes, under a share of the time limit, so whatever finished
# is kept when a later part fails or runs out of time. Uses .venv when there is one, else the
# python3 that holds torch with this checkout on PYTHONPATH (nothing is downloaded).
#
# Usage: scripts/gpu_check.sh OUTDIR [SECONDS=540] [PARTS=env,lean,small,tests,kernels,bench,train]
#        scripts/gpu_check.sh OUTDIR 540 scale
#        scripts/gpu_check.sh OUTDIR 540 evidence
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUTDIR [SECONDS] [PARTS]}
BUDGET=${2:-540}
PARTS=,${3:-env,lean,small,tests,kernels,bench,train},
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
part lean 240 "${MOUSSE[@]}" bench --device cuda --preset 160m --lean --steps "${GPU_CHECK_STEPS:-10}" --json
part small 90 "${MOUSSE[@]}" bench --device cuda --preset small --repeats 5 --json
# in this process (-o addopts: no xdist workers, which the python3 without .venv may lack)
part tests 180 env TRITON_INTERPRET=0 "$PY" -m pytest -o addopts=-q -p no:cacheprovider -rs \
  tests/gpu/test_refresh_cuda.py tests/gpu/test_kernels_cuda.py
part kernels 120 "$PY" -c "import json, torch; from mousse.experiments.bench import bench_kernels
print(json.dumps(bench_kernels(torch.device('cuda'), 10, sizes=(512, 768, 1024, 2048, 3072, 4096, 8192))))"
part bench 240 "${MOUSSE[@]}" bench --device cuda --preset 160m --compile --repeats 5 --json
part train 300 "${MOUSSE[@]}" bench --device cuda --preset 160m --train --steps "${GPU_CHECK_STEPS:-10}" --repeats 3 --json

# scale_run NAME SPEC PRESETS BUDGETS: the ablation SPEC on each preset while time is left, with
# --budgets BUDGETS unless empty; an ablation cut by the time limit is stopped with SIGTERM (its
# runs checkpoint, results.json keeps what finished).
scale_run() {
  local name=$1 spec=$2 budgets=$4 preset left rc
  local -a extra presets
  read -ra extra <<<"${GPU_CHECK_SCALE_ARGS:-}"
  IFS=, read -ra presets <<<"$3"
  [ -n "$budgets" ] && extra=(--budgets "$budgets" "${extra[@]}")
  for preset in "${presets[@]}"; do
    left=$((END - SECONDS - 20))
    if ((left < 30)); then
      echo "$preset: not run (out of time)" | tee -a "$OUT/$name.txt"
      continue
    fi
    timeout -s TERM -k 60 "$left" "${MOUSSE[@]}" ablate "$spec" --preset "$preset" \
      --device "${GPU_CHECK_DEVICE:-cuda}" --parallel "${GPU_CHECK_PARALLEL:-4}" --max-runs 100 \
      --ablation-dir "$OUT/$name-$preset" "${extra[@]}" >"$OUT/$name-$preset.json" 2>"$OUT/$name-$preset.log"
    rc=$?
    "${MOUSSE[@]}" report "$OUT/$name-$preset" --format markdown >"$OUT/$name-$preset.md" 2>>"$OUT/$name-$preset.log"
    case $rc in
      0 | 3) echo "$preset: done (exit $rc)" ;;
      124 | 143) echo "$preset: stopped at the time limit; $OUT/$name-$preset.md has what finished" ;;
      *) echo "$preset: failed (exit $rc, see $name-$preset.log)" ;;
    esac | tee -a "$OUT/$name.txt"
  done
}

part scale "$BUDGET" scale_run scale ablations/decisive.toml "${GPU_CHECK_SCALE_PRESETS:-1.4m,2.2m}" \
  "${GPU_CHECK_SCALE_BUDGETS-0.125,0.25,0.5,1}"
part evidence "$BUDGET" scale_run evidence ablations/budgets.toml \
  "${GPU_CHECK_EVIDENCE_PRESETS:-small,tiny}" ""

