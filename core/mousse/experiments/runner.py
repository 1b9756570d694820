"""Train an ablation's runs: each in its own run dir, resumed from its latest checkpoint when it
has one, one after another in this process or K at a time in worker processes. Progress arrives
as (run name, event) pairs."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mousse.dist import setup
from mousse.dist.process import is_main_process
from mousse.train.checkpoint import CheckpointError, list_checkpoints
from mousse.train.config import resolve
from mousse.train.events import Event, RunFinished
from mousse.train.fileio import write_json
from mousse.train.rundir import RunInUse

from .records import TIMING_KEYS


@dataclass(frozen=True)
class RunUpdate:
    """An event of one run of the ablation."""

    run: str
    event: Event


@dataclass(frozen=True)
class RunBusy:
    """A run another process is training right now (its run dir is locked): left to it."""

    run: str
    message: str


@dataclass(frozen=True)
class Job:
    """One run to train: its name, its run settings and its run dir."""

    name: str
    settings: dict
    run_dir: Path


def execute_run(
    settings: dict,
    run_dir: Path,
    on_event: Callable[[Event], None],
    stop: threading.Event | None = None,
    context: dict | None = None,
) -> dict:
    """Train one run of the ablation, resuming from its latest checkpoint when it has one.
    `context` labels where its timings were taken (this invocation, the --parallel share)."""
    from mousse.train.trainer import Trainer

    cfg = resolve(settings)
    resume = run_dir if list_checkpoints(run_dir / "checkpoints") else None
    try:
        trainer = Trainer(
            cfg,
            run_dir,
            on_event=on_event,
            resume=resume,
            stop=stop,
            world=setup,
            timing_context=context,
            restart=True,
        )
    except CheckpointError as exc:  # every checkpoint damaged: this run fails, the others go on
        return _checkpoints_lost(run_dir, exc, on_event)
    return trainer.run()


def _checkpoints_lost(run_dir: Path, exc: CheckpointError, on_event) -> dict:
    """A run whose every checkpoint is damaged ends as failed: its summary written and reported
    as a finished run's would be, so the ablation goes on with the others."""
    summary = {
        "status": "failed",
        "message": str(exc),
        "steps": 0,
        "final_val_loss": None,
        "best_val_loss": None,
        "curve": [],
        "train_seconds": 0.0,
        **dict.fromkeys((*TIMING_KEYS, "peak_mem_bytes")),
    }
    if is_main_process():
        write_json(run_dir / "summary.json", summary)
    on_event(RunFinished(summary))
    return summary


def train_runs(
    jobs: list[Job],
    on_update: Callable[[object], None],
    parallel: int,
    stop: threading.Event,
    context: dict,
    after_each: Callable[[], None],
    busy: set[str],
) -> None:
    """Train `jobs` one after another here (parallel <= 1) or `parallel` at a time in worker
    processes, until they are done or `stop` is set; `context` labels every run's timings. Calls
    `after_each` as each run ends; a run another process holds is left to it, its name added to
    `busy` and reported as RunBusy."""
    if parallel <= 1:
        _train_here(jobs, on_update, stop, context, after_each, busy)
    else:
        _train_pool(jobs, on_update, parallel, stop, context, after_each, busy)


def _report_busy(name: str, exc: RunInUse, on_update, busy: set[str]) -> None:
    """Leave a locked run to the process that holds it, and say so."""
    busy.add(name)
    on_update(RunBusy(name, str(exc)))


def _train_here(jobs: list[Job], on_update, stop, context, after_each, busy) -> None:
    """Train the jobs one after another in this process."""
    for job in jobs:
        if stop.is_set():
            break
        try:
            execute_run(
                job.settings,
                job.run_dir,
                lambda e, name=job.name: on_update(RunUpdate(name, e)),
                stop,
                context,
            )
        except RunInUse as exc:
            _report_busy(job.name, exc, on_update, busy)
        after_each()


def _train_pool(jobs: list[Job], on_update, parallel: int, stop, context, after_each, busy) -> None:
    """Train the jobs `parallel` at a time in spawned worker processes, each with its share of the
    cores; their events are forwarded here. On `stop` the workers stop their runs at the next
    step and runs not started yet are left for the next rerun."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // parallel)
    ctx = mp.get_context("spawn")
    events, shared_stop = ctx.Queue(), ctx.Event()
    with ProcessPoolExecutor(
        parallel,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(events, shared_stop, threads),
    ) as pool:
        names = {
            pool.submit(_worker, job.settings, str(job.run_dir), job.name, context): job.name
            for job in jobs
        }
        waiting = set(names)
        while waiting:
            if stop.is_set():
                shared_stop.set()
                for future in waiting:
                    future.cancel()  # not started yet: left for the next rerun
            done, waiting = wait(waiting, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(events, on_update)
            for future in done:
                if not future.cancelled():
                    try:
                        future.result()  # re-raise a worker's error here
                    except RunInUse as exc:
                        _report_busy(names[future], exc, on_update, busy)
                after_each()
    _drain(events, on_update)  # workers have exited: everything they sent has arrived


def _drain(events, on_update) -> None:
    """Pass on every event the workers have sent so far."""
    while True:
        try:
            on_update(events.get_nowait())
        except queue.Empty:
            return


_WORKER: dict = {}


def _init_worker(events, stop, threads: int) -> None:
    """Worker start-up: a share of the cores, the parent's event queue and stop flag."""
    import signal

    # The parent decides when to stop: Ctrl-C, `timeout` and Slurm signal the whole process group,
    # and a worker killed by its own signal would lose its run (no checkpoint, a broken pool).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    torch.set_num_threads(threads)
    _WORKER.update(events=events, stop=stop)


def _worker(settings: dict, run_dir: str, name: str, context: dict) -> dict:
    """Process-pool entry: one run, its events forwarded to the parent. A run the pool had queued
    before a stop (the pool queues more than it can cancel) is left untouched for the rerun."""
    if _WORKER["stop"].is_set():
        return {}
    events = _WORKER["events"]
    return execute_run(
        settings, Path(run_dir), lambda e: events.put(RunUpdate(name, e)), _WORKER["stop"], context
    )
