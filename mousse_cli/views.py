"""Rich views of training events: a live panel on a terminal, plain lines otherwise. Everything
here goes to stderr; machine-readable results go to stdout from the commands."""

from __future__ import annotations

import math
import time
from collections import Counter

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from mousse.train.events import (
    CheckpointSaved,
    EvalDone,
    MicroBatchDone,
    Notice,
    RunFinished,
    RunStarted,
    StepLogged,
)

console = Console(stderr=True)


def fmt(value, spec: str = ".4f", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def routing_summary(routes) -> str:
    counts = Counter((r.optimizer, r.role) for r in routes)
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

    def __call__(self, event) -> None:
        if isinstance(event, RunStarted):
            self._started(event)
        elif isinstance(event, MicroBatchDone):
            self.micro = event
            now = time.perf_counter()
            if not self.live and now - self.micro_printed >= 10:  # plain: a line every 10 s
                self.micro_printed = now
                console.print(self._micro_text(event), highlight=False)
        elif isinstance(event, StepLogged):
            self.last, self.micro = event, None
            if not self.live:
                console.print(
                    f"step {event.step}/{event.steps} loss {event.train_loss:.4f} "
                    f"lr {event.lr:.3g} step {event.step_ms:.1f}ms "
                    f"(fwd+bwd {event.fwd_bwd_ms:.1f}, opt {event.opt_ms:.1f}) "
                    f"{event.tokens_per_s:,.0f} tok/s eta {duration(event.eta_seconds)}",
                    highlight=False,
                    soft_wrap=True,
                )
        elif isinstance(event, EvalDone):
            self.val = event
            if not self.live:
                console.print(
                    f"eval step {event.step} val_loss {event.val_loss:.4f} "
                    f"best {event.best_val_loss:.4f}",
                    highlight=False,
                )
        elif isinstance(event, Notice):
            console.print(
                f"[yellow]warning: {escape(event.text)}[/]", highlight=False, soft_wrap=True
            )
        elif isinstance(event, CheckpointSaved) and not self.live:
            console.print(f"checkpoint {event.path}", highlight=False, soft_wrap=True, markup=False)
        elif isinstance(event, RunFinished):
            self._finished(event.summary)
        if self.live:
            self.live.update(self._render())

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
            f"step {e.step}: micro batch {e.done}/{e.total}, {duration(e.seconds)} in, "
            f"step eta {duration(e.eta_seconds)}"
        )

    def _render(self) -> Table:
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
                duration(time.perf_counter() - self.started),
                duration(e.eta_seconds),
            )
        return table

    def _finished(self, s: dict) -> None:
        if self.live:
            self.live.update(self._render())
            self.live.stop()
            self.live = None
        style = {"completed": "green", "diverged": "red", "interrupted": "yellow"}.get(
            s["status"], "red"
        )
        console.print(
            f"[{style}]{s['status']}[/] after {s['steps']} steps: final val loss "
            f"{fmt(s['final_val_loss'])}, best {fmt(s['best_val_loss'])}, "
            f"median step {fmt(s['step_ms_median'], '.1f')} ms "
            f"(fwd+bwd {fmt(s['fwd_bwd_ms_median'], '.1f')}, opt {fmt(s['opt_ms_median'], '.1f')}, "
            f"refresh +{fmt(s['refresh_ms_median'], '.1f')} per refresh)",
            highlight=False,
            soft_wrap=True,
        )
        if s.get("message"):
            console.print(f"[red]{s['message']}[/]", highlight=False)
        if s.get("target_loss") is not None:
            console.print(
                f"target {s['target_loss']}: "
                + (
                    f"reached at step {s['target_step']} ({duration(s['target_seconds'])})"
                    if s["target_step"] is not None
                    else "not reached"
                ),
                highlight=False,
            )
        console.print(f"results in {s['run_dir']}", highlight=False, soft_wrap=True, markup=False)


def presets_table(rows: list[dict]):
    """Presets as a compact table with each one's description below it, then the block matrices'
    peak lr per optimizer and what those values were tuned for."""
    from rich.console import Group

    table = Table(
        title="mousse presets",
        header_style="bold underline",
        title_justify="left",
        box=None,
        pad_edge=False,
    )
    for col in (
        "preset",
        "params",
        "d x L",
        "heads",
        "seq",
        "batch",
        "steps",
        "scalar lr",
        "memory*",
        "step here**",
        "run here**",
    ):
        table.add_column(col, justify="left" if col == "preset" else "right", no_wrap=True)
    for r in rows:
        table.add_row(
            r["name"],
            r["params"],
            f"{r['d_model']}x{r['n_layers']}",
            str(r["n_heads"]),
            str(r["seq_len"]),
            str(r["batch_size"]),
            f"{r['steps']:,}",
            str(r["scalar_lr"]),
            r["memory"],
            r["step_time"],
            r["run_time"],
        )
    notes = "\n".join(f"[bold]{r['name']}[/]: {escape(r['description'])}" for r in rows)

    optimizers = list(rows[0]["lrs"]) if rows else []
    lrs = Table(
        title="peak lr of the block matrices, per --optimizer",
        header_style="bold underline",
        title_justify="left",
        box=None,
        pad_edge=False,
    )
    for col in ("preset", *optimizers):
        lrs.add_column(col, justify="left" if col == "preset" else "right", no_wrap=True)
    for r in rows:
        lrs.add_row(
            r["name"], *("-" if r["lrs"][o] is None else f"{r['lrs'][o]:g}" for o in optimizers)
        )
    by_note: dict[str, list[str]] = {}
    for r in rows:
        by_note.setdefault(r["lr_note"], []).append(r["name"])
    tuned = "\n".join(
        f"[bold]{', '.join(names)}[/]: {escape(note)}" for note, names in by_note.items()
    )
    momenta = "; ".join(
        f"{r['name']}: " + ", ".join(f"{o} {m:g}" for o, m in r["momenta"].items())
        for r in rows
        if r["momenta"]
    )
    if momenta:
        tuned += (
            f"\nmomentum where a preset's tuning moved it off the optimizer's recipe: {momenta}"
        )
    device = rows[0]["device"] if rows else "cpu"
    return Group(
        table,
        notes,
        "* weights + grads + Mousse state + activations of one micro batch, fp32",
        f"** Mousse on this machine's {device}: measured for the presets a short probe "
        "can run, from FLOPs at the measured matmul rate for the others",
        "",
        lrs,
        tuned,
    )


class AblationView:
    """Live convergence and step-time tables of an ablation (one row per run); plain lines per
    run start, evaluation and finish when not a terminal."""

    def __init__(self, runs, baseline: str | None, live: bool | None = None):
        self.order: list[str] = []
        self.baseline = baseline
        self.rows: dict[str, dict] = {}
        for run in runs:
            self._add(run.name)
        self.live_enabled = console.is_terminal if live is None else live
        self.live: Live | None = None

    def __enter__(self):
        if self.live_enabled:
            self.live = Live(self.render(), console=console, refresh_per_second=2)
            self.live.start()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.update(self.render())
            self.live.stop()
            self.live = None

    def _add(self, name: str) -> dict:
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

    def __call__(self, update) -> None:
        from mousse.experiments.sweep import RunBusy, RunSkipped, RunsQueued, WaitingForShards

        if isinstance(update, RunsQueued):  # tuning: the next phase's runs
            for run in update.runs:
                if run.name not in self.rows:
                    self._add(run.name)
            self._plain(f"queued {len(update.runs)} runs: {', '.join(r.name for r in update.runs)}")
        elif isinstance(update, WaitingForShards):
            self._plain(f"waiting for {len(update.runs)} runs of other shards")
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
            s = update.summary
            row.update(
                status=f"done ({s['status']})",
                step=s["steps"],
                val=s["final_val_loss"],
                best=s["best_val_loss"],
                curve={p["step"]: p["val_loss"] for p in s["curve"]},
                ms=[s["step_ms_median"]] if s["step_ms_median"] else [],
                fb=[s["fwd_bwd_ms_median"]] if s["fwd_bwd_ms_median"] else [],
                opt=[s["opt_ms_median"]] if s["opt_ms_median"] else [],
                tps=s["tokens_per_s"],
                mem=s["peak_mem_bytes"],
                earlier=True,
            )  # timed by an earlier invocation
            self._plain(
                f"[{update.run}] already {s['status']}: final val {fmt(s['final_val_loss'])}"
            )
        else:
            self._event(update.run, row, update.event)
        if self.live:
            self.live.update(self.render())

    def _plain(self, text: str) -> None:
        if not self.live:
            console.print(
                text, highlight=False, soft_wrap=True, markup=False
            )  # "[run] ..." is literal

    def _event(self, name: str, row: dict, e) -> None:
        if isinstance(e, Notice):
            self._plain(f"[{name}] warning: {e.text}")
        elif isinstance(e, RunStarted):
            row.update(status="running", steps=e.config["steps"])
            resumed = e.info["resumed_from"]
            self._plain(
                f"[{name}] started{f' (resumed at step {resumed})' if resumed else ''}: "
                f"{e.info['n_params'] / 1e6:.2f}M params, run dir {e.run_dir}"
            )
        elif isinstance(e, StepLogged):
            row.update(
                step=e.step, loss=e.train_loss, tokens_per_step=e.tokens_per_s * e.step_ms / 1000
            )  # tps: from the median
            row["ms"].append(e.step_ms)
            row["fb"].append(e.fwd_bwd_ms)
            row["opt"].append(e.opt_ms)
        elif isinstance(e, EvalDone):
            row.update(val=e.val_loss, best=e.best_val_loss)
            row["curve"][e.step] = e.val_loss
            self._plain(f"[{name}] step {e.step} val_loss {e.val_loss:.4f}")
        elif isinstance(e, RunFinished):
            s = e.summary
            row.update(status=s["status"], step=s["steps"], mem=s["peak_mem_bytes"])
            for key, summary_key in (
                ("ms", "step_ms_median"),
                ("fb", "fwd_bwd_ms_median"),
                ("opt", "opt_ms_median"),
            ):
                if s[summary_key] is not None:
                    row[key] = [s[summary_key]]
            self._plain(
                f"[{name}] {s['status']} after {s['steps']} steps: final val "
                f"{fmt(s['final_val_loss'])} ({duration(s['train_seconds'])} training)"
            )

    @staticmethod
    def _median(xs):
        return sorted(xs)[len(xs) // 2] if xs else None

    def _delta(self, row: dict) -> float | None:
        base = self.rows.get(self.baseline)
        if not base or row is base or not row["curve"]:
            return None
        step = max(row["curve"])
        ref = base["curve"].get(step)
        return None if ref is None else row["curve"][step] - ref

    def render(self):
        from rich.console import Group

        conv = Table(title="convergence", header_style="bold", title_justify="left")
        for col in ("run", "step", "train loss", "val loss", "best val", "Δ vs baseline", "status"):
            conv.add_column(col, justify="left" if col in ("run", "status") else "right")
        timing = Table(title="step time (median ms)", header_style="bold", title_justify="left")
        for col in (
            "run",
            "step",
            "fwd+bwd",
            "optimizer",
            "tok/s",
            "overhead vs baseline",
            "peak mem",
        ):
            timing.add_column(col, justify="left" if col == "run" else "right")
        base_ms = (
            self._median(self.rows[self.baseline]["ms"]) if self.baseline in self.rows else None
        )
        for name in self.order:
            r = self.rows[name]
            label = f"{name} (baseline)" if name == self.baseline else name
            step = f"{r['step']}/{r['steps']}" if r["steps"] else str(r["step"] or "-")
            conv.add_row(
                label,
                step,
                fmt(r["loss"]),
                fmt(r["val"]),
                fmt(r["best"]),
                fmt(self._delta(r), "+.4f"),
                r["status"],
            )
            ms = self._median(r["ms"])
            if ms and r.get("tokens_per_step"):  # consistent with the median step time shown
                r["tps"] = r["tokens_per_step"] / (ms / 1000)
            base = self.rows.get(self.baseline, {})
            mixed = bool(r.get("earlier")) != bool(base.get("earlier")) or bool(r.get("earlier"))
            overhead = (
                (ms / base_ms - 1) * 100
                if ms and base_ms and name != self.baseline and not mixed
                else None
            )
            timing.add_row(
                label,
                fmt(ms, ".1f"),
                fmt(self._median(r["fb"]), ".1f"),
                fmt(self._median(r["opt"]), ".1f"),
                fmt(r["tps"], ",.0f"),
                "not comparable"
                if mixed and ms and base_ms and name != self.baseline
                else fmt(overhead, "+.1f") + ("%" if overhead is not None else ""),
                fmt(r["mem"] and r["mem"] / 2**30, ".2f") + (" GiB" if r["mem"] else ""),
            )
        return Group(conv, timing)


def results_tables(results: dict):
    """The final convergence and step-time tables of `results.summarize`, as Rich tables."""
    from rich.console import Group

    from mousse.experiments.results import (
        CONVERGENCE_COLUMNS,
        TIMING_COLUMNS,
        convergence_rows,
        protocol_notes,
        timing_notes,
        timing_rows,
    )

    target = results["target_loss"]
    caption = (
        f"target = baseline {results['baseline']} final val loss {target:.4f}; speedup = "
        "baseline steps / steps to reach it, 95% bootstrap interval over seeds"
        if target is not None
        else "no completed baseline: no target, deltas or overheads"
    )
    caption += "".join(
        f"\n[yellow]not established: {escape(n)}[/]" for n in protocol_notes(results)
    )
    timing_caption = "\n".join(escape(n) for n in timing_notes(results)) or None
    tables = []
    for title, columns, rows in (
        ("convergence", CONVERGENCE_COLUMNS, convergence_rows(results)),
        ("step time", TIMING_COLUMNS, timing_rows(results)),
    ):
        table = Table(
            title=title,
            header_style="bold",
            title_justify="left",
            caption=caption if title == "convergence" else timing_caption,
            caption_justify="left",
        )
        for col in columns:
            table.add_column(col, justify="left" if col == columns[0] else "right")
        for row in rows:
            table.add_row(*[row[c] for c in columns])
        tables.append(table)
    return Group(*tables)


def scale_table(scale: dict):
    """Speedup over each preset's baseline, one column per preset (its parameter count)."""
    from mousse.experiments.results import _speedup_text

    presets = scale["presets"]
    params = {r["preset"]: r["params"] for r in scale["rows"] if r["params"]}
    table = Table(
        title="speedup by scale (baseline steps / steps to its final loss, 95% CI)",
        header_style="bold",
        title_justify="left",
    )
    table.add_column("variant")
    for p in presets:
        table.add_column(f"{p} ({params[p] / 1e6:.1f}M)" if p in params else p, justify="right")
    by = {(r["preset"], r["variant"]): r for r in scale["rows"]}
    for variant in dict.fromkeys(r["variant"] for r in scale["rows"]):
        cells = []
        for p in presets:
            r = by.get((p, variant))
            cells.append(
                "-"
                if r is None
                else "baseline"
                if r["is_baseline"]
                else _speedup_text({**r, "is_baseline": False})
            )
        table.add_row(variant, *cells)
    return table


BENCH_LABELS = {
    "adamw": "torch.optim.AdamW",
    "torch_muon": "torch.optim.Muon",
    "muon": "Muon (ours)",
    "muon_bf16": "Muon (ours), bf16 Newton-Schulz",
    "mousse_both_f1": "Mousse both, refresh every step",
    "mousse_both_f10": "Mousse both, refresh every 10",
    "mousse_left_f1": "Mousse left, refresh every step",
    "mousse_left_f10": "Mousse left, refresh every 10",
    "mousse_both_f10_qr": "Mousse both, qr refresh every 10",
    "shampoo_f10": "Shampoo, refresh every 10",
    "soap_f10": "SOAP, qr refresh every 10",
    "splus_f10": "SPlus, refresh every 10",
    "tnt_f10": "TNT (empirical), refresh every 10",
    "specgd": "SpecGD (SVD)",
    "muon_compiled": "Muon (ours), torch.compile",
    "mousse_both_f10_compiled": "Mousse both, refresh every 10, torch.compile",
}


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f}" if n else "-"


def kernel_table(k: dict) -> list:
    """The Triton kernels against torch per size, and the dispatch thresholds that follow."""
    table = Table(
        title=f"Triton kernels vs torch ({k['dtype']}, one m x m input)",
        header_style="bold",
        title_justify="left",
    )
    for col in ("op", "m", "kernel ms", "torch ms", "speedup", "dispatched"):
        table.add_column(col, justify="left" if col == "op" else "right")
    for row in k["rows"]:
        table.add_row(
            row["op"],
            str(row["size"]),
            f"{row['kernel_ms']:.3f}",
            f"{row['torch_ms']:.3f}",
            f"{row['speedup']:.2f}x",
            "yes" if row["dispatched"] else "no",
        )
    measured = k["measured_min_dim"]
    lines = [
        f"{op} kernel faster from m = {measured[op]} (dispatch now from {k['min_dim'][op]})"
        if measured[op]
        else f"{op} kernel never faster here (dispatch now from "
        f"{k['min_dim'][op]}; MOUSSE_TRITON=0 turns it off)"
        for op in measured
    ]
    env = " ".join(f"MOUSSE_{op.upper()}_MIN_DIM={measured[op]}" for op in measured if measured[op])
    if env:
        lines.append(f"to dispatch by these measurements: {env}")
    if k["dispatched_where_slower"]:
        lines.append(f"[red]dispatched where slower: {', '.join(k['dispatched_where_slower'])}[/]")
    return [table, "\n".join(lines)]


def bench_tables(r: dict):
    """`mousse bench` results: optimizer steps, per-shape Newton-Schulz and refresh, targets, and
    the train-step comparison when measured."""
    from rich.console import Group

    head = (
        f"[bold]mousse bench[/] {r['preset']} on {r['device']} ({escape(r['device_name'])}, "
        f"{r['cpu_count']} CPUs, {r['threads']} torch threads, torch {r['torch']}), "
        f"median of {r['repeats']}"
    )
    steps = Table(
        title=f"optimizer step (ms per step, amortized over {r['cycle_steps']} steps)",
        header_style="bold",
        title_justify="left",
    )
    for col in ("optimizer", "ms/step", "vs our Muon", "state MiB", "P cache MiB"):
        steps.add_column(col, justify="left" if col == "optimizer" else "right")
    for name, ms in r["step_ms"].items():
        steps.add_row(
            BENCH_LABELS.get(name, name),
            f"{ms:.2f}",
            f"{r['vs_muon'][name]:.2f}x",
            _mib(r["state_bytes"][name]),
            _mib(r["cache_bytes"][name]),
        )
    shapes = Table(
        title="per shape (batched over the shape's matrices)",
        header_style="bold",
        title_justify="left",
    )
    for col in (
        "shape",
        "count",
        "NS ms",
        "NS TFLOP/s",
        "% peak",
        "refresh eigh ms",
        "refresh qr ms",
    ):
        shapes.add_column(col, justify="right")
    for s in r["shapes"]:
        shapes.add_row(
            "x".join(map(str, s["shape"])),
            str(s["count"]),
            f"{s['ns_ms']:.2f}",
            f"{s['ns_tflops']:.3f}",
            fmt(s["ns_pct_peak"], ".1f"),
            f"{s['refresh_eigh_ms']:.2f}",
            f"{s['refresh_qr_ms']:.2f}",
        )
    shapes.add_row(
        "all",
        "",
        "",
        "",
        "",
        f"{r['refresh_ms']['eigh']:.2f}",
        f"{r['refresh_ms']['qr']:.2f}",
        style="bold",
    )
    targets = "\n".join(
        f"target {name}: {t['ratio']:.2f}x (<= {t['limit']}x) "
        f"{'[green]met[/]' if t['met'] else '[red]not met[/]'}"
        for name, t in r["targets"].items()
    )
    parts = [head, steps, shapes]
    if r.get("kernels"):
        parts += kernel_table(r["kernels"])
    parts.append(targets)
    if r.get("train"):
        t = r["train"]
        compiled = ", torch.compile" if t.get("compiled") else ""
        train = Table(
            title=f"train step (ms over {t['steps']} steps after the first{compiled})",
            header_style="bold",
            title_justify="left",
        )
        for col in ("optimizer", "median", "mean", "fwd+bwd median", "opt mean"):
            train.add_column(col, justify="left" if col == "optimizer" else "right")
        for name in ("muon", "mousse"):
            row = t[name]
            train.add_row(
                name,
                f"{row['step_ms_median']:.1f}",
                f"{row['step_ms_mean']:.1f}",
                f"{row['fwd_bwd_ms_median']:.1f}",
                f"{row['opt_ms_mean']:.1f}",
            )
        parts += [
            train,
            f"Mousse overhead vs Muon: {t['overhead_pct_mean']:+.1f}% (mean step, "
            f"refreshes included), {t['overhead_pct_median']:+.1f}% (median step)",
        ]
    return Group(*parts)
