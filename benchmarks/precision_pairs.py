"""bf16 autocast against fp32, paired by seed: the final val loss of each optimizer and seed in two
ablations that differ only in `--precision`, their differences (bf16 - fp32), the paired t-test
and bootstrap interval of the mean difference, beside the seed spread within each arm (what a
precision effect has to be compared with).

    .venv/bin/python benchmarks/precision_pairs.py FP32_RESULTS.json BF16_RESULTS.json

Each file is an ablation's results.json (or `mousse ablate --json` output).
"""

from __future__ import annotations

import json
import statistics
import sys

from mousse.experiments.stats import paired_bootstrap_ci, paired_differences, paired_t_test


def losses(path: str) -> dict[str, dict[int, float]]:
    """variant -> seed -> final val loss of the completed runs of a results file."""
    with open(path) as f:
        runs = json.load(f)["runs"]
    out: dict[str, dict[int, float]] = {}
    for r in runs:
        if r["status"] == "completed":
            out.setdefault(r["variant"], {})[r["seed"]] = r["final_val_loss"]
    return out


def table(fp32: dict[str, dict[int, float]], bf16: dict[str, dict[int, float]]) -> str:
    """The markdown table: one row per optimizer and seed, then its paired summary."""
    lines = [
        "| variant | seed | fp32 | bf16 autocast | bf16 - fp32 |",
        "|---|---|---|---|---|",
    ]
    for variant in fp32:
        a, b = fp32[variant], bf16.get(variant, {})
        for seed in sorted(a.keys() & b.keys()):
            lines.append(
                f"| {variant} | {seed} | {a[seed]:.4f} | {b[seed]:.4f} | {b[seed] - a[seed]:+.4f} |"
            )
        diffs = paired_differences(b, a)
        test = paired_t_test(diffs)
        ci = paired_bootstrap_ci(diffs)
        spread = statistics.stdev(a.values()) if len(a) > 1 else float("nan")
        p = "n/a" if test["p"] is None else f"{test['p']:.2f}"
        interval = "n/a" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"
        lines.append(
            f"| **{variant}** | mean of {len(diffs)} | seed sd {spread:.4f} | | "
            f"**{statistics.fmean(diffs):+.4f}** {interval}, p {p} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(losses(sys.argv[1]), losses(sys.argv[2])))
