"""`mousse train`: one training run, in this process or on several ranks under torchrun."""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mousse.distributed.process import env_world_size, exit_on_error, is_main_process
from mousse.train.checkpoint import checkpoint_dirs, run_dir_of
from mousse.train.config import (
    ConfigError,
    Overrides,
    TrainConfig,
    load_config_file,
    refuse_with_budgets,
    resolve,
)
from mousse.train.dashboards import Dashboards
from mousse.train.fileio import dumps
from mousse.train.rundir import RunLock, lock_before_resume
from mousse.train.summary import RunSummary

from .console import console, notice, out, show_lines
from .cost import check_cost
from .errors import EXIT_DIVERGED, diverged, user_errors
from .interrupts import graceful_stop, interrupted_code
from .options import RUN_PANEL, TRAIN_FLAGS, with_flags
from .pipes import outliving_closed_pipes
from .startup import reached
from .train_view import TrainView, show_summary
from .trust import TRUST_MODEL_CODE, check_trusted

if TYPE_CHECKING:
    from mousse.train.events import Event

# The options of `train` besides the run settings (TRAIN_FLAGS), in the order --help lists them.
CONFIG = typer.Option(
    None,
    "--config",
    help="TOML file of settings (flags override it; it overrides the preset).",
    rich_help_panel=RUN_PANEL,
)
RUN_DIR = typer.Option(
    None,
    "--run-dir",
    help="Run directory (default runs/<preset>-<optimizer>-<time>).",
    rich_help_panel=RUN_PANEL,
)
RESUME = typer.Option(
    None,
    "--resume",
    help="Continue from a run dir (its latest checkpoint), a checkpoint dir, or 'auto' (latest in --run-dir).",
    rich_help_panel=RUN_PANEL,
)
JSON_OUT = typer.Option(
    False,
    "--json",
    help="Print the final summary as JSON on stdout.",
    rich_help_panel=RUN_PANEL,
)
NPROC = typer.Option(
    1,
    "--nproc",
    help="Ranks on this machine (one per GPU, or CPU processes): starts torchrun for you. Several machines: run torchrun yourself (docs/scaling.md).",
    rich_help_panel=RUN_PANEL,
)
MAX_HOURS = typer.Option(
    None,
    "--max-hours",
    help="Refuse (exit 2) a run estimated to take longer than this many hours here (for CI).",
    rich_help_panel=RUN_PANEL,
)
FORCE = typer.Option(
    False,
    "--force",
    help="Start even when the memory estimate exceeds what the device has free.",
    rich_help_panel=RUN_PANEL,
)


@with_flags(TRAIN_FLAGS)
def train(
    overrides: Overrides,
    config: Path | None = CONFIG,
    run_dir: Path | None = RUN_DIR,
    resume: str | None = RESUME,
    json_out: bool = JSON_OUT,
    nproc: int = NPROC,
    max_hours: float | None = MAX_HOURS,
    force: bool = FORCE,
    trust_model_code: bool = TRUST_MODEL_CODE,
) -> None:
    """Train one model. With no arguments: the tiny preset on the builtin corpus (under a minute
    on CPU: about 35 s on 2 cores)."""
    with exit_on_error((typer.Exit,)), user_errors(json_out), ExitStack() as held:
        console.quiet = not is_main_process()  # under torchrun only rank 0 renders
        if resume is not None and not resume.strip():
            raise ConfigError("--resume needs a run dir, a checkpoint dir or 'auto'; it is empty")
        file = load_config_file(config) if config else {}
        settings = Overrides.from_dict(file).updated(overrides)
        # --steps/--budget flags with budgets; a file's (a budgets run's config.toml records
        # them) are checked by `resolve` against what the budgets make
        refuse_with_budgets({**overrides.to_dict(), "budgets": settings.budgets})
        # a resume locks its run dir before it chooses the checkpoint (torchrun's ranks: rank 0)
        lock = lock_before_resume(run_dir, resume) if is_main_process() and nproc == 1 else None
        if lock is not None:
            held.callback(lock.release)
        cfg, ckpt, run_dir, restart = starting_point(settings, run_dir, resume)
        check_knobs_used(settings.to_dict(), cfg)
        where = f"--config {config}" if "model" in file else f"the run of --resume {resume}"
        check_trusted({"model": cfg.model}, overrides.model, trust_model_code, where)
        dashboards = Dashboards(cfg.log, notice)  # a missing package: one line, before any work
        if nproc != 1 and cfg.budgets is not None:
            raise ConfigError("--budgets trains its branches in one process; drop --nproc")
        if nproc != 1:
            from .launch import launch_train

            raise typer.Exit(
                launch_train(nproc, settings.to_dict(), cfg, run_dir, resume, json_out)
            )
        cost = check_cost([cfg], max_hours, force) if env_world_size() == 1 else []
        with graceful_stop() as stop, dashboards, outliving_closed_pipes(console, out):
            summary = run_training(cfg, run_dir, ckpt, restart, stop, dashboards, cost, lock)
    if is_main_process():
        show_summary(summary, json_out)
        if json_out:
            typer.echo(dumps(summary))
    if diverged(summary):
        raise typer.Exit(EXIT_DIVERGED)
    if summary["status"] == "interrupted":
        raise typer.Exit(interrupted_code(stop))


def starting_point(
    settings: Overrides, run_dir: Path | None, resume: str | None
) -> tuple[TrainConfig, Path | None, Path | None, bool]:
    """(config, checkpoint or None, run dir, restart): with --resume, the checkpoint's settings
    under the user's and its run dir by default; `--resume auto` with no checkpoint in --run-dir
    yet starts the run afresh (restart)."""
    from mousse.train.resume import config_from_checkpoint

    restart = False
    if resume == "auto":
        if run_dir is None:
            raise ConfigError("--resume auto needs --run-dir to look in")
        restart = not checkpoint_dirs(run_dir)  # nothing to resume: start
    if resume is None or restart:
        return resolve(settings), None, run_dir, restart
    source = run_dir if resume == "auto" else Path(resume)
    assert source is not None  # `--resume auto` without --run-dir was refused above
    cfg, ckpt = config_from_checkpoint(source, settings.to_dict(), warn=notice)
    run_dir = run_dir or run_dir_of(ckpt)
    if run_dir is None:
        raise ConfigError(
            f"checkpoint {ckpt} is not in a run dir's checkpoints/ (set aside, or copied out); "
            "pass --run-dir NEW to continue it in a run dir of its own"
        )
    return cfg, ckpt, run_dir, restart


def check_knobs_used(settings: Mapping[str, object], cfg: TrainConfig) -> None:
    """Refuse a knob given for a run whose optimizer does not use it (`--optimizer muon
    --refresh-delay 10`: Muon has no preconditioner to refresh), rather than ignore it."""
    from mousse.experiments.ablation import unused_knobs

    unused = unused_knobs({**settings, "optimizer": cfg.optimizer, "preset": cfg.preset})
    if unused:
        flag = "--" + unused[0].replace("_", "-")
        raise ConfigError(
            f"{flag} does nothing with --optimizer {cfg.optimizer}, which does not use it "
            f"(the knobs each optimizer uses: docs/family.md); drop {flag}"
        )


def run_training(
    cfg: TrainConfig,
    run_dir: Path | None,
    ckpt: Path | None,
    restart: bool,
    stop: threading.Event,
    dashboards: Dashboards,
    cost: list[str],
    lock: RunLock | None = None,
) -> RunSummary:
    """Train with the live view and the dashboards (`lock`: the run dir's, already held); the
    estimate is shown after the checks the Trainer makes, so that an error stays one line.
    Returns the run's summary."""
    from functools import partial

    from mousse.distributed import setup
    from mousse.train.branches import train_budgets
    from mousse.train.trainer import Trainer

    view = TrainView()

    def on_event(e: Event) -> None:
        view(e)
        dashboards(e)
        reached(type(e).__name__)  # the test hook's points: RunStarted, StepLogged...

    make = partial(Trainer, on_event=on_event, stop=stop, world=setup)
    if cfg.budgets is not None:
        show_lines(cost)
        return train_budgets(make, cfg, run_dir, stop, ckpt, restart, lock, sys.argv)
    trainer = make(cfg, run_dir, resume=ckpt, restart=restart, lock=lock)
    show_lines(cost)
    return trainer.run(argv=sys.argv)
