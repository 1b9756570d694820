"""The tables of docs/scaling.md, computed from the presets' shapes and mousse.distributed.ownership's own
ownership plan: per-step communication per GPU (Mousse as run by `mousse train` under torchrun,
next to AdamW/DDP, Muon-style and Distributed Shampoo), and the per-rank refresh load, step load
and optimizer state.

    .venv/bin/python scripts/scaling.py            # markdown on stdout
    .venv/bin/python scripts/scaling.py --gpus 8,16,64 --presets 160m,800m

Communication counts bytes each GPU sends per optimizer step with ring collectives: all-reduce of
S bytes 2 (N-1)/N S, reduce-scatter or all-gather of a buffer of S bytes (N-1)/N S.
"""

from __future__ import annotations

import argparse

from mousse.distributed.ownership import matrix_cost, plan_loads, plan_ownership
from mousse.optim.routing import infer_roles
from mousse.train.presets import PRESETS, meta_model

PRESET_NAMES = ("160m", "250m", "500m", "800m")
GPUS = (8, 64)


def preset_params(name: str) -> tuple[dict[str, tuple[int, int]], int]:
    """(block-matrix shapes by name, number of replicated parameters: embedding, head, gains)."""
    model = meta_model(PRESETS[name])
    roles = infer_roles(model)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if roles[n] == "matrix"}
    replicated = sum(p.numel() for n, p in model.named_parameters() if roles[n] != "matrix")
    return shapes, replicated


def state_floats(m: int, n: int) -> int:
    """Mousse's optimizer state of one (m, n) matrix, two-sided: momentum, per side factor, basis,
    cached whitening matrix and eigenvalues (as presets.memory_estimate_bytes counts it)."""
    return m * n + 3 * m * m + 3 * n * n + m + n


def communication(name: str, n: int) -> dict[str, float]:
    """Bytes sent per GPU per step, by scheme."""
    shapes, rep = preset_params(name)
    mat = sum(m * k for m, k in shapes.values())
    total = mat + rep
    owners = plan_ownership(shapes, n)
    width = max(
        sum(shapes[x][0] * shapes[x][1] for x in shapes if owners[x] == r) for r in range(n)
    )  # the owner slots are padded to the largest
    ring = (n - 1) / n
    allreduce = lambda s: 2 * ring * s
    ours_grads = allreduce(4 * rep) + (n - 1) * width * 4  # all-reduce + reduce-scatter
    return {
        "adamw_ddp": allreduce(4 * total),
        "mousse_fp32": ours_grads + (n - 1) * width * 4,  # + all-gather of new matrices
        "mousse_bf16": ours_grads + (n - 1) * width * 2,  # + all-gather of bf16 updates
        "muon_style": allreduce(4 * total) + ring * 2 * mat,  # DDP + bf16 updates all-gathered
        "shampoo": allreduce(4 * total) + ring * 4 * total,  # DDP + fp32 search directions
        "padding": n * width / mat,
    }


def load_balance(name: str, n: int) -> dict[str, float]:
    shapes, _ = preset_params(name)
    owners = plan_ownership(shapes, n)
    refresh = plan_loads(shapes, owners, n, lambda s: matrix_cost(s).refresh)
    step = plan_loads(shapes, owners, n, lambda s: matrix_cost(s).amortized)
    state = plan_loads(shapes, owners, n, lambda s: float(state_floats(*s)))
    counts = [sum(1 for r in owners.values() if r == k) for k in range(n)]
    return {
        "matrices": len(shapes),
        "min_count": min(counts),
        "max_count": max(counts),
        "refresh_max": max(refresh),
        "refresh_total": sum(refresh),
        "refresh_imbalance": max(refresh) / (sum(refresh) / n),
        "step_imbalance": max(step) / (sum(step) / n),
        "step_speedup": sum(step) / max(step),
        "state_max_gb": 4 * max(state) / 1e9,
        "state_total_gb": 4 * sum(state) / 1e9,
    }


def tables(presets=PRESET_NAMES, gpus=GPUS) -> str:
    mb = lambda b: f"{b / 1e6:,.0f}"
    lines = [
        "| preset | GPUs | AdamW + DDP | **Mousse, ours (fp32 / bf16 gather)** | "
        "Muon-style | Distributed Shampoo | ours vs AdamW | slot padding |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in presets:
        for n in gpus:
            c = communication(name, n)
            lines.append(
                f"| {name} | {n} | {mb(c['adamw_ddp'])} | **{mb(c['mousse_fp32'])} / "
                f"{mb(c['mousse_bf16'])}** | {mb(c['muon_style'])} | {mb(c['shampoo'])} | "
                f"{c['mousse_fp32'] / c['adamw_ddp']:.2f}x / {c['mousse_bf16'] / c['adamw_ddp']:.2f}x"
                f" | {c['padding']:.2f}x |"
            )
    lines += [
        "",
        "| preset | GPUs | matrices (per rank) | refresh GFLOP per rank, max (all ranks) | "
        "refresh max / mean | step max / mean | optimizer speed-up | "
        "Mousse state per rank, max (unsharded) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in presets:
        for n in gpus:
            b = load_balance(name, n)
            lines.append(
                f"| {name} | {n} | {b['matrices']} ({b['min_count']}-{b['max_count']}) | "
                f"{b['refresh_max'] / 1e9:,.0f} ({b['refresh_total'] / 1e9:,.0f}) | "
                f"{b['refresh_imbalance']:.2f} | {b['step_imbalance']:.2f} | "
                f"{b['step_speedup']:.1f}x | {b['state_max_gb']:.2f} GB ({b['state_total_gb']:.2f} GB) |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESET_NAMES))
    parser.add_argument("--gpus", default=",".join(map(str, GPUS)))
    args = parser.parse_args(argv)
    print(tables(args.presets.split(","), [int(g) for g in args.gpus.split(",")]), end="")


if __name__ == "__main__":
    main()
