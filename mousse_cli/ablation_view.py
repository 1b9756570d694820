"""The live view of an ablation: convergence and step-time tables, one row per run, on a
terminal; plain lines per run start, evaluation and finish otherwise (on stderr)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Literal, TypedDict

from rich.live import Live
from rich.markup import escape

from mousse.train.estimate import counted
from mousse.train.events import EvalDone, Event, Notice, RunFinished, RunStarted, StepLogged
from mousse.train.summary import RunSummary

from .console import clock, console, fit_width, fmt
from .rich_tables import titled_table

if TYPE_CHECKING:
    from rich.console import RenderableType

    from mousse.experiments.ablation import RunSpec

_CONVERGENCE = ("run", "step", "train loss", "val loss", "best val", "Δ vs baseline", "status")
_TIMING = ("run", "step", "fwd+bwd", "optimizer", "tok/s", "overhead vs baseline", "peak mem")


class Row(TypedDict, total=False):
    """One run's cells as the view keeps them (`earlier` and `tokens_per_step` once known)."""

    status: str
    step: int
    steps: int | None
    loss: float | None
    val: float | None
    best: float | None
    curve: dict[int, float | None]  # val loss by step (None: not finite, from a summary)
    ms: list[float]  # step times (one median for a finished run)
    fb: list[float]
    opt: list[float]
    tps: float | None
    mem: int | None
    earlier: bool  # timed by an earlier invocation
    tokens_per_step: float
    branch: str | None  # the cooldown branch it trains in (`--budgets`), None outside one


class AblationView:
    """Live convergence and step-time tables of an ablation (one row per run); plain lines per
    run start, evaluation and finish when not a terminal."""

    def __init__(
        self,
        runs: Iterable[RunSpec],
        baseline: str | None,
        live: bool | None = None,
        progress: Callable[[], str] | None = None,
    ):
        self.order: list[str] = []
        self.baseline = baseline
        self.progress = progress  # "4 of at most 30 runs done", read from disk as runs end
        self.done_text = progress() if progress else None
        self.rows: dict[str, Row] = {}
        for run in runs:
            self._add(run.name)
        self.live_enabled = console.is_terminal if live is None else live
        self.live: Live | None = None

    def __enter__(self) -> AblationView:
        if self.live_enabled:
            self.live = Live(self.render(), console=console, refresh_per_second=2)
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.update(self.render())
            self.live.stop()
            self.live = None

    def _add(self, name: str) -> Row:
        self.order.append(name)
        self.rows[name] = {
            "status": "queued",
            "step": 0,
            "steps": None,
            "loss": None,
            "val": None,
            "best": None,
            "curve": {},
            "ms": [],
            "fb": [],
            "opt": [],
            "tps": None,
            "mem": None,
        }
        return self.rows[name]

    def __call__(self, update: object) -> None:
        """Take one update of the ablation: a plan-wide one (`_plan_update`), or one run's
        (busy elsewhere, finished earlier, or a training event); then redraw the tables."""
        from mousse.experiments.runner import RunBusy, RunUpdate
        from mousse.experiments.sweep import RunSkipped

        self._plan_update(update)
        if not hasattr(update, "run"):
            if self.live:
                self.live.update(self.render())
            return
        row = self.rows.get(update.run)
        if row is None:
            return
        if isinstance(update, RunBusy):
            row["status"] = "in use elsewhere"
            self._plain(f"[{update.run}] skipped: {update.message}")
        elif isinstance(update, RunSkipped):
            self._skipped(update.run, row, update.summary)
        else:
            assert isinstance(update, RunUpdate)  # the one other update that names a run
            self._event(update.run, row, update.event)
        if self.live:
            self.live.update(self.render())

    def _plan_update(self, update: object) -> None:
        """An update about the plan rather than one run: the runs of tuning's next phase (new
        rows), or a wait for other shards' runs. Anything else is left to `__call__`."""
        from mousse.experiments.sweep import RunsQueued, WaitingForShards

        if isinstance(update, RunsQueued):  # tuning: the next phase's runs
            for run in update.runs:
                if run.name not in self.rows:
                    self._add(run.name)
            names = ", ".join(r.name for r in update.runs)
            self._plain(f"queued {counted(len(update.runs), 'run')}: {names}")
        elif isinstance(update, WaitingForShards):
            self._plain(f"waiting for {counted(len(update.runs), 'run')} of other shards")

    def _skipped(self, name: str, row: Row, s: RunSummary) -> None:
        """A run that had finished before this invocation: its row filled from its summary `s`
        and marked `earlier`, since its timings were taken under other conditions."""
        row.update(
            {
                "status": f"done ({s['status']})",
                "step": s["steps"],
                "val": s["final_val_loss"],
                "best": s["best_val_loss"],
                "curve": {p["step"]: p["val_loss"] for p in s["curve"]},
                "ms": [s["step_ms_median"]] if s["step_ms_median"] else [],
                "fb": [s["fwd_bwd_ms_median"]] if s["fwd_bwd_ms_median"] else [],
                "opt": [s["opt_ms_median"]] if s["opt_ms_median"] else [],
                "tps": s["tokens_per_s"],
                "mem": s["peak_mem_bytes"],
                "earlier": True,
            }
        )  # timed by an earlier invocation
        self._plain(f"[{name}] already {s['status']}: final val {fmt(s['final_val_loss'])}")

    def _plain(self, text: str) -> None:
        if not self.live:
            console.print(
                text, highlight=False, soft_wrap=True, markup=False
            )  # "[run] ..." is literal

    def _event(self, name: str, row: Row, e: Event) -> None:
        if isinstance(e, Notice):
            self._plain(f"[{name}] warning: {e.text}")
        elif isinstance(e, RunStarted):
            # a cooldown branch of a run with budgets (`--budgets`) trains after the run's own
            # steps: its row says which, lest its loss read as the whole run's
            branch = e.run_dir.name if e.run_dir.parent.name == "branches" else None
            row.update({"status": "running", "steps": e.config["steps"], "branch": branch})
            resumed = e.info["resumed_from"]
            self._plain(
                f"[{name}] started{f' (resumed at step {resumed})' if resumed else ''}: "
                f"{e.info['n_params'] / 1e6:.2f}M params, run dir {e.run_dir}"
            )
        elif isinstance(e, StepLogged):
            row.update(
                {
                    "step": e.step,
                    "loss": e.train_loss,
                    "tokens_per_step": e.tokens_per_s * e.step_ms / 1000,
                }
            )  # tps: from the median
            row["ms"].append(e.step_ms)
            row["fb"].append(e.fwd_bwd_ms)
            row["opt"].append(e.opt_ms)
        elif isinstance(e, EvalDone):
            row.update({"val": e.val_loss, "best": e.best_val_loss})
            row["curve"][e.step] = e.val_loss
            self._plain(f"[{name}] step {e.step} val_loss {e.val_loss:.4f}")
        elif isinstance(e, RunFinished):
            s = e.summary
            row.update({"status": s["status"], "step": s["steps"], "mem": s["peak_mem_bytes"]})
            key: Literal["ms", "fb", "opt"]
            summary_key: Literal["step_ms_median", "fwd_bwd_ms_median", "opt_ms_median"]
            for key, summary_key in (
                ("ms", "step_ms_median"),
                ("fb", "fwd_bwd_ms_median"),
                ("opt", "opt_ms_median"),
            ):
                if (ms := s[summary_key]) is not None:
                    row[key] = [ms]
            if self.progress:
                self.done_text = self.progress()
            self._plain(
                f"[{name}] failed: {s.get('message')}"  # why, and what to do
                if s["status"] == "failed"
                else f"[{name}] {_status_text(row)} after {counted(s['steps'], 'step')}: final val "
                f"{fmt(s['final_val_loss'])} ({clock(s['train_seconds'])} training)"
                + (f"; {self.done_text}" if self.done_text else "")
            )

    @staticmethod
    def _median(xs: list[float]) -> float | None:
        return statistics.median(xs) if xs else None

    def _baseline_row(self) -> Row | None:
        """The baseline's row; None without a baseline or before its run is listed."""
        return None if self.baseline is None else self.rows.get(self.baseline)

    def _delta(self, row: Row) -> float | None:
        base = self._baseline_row()
        if not base or row is base or not row["curve"]:
            return None
        step = max(row["curve"])
        own, ref = row["curve"][step], base["curve"].get(step)
        return None if own is None or ref is None else own - ref

    def render(self) -> RenderableType:
        """The convergence and step-time tables, one row per run in the order they were queued."""
        from rich.console import Group

        conv = titled_table(
            f"convergence ({self.done_text})" if self.done_text else "convergence",
            _CONVERGENCE,
            left=("run", "status"),
        )
        timing = titled_table("step time (median ms)", _TIMING)
        base_ms = (
            self._median(self.rows[self.baseline]["ms"]) if self.baseline in self.rows else None
        )
        for name in self.order:
            r = self.rows[name]
            label = escape(f"{name} (baseline)" if name == self.baseline else name)
            conv.add_row(label, *self._convergence_cells(r))
            timing.add_row(label, *self._timing_cells(name, r, base_ms))
        return fit_width(Group(conv, timing), console)  # a narrow terminal: plain lines

    def _convergence_cells(self, r: Row) -> list[str]:
        """A run's convergence row after its label: step, losses, delta, status."""
        step = f"{r['step']}/{r['steps']}" if r["steps"] else str(r["step"] or "-")
        return [
            step,
            fmt(r["loss"]),
            fmt(r["val"]),
            fmt(r["best"]),
            fmt(self._delta(r), "+.4f"),
            _status_text(r),
        ]

    def _timing_cells(self, name: str, r: Row, base_ms: float | None) -> list[str]:
        """A run's step-time row after its label. Tokens/s follow the median step shown; the
        overhead is 'not comparable' between runs timed in different invocations."""
        ms = self._median(r["ms"])
        if ms and r.get("tokens_per_step"):  # consistent with the median step time shown
            r["tps"] = r["tokens_per_step"] / (ms / 1000)
        base = self._baseline_row() or {}  # rows are never empty
        mixed = bool(r.get("earlier")) != bool(base.get("earlier")) or bool(r.get("earlier"))
        overhead = (
            (ms / base_ms - 1) * 100
            if ms and base_ms and name != self.baseline and not mixed
            else None
        )
        return [
            fmt(ms, ".1f"),
            fmt(self._median(r["fb"]), ".1f"),
            fmt(self._median(r["opt"]), ".1f"),
            fmt(r["tps"], ",.0f"),
            "not comparable"
            if mixed and ms and base_ms and name != self.baseline
            else fmt(overhead, "+.1f") + ("%" if overhead is not None else ""),
            fmt(r["mem"] and r["mem"] / 2**30, ".2f") + (" GiB" if r["mem"] else ""),
        ]


def _status_text(row: Row) -> str:
    """A run's status, naming the cooldown branch it is in (`--budgets`) when it is in one."""
    return row["status"] + (f" ({row['branch']})" if row.get("branch") else "")
