"""Execute an ablation plan: one run directory per run under the ablation dir, finished runs
skipped, interrupted ones resumed from their checkpoint, optionally K runs at a time in worker
processes. Progress arrives as (run name, event) pairs; results.json is rewritten after every run."""

from __future__ import annotations

import json
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
from mousse.train import tomlio
from mousse.train.checkpoint import list_checkpoints
from mousse.train.config import ConfigError, resolve
from mousse.train.data import load_dataset
from mousse.train.events import Event
from mousse.train.fileio import atomic_write_text, write_json

from .ablation import AblationPlan, RunSpec
from .results import summarize

FINISHED = ("completed", "diverged")
_RECORD_KEYS = ("final_val_loss", "best_val_loss", "step_ms_median", "fwd_bwd_ms_median",
                "opt_ms_median", "refresh_ms_median", "tokens_per_s", "peak_mem_bytes", "steps",
                "curve", "train_seconds")


@dataclass(frozen=True)
class RunUpdate:
    """An event of one run of the ablation."""

    run: str
    event: Event


@dataclass(frozen=True)
class RunSkipped:
    """A run that had already finished in this ablation dir."""

    run: str
    summary: dict


def run_settings(plan: AblationPlan, run: RunSpec) -> dict:
    return {**plan.base, **run.knobs, "seed": run.seed}


def read_summary(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def record(run: RunSpec, summary: dict | None) -> dict:
    """The run's row for `results.summarize`."""
    row = {"name": run.name, "variant": run.variant, "knobs": run.knobs, "seed": run.seed,
           "is_baseline": run.is_baseline, "status": summary["status"] if summary else "pending"}
    row.update({k: (summary or {}).get(k) for k in _RECORD_KEYS})
    row["curve"] = row["curve"] or []
    return row


def execute_run(settings: dict, run_dir: Path, on_event: Callable[[Event], None],
                stop: threading.Event | None = None) -> dict:
    """Train one run of the ablation, resuming from its latest checkpoint when it has one."""
    from mousse.train.trainer import Trainer

    cfg = resolve(settings)
    resume = run_dir if list_checkpoints(run_dir / "checkpoints") else None
    return Trainer(cfg, run_dir, on_event=on_event, resume=resume, stop=stop, world=setup).run()


_WORKER: dict = {}


def _init_worker(events, stop, threads: int) -> None:
    """Worker start-up: a share of the cores, the parent's event queue and stop flag."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    torch.set_num_threads(threads)
    _WORKER.update(events=events, stop=stop)


def _worker(settings: dict, run_dir: str, name: str) -> dict:
    """Process-pool entry: one run, its events forwarded to the parent."""
    events = _WORKER["events"]
    return execute_run(settings, Path(run_dir), lambda e: events.put(RunUpdate(name, e)),
                       _WORKER["stop"])


class Ablation:
    """One ablation directory: its plan, run dirs and results."""

    def __init__(self, plan: AblationPlan, ablation_dir: Path):
        self.plan = plan
        self.dir = Path(ablation_dir)

    def run_dir(self, run: RunSpec) -> Path:
        return self.dir / "runs" / run.name

    def validate(self) -> None:
        """Check every run's settings and data, and that the dir holds no other plan; writes
        nothing, so bad input fails before anything runs."""
        plan_file = self.dir / "ablation.toml"
        if plan_file.exists():
            saved = AblationPlan.from_dict(tomlio.load(plan_file)).to_dict()
            if saved != self.plan.to_dict():
                raise ConfigError(f"{self.dir} holds a different ablation plan; pass another "
                                  "--ablation-dir (or rerun the original command)")
        configs = [resolve(run_settings(self.plan, run)) for run in self.plan.runs]
        for data, val_data in dict.fromkeys((c.data, c.val_data) for c in configs):
            load_dataset(data, val_data)

    def prepare(self) -> None:
        """Create the dir and record the plan (after `validate`; under torchrun rank 0 only)."""
        if is_main_process():
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.dir / "ablation.toml", tomlio.dumps(self.plan.to_dict()))

    def records(self) -> list[dict]:
        return [record(run, read_summary(self.run_dir(run))) for run in self.plan.runs]

    def results(self) -> dict:
        baseline = next((r.name for r in self.plan.runs if r.is_baseline), None)
        out = summarize(self.records(), baseline)
        out["ablation_dir"] = str(self.dir)
        return out

    def write_results(self) -> dict:
        results = self.results()
        if is_main_process():  # under torchrun every rank runs every run; rank 0 writes
            write_json(self.dir / "results.json", results)
        return results

    def pending(self, runs: list[RunSpec]) -> list[RunSpec]:
        done = []
        for run in runs:
            summary = read_summary(self.run_dir(run))
            if summary and summary["status"] in FINISHED:
                done.append(run)
        return [r for r in runs if r not in done]

    def run(self, runs: list[RunSpec], on_update: Callable[[object], None], parallel: int = 1,
            stop: threading.Event | None = None) -> dict:
        """Run what is not finished of `runs` (a shard of the plan, or all of it)."""
        stop = stop or threading.Event()
        todo = self.pending(runs)
        for run in runs:
            if run not in todo:
                on_update(RunSkipped(run.name, read_summary(self.run_dir(run))))
        if parallel <= 1:
            for run in todo:
                if stop.is_set():
                    break
                execute_run(run_settings(self.plan, run), self.run_dir(run),
                            lambda e, name=run.name: on_update(RunUpdate(name, e)), stop)
                self.write_results()
        else:
            self._run_parallel(todo, on_update, parallel, stop)
        return self.write_results()

    def _run_parallel(self, todo: list[RunSpec], on_update, parallel: int,
                      stop: threading.Event) -> None:
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        threads = max(1, (os.cpu_count() or 1) // parallel)
        ctx = mp.get_context("spawn")
        events, shared_stop = ctx.Queue(), ctx.Event()
        with ProcessPoolExecutor(parallel, mp_context=ctx, initializer=_init_worker,
                                 initargs=(events, shared_stop, threads)) as pool:
            waiting = {pool.submit(_worker, run_settings(self.plan, run), str(self.run_dir(run)),
                                   run.name) for run in todo}
            while waiting:
                if stop.is_set():
                    shared_stop.set()
                    for future in waiting:
                        future.cancel()  # not started yet: left for the next rerun
                done, waiting = wait(waiting, timeout=0.2, return_when=FIRST_COMPLETED)
                self._drain(events, on_update)
                for future in done:
                    if not future.cancelled():
                        future.result()  # re-raise a worker's error here
                    self.write_results()
        self._drain(events, on_update)  # workers have exited: everything they sent has arrived

    @staticmethod
    def _drain(events, on_update) -> None:
        while True:
            try:
                on_update(events.get_nowait())
            except queue.Empty:
                return
