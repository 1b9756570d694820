"""The live view of one training run: a table on a terminal, a plain line per log otherwise."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable

from rich.console import RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from mousse.optim.routing import Route
from mousse.train.estimate import counted
from mousse.train.events import (
    CheckpointSaved,
    EvalDone,
    Event,
    MicroBatchDone,
    Notice,
    RunFinished,
    RunStarted,
    StepLogged,
)
from mousse.train.summary import BudgetResult, RunSummary

from .console import clock, console, fit_width, fmt, notice, result_stream


def routing_summary(routes: Iterable[Route]) -> str:
    """How many parameters of each role go to which optimizer, e.g. '12 matrix -> mousse', the
    weights stored (in, out) (GPT-2's Conv1D) apart: '8 matrix stored (in, out) -> mousse'."""
    counts = Counter(
        (r.optimizer, r.role + (" stored (in, out)" if r.transposed else "")) for r in routes
    )
    return ", ".join(f"{n} {role} -> {opt}" for (opt, role), n in sorted(counts.items()))


class TrainView:
    """Renders one run's events: live table on a terminal, a plain line per log/eval otherwise."""

    def __init__(self, live: bool | None = None):
        self.live_enabled = console.is_terminal if live is None else live
        self.live: Live | None = None
        self.last: StepLogged | None = None
        self.val: EvalDone | None = None
        self.micro: MicroBatchDone | None = None  # progress inside a long step
        self.micro_printed = -math.inf
        self.started = time.perf_counter()

    def __call__(self, event: Event) -> None:
        """Show one event of the run (each kind by its own method), then redraw the live table."""
        if isinstance(event, RunStarted):
            self._started(event)
        elif isinstance(event, MicroBatchDone):
            self._micro_batch(event)
        elif isinstance(event, StepLogged):
            self._step_logged(event)
        elif isinstance(event, EvalDone):
            self._eval_done(event)
        elif isinstance(event, Notice):
            notice(event.text)
        elif isinstance(event, CheckpointSaved) and not self.live:
            console.print(f"checkpoint {event.path}", highlight=False, soft_wrap=True, markup=False)
        elif isinstance(event, RunFinished):
            self._finished(event.summary)
        if self.live:
            self.live.update(self._render())

    def _micro_batch(self, event: MicroBatchDone) -> None:
        """Progress inside a long step: kept for the live table's caption; without one, a plain
        line at most every 10 s so that a slow step still shows it is moving."""
        self.micro = event
        now = time.perf_counter()
        if not self.live and now - self.micro_printed >= 10:  # plain: a line every 10 s
            self.micro_printed = now
            console.print(self._micro_text(event), highlight=False)

    def _step_logged(self, event: StepLogged) -> None:
        """A logged step: the table's row (its micro-batch progress done), or a plain line."""
        self.last, self.micro = event, None
        if not self.live:
            console.print(
                f"step {event.step}/{event.steps} loss {event.train_loss:.4f} "
                f"lr {event.lr:.3g} step {event.step_ms:.1f}ms "
                f"(fwd+bwd {event.fwd_bwd_ms:.1f}, opt {event.opt_ms:.1f}) "
                f"{event.tokens_per_s:,.0f} tok/s eta {clock(event.eta_seconds)}",
                highlight=False,
                soft_wrap=True,
            )

    def _eval_done(self, event: EvalDone) -> None:
        """An evaluation: the table's val columns, or a plain line."""
        self.val = event
        if not self.live:
            console.print(
                f"eval step {event.step} val_loss {event.val_loss:.4f} "
                f"best {event.best_val_loss:.4f}",
                highlight=False,
            )

    def _started(self, event: RunStarted) -> None:
        cfg, info = event.config, event.info
        resumed = f", resumed at step {info['resumed_from']}" if info["resumed_from"] else ""
        what = (
            f"{escape(cfg['model'])} ({cfg['preset']} recipe)"
            if cfg.get("model")
            else cfg["preset"]
        )
        console.print(
            f"[bold]mousse train[/] {what} · {cfg['optimizer']} · "
            f"{info['n_params'] / 1e6:.2f}M params · {info['device']}"
            f"{f' x {ranks} ranks' if (ranks := info.get('world_size', 1)) > 1 else ''}"
            f"{resumed}"
        )
        console.print(f"data: {info['data']}", highlight=False, soft_wrap=True, markup=False)
        console.print(f"routing: {routing_summary(info['routing'])}", highlight=False)
        console.print(f"run dir: {event.run_dir}", highlight=False, soft_wrap=True, markup=False)
        if self.live_enabled:
            self.live = Live(self._render(), console=console, refresh_per_second=4, transient=False)
            self.live.start()

    @staticmethod
    def _micro_text(e: MicroBatchDone) -> str:
        return (
            f"step {e.step}: micro batch {e.done}/{e.total}, {clock(e.seconds)} in, "
            f"step eta {clock(e.eta_seconds)}"
        )

    def _render(self) -> RenderableType:
        table = Table(
            show_header=True,
            header_style="bold",
            box=None,
            pad_edge=False,
            caption=self._micro_text(self.micro) if self.micro else None,
            caption_justify="left",
        )
        for col in (
            "step",
            "train loss",
            "val loss",
            "best val",
            "lr",
            "step ms",
            "fwd+bwd",
            "opt",
            "tok/s",
            "elapsed",
            "eta",
        ):
            table.add_column(col, justify="right")
        e, v = self.last, self.val
        if e:
            table.add_row(
                f"{e.step}/{e.steps}",
                fmt(e.train_loss),
                fmt(v and v.val_loss),
                fmt(v and v.best_val_loss),
                f"{e.lr:.3g}",
                f"{e.step_ms:.1f}",
                f"{e.fwd_bwd_ms:.1f}",
                f"{e.opt_ms:.1f}",
                f"{e.tokens_per_s:,.0f}",
                clock(time.perf_counter() - self.started),
                clock(e.eta_seconds),
            )
        return fit_width(table, console)  # a narrow terminal: plain lines

    def _finished(self, s: RunSummary) -> None:
        """Stop the live table; a failure's message stays on stderr (the summary is the
        command's result, `show_summary`)."""
        if self.live:
            self.live.update(self._render())
            self.live.stop()
            self.live = None
        if message := s.get("message"):
            console.print(f"[red]{escape(message)}[/]", highlight=False, soft_wrap=True)


def speed_line(s: RunSummary, tokens_per_s: float) -> str:
    """How fast a run trained against this machine: tokens/s, model FLOP/s and MFU (summaries
    from before these were recorded show tokens/s only)."""
    line = f"{tokens_per_s:,.0f} tokens/s"
    flops, mfu, peak = s.get("model_flops_per_s"), s.get("mfu"), s.get("peak_flops")
    if mfu is not None and flops is not None and peak is not None:  # MFU: of both
        line += (
            f", {flops / 1e9:,.1f} model GFLOP/s, MFU {100 * mfu:.1f}% of "
            f"the {peak / 1e9:,.0f} GFLOP/s matmul peak measured here"
        )
    return line + (f" ({s['precision']})" if s.get("precision") else "")


def budget_line(b: BudgetResult) -> str:
    """One budget of a run with budgets: its size, how it ended and its final loss (none until
    its branch completes), and where it trained."""
    return (
        f"  budget {b['budget']:g} ({counted(b['steps'], 'step')}, "
        f"{b['tokens_per_param']:.3g} tokens per parameter): {b['status']}, final val loss "
        f"{fmt(b['final_val_loss'])}, best {fmt(b['best_val_loss'])} in {b['run_dir']}"
    )


def show_summary(s: RunSummary, json_out: bool = False) -> None:
    """A run's result: how it ended, its losses and step times, the target, its run dir (stdout;
    stderr when stdout carries the JSON)."""
    stream = result_stream(json_out)
    style = {"completed": "green", "diverged": "red", "interrupted": "yellow"}.get(
        s["status"], "red"
    )
    stream.print(
        f"[{style}]{s['status']}[/] after {counted(s['steps'], 'step')}: final val loss "
        f"{fmt(s['final_val_loss'])}, best {fmt(s['best_val_loss'])}, "
        f"median step {fmt(s['step_ms_median'], '.1f')} ms "
        f"(fwd+bwd {fmt(s['fwd_bwd_ms_median'], '.1f')}, opt {fmt(s['opt_ms_median'], '.1f')}, "
        f"refresh +{fmt(s['refresh_ms_median'], '.1f')} per refresh)",
        highlight=False,
        soft_wrap=True,
    )
    for b in s.get("budgets", []):
        stream.print(budget_line(b), highlight=False, soft_wrap=True, markup=False)
    if tokens_per_s := s.get("tokens_per_s"):
        stream.print(speed_line(s, tokens_per_s), highlight=False, soft_wrap=True)
    if s.get("target_loss") is not None:
        stream.print(
            f"target {s['target_loss']}: "
            + (
                f"reached at step {s['target_step']} ({clock(s['target_seconds'])})"
                if s["target_step"] is not None
                else "not reached"
            ),
            highlight=False,
        )
    stream.print(f"results in {s['run_dir']}", highlight=False, soft_wrap=True, markup=False)
