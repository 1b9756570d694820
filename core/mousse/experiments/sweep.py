"""Execute an ablation plan: one run directory per run under the ablation dir, finished runs
skipped, interrupted ones resumed from their checkpoint, optionally K runs at a time in worker
processes. Progress arrives as (run name, event) pairs; results.json is rewritten after every run."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mousse.dist import setup
from mousse.dist.process import is_main_process
from mousse.train import tomlio
from mousse.train.checkpoint import CheckpointError, list_checkpoints
from mousse.train.config import ConfigError, resolve
from mousse.train.data import check_fits, load_dataset
from mousse.train.events import Event, RunFinished
from mousse.train.fileio import atomic_write_text, write_json
from mousse.train.rundir import RunInUse

from .ablation import AblationPlan, RunSpec, in_shard
from .results import apply_timing_pass, summarize
from .timing import TIMING_FILE, default_budget, timing_pass
from .tuning import TuneSpec, TuningState, run_label, tune_variant

FINISHED = ("completed", "diverged")
NAME_MAX = 255  # bytes in a file name (ext4, XFS, APFS); run dirs are named after their runs
TUNED_SUFFIX = 64  # room a tuned run's '@knob=value+...' label may add
_RECORD_KEYS = (
    "final_val_loss",
    "best_val_loss",
    "step_ms_median",
    "fwd_bwd_ms_median",
    "opt_ms_median",
    "refresh_ms_median",
    "tokens_per_s",
    "peak_mem_bytes",
    "steps",
    "curve",
    "train_seconds",
    "n_params",
    "peak_mem_source",
    "timing_context",
)


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


@dataclass(frozen=True)
class RunBusy:
    """A run another process is training right now (its run dir is locked): left to it."""

    run: str
    message: str


@dataclass(frozen=True)
class RunsQueued:
    """Runs the ablation will train next (tuning adds them phase by phase)."""

    runs: list


@dataclass(frozen=True)
class WaitingForShards:
    """This shard has nothing left it may run; these runs of other shards must finish first."""

    runs: list


def run_settings(plan: AblationPlan, run: RunSpec) -> dict:
    return {**plan.base, **run.knobs, "seed": run.seed}


def read_summary(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def record(run: RunSpec, summary: dict | None) -> dict:
    """The run's row for `results.summarize`."""
    row = {
        "name": run.name,
        "variant": run.variant,
        "knobs": run.knobs,
        "seed": run.seed,
        "is_baseline": run.is_baseline,
        "status": summary["status"] if summary else "pending",
    }
    row.update({k: (summary or {}).get(k) for k in _RECORD_KEYS})
    row["curve"] = row["curve"] or []
    return row


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
        summary = {
            "status": "failed",
            "message": str(exc),
            "steps": 0,
            "final_val_loss": None,
            "best_val_loss": None,
            "curve": [],
            "train_seconds": 0.0,
            **dict.fromkeys(
                (
                    "step_ms_median",
                    "fwd_bwd_ms_median",
                    "opt_ms_median",
                    "refresh_ms_median",
                    "tokens_per_s",
                    "peak_mem_bytes",
                )
            ),
        }
        if is_main_process():
            write_json(run_dir / "summary.json", summary)
        on_event(RunFinished(summary))
        return summary
    return trainer.run()


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
    """Process-pool entry: one run, its events forwarded to the parent."""
    events = _WORKER["events"]
    return execute_run(
        settings, Path(run_dir), lambda e: events.put(RunUpdate(name, e)), _WORKER["stop"], context
    )


def final_loss(summary: dict | None) -> float | None:
    """A finished run's score for tuning: its final val loss, inf when it diverged or failed,
    None while it has no result."""
    if not summary or summary.get("status") not in (*FINISHED, "failed"):
        return None
    loss = summary.get("final_val_loss")
    if summary["status"] != "completed" or loss is None or loss != loss:
        return float("inf")
    return float(loss)


class Ablation:
    """One ablation directory: its plan, run dirs and results."""

    def __init__(self, plan: AblationPlan, ablation_dir: Path):
        self.plan = plan
        self.dir = Path(ablation_dir)
        self.tune = TuneSpec.from_dict(plan.tune) if plan.tune else None
        self.invocation = uuid.uuid4().hex[:12]  # labels the timings this process takes
        self.trained = False  # whether this process trained any run here
        self.busy: set[str] = set()  # runs found locked by another process

    def run_dir(self, run: RunSpec) -> Path:
        return self.dir / "runs" / run.name

    def validate(self) -> None:
        """Check every run's settings and data, and that the dir holds no other plan; writes
        nothing, so bad input fails before anything runs."""
        plan_file = self.dir / "ablation.toml"
        if plan_file.exists():
            try:
                saved = AblationPlan.from_dict(tomlio.load(plan_file)).to_dict()
            except (
                tomlio.TOMLDecodeError,
                UnicodeDecodeError,
                KeyError,
                TypeError,
                ValueError,
            ) as exc:
                raise ConfigError(
                    f"{plan_file} is damaged ({exc}); move it away to start this "
                    "ablation afresh in the same dir, or pass another "
                    "--ablation-dir"
                ) from None
            if saved != self.plan.to_dict():
                raise ConfigError(
                    f"{self.dir} holds a different ablation plan; pass another "
                    "--ablation-dir (or rerun the original command)"
                )
        longest = max(self.plan.runs, key=lambda r: len(r.name.encode()))
        room = NAME_MAX - (TUNED_SUFFIX if self.tune else 0)
        if len(longest.name.encode()) > room:
            raise ConfigError(
                f"run name {longest.name[:60]}... is {len(longest.name.encode())} "
                f"bytes, more than a file name may hold here ({room}); sweep fewer "
                "knobs at once (or use --grid less)"
            )
        configs = [resolve(run_settings(self.plan, run)) for run in self.plan.runs]
        datasets = {
            key: load_dataset(*key) for key in dict.fromkeys((c.data, c.val_data) for c in configs)
        }
        for c in configs:  # every run's batches fit its data, before ablation.toml is written
            check_fits(
                datasets[(c.data, c.val_data)], c.batch_size, c.micro_batch_size, c.seq_len, c.seed
            )

    def prepare(self) -> None:
        """Create the dir and record the plan (after `validate`; under torchrun rank 0 only)."""
        if is_main_process():
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.dir / "ablation.toml", tomlio.dumps(self.plan.to_dict()))

    # ---- tuning -----------------------------------------------------------------------------

    def centre(self, variant: RunSpec) -> dict:
        """The variant's own value of each tuned knob (its default grid's centre), as frozen in
        the plan when it was made (plans from before that: resolved from today's presets)."""
        frozen = (self.plan.tune or {}).get("centres", {}).get(variant.variant)
        if frozen is not None:
            return dict(frozen)
        cfg = resolve({**self.plan.base, **variant.knobs, "seed": variant.seed})
        return {k: getattr(cfg, k) for k in self.tune.knobs}

    def tune_for(self, variant: RunSpec) -> TuneSpec:
        """The tuning a variant gets: every phase but those of knobs the variant sets itself (a
        `momentum_style=nesterov` variant keeps Nesterov while the others tune the style)."""
        phases = tuple((k, v) for k, v in self.tune.phases if k not in variant.knobs)
        return replace(self.tune, phases=phases)

    def tuned_run(self, variant: RunSpec, values: dict, seed: int) -> RunSpec:
        return RunSpec(
            f"{run_label(variant.variant, values)}-s{seed}",
            variant.variant,
            {**variant.knobs, **values},
            seed,
            variant.is_baseline,
        )

    def tuning(self) -> dict[str, TuningState]:
        """Every variant's tuning as far as the results on disk decide it."""
        from .ablation import _CHOICES

        states = {}
        for name, variant in self.plan.variants.items():

            def lookup(values, seed, variant=variant):
                return final_loss(read_summary(self.run_dir(self.tuned_run(variant, values, seed))))

            states[name] = tune_variant(
                name, self.centre(variant), self.tune_for(variant), lookup, _CHOICES
            )
        return states

    def grids(self) -> dict[str, list[tuple[str, list]]]:
        """Each variant's (knob, starting grid) per phase of its tuning."""
        from .ablation import _CHOICES
        from .tuning import start_grid

        out = {}
        for name, variant in self.plan.variants.items():
            centre = self.centre(variant)
            out[name] = [
                (k, start_grid(k, values, centre.get(k), _CHOICES))
                for k, values in self.tune_for(variant).phases
            ]
        return out

    def upper_bound_runs(self) -> int:
        """Most runs the plan can train: tuning (grid extensions included) plus the comparison's
        runs on seeds that are not tuning seeds."""
        from .tuning import upper_bound_runs

        if self.tune is None:
            return len(self.plan.runs)
        extra = len([s for s in self.plan.seeds if s not in self.tune.seeds])
        return sum(
            upper_bound_runs(self.tune_for(self.plan.variants[name]), [g for _, g in phases])
            + extra
            for name, phases in self.grids().items()
        )

    def variant_configs(self) -> list:
        """Each variant's resolved config (its first run's), for cost estimates."""
        return [resolve(run_settings(self.plan, run)) for run in self.plan.variants.values()]

    def finished_seconds(self) -> list[float]:
        """Training seconds of the runs already finished in this dir."""
        out = []
        root = self.dir / "runs"
        for summary_file in sorted(root.glob("*/summary.json")) if root.is_dir() else []:
            summary = read_summary(summary_file.parent)
            if summary and summary.get("status") in FINISHED and summary.get("train_seconds"):
                out.append(float(summary["train_seconds"]))
        return out

    def estimate_seconds(self, runs: int) -> tuple[float | None, str]:
        """(seconds for `runs` runs, how it was estimated) from the runs finished here."""
        done = self.finished_seconds()
        if not done:
            return None, ""
        return runs * sum(done) / len(done), f"mean of {len(done)} finished runs here"

    def final_runs(self, states: dict[str, TuningState] | None = None) -> list[RunSpec]:
        """The comparison's runs: each variant at its tuned values once its tuning is done (the
        plan's own runs without tuning)."""
        if self.tune is None:
            return list(self.plan.runs)
        states = states or self.tuning()
        return [
            self.tuned_run(run, states[run.variant].tuned, run.seed)
            if states[run.variant].done
            else run
            for run in self.plan.runs
        ]

    def wanted(self) -> list[RunSpec]:
        """What the ablation needs trained now: the plan's runs, or with tuning each variant's
        current phase and, for tuned variants, the comparison's runs; without those finished."""
        if self.tune is None:
            return self.pending(self.plan.runs)
        states = self.tuning()
        runs = [
            self.tuned_run(self.plan.variants[name], values, seed)
            for name, state in states.items()
            for values, seed in state.needed
        ]
        runs += [r for r in self.final_runs(states) if states[r.variant].done]
        return self.pending(list(dict.fromkeys(runs)))

    # ---- results ----------------------------------------------------------------------------

    def records(self, states: dict[str, TuningState] | None = None) -> list[dict]:
        return [record(run, read_summary(self.run_dir(run))) for run in self.final_runs(states)]

    def results(self) -> dict:
        baseline = next((r.variant for r in self.plan.runs if r.is_baseline), None)
        states = self.tuning() if self.tune else None
        out = summarize(self.records(states), baseline)
        out["ablation_dir"] = str(self.dir)
        out["protocol"] = {
            "tuned": self.tune.knobs if self.tune else [],
            "tune_seeds": list(self.tune.seeds) if self.tune else [],
            "seeds": list(self.plan.seeds),
        }
        out = apply_timing_pass(out, self.read_timing(out))
        if states:
            for v in out["variants"]:
                state = states[v["variant"]]
                v["tuned"] = state.tuned if state.done else None
                v["tuned_at_edge"] = state.at_edge
                v["tuning"] = [p.to_dict() for p in state.phases]
        return out

    def read_timing(self, results: dict) -> dict | None:
        """The last timing pass, when it covers every variant of the results."""
        try:
            record = json.loads((self.dir / TIMING_FILE).read_text())
        except (OSError, ValueError):
            return None
        names = {v["variant"] for v in results["variants"] if v["n"]}
        return record if names <= set(record.get("variants", {})) else None

    def timing_settings(self) -> dict[str, dict]:
        """Each variant's run settings for the timing pass: those of its first completed
        comparison run (tuned values included)."""
        out = {}
        for run in self.final_runs():
            summary = read_summary(self.run_dir(run))
            if run.variant not in out and summary and summary.get("status") == "completed":
                out[run.variant] = run_settings(self.plan, run)
        return out

    def retime(self, budget_s: float | None = None) -> dict | None:
        """Time every completed variant side by side (`experiments.timing`) and keep the record
        in timing.json; None when fewer than two variants have completed runs."""
        settings = self.timing_settings()
        if len(settings) < 2:
            return None
        baseline = next((r.variant for r in self.plan.runs if r.is_baseline), None)
        budget = budget_s if budget_s is not None else default_budget(sum(self.finished_seconds()))
        record = timing_pass(settings, baseline if baseline in settings else None, budget)
        if is_main_process():
            write_json(self.dir / TIMING_FILE, record)
        return record

    def write_results(self) -> dict:
        results = self.results()
        if is_main_process():  # under torchrun every rank runs every run; rank 0 writes
            write_json(self.dir / "results.json", results)
        return results

    def pending(self, runs: list[RunSpec]) -> list[RunSpec]:
        """`runs` without those that finished (a failed run counts as finished when tuning: it
        scores as infinitely bad and is not retried)."""
        finished = (*FINISHED, "failed") if self.tune else FINISHED
        return [
            r for r in runs if (read_summary(self.run_dir(r)) or {}).get("status") not in finished
        ]

    def run(
        self,
        runs: list[RunSpec],
        on_update: Callable[[object], None],
        parallel: int = 1,
        stop: threading.Event | None = None,
    ) -> dict:
        """Run what is not finished of `runs` (a shard of the plan, or all of it)."""
        stop = stop or threading.Event()
        todo = self.pending(runs)
        for run in runs:
            if run not in todo:
                on_update(RunSkipped(run.name, read_summary(self.run_dir(run))))
        self._train(todo, on_update, parallel, stop)
        return self.write_results()

    def run_tuned(
        self,
        on_update: Callable[[object], None],
        parallel: int = 1,
        stop: threading.Event | None = None,
        shard: tuple[int, int] | None = None,
        wait: float | None = None,
    ) -> tuple[dict, list[RunSpec]]:
        """Tune every variant and run the comparison, phase by phase, until nothing is left that
        this shard may run. Returns the results and the runs of other shards still needed (this
        shard waits for them, polling every `wait` seconds, when `wait` is given)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            wanted = self.wanted()
            mine = [
                r
                for r in wanted
                if (shard is None or in_shard(r.name, shard)) and r.name not in self.busy
            ]
            if mine:
                on_update(RunsQueued(mine))
                self._train(mine, on_update, parallel, stop)
                continue
            if not wanted or wait is None:
                break
            on_update(WaitingForShards(wanted))
            stop.wait(wait)
        return self.write_results(), ([] if stop.is_set() else self.wanted())

    def context(self, parallel: int) -> dict:
        """Where a run's timings are taken: this invocation, and how many runs shared the
        machine with it (--parallel)."""
        return {"invocation": self.invocation, "parallel": parallel}

    def _train(self, todo: list[RunSpec], on_update, parallel: int, stop: threading.Event) -> None:
        self.trained = self.trained or bool(todo)
        if parallel <= 1:
            for run in todo:
                if stop.is_set():
                    break
                try:
                    execute_run(
                        run_settings(self.plan, run),
                        self.run_dir(run),
                        lambda e, name=run.name: on_update(RunUpdate(name, e)),
                        stop,
                        self.context(1),
                    )
                except RunInUse as exc:
                    self.busy.add(run.name)
                    on_update(RunBusy(run.name, str(exc)))
                self.write_results()
        else:
            self._run_parallel(todo, on_update, parallel, stop)

    def _run_parallel(
        self, todo: list[RunSpec], on_update, parallel: int, stop: threading.Event
    ) -> None:
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
                pool.submit(
                    _worker,
                    run_settings(self.plan, run),
                    str(self.run_dir(run)),
                    run.name,
                    self.context(parallel),
                ): run.name
                for run in todo
            }
            waiting = set(names)
            while waiting:
                if stop.is_set():
                    shared_stop.set()
                    for future in waiting:
                        future.cancel()  # not started yet: left for the next rerun
                done, waiting = wait(waiting, timeout=0.2, return_when=FIRST_COMPLETED)
                self._drain(events, on_update)
                for future in done:
                    if not future.cancelled():
                        try:
                            future.result()  # re-raise a worker's error here
                        except RunInUse as exc:
                            name = names[future]
                            self.busy.add(name)
                            on_update(RunBusy(name, str(exc)))
                    self.write_results()
        self._drain(events, on_update)  # workers have exited: everything they sent has arrived

    @staticmethod
    def _drain(events, on_update) -> None:
        while True:
            try:
                on_update(events.get_nowait())
            except queue.Empty:
                return
