"""Train an ablation's runs: each in its own run dir, resumed from its latest checkpoint when it
has one, one after another in this process or K at a time in worker processes. Progress arrives
as (run name, event) pairs."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TypeAlias

import torch

from mousse.distributed import setup
from mousse.distributed.process import is_main_process, signal_when_parent_dies
from mousse.train.checkpoint import checkpoint_dirs
from mousse.train.config import resolve
from mousse.train.events import Event, RunFinished
from mousse.train.fileio import write_json
from mousse.train.optstate import CheckpointError
from mousse.train.rundir import RunDirError, RunInUse, RunLock
from mousse.train.summary import RunSummary, TimingContext

from .settings import Settings

# A pipe end between the ablation's process and a run's worker: what travels is pickled, of
# whichever kind each message has (RunUpdate, RunBusy, _Raised; "stop" the other way).
Pipe: TypeAlias = "Connection[object, object]"  # generic to type checkers only


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
    settings: Settings
    run_dir: Path


def execute_run(
    settings: Settings,
    run_dir: Path,
    on_event: Callable[[Event], None],
    stop: threading.Event | None = None,
    context: TimingContext | None = None,
) -> RunSummary:
    """Train one run of the ablation, resuming from its latest checkpoint when it has one (a
    run with budgets: its trunk, then its branches, `mousse.train.branches`). `context` labels
    where its timings were taken (this invocation, the --parallel share)."""
    from mousse.train.branches import train_budgets
    from mousse.train.trainer import Trainer

    cfg = resolve(settings)
    stop = stop or threading.Event()
    make = partial(Trainer, on_event=on_event, stop=stop, world=setup, timing_context=context)
    # locked before its checkpoint is chosen: another shard's process may be training it
    with (
        ablation_advice(),
        RunLock(run_dir).acquire() if is_main_process() else nullcontext() as lock,
    ):
        resume = run_dir if checkpoint_dirs(run_dir) else None
        try:
            if cfg.budgets is not None:
                return train_budgets(make, cfg, run_dir, stop, resume, restart=True, lock=lock)
            trainer = make(cfg, run_dir, resume=resume, restart=True, lock=lock)
        except CheckpointError as exc:  # every checkpoint damaged: this run fails alone
            return failed_run(run_dir, str(exc), on_event)
        return trainer.run()


@contextlib.contextmanager
def ablation_advice() -> Iterator[None]:
    """A run dir's problem with the advice `ablate` can follow: its --ablation-dir, not the
    --run-dir it does not have."""
    try:
        yield
    except RunDirError as exc:
        raise type(exc)(str(exc).replace("--run-dir", "--ablation-dir")) from None


def failed_run(run_dir: Path, message: str, on_event: Callable[[Event], None]) -> RunSummary:
    """A run that cannot go on (every checkpoint damaged, its worker killed) ends as failed: its
    summary written and reported as a finished run's would be, so the ablation goes on with the
    others."""
    summary: RunSummary = {
        "status": "failed",
        "message": message,
        "steps": 0,
        "final_val_loss": None,
        "best_val_loss": None,
        "curve": [],
        "train_seconds": 0.0,
        "step_ms_median": None,
        "fwd_bwd_ms_median": None,
        "opt_ms_median": None,
        "refresh_ms_median": None,
        "tokens_per_s": None,
        "peak_mem_bytes": None,
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
    context: TimingContext,
    after_each: Callable[[], object],
    busy: set[str],
    devices: list[str] | None = None,
) -> None:
    """Train `jobs` one after another here (parallel <= 1, no `devices`) or `parallel` at a time
    in worker processes, placed round-robin on the GPUs `devices` names, until they are done or
    `stop` is set; `context` labels every run's timings. Calls `after_each` as each run ends; a
    run another process holds is left to it, its name added to `busy` and reported as RunBusy."""
    if parallel <= 1 and not devices:
        _train_here(jobs, on_update, stop, context, after_each, busy)
    else:
        _train_pool(jobs, on_update, parallel, stop, context, after_each, busy, devices)


def worker_devices(parallel: int, devices: list[str] | None) -> list[str | None]:
    """The GPU of each of the `parallel` worker slots, round-robin over `devices` (None: no
    placement, a worker sees the GPUs this process sees)."""
    return [devices[i % len(devices)] if devices else None for i in range(parallel)]


def worker_env(device: str | None) -> dict[str, str]:
    """The environment a worker sets before CUDA starts: only its GPU visible, so that its run's
    `cuda` is that GPU (and its env.json says which)."""
    return {} if device is None else {"CUDA_VISIBLE_DEVICES": device}


def _report_busy(
    name: str, exc: RunInUse, on_update: Callable[[object], None], busy: set[str]
) -> None:
    """Leave a locked run to the process that holds it, and say so."""
    busy.add(name)
    on_update(RunBusy(name, str(exc)))


def _train_here(
    jobs: list[Job],
    on_update: Callable[[object], None],
    stop: threading.Event,
    context: TimingContext,
    after_each: Callable[[], object],
    busy: set[str],
) -> None:
    """Train the jobs one after another in this process."""
    for job in jobs:
        if stop.is_set():
            break
        try:
            execute_run(
                job.settings,
                job.run_dir,
                _forward(job.name, on_update),
                stop,
                context,
            )
        except RunInUse as exc:
            _report_busy(job.name, exc, on_update, busy)
        after_each()


def _forward(name: str, on_update: Callable[[object], None]) -> Callable[[Event], None]:
    """The `on_event` of run `name`: its events passed on as RunUpdates. A function of its own
    so each run's callback keeps that run's name."""
    return lambda e: on_update(RunUpdate(name, e))


def _train_pool(
    jobs: list[Job],
    on_update: Callable[[object], None],
    parallel: int,
    stop: threading.Event,
    context: TimingContext,
    after_each: Callable[[], object],
    busy: set[str],
    devices: list[str] | None = None,
) -> None:
    """Train the jobs `parallel` at a time, each in a spawned worker process of its own with its
    share of the cores; their events are forwarded here. On `stop` the workers stop their runs at
    the next step and runs not started yet are left for the next rerun. A worker that dies (kill
    -9, the OOM killer) fails its run alone; a worker's error (bad input) stops the others
    cleanly, then is raised here."""
    threads = max(1, (os.cpu_count() or 1) // parallel)
    queued, free = list(jobs), worker_devices(parallel, devices)
    running: list[_Worker] = []
    error: BaseException | None = None
    try:
        while queued or running:
            if stop.is_set() or error is not None:
                _wind_down(queued, running)
            while queued and len(running) < parallel:
                running.append(_Worker(queued.pop(0), context, threads, free.pop(0)))
            wait([h for w in running for h in (w.events, w.process.sentinel)], timeout=0.2)
            error = _poll_workers(running, free, on_update, busy, after_each, error)
    except BaseException:  # a second Ctrl-C, or an error here: the workers end with this process
        for worker in running:
            worker.process.kill()
            worker.process.join()
        raise
    if error is not None:
        raise error


def _wind_down(queued: list[Job], running: list[_Worker]) -> None:
    """On a stop or a worker's error: drop the runs not started yet (left for the next rerun)
    and ask the running workers to stop theirs at the next step (they checkpoint)."""
    queued.clear()
    for worker in running:
        worker.stop()


def _poll_workers(
    running: list[_Worker],
    free: list[str | None],
    on_update: Callable[[object], None],
    busy: set[str],
    after_each: Callable[[], object],
    error: BaseException | None,
) -> BaseException | None:
    """One look at every running worker: pass its messages on, and retire it (in place, from
    `running`; its GPU back to `free`) once it has exited. Returns `error`, or else the first
    error a worker sent, so the pool keeps the first one."""
    for worker in list(running):
        exited = not worker.process.is_alive()  # then every message it sent is read now
        for message in worker.receive():
            raised = _take(message, on_update, busy)
            error = error or raised
        if exited:
            running.remove(worker)
            free.append(worker.device)  # the next run takes this worker's GPU
            worker.close(on_update)
            after_each()
    return error


@dataclass(frozen=True)
class _Raised:
    """A worker's error, raised again in the parent, and its traceback there."""

    run: str
    error: BaseException
    trace: str


class WorkerTraceback(Exception):
    """Where a worker's error was raised: shown under it (as its cause) when it is a bug."""


def _take(
    message: object, on_update: Callable[[object], None], busy: set[str]
) -> BaseException | None:
    """Pass a worker's message on; the error it carries, if any."""
    if isinstance(message, _Raised):
        message.error.__cause__ = WorkerTraceback(f"in run {message.run}:\n{message.trace}")
        return message.error
    if isinstance(message, RunBusy):
        busy.add(message.run)
    on_update(message)
    return None


class _Worker:
    """One run in a spawned process: its events come on one pipe, a stop goes on another (whose
    end of file tells the worker its parent is gone)."""

    def __init__(self, job: Job, context: TimingContext, threads: int, device: str | None = None):
        ctx = mp.get_context("spawn")
        self.job, self.finished, self.device = job, False, device
        events: tuple[Pipe, Pipe] = ctx.Pipe(duplex=False)
        control: tuple[Pipe, Pipe] = ctx.Pipe(duplex=False)
        (self.events, events_end), (control_end, self.control) = events, control
        self.process = ctx.Process(
            target=_worker,
            args=(job, context, events_end, control_end, threads, os.getpid(), worker_env(device)),
            name=f"mousse-run-{job.name}",
        )
        self.process.start()
        events_end.close()
        control_end.close()

    def receive(self) -> list[object]:
        """The messages the worker has sent so far (all of them once it has exited)."""
        out: list[object] = []
        try:
            while self.events.poll():
                out.append(self.events.recv())
        except (EOFError, OSError):  # the worker has exited and everything it sent was read
            pass
        self.finished = self.finished or any(
            isinstance(m, RunUpdate) and isinstance(m.event, RunFinished) for m in out
        )
        return out

    def stop(self) -> None:
        """Ask the worker to stop its run at the next step (it checkpoints)."""
        with contextlib.suppress(OSError):
            self.control.send("stop")

    def close(self, on_update: Callable[[object], None]) -> None:
        """After the worker exited: a run it left without an end (the worker was killed) fails."""
        code = self.process.exitcode
        if code and not self.finished:
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            failed_run(
                self.job.run_dir,
                f"its worker process ended with {how}; rerun the ablation to resume the run "
                "from its last checkpoint",
                lambda e: on_update(RunUpdate(self.job.name, e)),
            )
        self.events.close()
        self.control.close()


def _worker(
    job: Job,
    context: TimingContext,
    events: Pipe,
    control: Pipe,
    threads: int,
    parent: int,
    env: dict[str, str],
) -> None:
    """Worker process: one run, on the GPU `env` leaves visible, its events sent to the parent.
    It dies with its parent, and leaves Ctrl-C and SIGTERM to it: `timeout`, Slurm and a
    terminal signal the whole process group, and a worker killed by its own signal would lose
    its run."""
    os.environ.update(env)  # before anything starts CUDA
    _die_with_parent(parent, control)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    torch.set_num_threads(threads)
    stop = threading.Event()
    if control.poll():  # stopped (or orphaned) while this process started: left for the rerun
        return
    threading.Thread(target=_follow_parent, args=(control, stop), daemon=True).start()
    try:
        execute_run(
            job.settings, job.run_dir, lambda e: events.send(RunUpdate(job.name, e)), stop, context
        )
    except RunInUse as exc:
        events.send(RunBusy(job.name, str(exc)))
    except Exception as exc:  # raised again in the parent
        events.send(_Raised(job.name, _picklable(exc), traceback.format_exc()))


def _picklable(exc: Exception) -> Exception:
    """`exc`, or a RuntimeError with its text when it cannot travel to the parent."""
    try:
        pickle.dumps(exc)
        return exc
    except Exception:  # any pickling failure
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _follow_parent(control: Pipe, stop: threading.Event) -> None:
    """The worker's watch on its parent: a message asks the run to stop; end of file (the parent
    died, even by kill -9) ends the worker at once."""
    try:
        control.recv()
        stop.set()
    except (EOFError, OSError):
        os._exit(1)


def _die_with_parent(parent: int, control: Pipe) -> None:
    """On Linux the kernel kills this process when its parent dies (PR_SET_PDEATHSIG); elsewhere
    the control pipe's end of file does (`_follow_parent`). A parent already gone: exit now."""
    if not signal_when_parent_dies(parent, signal.SIGKILL):
        os._exit(1)
