"""Training-step speed by arithmetic: fp32 eager (what every run did before --precision and
--compile auto) against bf16 autocast and torch.compile, for Muon and Mousse, side by side.

    .venv/bin/python benchmarks/train_speed.py [--budget SECONDS] [--out FILE.json] PRESET...

Per preset, the eight arms (Muon, Mousse) x (fp32, bf16 autocast) x (eager, compiled) are built
once and timed by the ablation timing pass (`experiments.timing.timing_pass`): an untimed warm-up,
which compiles, then interleaved rounds of real training steps in one process. Per arm: the
median step, the median per-round speedup over the same optimizer's fp32 eager step, tokens/s,
model FLOP/s and MFU against the matmul peak measured here at the arm's precision, and how busy
other processes kept the CPU meanwhile. Prints markdown; --out also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from mousse.experiments.timing import timing_pass
from mousse.train.config import resolve
from mousse.train.machine import label, pick_device
from mousse.train.precision import peak_flops
from mousse.train.presets import get_preset
from mousse.train.usermodel import build_model, flops_per_token

OPTIMIZERS = ("muon", "mousse")
ARMS = [(p, c) for p in ("fp32", "bf16") for c in ("off", "on")]


def arm_name(optimizer: str, precision: str, compiled: str) -> str:
    return f"{optimizer} {precision} {'compiled' if compiled == 'on' else 'eager'}"


def measure(preset: str, budget_s: float) -> dict:
    """The timing pass over the eight arms of `preset`, and each arm's speed figures."""
    settings = {
        arm_name(o, p, c): {"preset": preset, "optimizer": o, "precision": p, "compile": c}
        for o in OPTIMIZERS
        for p, c in ARMS
    }
    record = timing_pass(settings, arm_name("muon", "fp32", "off"), budget_s)
    cfg = resolve({"preset": preset})
    model = build_model(cfg, get_preset(preset).vocab_size, "meta")
    n_params = sum(p.numel() for p in model.parameters())
    tokens = cfg.batch_size * cfg.seq_len
    device = pick_device("auto")
    rows = {}
    for name, s in settings.items():
        ms = record["round_ms"][name]
        base = record["round_ms"][arm_name(s["optimizer"], "fp32", "off")]
        median_ms = statistics.median(ms)
        flops = flops_per_token(cfg, n_params) * tokens / (median_ms / 1000)
        rows[name] = {
            "step_ms_median": median_ms,
            "speedup_vs_fp32_eager": statistics.median(
                b / v for v, b in zip(ms, base, strict=True)
            ),
            "tokens_per_s": tokens / (median_ms / 1000),
            "model_flops_per_s": flops,
            "mfu": flops / peak_flops(device, s["precision"]),
        }
    peaks = {label(p): peak_flops(device, p) for p in ("fp32", "bf16")}
    return {"preset": preset, "timing": record, "arms": rows, "peak_flops": peaks}


def markdown(result: dict) -> str:
    t = result["timing"]
    lines = [
        f"### {result['preset']}: {t['rounds']} interleaved rounds of {t['steps_per_round']} "
        f"steps, {t['threads']} threads, other processes used "
        + (f"{100 * t['busy']:.0f}%" if t["busy"] is not None else "an unknown share")
        + " of the CPU",
        "",
        "| arm | step ms | speedup vs fp32 eager | tokens/s | model GFLOP/s | MFU |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["arms"].items():
        lines.append(
            f"| {name} | {r['step_ms_median']:.1f} | {r['speedup_vs_fp32_eager']:.2f}x | "
            f"{r['tokens_per_s']:,.0f} | {r['model_flops_per_s'] / 1e9:,.1f} | "
            f"{100 * r['mfu']:.1f}% |"
        )
    peaks = ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in result["peak_flops"].items())
    return "\n".join([*lines, "", f"Matmul peaks measured here: {peaks}.", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="+")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds per preset")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    results = []
    for preset in args.presets:
        results.append(measure(preset, args.budget))
        print(markdown(results[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
