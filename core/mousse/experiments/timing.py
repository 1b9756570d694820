"""The timing pass: every variant's training step timed side by side, in one process, on this
machine, so that step-time ratios compare like with like.

Timings taken during an ablation's runs come from whatever the machine was doing then: a rerun
after Ctrl-C, another shard's machine, `--parallel` neighbours. The pass builds each variant's real
model and optimizer, then runs rounds: in each round every variant trains `steps_per_round` steps
in turn (the order rotates by one each round, so no variant always goes first). Each round gives a
mean step time per variant, and a ratio to the baseline's in the same round: drift of the machine
between rounds cancels in the ratio. Reported: median and interquartile range over rounds.

Other processes on the machine stretch some rounds and not others: the pass records the share of
the CPU they used while it ran (`busy`, on a CPU), and the tables mark its numbers unreliable when
that share is above `estimate.BUSY_NOTE`.

Its cost is bounded: after an untimed warm-up and a one-step probe per variant, the number of
rounds is what fits the rest of the time budget (at least `MIN_ROUNDS`, at most `MAX_ROUNDS`).
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TypedDict

import torch

from mousse.train.fileio import read_json, shaped
from mousse.train.machine import cpu_reading, others_busy

TIMING_FILE = "timing.json"
MIN_ROUNDS, MAX_ROUNDS = 3, 30
STEPS_PER_ROUND = 10  # Mousse's default refresh period: each round holds one refresh
WARMUP_STEPS = 3
MIN_BUDGET_S, BUDGET_FRACTION = 10.0, 0.03


BUDGET_ENV = "MOUSSE_TIMING_BUDGET"  # seconds: overrides the default (test suites, CI)


class TimingRow(TypedDict):
    """One variant's side-by-side step time (`summarize_rounds`): median and quartiles over the
    rounds and, against the baseline, its overhead in % (None for the baseline, or without one)."""

    step_ms_median: float
    step_ms_q1: float
    step_ms_q3: float
    rounds: int
    overhead_pct: float | None
    overhead_q1: float | None
    overhead_q3: float | None
    within_noise: bool | None


class TimingPass(TypedDict):
    """The side-by-side rounds of a timing pass and their summary (`run_pass`)."""

    host: str
    when: str  # ISO date and time, to the second
    baseline: str | None
    rounds: int
    steps_per_round: int
    budget_s: float
    seconds: float
    order: list[list[str]]  # each round's variants, in the order they ran
    threads: int
    round_ms: dict[str, list[float]]  # variant -> its mean step ms in each round
    variants: dict[str, TimingRow]


class TimingRecord(TimingPass, total=False):
    """A timing pass with where it ran (`timing_pass`): what timing.json holds. `busy` is
    missing from passes recorded before it existed."""

    device: str
    busy: float | None  # the share of the CPU other processes used (None: not known)


def read_timing_record(path: Path) -> TimingRecord | None:
    """The timing pass recorded at `path`; None when there is none or it is not one (unreadable,
    or not a timing pass's shape)."""
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    return record if shaped(record, TimingRecord) else None


def default_budget(train_seconds: float) -> float:
    """A few percent of the ablation's training time, never less than MIN_BUDGET_S (or
    MOUSSE_TIMING_BUDGET seconds when set)."""
    if os.environ.get(BUDGET_ENV):
        return float(os.environ[BUDGET_ENV])
    return max(MIN_BUDGET_S, BUDGET_FRACTION * train_seconds)


def plan_rounds(
    warm_ms: dict[str, float],
    budget_s: float,
    steps_per_round: int,
    min_rounds: int = MIN_ROUNDS,
    max_rounds: int = MAX_ROUNDS,
) -> int:
    """How many rounds fit the budget, given each variant's warm-up step time."""
    per_round_s = steps_per_round * sum(warm_ms.values()) / 1000
    fit = int(budget_s // per_round_s) if per_round_s > 0 else max_rounds
    return max(min_rounds, min(max_rounds, fit))


def round_order(names: list[str], rounds: int) -> list[list[str]]:
    """Round r runs the variants starting from the r-th (mod their number)."""
    n = len(names)
    return [[names[(r + i) % n] for i in range(n)] for r in range(rounds)]


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def summarize_rounds(ms: dict[str, list[float]], baseline: str | None) -> dict[str, TimingRow]:
    """Per variant: median and quartiles of its per-round step time and, against the baseline,
    of the per-round ratio (as an overhead in %). An overhead whose interquartile range spans 0
    is within the noise."""
    out: dict[str, TimingRow] = {}
    base = ms.get(baseline) if baseline else None
    for name, values in ms.items():
        q1, med, q3 = _quartiles(values)
        row: TimingRow = {
            "step_ms_median": med,
            "step_ms_q1": q1,
            "step_ms_q3": q3,
            "rounds": len(values),
            "overhead_pct": None,
            "overhead_q1": None,
            "overhead_q3": None,
            "within_noise": None,
        }
        if base is not None and name != baseline:
            ratios = [100 * (v / b - 1) for v, b in zip(values, base, strict=True)]
            o1, om, o3 = _quartiles(ratios)
            row["overhead_pct"], row["overhead_q1"], row["overhead_q3"] = om, o1, o3
            row["within_noise"] = o1 <= 0 <= o3
        out[name] = row
    return out


def run_pass(
    runners: Mapping[str, Callable[[int], float]],
    baseline: str | None,
    budget_s: float,
    steps_per_round: int = STEPS_PER_ROUND,
    clock: Callable[[], float] = time.perf_counter,
    spent_s: float = 0.0,
) -> TimingPass:
    """Time `runners` (name -> run n steps, return their mean ms) side by side: an untimed
    warm-up, a one-step probe of each, then the rounds the rest of the budget (less `spent_s`,
    e.g. building the runners) allows, interleaved. Returns the timing record."""
    started = clock()
    for run in runners.values():  # untimed: first calls load libraries and fill caches
        run(WARMUP_STEPS)
    probe = {name: run(1) for name, run in runners.items()}
    remaining = budget_s - spent_s - (clock() - started)
    rounds = plan_rounds(probe, remaining, steps_per_round)
    ms: dict[str, list[float]] = {name: [] for name in runners}
    order = round_order(list(runners), rounds)
    for names in order:
        for name in names:
            ms[name].append(runners[name](steps_per_round))
    return {
        "host": platform.node(),
        "when": datetime.now().isoformat(timespec="seconds"),
        "baseline": baseline,
        "rounds": rounds,
        "steps_per_round": steps_per_round,
        "budget_s": budget_s,
        "seconds": spent_s + clock() - started,
        "order": order,
        "threads": torch.get_num_threads(),
        "round_ms": ms,
        "variants": summarize_rounds(ms, baseline),
    }


class TrainerRunner:
    """A variant's real training step: its model, optimizer and data, built once; each call
    trains n more steps and returns their mean ms. `device` names where it trains."""

    def __init__(self, settings: Mapping[str, object], root: Path):
        from mousse.train.config import resolve
        from mousse.train.steptimer import StepTimer
        from mousse.train.trainer import Trainer

        self.trainer = Trainer(resolve(settings), root / "run")  # nothing is written there
        self.timer = StepTimer(self.trainer.device)
        self.done = 0
        self.device = str(self.trainer.device)

    def __call__(self, n: int) -> float:
        for step in range(self.done + 1, self.done + n + 1):
            self.trainer.train_step(step, self.timer)
        self.done += n
        return 1000 * self.timer.flush() / n


def trainer_runner(settings: Mapping[str, object], root: Path) -> TrainerRunner:
    """A variant's real training step, as a `TrainerRunner`."""
    return TrainerRunner(settings, root)


def timing_pass(
    settings: Mapping[str, Mapping[str, object]],
    baseline: str | None,
    budget_s: float,
    steps_per_round: int = STEPS_PER_ROUND,
) -> TimingRecord:
    """The pass over real variants (name -> run settings), on this machine, with the share of the
    CPU other processes used meanwhile (`busy`: None off a CPU or where it is not known)."""
    started, since = time.perf_counter(), cpu_reading()
    with tempfile.TemporaryDirectory(prefix="mousse-timing-") as tmp:
        runners = {
            name: trainer_runner(s, Path(tmp) / str(i))
            for i, (name, s) in enumerate(settings.items())
        }
        record = run_pass(
            runners, baseline, budget_s, steps_per_round, spent_s=time.perf_counter() - started
        )
        device = next(iter(runners.values())).device
    busy = others_busy(since) if device.startswith("cpu") else None
    return {**record, "device": device, "busy": busy}
