"""`mousse ablate`: sweep knobs with the same budget, tune when asked, train, compare."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, cast

import typer
from rich.markup import escape

from mousse.distributed.process import exit_on_error, is_main_process
from mousse.experiments.scale import combine
from mousse.train.config import Overrides
from mousse.train.estimate import counted
from mousse.train.fileio import dumps

from .ablate_plan import (
    ablation_cost,
    check_parallel,
    check_run_flags,
    dashboards_for,
    plan_ablations,
    read_setup,
    show_plans,
    worker_gpus,
)
from .ablate_run import Outcome, check_timing_budget, run_ablations
from .console import console, out, where
from .errors import EXIT_DIVERGED, EXIT_RUN_FAILED, EXIT_WAITING, diverged, user_errors
from .interrupts import graceful_stop, interrupted_code
from .options import BASE_FLAGS, PLAN_PANEL, RUN_PANEL, SWEEP_FLAGS, with_flags
from .pipes import outliving_closed_pipes
from .results_out import (
    ByPreset,
    named_presets,
    record_presets,
    show_preset_title,
    show_results,
    show_scale,
)
from .trust import TRUST_MODEL_CODE, check_trusted

if TYPE_CHECKING:
    from mousse.experiments.sweep import Ablation

# The options of `ablate` besides the sweeps and run settings, in the order --help lists them.
SPEC = typer.Argument(None, help="Ablation spec TOML (see ablations/); flags override it.")
GRID = typer.Option(
    False,
    "--grid",
    help="Run the full product of the sweeps instead of one knob at a time.",
    rich_help_panel=PLAN_PANEL,
)
NO_BASELINE = typer.Option(
    False, "--no-baseline", help="Leave out the Muon baseline run.", rich_help_panel=PLAN_PANEL
)
SEEDS = typer.Option(
    None,
    "--seeds",
    help="Seeds per variant: a count (3 = seeds 0,1,2) or a list (0,5,7).",
    rich_help_panel=PLAN_PANEL,
)
DRY_RUN = typer.Option(
    False, "--dry-run", help="Print the planned runs and stop.", rich_help_panel=PLAN_PANEL
)
MAX_RUNS = typer.Option(
    100,
    "--max-runs",
    help="Refuse plans that may take more runs than this, grid extensions counted (a guard "
    "against an accidental --grid; --max-hours bounds the time).",
    rich_help_panel=PLAN_PANEL,
)
ABLATION_DIR = typer.Option(
    None,
    "--ablation-dir",
    help="Directory of this ablation (default runs/ablate-<knobs>-<plan hash>); rerunning resumes it.",
    rich_help_panel=RUN_PANEL,
)
SHARD = typer.Option(
    None,
    "--shard",
    help="Run only shard i of n of the runs, e.g. 1/2 (for several machines or GPUs).",
    rich_help_panel=RUN_PANEL,
)
PARALLEL = typer.Option(
    1,
    "--parallel",
    help="Runs at a time (CPU: each gets a share of the cores; several GPUs: each run on its own, round-robin).",
    rich_help_panel=RUN_PANEL,
)
DEVICES = typer.Option(
    None,
    "--devices",
    help="GPUs to place the runs on, round-robin, e.g. 0,1,2,3 (default: every visible GPU when --parallel runs use CUDA).",
    rich_help_panel=RUN_PANEL,
)
CONFIG = typer.Option(
    None,
    "--config",
    help="TOML file of base settings for every run.",
    rich_help_panel=RUN_PANEL,
)
TUNE = typer.Option(
    None,
    "--tune",
    help="Tune these knobs per variant (baseline included) before comparing, by coordinate descent in this order: lr | lr,momentum | lr=0.01,0.02,0.04 | momentum_style=heavy_ball,nesterov. Default grid: 5 values a factor 2 apart around the variant's own value; a best value at an edge grows the grid.",
    rich_help_panel=PLAN_PANEL,
)
TUNE_SEEDS = typer.Option(
    None,
    "--tune-seeds",
    help="Tuning seeds each candidate value is averaged over: a count N (seeds 1000 to 1000+N-1, apart from the comparison seeds) or a list of seeds none of which --seeds holds; default 1.",
    rich_help_panel=PLAN_PANEL,
)
WAIT = typer.Option(
    None,
    "--wait",
    help="With --shard and --tune: when this shard needs other shards' results, poll every SECONDS instead of exiting with code 4.",
    rich_help_panel=RUN_PANEL,
)
MAX_HOURS = typer.Option(
    None,
    "--max-hours",
    help="Refuse (exit 2) an ablation estimated to take longer than this many hours here (for CI).",
    rich_help_panel=RUN_PANEL,
)
FORCE = typer.Option(
    False,
    "--force",
    help="Start even when a run's memory estimate exceeds what the device has free.",
    rich_help_panel=RUN_PANEL,
)
NO_TIMING_PASS = typer.Option(
    False,
    "--no-timing-pass",
    help="Skip the side-by-side timing pass after the runs (the overhead column then needs runs timed in one invocation).",
    rich_help_panel=RUN_PANEL,
)
TIMING_BUDGET = typer.Option(
    None,
    "--timing-budget",
    help="Seconds for the timing pass (default: 3% of the ablation's training time, at least 10).",
    rich_help_panel=RUN_PANEL,
)
JSON_OUT = typer.Option(
    False,
    "--json",
    help="Print the results object as JSON on stdout.",
    rich_help_panel=RUN_PANEL,
)


@with_flags({**SWEEP_FLAGS, **BASE_FLAGS}, SWEEP_FLAGS)
def ablate(
    overrides: Overrides,
    sweeps: dict[str, str],
    spec: Path | None = SPEC,
    grid: bool = GRID,
    no_baseline: bool = NO_BASELINE,
    seeds: str | None = SEEDS,
    dry_run: bool = DRY_RUN,
    max_runs: int = MAX_RUNS,
    ablation_dir: Path | None = ABLATION_DIR,
    shard: str | None = SHARD,
    parallel: int = PARALLEL,
    devices: str | None = DEVICES,
    config: Path | None = CONFIG,
    tune: str | None = TUNE,
    tune_seeds: str | None = TUNE_SEEDS,
    wait: float | None = WAIT,
    max_hours: float | None = MAX_HOURS,
    force: bool = FORCE,
    no_timing_pass: bool = NO_TIMING_PASS,
    timing_budget: float | None = TIMING_BUDGET,
    json_out: bool = JSON_OUT,
    trust_model_code: bool = TRUST_MODEL_CODE,
) -> None:
    """Sweep Mousse's knobs (and baselines) with the same budget and compare.

    Exit codes: 0 all runs completed, 3 some run (or a run's cooldown branch, --budgets)
    diverged, 2 bad input, 4 runs are missing that other shards or processes train (another
    process held a run dir, or this shard waits for other shards' tuning results: rerun it
    later, or pass --wait), 6 some run failed, 130 (143) interrupted by Ctrl-C (SIGTERM).
    """
    with exit_on_error((typer.Exit,)), user_errors(json_out):
        console.quiet = not is_main_process()  # under torchrun only rank 0 renders
        setup = read_setup(overrides, sweeps, spec, config, tune, tune_seeds)
        where = str(spec) if spec else f"--config {config}" if config else "--tune"
        check_trusted(vars(setup), overrides.model, trust_model_code, where)
        check_run_flags(setup.tuning, wait, shard, parallel)
        check_timing_budget(timing_budget)
        root, ablations = plan_ablations(setup, grid, seeds, no_baseline, ablation_dir, max_runs)
        check_parallel(parallel, ablations, shard)
        gpus = worker_gpus(devices, ablations, parallel)
        for ab in ablations.values():
            ab.devices = gpus
        dashboards = dashboards_for(ablations, setup, root)
        cost = ablation_cost(ablations, max_hours, force)
        show_plans(ablations, shard, cost)
        if dry_run:
            return
        record_presets(root, setup.presets)
        with graceful_stop() as stop, outliving_closed_pipes(console, out):
            outcomes = run_ablations(
                ablations, dashboards, stop, shard, parallel, wait, no_timing_pass, timing_budget
            )
    by_preset = show_outcomes(ablations, outcomes, setup.presets, root, json_out)
    if json_out and is_main_process():
        typer.echo(dumps(combine(named_presets(by_preset)) if setup.presets else by_preset[None]))
    exit_for(outcomes, stop, shard, ablations)


def show_outcomes(
    ablations: dict[str | None, Ablation],
    outcomes: dict[str | None, Outcome],
    presets: list[str] | None,
    root: Path,
    json_out: bool,
) -> ByPreset:
    """Each preset's results tables (stdout; stderr beside --json) and where its results.json
    is; once every preset has run, the speedup by scale. Returns the results by preset."""
    by_preset = {p: results for p, (results, _, _) in outcomes.items()}
    for preset, results in by_preset.items():
        if presets:  # then every key is a preset's name
            show_preset_title(cast(str, preset), json_out)
        show_results(results, json_out)
        where("results", ablations[preset].dir / "results.json")
    if presets and len(by_preset) == len(presets):
        show_scale(root, by_preset, json_out)
    return by_preset


def exit_for(
    outcomes: dict[str | None, Outcome],
    stop: threading.Event,
    shard: str | None,
    ablations: dict[str | None, Ablation],
) -> None:
    """Exit 130 (143) after an interruption; 4, saying what to do, while runs that other shards
    or processes train are missing (run dirs found locked included); 6 when one of this
    invocation's runs failed, 3 when one diverged (or one of its cooldown branches)."""
    waiting = [run for _, wanted, _ in outcomes.values() for run in wanted]
    busy = sorted(name for ab in ablations.values() for name in ab.busy)
    runs = [
        r
        for results, _, mine in outcomes.values()
        for r in results["runs"]
        if mine is None or r["name"] in mine
    ]
    if stop.is_set():
        raise typer.Exit(interrupted_code(stop))
    if waiting or busy:
        missing = [r.name for r in waiting] or busy
        names = ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else "")
        who = f"shard {shard}" if shard else "this ablation"
        console.print(
            f"[yellow]{who} waits for {counted(len(missing), 'run')} that other shards or "
            f"processes train ({escape(names)}); rerun it when they finish"
            f"{', or pass --wait 60' if shard else ''}[/]",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_WAITING)
    if any(r["status"] == "failed" for r in runs):
        raise typer.Exit(EXIT_RUN_FAILED)
    if any(map(diverged, runs)):  # a cooldown branch's divergence too
        raise typer.Exit(EXIT_DIVERGED)
