"""The `mousse` Typer application: parse, validate, call the engine, render."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

import mousse
from mousse.dist.process import (
    env_world_size,
    exit_on_error,
    is_main_process,
    rank_prefix,
)
from mousse.train.checkpoint import CheckpointError, list_checkpoints
from mousse.train.config import ConfigError, load_config_file, resolve
from mousse.train.dashboards import Dashboards
from mousse.train.data import DataError
from mousse.train.fileio import dumps

from .options import BASE_FLAGS, PLAN_PANEL, RUN_PANEL, SWEEP_FLAGS, TRAIN_FLAGS, with_flags
from .views import (
    AblationView,
    TrainView,
    bench_tables,
    console,
    presets_table,
    results_tables,
    scale_table,
)

app = typer.Typer(
    name="mousse",
    help="Optimizer ablations for language models around Mousse (Muon whitened by Shampoo's "
    "Kronecker factors, arXiv 2603.09697).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",  # for the help panels: a literal [ in help text is written \\[
)

USER_ERRORS = (ConfigError, DataError, CheckpointError)
EXIT_DIVERGED = 3
EXIT_WAITING = 4
EXIT_EXPECTATION = 5


def fail(message: str, code: int = 2, json_out: bool = False) -> None:
    """One line on stderr and the exit code (2: the user's input was wrong; under torchrun the
    line names the rank); with --json also {"error", "exit_code"} on stdout for scripts."""
    console.quiet = False  # shown even on a rank that is otherwise silent
    console.print(
        f"[red]error:[/] {escape(rank_prefix() + message)}", highlight=False, soft_wrap=True
    )
    if json_out and is_main_process():
        typer.echo(dumps({"error": message, "exit_code": code}))
    raise typer.Exit(code)


@contextmanager
def user_errors(json_out: bool = False):
    """Errors of the user's input, and of the file system the user pointed at (a directory given
    as a file, a read-only dir, a name too long), as one line and exit 2."""
    try:
        yield
    except USER_ERRORS as exc:
        fail(str(exc), json_out=json_out)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}", json_out=json_out)


def show_wide(renderable) -> None:
    """Print tables to stderr; in logs and pipes wide enough not to cut cells."""
    if console.is_terminal:
        console.print(renderable)
        return
    width, console.width = console.width, 160
    try:
        console.print(renderable)
    finally:
        console.width = width


def show_results(results: dict) -> None:
    """The convergence and step-time tables."""
    show_wide(results_tables(results))


@contextmanager
def graceful_stop():
    """Ctrl-C or SIGTERM (what Slurm and Kubernetes send before killing a job) asks the engine to
    stop after the current step (it checkpoints); a second signal interrupts at once. The stop
    flag's `signal` attribute says which signal came first (its exit code: 128 + number)."""
    stop = threading.Event()
    stop.signal = None  # type: ignore[attr-defined]

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.signal = signum  # type: ignore[attr-defined]
        stop.set()
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        console.print(f"[yellow]{name}: stopping after this step (again to abort)[/]")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def interrupted_code(stop) -> int:
    """130 after Ctrl-C, 143 after SIGTERM: the shell's codes for the two signals."""
    return 128 + int(getattr(stop, "signal", None) or signal.SIGINT)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mousse {mousse.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Optimizer ablations for language models around Mousse."""


@app.command()
@with_flags(TRAIN_FLAGS)
def train(
    overrides: dict,
    config: Optional[Path] = typer.Option(
        None,
        "--config",
        help="TOML file of settings (flags override it; it overrides the preset).",
        rich_help_panel=RUN_PANEL,
    ),
    run_dir: Optional[Path] = typer.Option(
        None,
        "--run-dir",
        help="Run directory (default runs/<preset>-<optimizer>-<time>).",
        rich_help_panel=RUN_PANEL,
    ),
    resume: Optional[str] = typer.Option(
        None,
        "--resume",
        help="Continue from a run dir (its latest checkpoint), a checkpoint dir, or 'auto' (latest in --run-dir).",
        rich_help_panel=RUN_PANEL,
    ),
    json_out: bool = typer.Option(
        False,
        "--json",
        help="Print the final summary as JSON on stdout.",
        rich_help_panel=RUN_PANEL,
    ),
    nproc: int = typer.Option(
        1,
        "--nproc",
        help="Ranks on this machine (one per GPU, or CPU processes): starts torchrun for you. Several machines: run torchrun yourself (docs/scaling.md).",
        rich_help_panel=RUN_PANEL,
    ),
    max_hours: Optional[float] = typer.Option(
        None,
        "--max-hours",
        help="Refuse (exit 2) a run estimated to take longer than this many hours here (for CI).",
        rich_help_panel=RUN_PANEL,
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Start even when the memory estimate exceeds what the device has free.",
        rich_help_panel=RUN_PANEL,
    ),
) -> None:
    """Train one model. With no arguments: the tiny preset on the builtin corpus (about a minute on CPU)."""
    from mousse.dist import setup
    from mousse.train.trainer import Trainer, config_from_checkpoint

    with exit_on_error((typer.Exit,)), user_errors(json_out):
        console.quiet = not is_main_process()  # under torchrun only rank 0 renders
        settings = {**(load_config_file(config) if config else {}), **overrides}
        ckpt = None
        restart = False
        if resume == "auto":
            if run_dir is None:
                raise ConfigError("--resume auto needs --run-dir to look in")
            restart = not list_checkpoints(run_dir / "checkpoints")  # nothing to resume: start
        if resume is not None and not restart:
            source = run_dir if resume == "auto" else Path(resume)
            cfg, ckpt = config_from_checkpoint(source, settings, warn=notice)
            run_dir = run_dir or ckpt.parent.parent
        else:
            cfg = resolve(settings)
        dashboards = Dashboards(cfg.log, notice)  # a missing package: one line, before any work
        if nproc != 1:
            from .launch import launch_train

            raise typer.Exit(launch_train(nproc, settings, cfg, run_dir, resume, json_out))
        cost = check_cost([cfg], max_hours, force) if env_world_size() == 1 else []
        with graceful_stop() as stop, dashboards:
            view = TrainView()
            trainer = Trainer(
                cfg,
                run_dir,
                on_event=lambda e: (view(e), dashboards(e)),
                resume=ckpt,
                stop=stop,
                world=setup,
                restart=restart,
            )
            show_lines(cost)  # after the checks a Trainer makes, so an error stays one line
            summary = trainer.run(argv=sys.argv)
    if json_out and is_main_process():
        typer.echo(dumps(summary))
    if summary["status"] == "diverged":
        raise typer.Exit(EXIT_DIVERGED)
    if summary["status"] == "interrupted":
        raise typer.Exit(interrupted_code(stop))


@app.command()
def presets(
    json_out: bool = typer.Option(False, "--json", help="Print as JSON on stdout."),
    device: str = typer.Option(
        "auto", "--device", help="Estimate time on this device: auto | cpu | cuda."
    ),
) -> None:
    """List model presets with parameter counts, recipe (the block matrices' lr for every
    optimizer, and what it was tuned for), memory estimate and the time a Mousse run of each
    would take on this machine (a measured probe for the small presets, FLOPs for the others)."""
    from mousse.train.config import OPTIMIZERS
    from mousse.train.estimate import duration, estimate
    from mousse.train.presets import PRESETS, memory_estimate_bytes, param_count
    from mousse.train.trainer import pick_device

    with user_errors():
        where = pick_device(device)
        costs = {
            name: estimate(resolve({"preset": name, "device": device}), p.vocab_size, where)
            for name, p in PRESETS.items()
        }
    rows = [
        {
            "name": p.name,
            "params": f"{param_count(p) / 1e6:.1f}M",
            "d_model": p.d_model,
            "n_layers": p.n_layers,
            "n_heads": p.n_heads,
            "seq_len": p.seq_len,
            "batch_size": p.batch_size,
            "steps": p.steps,
            "lrs": {o: p.matrix_lr(o) for o in OPTIMIZERS},
            "momenta": dict(p.momenta),
            "lr_note": p.lr_note,
            "scalar_lr": p.scalar_lr,
            "memory": f"{memory_estimate_bytes(p) / 2**30:.1f}G",
            "step_time": duration(costs[p.name].step_seconds),
            "run_time": duration(costs[p.name].run_seconds),
            "step_seconds": costs[p.name].step_seconds,
            "estimate": costs[p.name].method,
            "device": str(where),
            "description": p.description,
        }
        for p in PRESETS.values()
    ]
    if json_out:
        typer.echo(dumps(rows))
    else:
        show_wide(presets_table(rows))


@app.command()
@with_flags({**SWEEP_FLAGS, **BASE_FLAGS})
def ablate(
    overrides: dict,
    spec: Optional[Path] = typer.Argument(
        None, help="Ablation spec TOML (see ablations/); flags override it."
    ),
    grid: bool = typer.Option(
        False,
        "--grid",
        help="Run the full product of the sweeps instead of one knob at a time.",
        rich_help_panel=PLAN_PANEL,
    ),
    no_baseline: bool = typer.Option(
        False, "--no-baseline", help="Leave out the Muon baseline run.", rich_help_panel=PLAN_PANEL
    ),
    seeds: Optional[str] = typer.Option(
        None,
        "--seeds",
        help="Seeds per variant: a count (3 = seeds 0,1,2) or a list (0,5,7).",
        rich_help_panel=PLAN_PANEL,
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the planned runs and stop.", rich_help_panel=PLAN_PANEL
    ),
    max_runs: int = typer.Option(
        32, "--max-runs", help="Refuse plans with more runs than this.", rich_help_panel=PLAN_PANEL
    ),
    ablation_dir: Optional[Path] = typer.Option(
        None,
        "--ablation-dir",
        help="Directory of this ablation (default runs/ablate-<knobs>-<plan hash>); rerunning resumes it.",
        rich_help_panel=RUN_PANEL,
    ),
    shard: Optional[str] = typer.Option(
        None,
        "--shard",
        help="Run only shard i of n of the runs, e.g. 1/2 (for several machines or GPUs).",
        rich_help_panel=RUN_PANEL,
    ),
    parallel: int = typer.Option(
        1,
        "--parallel",
        help="Runs at a time (CPU: each gets a share of the cores).",
        rich_help_panel=RUN_PANEL,
    ),
    config: Optional[Path] = typer.Option(
        None,
        "--config",
        help="TOML file of base settings for every run.",
        rich_help_panel=RUN_PANEL,
    ),
    tune: Optional[str] = typer.Option(
        None,
        "--tune",
        help="Tune these knobs per variant (baseline included) before comparing, by coordinate descent in this order: lr | lr,momentum | lr=0.01,0.02,0.04 | momentum_style=heavy_ball,nesterov. Default grid: 5 values a factor 2 apart around the variant's own value; a best value at an edge grows the grid.",
        rich_help_panel=PLAN_PANEL,
    ),
    tune_seeds: Optional[str] = typer.Option(
        None,
        "--tune-seeds",
        help="Seeds each tuning run is averaged over (a count or a list; default 1).",
        rich_help_panel=PLAN_PANEL,
    ),
    wait: Optional[float] = typer.Option(
        None,
        "--wait",
        help="With --shard and --tune: when this shard needs other shards' results, poll every SECONDS instead of exiting with code 4.",
        rich_help_panel=RUN_PANEL,
    ),
    max_hours: Optional[float] = typer.Option(
        None,
        "--max-hours",
        help="Refuse (exit 2) an ablation estimated to take longer than this many hours here (for CI).",
        rich_help_panel=RUN_PANEL,
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Start even when a run's memory estimate exceeds what the device has free.",
        rich_help_panel=RUN_PANEL,
    ),
    no_timing_pass: bool = typer.Option(
        False,
        "--no-timing-pass",
        help="Skip the side-by-side timing pass after the runs (the overhead column then needs runs timed in one invocation).",
        rich_help_panel=RUN_PANEL,
    ),
    timing_budget: Optional[float] = typer.Option(
        None,
        "--timing-budget",
        help="Seconds for the timing pass (default: 3% of the ablation's training time, at least 10).",
        rich_help_panel=RUN_PANEL,
    ),
    json_out: bool = typer.Option(
        False,
        "--json",
        help="Print the results object as JSON on stdout.",
        rich_help_panel=RUN_PANEL,
    ),
) -> None:
    """Sweep Mousse's knobs (and baselines) with the same budget and compare.

    Exit codes: 0 all runs completed, 3 some run diverged, 2 bad input, 4 this shard waits for
    other shards' tuning results (rerun it later, or pass --wait), 130 interrupted.
    """
    from mousse.experiments.ablation import (
        _CHOICES,
        load_spec,
        parse_seeds,
        parse_sweep_values,
        plan_ablation,
        tune_spec,
    )
    from mousse.experiments.scale import SCALE_FILE, split_presets
    from mousse.experiments.sweep import Ablation
    from mousse.experiments.tuning import parse_tune
    from mousse.train.fileio import write_json

    with exit_on_error((typer.Exit,)), user_errors(json_out):
        console.quiet = not is_main_process()  # under torchrun only rank 0 renders
        sweep_flags = {
            k: parse_sweep_values(k, v) for k, v in overrides.items() if k in SWEEP_FLAGS
        }
        base_flags = {k: v for k, v in overrides.items() if k not in SWEEP_FLAGS}
        file = load_spec(spec) if spec else {}
        base = {
            **(load_config_file(config) if config else {}),
            **file.get("base", {}),
            **base_flags,
        }
        presets = split_presets(base_flags.get("preset", file.get("presets")))
        sweeps = {**file.get("sweeps", {}), **sweep_flags}
        tuning = file.get("tune")
        if tune is not None or tune_seeds is not None:
            saved = tuning or {"knobs": [], "grids": {}, "seeds": [0]}
            phases = (
                parse_tune(tune, _CHOICES)
                if tune is not None
                else [(k, saved["grids"].get(k)) for k in saved["knobs"]]
            )
            tuning = tune_spec(
                phases,
                parse_seeds(tune_seeds) if tune_seeds else saved["seeds"],
                saved.get("max_extensions"),
            )
        if wait is not None and (wait <= 0 or shard is None or not tuning):
            raise ConfigError("--wait SECONDS (> 0) is for a --shard of a --tune ablation")
        if parallel < 1:
            raise ConfigError("--parallel must be >= 1")
        if parallel > 1 and env_world_size() > 1:
            raise ConfigError(
                "--parallel runs single-process runs side by side; under torchrun "
                "each run uses every rank, one run after another: drop --parallel"
            )
        plans = {
            preset: plan_ablation(
                sweeps,
                base={**base, "preset": preset} if preset else base,
                mode="grid" if grid else file.get("mode", "one-at-a-time"),
                seeds=parse_seeds(seeds)
                if seeds
                else file.get("seeds", [0, 1, 2] if tuning else [0]),
                baseline=False if no_baseline else file.get("baseline", True),
                tune=tuning,
            )
            for preset in presets or [None]
        }
        first = next(iter(plans.values()))
        root = ablation_dir or Path("runs") / first.default_dir_name(
            (file.get("name") or "-".join(first.sweeps))
            + ("-" + "+".join(presets) if presets else "")
        )
        ablations = {p: Ablation(plan, root / p if presets else root) for p, plan in plans.items()}
        check_max_runs_all(ablations.values(), max_runs)
        for ab in ablations.values():
            ab.validate()
        dashboards = {
            p: Dashboards(
                base.get("log"),
                notice,
                ab.dir,  # one group per ablation
                group=f"{root.name}-{p}" if presets else None,
            )
            for p, ab in ablations.items()
        }
        cost = []
        if env_world_size() == 1:
            variants = [ab.variant_configs() for ab in ablations.values()]
            cost = check_cost(
                [c for vs in variants for c in vs],
                max_hours,
                force,
                runs=sum(ab.upper_bound_runs() for ab in ablations.values()),
            )
        for ab in ablations.values():
            show_plan(ab, shard_of(ab, shard), shard)
        show_lines(cost)
        if dry_run:
            return
        if presets and is_main_process():
            root.mkdir(parents=True, exist_ok=True)
            write_json(root / SCALE_FILE, {"presets": presets})
        outcomes = {}
        with graceful_stop() as stop:
            for preset, ab in ablations.items():
                if stop.is_set():
                    break
                outcomes[preset] = run_one_ablation(
                    ab, shard, parallel, stop, wait, dashboards[preset]
                )
                if not (no_timing_pass or stop.is_set() or outcomes[preset][1]):
                    outcomes[preset] = (
                        timed(ab, timing_budget) or outcomes[preset][0],
                        *outcomes[preset][1:],
                    )
    by_preset = {p: results for p, (results, _, _) in outcomes.items()}
    for preset, results in by_preset.items():
        if presets:
            console.print(f"[bold]preset {preset}[/]", highlight=False)
        show_results(results)
        console.print(
            f"results: {ablations[preset].dir / 'results.json'}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
    if presets and len(by_preset) == len(presets):
        show_scale(root, by_preset)
    if json_out and is_main_process():
        typer.echo(
            dumps(
                by_preset[None]
                if not presets
                else {"presets": by_preset, "scale": scale_of(by_preset)}
            )
        )
    waiting = [run for _, wanted, _ in outcomes.values() for run in wanted]
    statuses = {
        r["status"]
        for results, _, mine in outcomes.values()
        for r in results["runs"]
        if mine is None or r["name"] in mine
    }
    if stop.is_set():
        raise typer.Exit(interrupted_code(stop))
    if waiting:
        names = ", ".join(r.name for r in waiting[:4]) + (" ..." if len(waiting) > 4 else "")
        who = f"shard {shard}" if shard else "this ablation"
        console.print(
            f"[yellow]{who} waits for {len(waiting)} runs that other shards or "
            f"processes train ({escape(names)}); rerun it when they finish"
            f"{', or pass --wait 60' if shard else ''}[/]",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_WAITING)
    if "diverged" in statuses:
        raise typer.Exit(EXIT_DIVERGED)


def timed(ablation, budget: float | None) -> dict | None:
    """The side-by-side timing pass of an ablation's variants (one process, this machine), and
    the results with its overheads; None when it does not apply (under torchrun, fewer than two
    finished variants, or a pass already on disk and nothing trained since)."""
    from mousse.experiments.timing import TIMING_FILE

    if env_world_size() > 1:
        return None
    if (ablation.dir / TIMING_FILE).exists() and not ablation.trained:
        return None
    if budget is not None and budget <= 0:
        raise ConfigError("--timing-budget must be > 0 seconds (or pass --no-timing-pass)")
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
        f"timing pass: {record['rounds']} rounds of {record['steps_per_round']} steps "
        f"in {record['seconds']:.0f} s",
        highlight=False,
    )
    return ablation.write_results()


def check_cost(
    configs: list, max_hours: float | None, force: bool, runs: int | None = None, what: str = "run"
) -> list[str]:
    """Estimate the time (probe or FLOPs) and memory of `configs` (one per variant); refuse with
    one line what exceeds --max-hours or, unless --force, the device's free memory. Returns the
    lines to show: the estimate, and a hint when a GPU preset meets a CPU."""
    from mousse.train.data import load_dataset
    from mousse.train.estimate import describe, duration, estimate, fitting_micro_batch, warning
    from mousse.train.trainer import pick_device

    if max_hours is not None and max_hours <= 0:
        raise ConfigError("--max-hours must be > 0")
    estimates, vocabs = [], {}
    for cfg in configs:
        device = pick_device(cfg.device)
        key = (cfg.data, cfg.val_data)  # every variant usually shares one dataset: load it once
        vocab = vocabs[key] = vocabs.get(key) or load_dataset(*key).vocab_size
        est = estimate(cfg, vocab, device)
        estimates.append(est)
        if not est.fits and not force:
            micro = fitting_micro_batch(cfg, vocab, est.available_bytes)
            hint = (
                f"--micro-batch-size {micro} fits"
                if micro and micro < cfg.micro_batch_size
                else "a smaller model or a bigger device is needed"
            )
            raise ConfigError(
                f"this run needs about {est.memory_bytes / 2**30:.1f} GiB, the "
                f"{est.device} has {est.available_bytes / 2**30:.1f} GiB free: "
                f"{hint} (or --force to try anyway)"
            )
    first = estimates[0]
    if len(configs) == 1 and runs is None:
        total = first.run_seconds
        line = describe(first)
    else:
        per_variant = [e.run_seconds for e in estimates]
        runs = runs or len(configs)
        total = sum(per_variant) / len(per_variant) * runs
        line = (
            f"about {duration(total)} for {runs} {what}s on this "
            f"{first.device.split(':')[0].upper()} ({duration(min(per_variant))} to "
            f"{duration(max(per_variant))} a run; "
            f"{'measured probe' if first.method == 'probe' else 'from FLOPs'})"
        )
    if max_hours is not None and total > max_hours * 3600:
        raise ConfigError(
            f"estimated {line}: more than --max-hours {max_hours:g}; pick a "
            "smaller preset or fewer steps, or raise --max-hours"
        )
    hint = warning(configs[0], first, pick_device(configs[0].device))
    return [f"estimate: {escape(line)}"] + ([f"[yellow]warning: {escape(hint)}[/]"] if hint else [])


def notice(text: str) -> None:
    console.print(f"[yellow]warning: {escape(text)}[/]", highlight=False, soft_wrap=True)


def show_lines(lines: list[str]) -> None:
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def shard_of(ablation, shard: str | None) -> list:
    """The listed runs this invocation trains (tuning plans list theirs as they go: none)."""
    from mousse.experiments.ablation import shard_runs

    if ablation.plan.tune:
        return []
    return shard_runs(ablation.plan.runs, shard) if shard else ablation.plan.runs


def check_max_runs_all(ablations, max_runs: int) -> None:
    """--max-runs against every preset's plan together (upper bounds when tuning)."""
    from mousse.experiments.ablation import check_max_runs

    ablations = list(ablations)
    total = sum(ab.upper_bound_runs() for ab in ablations)
    check_max_runs(ablations[0].plan, max_runs, total)


def run_one_ablation(
    ablation, shard: str | None, parallel: int, stop, wait, dashboards: Dashboards
) -> tuple:
    """Train one ablation dir's runs with the live view and the dashboards: (results, runs other
    shards owe, names of the runs this invocation answers for, None for all)."""
    from mousse.experiments.ablation import parse_shard
    from mousse.experiments.sweep import RunUpdate

    ablation.prepare()
    plan = ablation.plan
    runs = shard_of(ablation, shard)
    # live deltas against the baseline only without tuning (tuning runs differ in lr)
    baseline = None if plan.tune else next((r.name for r in plan.runs if r.is_baseline), None)
    with AblationView(runs, baseline) as view, dashboards:

        def on_update(update) -> None:
            view(update)
            if isinstance(update, RunUpdate):
                dashboards(update.event, update.run)

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


def scale_of(by_preset: dict) -> dict:
    from mousse.experiments.scale import scale_summary

    return scale_summary(by_preset)


def show_scale(root: Path, by_preset: dict) -> None:
    """The speedup per scale (and scale.json beside the per-preset dirs)."""
    from mousse.experiments.scale import SCALE_FILE
    from mousse.train.fileio import write_json

    scale = scale_of(by_preset)
    if is_main_process():
        write_json(root / SCALE_FILE, scale)
    show_wide(scale_table(scale))
    console.print(f"scale: {root / SCALE_FILE}", highlight=False, soft_wrap=True, markup=False)


def show_plan(ablation, runs, shard: str | None) -> None:
    """The planned runs (when tuning: the variants, their grids and the run count), to stderr."""
    plan, where = ablation.plan, escape(str(ablation.dir))
    if not plan.tune:
        console.print(
            f"[bold]mousse ablate[/]: {len(plan.runs)} runs ({plan.mode}, seeds "
            f"{plan.seeds}){f', shard {shard}: {len(runs)} runs' if shard else ''} in {where}",
            highlight=False,
            soft_wrap=True,
        )
        for run in runs:
            console.print(
                f"  {run.name:<28} {knob_text(run.knobs)}"
                f"{'  (baseline)' if run.is_baseline else ''}",
                highlight=False,
                soft_wrap=True,
                markup=False,
            )
        return
    from mousse.experiments.tuning import fmt_value

    tune, grids = ablation.tune, ablation.grids()
    console.print(
        f"[bold]mousse ablate[/]: {len(plan.variants)} variants, each tuned "
        f"({', '.join(tune.knobs)}; seeds {list(tune.seeds)} per tuning run), then "
        f"compared over seeds {plan.seeds}{f', shard {shard}' if shard else ''} in {where}",
        highlight=False,
        soft_wrap=True,
    )
    for name, variant in plan.variants.items():
        phases = "; ".join(f"{k} {'/'.join(fmt_value(v) for v in grid)}" for k, grid in grids[name])
        console.print(
            f"  {name:<28} {knob_text(variant.knobs)}"
            f"{'  (baseline)' if variant.is_baseline else ''}  tune {phases}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
    bound = ablation.upper_bound_runs()
    seconds, source = ablation.estimate_seconds(bound)
    console.print(
        f"at most {bound} runs, grid extensions included"
        + (f"; at most about {seconds / 3600:.1f} h on this machine ({source})" if seconds else ""),
        highlight=False,
        soft_wrap=True,
    )


def knob_text(knobs: dict) -> str:
    return (
        ", ".join(
            f"{k}={ ({True: 'on', False: 'off'}.get(v, v) if isinstance(v, bool) else v) }"
            for k, v in knobs.items()
        )
        or "the shared settings"
    )


@app.command()
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
    compiled: bool = typer.Option(
        False,
        "--compile",
        help="Also time our Muon and Mousse (both, refresh every 10) under torch.compile (compiled during warm-up); with --train, compile the timed training runs too.",
    ),
    model: Optional[str] = TRAIN_FLAGS["model"][1],
    model_config: Optional[str] = TRAIN_FLAGS["model_config"][1],
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
        results = run_bench(preset, repeats, device, train, steps, compiled, user_model or None)
    show_wide(bench_tables(results))
    if json_out:
        typer.echo(dumps(results))


@app.command()
def report(
    ablation_dir: Path = typer.Argument(
        ...,
        help="An ablation directory (holds ablation.toml), or the root of `ablate --preset a,b` (holds scale.json).",
    ),
    fmt: str = typer.Option("table", "--format", help="table | markdown | json | csv."),
    plot: Optional[Path] = typer.Option(
        None,
        "--plot",
        help="Also draw val loss vs step and vs time to this PNG (needs matplotlib); with tuning, the tuning curves beside it; for several scales, the speedup vs parameters.",
    ),
    retime: bool = typer.Option(
        False,
        "--retime",
        help="Time every variant's step again, side by side in this process on this machine, and take the overheads from that pass.",
    ),
    timing_budget: Optional[float] = typer.Option(
        None,
        "--timing-budget",
        help="Seconds for --retime (default: 3% of the ablation's training time, at least 10).",
    ),
    expect: Optional[list[str]] = typer.Option(
        None,
        "--expect",
        help='A CI gate, repeatable: "mousse < muon" (mean final loss), "mousse < muon significant" (and Welch p < 0.05), "speedup(mousse) >= 1.05", "speedup_low(mousse) > 1", "overhead(mousse) <= 10". Exit 5 when one fails (docs/ci.md).',
    ),
) -> None:
    """Re-render an ablation's tables from disk (and check expectations, for CI).

    Exit codes: 0 fine, 2 bad input, 5 an --expect failed."""
    from mousse.experiments.results import render
    from mousse.experiments.scale import preset_dirs

    with user_errors():
        if fmt not in ("table", "markdown", "json", "csv"):
            raise ConfigError(f"bad --format {fmt!r}; choose one of table, markdown, json, csv")
        scaled = not (ablation_dir / "ablation.toml").is_file() and bool(preset_dirs(ablation_dir))
        dirs = preset_dirs(ablation_dir) if scaled else {None: ablation_dir}
        by_preset = {}
        for preset, path in dirs.items():
            ablation = open_ablation(path)
            if retime:
                ablation.trained = True
                timed(ablation, timing_budget)
            by_preset[preset] = results = ablation.results()
            if plot is not None:
                draw_plots(
                    ablation,
                    results,
                    plot
                    if preset is None
                    else plot.with_name(f"{plot.stem}-{preset}{plot.suffix or '.png'}"),
                )
        if scaled and plot is not None:
            from .plot import plot_scale

            plot_scale(scale_of(by_preset), plot)
            console.print(f"speedup vs scale: {plot}", highlight=False, markup=False)
    if expect:  # a bad expression is refused before anything is printed
        check_expressions(expect)
    if scaled and fmt == "json":
        typer.echo(dumps({"presets": by_preset, "scale": scale_of(by_preset)}))
    elif scaled:
        for preset, results in by_preset.items():
            console.print(f"[bold]preset {preset}[/]", highlight=False)
            show_results(results) if fmt == "table" else typer.echo(render(results, fmt), nl=False)
        show_wide(scale_table(scale_of(by_preset)))
    elif fmt == "table":
        show_results(by_preset[None])
    else:
        typer.echo(render(by_preset[None], fmt), nl=False)
    if expect:
        gate(expect, by_preset)


def check_expressions(expectations: list[str]) -> None:
    from mousse.experiments.expect import parse

    with user_errors():
        for expr in expectations:
            parse(expr)


def gate(expectations: list[str], by_preset: dict) -> None:
    """Check every expectation on every preset's results; one line each on stderr; exit 5 after
    the tables when one fails (bad expressions: exit 2 at once)."""
    from mousse.experiments.expect import check

    with user_errors():
        failed = []
        for preset, results in by_preset.items():
            for expr in expectations:
                ok, reason = check(expr, results)
                where = f"[{preset}] " if preset else ""
                console.print(
                    f"[{'green' if ok else 'red'}]{'ok' if ok else 'FAILED'}:[/] "
                    f"{escape(where + reason)}",
                    highlight=False,
                    soft_wrap=True,
                )
                if not ok:
                    failed.append(reason)
    if failed:
        raise typer.Exit(EXIT_EXPECTATION)


def open_ablation(path: Path):
    """The Ablation recorded in `path` (its ablation.toml); ConfigError when there is none."""
    from mousse.experiments.ablation import AblationPlan
    from mousse.experiments.sweep import Ablation
    from mousse.train import tomlio

    plan_file = path / "ablation.toml"
    if not plan_file.is_file():
        raise ConfigError(
            f"{path} is not an ablation dir (no ablation.toml); pass the "
            "--ablation-dir of a `mousse ablate` run"
        )
    try:
        plan = AblationPlan.from_dict(tomlio.load(plan_file))
    except (tomlio.TOMLDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{plan_file} is damaged ({exc}); rerun the ablation") from None
    return Ablation(plan, path)


def draw_plots(ablation, results: dict, plot: Path) -> None:
    """Loss curves, and with tuning the tuning curves beside them."""
    from .plot import plot_curves, plot_tuning

    plot_curves(ablation.records(), results["baseline"], plot)
    console.print(f"plot: {plot}", highlight=False, markup=False)
    if ablation.tune:
        tuning_plot = plot.with_name(f"{plot.stem}-tuning{plot.suffix or '.png'}")
        plot_tuning(results, tuning_plot)
        console.print(f"tuning curves: {tuning_plot}", highlight=False, markup=False)


# Click's exception classes, reached through typer's public BadParameter (newer typer vendors click).
_clicks = sys.modules[typer.BadParameter.__module__]


def usage_error_line(exc) -> str:
    """A usage error as one line: what is wrong, the closest valid option or command, where the
    help is (click prints four lines and a list of possibilities)."""
    ctx = exc.ctx
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    if isinstance(exc, _clicks.NoSuchOption):  # click's possibilities: the closest first
        hint = f"; did you mean {exc.possibilities[0]}?" if exc.possibilities else ""
        return f"error: no such option {exc.option_name}{hint}{where}"
    message = exc.format_message().replace("\n", " ").rstrip(".")
    return f"error: {message[:1].lower()}{message[1:]}{where}"


def run_app() -> None:
    """The app with usage errors (unknown option or command, bad value) as one line, exit 2."""
    try:
        code = app(standalone_mode=False)  # returns typer.Exit's code; Abort and errors raise
    except _clicks.UsageError as exc:
        code = 2
        if not isinstance(exc, getattr(_clicks, "NoArgsIsHelpError", ())):  # that one: help shown
            console.print(
                usage_error_line(exc), style="red", highlight=False, markup=False, soft_wrap=True
            )
    except _clicks.ClickException as exc:
        code = exc.exit_code
        console.print(
            f"error: {exc.format_message()}",
            style="red",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    except typer.Abort:
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


def main() -> None:
    if env_world_size() > 1:  # one rank of a torchrun job: leave the process group cleanly
        from mousse.dist.process import run_rank

        run_rank(run_app)
    run_app()
