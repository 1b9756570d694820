"""Rich tables of finished work: an ablation's results, the speedup by scale, the presets, and
`mousse bench`. They are renderables; the commands print them (to stderr)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from mousse.train.estimate import counted

from .console import fmt

if TYPE_CHECKING:
    from rich.console import Group, RenderableType

    from mousse.experiments.bench import BenchResult, TrainBench
    from mousse.experiments.kernelbench import KernelBench
    from mousse.experiments.results import Results
    from mousse.experiments.scale import ScaleSummary

    from .preset_rows import PresetRow


def titled_table(
    title: str,
    columns: Sequence[str],
    left: Sequence[str] | None = None,
    no_wrap: bool = False,
    **style: Any,  # Any: Rich's Table keyword arguments, each of its own type
) -> Table:
    """An empty table with its title on the left and bold headers (`style` overrides them); the
    `left` columns (default: the first) left-justified, the numbers right."""
    table = Table(title=title, **{"header_style": "bold", "title_justify": "left", **style})
    left = tuple(columns[:1]) if left is None else left
    for col in columns:  # fold, never cut: a cut cell can hide which variant a row is
        table.add_column(
            col, justify="left" if col in left else "right", no_wrap=no_wrap, overflow="fold"
        )
    return table


def results_tables(results: Results) -> Group:
    """The final convergence and step-time tables of `results.summarize`, as Rich tables."""
    from rich.console import Group

    from mousse.experiments.table_rows import (
        BUDGET_COLUMNS,
        BUDGET_POWER_NOTE,
        BUDGET_TITLE,
        CONVERGENCE_COLUMNS,
        TIMING_COLUMNS,
        TUNING_COLUMNS,
        budget_table_rows,
        convergence_rows,
        power_note,
        precision_note,
        protocol_notes,
        regime_note,
        split_note,
        timing_notes,
        timing_rows,
        tuning_note,
        tuning_rows,
    )

    target = results["target_loss"]
    caption = (
        f"target = baseline {results['baseline']} final val loss {target:.4f} (seed mean); "
        "speedup = baseline steps / steps of the seed-mean curve to reach it (below 1: the "
        "baseline's steps to the variant's final loss / the variant's), 95% bootstrap interval "
        "over seeds"
        + (
            "; evals: the speedups the two evaluations around the crossing allow"
            if any(v.get("speedup_bracket") for v in results["variants"])
            else ""
        )
        if target is not None
        else "no completed baseline: no target, deltas or overheads"
    )
    for extra in (
        precision_note(results),
        regime_note(results),
        split_note(results),
        power_note(results),
    ):
        if extra:
            caption += f"; {escape(extra)}"
    caption += "".join(
        f"\n[yellow]not established: {escape(n)}[/]" for n in protocol_notes(results)
    )
    timing_caption = "\n".join(escape(n) for n in timing_notes(results)) or None
    # one tuned knob a line
    convergence = [
        {**r, "Tuned": r["Tuned"].replace(", ", "\n")} for r in convergence_rows(results)
    ]
    tuning, budgets = tuning_rows(results), budget_table_rows(results)
    tuning_caption = escape(tuning_note(results) or "") or None
    tables = []
    for title, columns, rows, text, left in (
        ("convergence", CONVERGENCE_COLUMNS, convergence, caption, CONVERGENCE_COLUMNS[:2]),
        *(
            [(BUDGET_TITLE, BUDGET_COLUMNS, budgets, BUDGET_POWER_NOTE, BUDGET_COLUMNS[:2])]
            if budgets
            else []
        ),
        *(
            [("tuning", TUNING_COLUMNS, tuning, tuning_caption, TUNING_COLUMNS[:3])]
            if tuning
            else []
        ),
        ("step time", TIMING_COLUMNS, timing_rows(results), timing_caption, None),
    ):
        table = titled_table(title, columns, left, caption=text, caption_justify="left")
        for row in rows:
            table.add_row(*[escape(row[c]) for c in columns])  # names from disk: literal
        tables.append(table)
    speedups = budget_speedup_table(results)
    if speedups is not None:  # after convergence and tuning, before step time
        tables.insert(-1, speedups)
    return Group(*tables)


def budget_speedup_table(results: Results) -> Table | None:
    """The speedup against budget, a column per budget, with how it was read below it; None
    without budgets."""
    from mousse.experiments.table_rows import (
        BUDGET_SPEEDUP_TITLE,
        budget_speedup_notes,
        budget_speedup_rows,
    )

    columns, rows = budget_speedup_rows(results)
    if not rows:
        return None
    caption = "\n".join(escape(n) for n in budget_speedup_notes(results))
    table = titled_table(BUDGET_SPEEDUP_TITLE, columns, caption=caption, caption_justify="left")
    for row in rows:
        table.add_row(*[escape(row[c]) for c in columns])  # names from disk: literal
    return table


def scale_table(scale: ScaleSummary) -> Table:
    """Speedup over each preset's baseline, one column per preset (its parameter count)."""
    from mousse.experiments.table_rows import SCALE_TITLE, scale_rows

    columns, rows = scale_rows(scale)
    table = titled_table(SCALE_TITLE, [escape(c) for c in columns])
    for row in rows:
        table.add_row(*[escape(row[c]) for c in columns])  # names from disk: literal
    return table


# The two preset tables: compact, without borders.
_PRESET_STYLE: dict[str, Any] = dict(  # Any: as `**style` above
    header_style="bold underline", box=None, pad_edge=False, no_wrap=True
)


def presets_table(rows: list[PresetRow]) -> Group:
    """Presets as a compact table with each one's description below it, then the block matrices'
    peak lr per optimizer and what those values were tuned for."""
    from rich.console import Group

    from mousse.train.estimate import busy_note

    device = rows[0]["device"] if rows else "cpu"
    busy = max((b for r in rows if (b := r["busy"]) is not None), default=None)
    measured = any(r["step_time"] for r in rows)
    return Group(
        _presets_overview(rows, measured),
        "\n".join(f"[bold]{r['name']}[/]: {escape(r['description'])}" for r in rows),
        "* weights + grads + Mousse state + activations of one micro batch, fp32",
        "*** epochs over the builtin corpus at the preset's steps; tokens/param and x20: the "
        "default budget, per non-embedding parameter and as a multiple of the compute-optimal "
        "20 (`--budget X` trains X x 20); '-': sized for token shards, epochs over your --data",
        f"** Mousse on this machine's {device}: measured for the presets a short probe "
        "can run, from FLOPs at the measured matmul rate for the others" + busy_note(busy)
        if measured
        else "time here: `mousse presets --measure` (probes this machine: tens of seconds)",
        "",
        _lr_table(rows),
        _lr_notes(rows),
    )


def _presets_overview(rows: list[PresetRow], measured: bool) -> Table:
    """One row per preset: size, shape, budget, memory and, when `measured`, the time here."""
    columns = (
        *("preset", "params", "non-emb", "d x L", "heads", "seq", "batch", "tokens/step"),
        *("steps", "tokens/param", "x20", "epochs***", "scalar lr"),
    )
    times = ("step here**", "run here**") if measured else ()
    table = titled_table("mousse presets", (*columns, "memory*", *times), **_PRESET_STYLE)
    for r in rows:
        table.add_row(
            r["name"],
            r["params"],
            f"{r['non_embedding_params'] / 1e6:.2f}M",
            f"{r['d_model']}x{r['n_layers']}",
            str(r["n_heads"]),
            str(r["seq_len"]),
            str(r["batch_size"]),
            f"{r['tokens_per_step']:,}",
            f"{r['steps']:,}",
            f"{r['tokens_per_param']:.3g}",
            f"{r['budget']:.2g}x",
            "-" if r["epochs"] is None else f"{r['epochs']:.3g}",
            str(r["scalar_lr"]),
            r["memory"],
            *((r["step_time"], r["run_time"]) if measured else ()),
        )
    return table


def _lr_table(rows: list[PresetRow]) -> Table:
    """The block matrices' peak lr of every preset, one column per optimizer."""
    optimizers = list(rows[0]["lrs"]) if rows else []
    table = titled_table(
        "peak lr of the block matrices, per --optimizer", ("preset", *optimizers), **_PRESET_STYLE
    )
    for r in rows:
        table.add_row(
            r["name"], *("-" if r["lrs"][o] is None else f"{r['lrs'][o]:g}" for o in optimizers)
        )
    return table


def _lr_notes(rows: list[PresetRow]) -> str:
    """What the lrs were tuned for (presets sharing a note on one line), and the momenta that
    tuning moved off an optimizer's recipe."""
    by_note: dict[str, list[str]] = {}
    for r in rows:
        by_note.setdefault(r["lr_note"], []).append(r["name"])
    tuned = "\n".join(
        f"[bold]{', '.join(names)}[/]: {escape(note)}" for note, names in by_note.items()
    )
    momenta = "; ".join(
        f"{r['name']}: "
        + ", ".join(
            f"{o} {m:g}" + (f" {r['momentum_styles'][o]}" if o in r["momentum_styles"] else "")
            for o, m in r["momenta"].items()
        )
        for r in rows
        if r["momenta"]
    )
    if momenta:
        tuned += (
            f"\nmomentum where a preset's tuning moved it off the optimizer's recipe: {momenta}"
        )
    return tuned


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
    "mousse_both_f10_root": "Mousse both, root refresh every 10",
    "mousse_both_f10_staggered": "Mousse both, staggered refresh every 10",
    "mousse_both_f10_staggered_delay1": "Mousse both, staggered every 10, 1 step late",
    "shampoo_f10": "Shampoo, refresh every 10",
    "soap_f10": "SOAP, qr refresh every 10",
    "splus_f10": "SPlus, refresh every 10",
    "tnt_f10": "TNT (empirical), refresh every 10",
    "specgd": "SpecGD (SVD)",
    "muon_compiled": "Muon (ours), torch.compile",
    "mousse_both_f10_compiled": "Mousse both, refresh every 10, torch.compile",
}


def _mib(n: int) -> str:
    """Bytes as MiB with two decimals; "-" for none."""
    return f"{n / 2**20:.2f}" if n else "-"


def bench_tables(r: BenchResult) -> Group:
    """`mousse bench` results: optimizer steps, per-shape Newton-Schulz and refresh, targets, and
    the train-step comparison when measured."""
    from rich.console import Group

    head = (
        f"[bold]mousse bench[/] {r['preset']} on {r['device']} ({escape(r['device_name'])}, "
        f"{r['cpu_count']} CPUs, {r['threads']} torch threads, torch {r['torch']}"
        + (f", {r['precision']}" if r.get("precision") else "")
        + f"), median of {r['repeats']}"
    )
    train = r.get("train")
    if r["lean"] and train:
        return Group(head, *_train_steps(train))
    parts: list[RenderableType] = [head, _optimizer_steps(r), _shapes(r)]
    if kernels := r.get("kernels"):
        parts += kernel_table(kernels)
    parts.append(
        "\n".join(
            f"target {name}: {t['ratio']:.2f}x (<= {t['limit']}x) "
            f"{'[green]met[/]' if t['met'] else '[red]not met[/]'}"
            for name, t in r["targets"].items()
        )
    )
    if train:
        parts += _train_steps(train)
    return Group(*parts)


def _optimizer_steps(r: BenchResult) -> Table:
    """Each optimizer's step time, against our Muon, and its state and cache memory."""
    table = titled_table(
        f"optimizer step (ms per step, amortized over {counted(r['cycle_steps'], 'step')})",
        ("optimizer", "ms/step", "vs our Muon", "p50 ms", "p99 ms", "state MiB", "P cache MiB"),
    )
    for name, ms in r["step_ms"].items():
        table.add_row(
            BENCH_LABELS.get(name, name),
            f"{ms:.2f}",
            f"{r['vs_muon'][name]:.2f}x",
            f"{r['step_spread'][name]['p50']:.2f}",
            f"{r['step_spread'][name]['p99']:.2f}",
            _mib(r["state_bytes"][name]),
            _mib(r["cache_bytes"][name]),
        )
    return table


def _shapes(r: BenchResult) -> Table:
    """Newton-Schulz time and throughput and the refresh times per matrix shape, then the sum."""
    columns = ("shape", "count", "NS ms", "NS TFLOP/s", "% peak")
    methods = list(r["refresh_ms"])  # eigh, qr, root (and eigh_host on CUDA)
    table = titled_table(
        "per shape (batched over the shape's matrices)",
        (*columns, *(f"refresh {m.replace('_', ' on ')} ms" for m in methods)),
        left=(),
    )
    for s in r["shapes"]:
        table.add_row(
            "x".join(map(str, s["shape"])),
            str(s["count"]),
            f"{s['ns_ms']:.2f}",
            f"{s['ns_tflops']:.3f}",
            fmt(s["ns_pct_peak"], ".1f"),
            *(f"{s.get(f'refresh_{m}_ms'):.2f}" for m in methods),  # `.get`: a key by name
        )
    table.add_row(
        "all", "", "", "", "", *(f"{r['refresh_ms'][m]:.2f}" for m in methods), style="bold"
    )
    return table


def kernel_table(k: KernelBench) -> list[RenderableType]:
    """The Triton kernels against torch per size, and the dispatch thresholds that follow."""
    table = titled_table(
        f"Triton kernels vs torch ({k['dtype']}, one m x m input)",
        ("op", "m", "kernel ms", "torch ms", "speedup", "dispatched"),
    )
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


TRAIN_LABELS = {
    "muon": "Muon",
    "mousse": "Mousse",
    "mousse_offpath": "Mousse, staggered, 1 step late",
}


def _train_steps(t: TrainBench) -> list[RenderableType]:
    """With --train (or --lean): each variant's whole training steps (p50, p99, refresh steps
    and plain ones apart, peak memory), and Mousse's overhead over Muon."""
    compiled = ", torch.compile" if t.get("compiled") else ""
    table = titled_table(
        f"train step (ms over {counted(t['steps'], 'step')} after the first{compiled})",
        (
            "optimizer",
            "mean",
            "p50",
            "p99",
            "refresh steps",
            "other steps",
            "fwd+bwd median",
            "opt mean",
            "peak MiB",
            "tokens/s",
            "MFU",
        ),
    )
    rows = {"muon": t["muon"], "mousse": t["mousse"], "mousse_offpath": t["mousse_offpath"]}
    for name, label in TRAIN_LABELS.items():
        row = rows[name]
        table.add_row(
            label,
            f"{row['step_ms_mean']:.1f}",
            f"{row['step_ms_p50']:.1f}",
            f"{row['step_ms_p99']:.1f}",
            fmt(row["refresh_step_ms_median"], ".1f"),
            fmt(row["plain_step_ms_median"], ".1f"),
            f"{row['fwd_bwd_ms_median']:.1f}",
            f"{row['opt_ms_mean']:.1f}",
            _mib(row["peak_memory_bytes"] or 0),
            fmt(row.get("tokens_per_s"), ",.0f"),
            fmt(mfu * 100, ".1f") + "%" if (mfu := row.get("mfu")) is not None else "-",
        )
    return [
        table,
        *(
            f"{TRAIN_LABELS[name]} overhead vs Muon: {mean:+.1f}% (mean "
            f"step, refreshes included), {median:+.1f}% (median step)"
            for name, mean, median in (
                ("mousse", t["overhead_pct_mean"], t["overhead_pct_median"]),
                (
                    "mousse_offpath",
                    t["overhead_pct_mean_offpath"],
                    t["overhead_pct_median_offpath"],
                ),
            )
        ),
    ]
