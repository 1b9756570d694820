"""`mousse bench`: Mousse's optimizer step timed next to Muon's and AdamW's on a preset's shapes."""

from __future__ import annotations

from typing import cast

import typer

from mousse.train.config import Precision
from mousse.train.fileio import dumps

from .console import show_wide
from .errors import user_errors
from .options import TRAIN_FLAGS
from .rich_tables import bench_tables


def bench(
    preset: str = typer.Option(
        "small",
        "--preset",
        help="Preset whose block-matrix shapes are measured (see `mousse presets`).",
    ),
    repeats: int = typer.Option(
        5,
        "--repeats",
        help="Timed repeats per measurement (the median is reported), after warm-up.",
    ),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    train: bool = typer.Option(
        False,
        "--train",
        help="Also time whole training steps, Mousse vs Muon, on the preset (builtin data).",
    ),
    steps: int = typer.Option(
        30,
        "--steps",
        help="Timed training steps per optimizer with --train (a multiple of 10 amortizes refreshes exactly).",
    ),
    lean: bool = typer.Option(
        False,
        "--lean",
        help="Only the training steps (as --train): Muon, Mousse and Mousse with its refresh off the critical path, p50/p99, refresh and other steps apart, peak memory. Sized for a short GPU loan (160m: --steps 10).",
    ),
    compiled: bool = typer.Option(
        False,
        "--compile",
        help="Also time our Muon and Mousse (both, refresh every 10) under torch.compile (compiled during warm-up); with --train, compile the timed training runs too.",
    ),
    precision: str = typer.Option(
        "auto",
        "--precision",
        help="auto (bf16 where matmuls are native in bf16) | bf16 | fp32: the training runs' autocast and every Newton-Schulz.",
    ),
    model: str | None = TRAIN_FLAGS["model"][1],
    model_config: str | None = TRAIN_FLAGS["model_config"][1],
    json_out: bool = typer.Option(
        False, "--json", help="Print the results object as JSON on stdout."
    ),
) -> None:
    """Time Mousse next to Muon, torch.optim.Muon and AdamW on a preset's matrix shapes: optimizer
    step (refresh every step and every 10), refresh alone (eigh vs qr), Newton-Schulz throughput,
    optimizer state memory. Threads are torch's (pin them with OMP_NUM_THREADS on a busy machine)."""
    from mousse.experiments.bench import run_bench

    with user_errors():
        user_model = {k: v for k, v in (("model", model), ("model_config", model_config)) if v}
        results = run_bench(
            preset,
            repeats,
            device,
            train or lean,
            steps,
            compiled,
            user_model or None,
            lean,
            cast(Precision, precision),  # checked by run_bench
        )
    show_wide(bench_tables(results), json_out)
    if json_out:
        typer.echo(dumps(results))
