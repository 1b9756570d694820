"""Running `mousse ablate`'s plans: each preset's runs with the live view and the dashboards,
then the side-by-side timing pass (which `mousse report --retime` runs again)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from rich.markup import escape

from mousse.distributed.process import env_world_size
from mousse.train.config import ConfigError
from mousse.train.dashboards import Dashboards
from mousse.train.estimate import counted

from .ablate_plan import shard_of
from .ablation_view import AblationView
from .console import console
from .startup import reached

if TYPE_CHECKING:
    from mousse.experiments.ablation import RunSpec
    from mousse.experiments.results import Results
    from mousse.experiments.sweep import Ablation

# One preset's ablation as this invocation left it: its results, the runs other shards still owe
# it, and the names of the runs this invocation answers for (None: all of them).
Outcome = tuple["Results", list["RunSpec"], set[str] | None]


def run_ablations(
    ablations: dict[str | None, Ablation],
    dashboards: dict[str | None, Dashboards],
    stop: threading.Event,
    shard: str | None,
    parallel: int,
    wait: float | None,
    no_timing_pass: bool,
    timing_budget: float | None,
) -> dict[str | None, Outcome]:
    """Each preset's ablation in turn until a stop, each followed by its timing pass (unless
    skipped, stopped, or waiting for other shards). Returns {preset: `run_one_ablation`'s
    outcome}, the results taken from the timing pass where one ran."""
    outcomes: dict[str | None, Outcome] = {}
    for preset, ab in ablations.items():
        if stop.is_set():
            break
        outcomes[preset] = run_one_ablation(ab, shard, parallel, stop, wait, dashboards[preset])
        if not (no_timing_pass or stop.is_set() or outcomes[preset][1]):
            outcomes[preset] = (
                timed(ab, timing_budget) or outcomes[preset][0],
                *outcomes[preset][1:],
            )
    return outcomes


def run_one_ablation(
    ablation: Ablation,
    shard: str | None,
    parallel: int,
    stop: threading.Event,
    wait: float | None,
    dashboards: Dashboards,
) -> Outcome:
    """Train one ablation dir's runs with the live view and the dashboards: (results, runs other
    shards owe, names of the runs this invocation answers for, None for all)."""
    from mousse.experiments.ablation import parse_shard
    from mousse.experiments.runner import RunUpdate

    ablation.prepare()
    plan = ablation.plan
    runs = shard_of(ablation, shard)
    # live deltas against the baseline only without tuning (tuning runs differ in lr)
    baseline = None if plan.tune else next((r.name for r in plan.runs if r.is_baseline), None)
    with AblationView(runs, baseline, progress=ablation.progress) as view, dashboards:

        def on_update(update: object) -> None:
            view(update)
            if isinstance(update, RunUpdate):
                dashboards(update.event, update.run)
                reached(type(update.event).__name__)  # the test hook's points, as in train

        if plan.tune:
            return (
                *ablation.run_tuned(
                    on_update,
                    parallel=parallel,
                    stop=stop,
                    shard=parse_shard(shard) if shard else None,
                    wait=wait,
                ),
                None,
            )
        results = ablation.run(runs, on_update, parallel=parallel, stop=stop)
    return results, [], {r.name for r in runs} if shard else None


def check_timing_budget(budget: float | None) -> None:
    """Refuse a --timing-budget that is not a number of seconds > 0, before any run trains."""
    if budget is not None and not 0 < budget < float("inf"):
        raise ConfigError(
            f"--timing-budget must be a number of seconds > 0, not {budget}"
            " (or pass --no-timing-pass)"
        )


def timed(ablation: Ablation, budget: float | None) -> Results | None:
    """The side-by-side timing pass of an ablation's variants (one process, this machine), and
    the results with its overheads; None when it does not apply (under torchrun, fewer than two
    finished variants, or a pass already on disk and nothing trained since)."""
    from mousse.experiments.timing import TIMING_FILE

    if env_world_size() > 1:
        return None
    if (ablation.dir / TIMING_FILE).exists() and not ablation.trained:
        return None
    console.print(
        f"timing pass: every variant's step side by side in this process "
        f"({escape(str(ablation.dir))})",
        highlight=False,
        soft_wrap=True,
    )
    record = ablation.retime(budget)
    if record is None:
        return None
    console.print(
        f"timing pass: {counted(record['rounds'], 'round')} of "
        f"{counted(record['steps_per_round'], 'step')} "
        f"in {record['seconds']:.0f} s",
        highlight=False,
    )
    return ablation.write_results()
