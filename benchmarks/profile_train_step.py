"""Where a whole training step's time goes, and why its MFU is what it is.

    .venv/bin/python benchmarks/profile_train_step.py [--steps N] [--precision P] [--compile C]
        [--optimizer O] PRESET...

Per preset and optimizer, the real training step (`experiments.timing.TrainerRunner`: the run's
model, optimizer, data and precision) is warmed up and timed over `--steps` steps, then profiled
with torch.profiler over as many more. Its time is split by phase (forward + backward against
the optimizer step, from the step timer, unprofiled) and by kind of operator (self CPU time,
profiled without recording shapes, which would distort it): dense matmuls (their achieved
GFLOP/s, from a third, counting pass, beside the machine's measured peak at the step's
precision), attention, eigh, copies and casts, and everything else (elementwise, norms,
softmax, loss). What is not matmul at the peak's rate is what stands between the step and a
higher MFU. Prints markdown; --out also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from mousse.experiments.timing import TrainerRunner
from mousse.train.machine import label, pick_device
from mousse.train.precision import peak_flops
from mousse.train.usermodel import flops_per_token

# Operator kinds, by name: the first whose words appear in an operator's name claims it.
KINDS = [
    ("matmul", ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "_linear_pointwise")),
    ("attention", ("attention", "sdpa")),
    ("eigh", ("linalg_eigh", "syevd")),
    ("copies and casts", ("aten::_to_copy", "aten::copy_")),
]
WARMUP_STEPS = 5
TOP = 12  # operators listed by name


def kind_of(name: str) -> str:
    return next((k for k, words in KINDS if any(w in name for w in words)), "other")


def profile_step(preset: str, optimizer: str, precision: str, compiled: str, steps: int) -> dict:
    """One arm's step: its phases and operator kinds in ms per step, matmul FLOP/s and MFU."""
    settings = {"preset": preset, "optimizer": optimizer, "precision": precision}
    with tempfile.TemporaryDirectory(prefix="mousse-profile-") as tmp:
        runner = TrainerRunner({**settings, "compile": compiled}, Path(tmp))
        runner(WARMUP_STEPS)  # compiles, fills caches, does a refresh
        timer = runner.timer
        timer.fwd_bwd_ms.clear()
        timer.total_ms.clear()
        step_ms = runner(steps)  # unprofiled: the profiler's own cost is not the step's
        fwd_bwd = statistics.median(timer.fwd_bwd_ms)
        optimizer_ms = statistics.median(timer.total_ms) - fwd_bwd
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            runner(steps)
        # FLOPs need shapes recorded, which distorts the times several fold: a run of its own
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as counted:
            runner(steps)
        cfg = runner.trainer.cfg
        n_params = sum(p.numel() for p in runner.trainer.model.parameters())
    kinds: dict[str, float] = {}
    operators: dict[str, float] = {}
    matmul_flops = 0.0
    for event in prof.key_averages():
        kind = kind_of(event.key)
        ms = event.self_cpu_time_total / 1000 / steps
        kinds[kind] = kinds.get(kind, 0.0) + ms
        operators[event.key] = ms
    for event in counted.key_averages():
        if kind_of(event.key) == "matmul":
            matmul_flops += (event.flops or 0) / steps
    device = pick_device("auto")
    run_precision = runner.trainer.precision
    peak = peak_flops(device, run_precision)
    tokens = cfg.batch_size * cfg.seq_len
    model_flops = flops_per_token(cfg, n_params) * tokens
    return {
        "preset": preset,
        "optimizer": optimizer,
        "precision": label(run_precision),
        "compiled": compiled == "on",
        "steps": steps,
        "step_ms": step_ms,
        "fwd_bwd_ms": fwd_bwd,
        "optimizer_ms": optimizer_ms,
        "kinds_ms": kinds,
        "top_operators_ms": dict(sorted(operators.items(), key=lambda kv: -kv[1])[:TOP]),
        "matmul_flops_per_step": matmul_flops,
        "matmul_flops_per_s": matmul_flops / (kinds.get("matmul", 0.0) / 1000 or float("inf")),
        "peak_flops": peak,
        "mfu": model_flops / (step_ms / 1000) / peak,
        "threads": torch.get_num_threads(),
    }


def markdown(r: dict) -> str:
    head = (
        f"### {r['preset']}, {r['optimizer']}, {r['precision']}, "
        f"{'compiled' if r['compiled'] else 'eager'}: {r['step_ms']:.1f} ms a step "
        f"(profiled: {r['steps']} steps, {r['threads']} threads), MFU {100 * r['mfu']:.1f}%"
    )
    profiled = sum(r["kinds_ms"].values())
    lines = [
        head,
        "",
        f"Phases (step timer, median): forward + backward {r['fwd_bwd_ms']:.1f} ms, "
        f"optimizer {r['optimizer_ms']:.1f} ms.",
        "",
        "| operators (self time, profiled) | ms per step | share |",
        "|---|---|---|",
    ]
    for kind, ms in sorted(r["kinds_ms"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {kind} | {ms:.1f} | {100 * ms / profiled:.0f}% |")
    lines += ["", "| top operators (self time, profiled) | kind | ms per step | share |"]
    lines.append("|---|---|---|---|")
    for name, ms in r["top_operators_ms"].items():
        lines.append(f"| `{name}` | {kind_of(name)} | {ms:.1f} | {100 * ms / profiled:.0f}% |")
    lines += [
        "",
        f"Dense matmuls: {r['matmul_flops_per_step'] / 1e9:.2f} GFLOP a step at "
        f"{r['matmul_flops_per_s'] / 1e9:,.0f} GFLOP/s, against a measured peak of "
        f"{r['peak_flops'] / 1e9:,.0f} GFLOP/s.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="+")
    parser.add_argument("--steps", type=int, default=10, help="profiled steps (one refresh in 10)")
    parser.add_argument("--optimizer", default="muon,mousse")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--compile", default="off", choices=["on", "off"])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    results = []
    for preset in args.presets:
        for optimizer in args.optimizer.split(","):
            results.append(
                profile_step(preset, optimizer, args.precision, args.compile, args.steps)
            )
            print(markdown(results[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
