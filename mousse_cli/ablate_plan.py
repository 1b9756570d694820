"""What `mousse ablate` will run, before anything runs: the spec file, --config and the flags
merged, the plan of every preset checked, its dashboards and cost, and the plan printed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from mousse.distributed.process import env_world_size
from mousse.train.config import ConfigError, Overrides, coerce, load_config_file
from mousse.train.dashboards import Dashboards
from mousse.train.estimate import counted, duration

from .console import console, notice, show_lines
from .cost import check_cost

if TYPE_CHECKING:
    from mousse.experiments.ablation import RunSpec
    from mousse.experiments.settings import Sweeps
    from mousse.experiments.spec import Table
    from mousse.experiments.sweep import Ablation
    from mousse.experiments.tuning import TuneRecord


@dataclass
class AblateSetup:
    """The ablation the user asked for, flags over the spec file over --config."""

    file: Table  # the spec file (empty without one)
    # the settings every run shares, as the spec file and the flags give them (the planner
    # types them: `inputs.typed_settings`)
    base: dict[str, object]
    presets: list[str] | None  # several presets: one ablation each (None: the base's preset)
    sweeps: Sweeps  # knob -> values, typed (`inputs.typed_sweeps`, `parse_sweep_values`)
    tuning: TuneRecord | None  # the tuning spec, or None


def read_setup(
    overrides: Overrides,
    sweeps: dict[str, str],
    spec: Path | None,
    config: Path | None,
    tune: str | None,
    tune_seeds: str | None,
) -> AblateSetup:
    """The spec file, --config and the flags merged into an AblateSetup: sweep flags (`sweeps`)
    replace the file's sweeps of the same knob, the other flags (`overrides`) its base settings."""
    from mousse.experiments.inputs import parse_sweep_values
    from mousse.experiments.scale import split_presets
    from mousse.experiments.spec import load_spec

    sweep_flags = {k: parse_sweep_values(k, v) for k, v in sweeps.items()}
    base_flags = overrides.to_dict()
    file = load_spec(spec) if spec else {}
    if not sweep_flags and not file.get("sweeps"):
        _refuse_listed_settings(base_flags)
    base = {
        **(load_config_file(config) if config else {}),
        **file.get("base", {}),
        **base_flags,
    }
    return AblateSetup(
        file=file,
        base=base,
        presets=split_presets(base_flags.get("preset", file.get("presets"))),
        sweeps={**file.get("sweeps", {}), **sweep_flags},
        tuning=_tuning(file.get("tune"), tune, tune_seeds),
    )


def _refuse_listed_settings(flags: Mapping[str, object]) -> None:
    """With nothing to sweep, a run setting given a list (`--schedule cosine,wsd`) was meant as
    a sweep: say that it takes one value, and where a sweep of it goes."""
    for key, value in flags.items():
        if isinstance(value, str) and "," in value and key != "budgets":
            values = ", ".join(f'"{v.strip()}"' for v in value.split(","))
            raise ConfigError(
                f"--{key.replace('_', '-')} {value}: a run setting takes one value, and only "
                f"the optimizer and its knobs sweep by flag; sweep it in a spec file "
                f"([sweep] {key} = [{values}], then `mousse ablate FILE`)"
            )


def _tuning(
    saved: TuneRecord | None, tune: str | None, tune_seeds: str | None
) -> TuneRecord | None:
    """The spec file's tuning, with --tune replacing its knobs and --tune-seeds its seeds."""
    from mousse.experiments.inputs import SETTING_CHOICES, parse_seeds, tune_spec
    from mousse.experiments.tuning import TUNE_SEED_BASE, parse_tune

    if tune is None and tune_seeds is None:
        return saved
    saved = saved or {"knobs": [], "grids": {}, "seeds": [TUNE_SEED_BASE]}
    phases = (
        parse_tune(tune, SETTING_CHOICES)
        if tune is not None
        else [(k, saved["grids"].get(k)) for k in saved["knobs"]]
    )
    return tune_spec(
        phases,
        parse_seeds(tune_seeds, TUNE_SEED_BASE, "--tune-seeds")
        if tune_seeds is not None  # an empty one is bad input, not the default
        else saved["seeds"],
        saved.get("max_extensions"),
    )


def check_run_flags(
    tuning: Mapping[str, object] | None, wait: float | None, shard: str | None, parallel: int
) -> None:
    """Refuse a malformed --shard (an empty one too: not "no shard"), --wait outside a tuned
    shard, and --parallel below 1 or under torchrun."""
    from mousse.experiments.ablation import parse_shard

    if shard is not None:
        parse_shard(shard)
    if wait is not None and (not wait > 0 or shard is None or not tuning):
        raise ConfigError("--wait SECONDS (> 0) is for a --shard of a --tune ablation")
    if parallel < 1:
        raise ConfigError("--parallel must be >= 1")
    if parallel > 1 and env_world_size() > 1:
        raise ConfigError(
            "--parallel runs single-process runs side by side; under torchrun "
            "each run uses every rank, one run after another: drop --parallel"
        )


def check_parallel(
    parallel: int, ablations: Mapping[str | None, Ablation], shard: str | None
) -> None:
    """Refuse --parallel above the most runs any preset's plan can take (this shard's, without
    tuning): the extra workers could never run."""
    most = max(
        ab.upper_bound_runs() if ab.plan.tune else len(shard_of(ab, shard))
        for ab in ablations.values()
    )
    if parallel > most:
        raise ConfigError(
            f"--parallel {parallel} is more than the {counted(most, 'run')} this ablation "
            f"{'can take' if any(ab.plan.tune for ab in ablations.values()) else 'plans'}"
            f"{' in this shard' if shard else ''}; pass --parallel {max(most, 1)} or fewer"
        )


def worker_gpus(
    devices: str | None, ablations: Mapping[str | None, Ablation], parallel: int
) -> list[str] | None:
    """The GPUs the run workers go to, round-robin: those --devices names (indices among the
    visible GPUs), else every visible GPU when the runs use CUDA, several are visible and
    several runs go at once; None: no placement (CPU runs, one GPU)."""
    import os

    import torch

    from mousse.train.machine import pick_device

    on_cuda = any(
        pick_device(c.device).type == "cuda"
        for ab in ablations.values()
        for c in ab.variant_configs()
    )
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = listed.split(",")[:count] if listed else [str(i) for i in range(count)]
    return gpu_slots(devices, visible, on_cuda, parallel)


def gpu_slots(
    devices: str | None, visible: list[str], on_cuda: bool, parallel: int
) -> list[str] | None:
    """`worker_gpus` given the visible GPUs' ids: --devices "0,2" -> their ids; ConfigError
    naming a GPU that is not there, or --devices for runs on the CPU."""
    if devices is None:
        return visible if on_cuda and parallel > 1 and len(visible) > 1 else None
    try:
        indices = [int(d) for d in devices.split(",")]
    except ValueError:
        raise ConfigError(f"bad --devices {devices!r}: expected GPU indices, e.g. 0,1") from None
    there = f"{len(visible)} visible: 0-{len(visible) - 1}" if visible else "no GPU is visible"
    for i in indices:
        if not 0 <= i < len(visible):
            raise ConfigError(f"--devices {devices}: GPU {i} is not there ({there})")
    if not on_cuda:
        raise ConfigError("--devices places runs on GPUs, but these runs use the CPU")
    return [visible[i] for i in indices]


def plan_ablations(
    setup: AblateSetup,
    grid: bool,
    seeds: str | None,
    no_baseline: bool,
    ablation_dir: Path | None,
    max_runs: int,
) -> tuple[Path, dict[str | None, Ablation]]:
    """(root dir, {preset: Ablation}) with every plan checked against --max-runs and validated;
    the preset is None without --preset a,b. The default root names the knobs and the plan."""
    from mousse.experiments.ablation import plan_ablation
    from mousse.experiments.inputs import parse_seeds
    from mousse.experiments.scale import SCALE_FILE
    from mousse.experiments.sweep import Ablation, check_ablation_dir, continued_dir

    file, presets = setup.file, setup.presets
    each: list[str | None] = [*presets] if presets else [None]  # None: the base's preset
    plans = {
        preset: plan_ablation(
            setup.sweeps,
            base={**setup.base, "preset": preset} if preset else setup.base,
            mode="grid" if grid else file.get("mode", "one-at-a-time"),
            seeds=parse_seeds(seeds)
            if seeds
            else file.get("seeds", [0, 1, 2] if setup.tuning else [0]),
            baseline=False if no_baseline else file.get("baseline", True),
            tune=setup.tuning,
        )
        for preset in each
    }
    first = next(iter(plans.values()))
    if ablation_dir is not None and str(ablation_dir) in ("", "."):
        raise ConfigError(
            "--ablation-dir must name a directory for this ablation, not the current one"
        )
    root = ablation_dir or continued_dir(
        Path("runs")
        / first.default_dir_name(
            (file.get("name") or "-".join(first.sweeps))
            + ("-" + "+".join(presets) if presets else "")
        ),
        plans,
    )
    if presets:  # the root of one ablation dir per preset
        check_ablation_dir(root, SCALE_FILE, set(presets))
    ablations = {p: Ablation(plan, root if p is None else root / p) for p, plan in plans.items()}
    check_max_runs_all(ablations.values(), max_runs)
    for ab in ablations.values():
        ab.validate()
    return root, ablations


def check_max_runs_all(ablations: Iterable[Ablation], max_runs: int) -> None:
    """--max-runs against every preset's plan together (upper bounds when tuning)."""
    from mousse.experiments.ablation import check_max_runs

    listed = list(ablations)
    total = sum(ab.upper_bound_runs() for ab in listed)
    check_max_runs(listed[0].plan, max_runs, total)


def shard_of(ablation: Ablation, shard: str | None) -> list[RunSpec]:
    """The listed runs this invocation trains (tuning plans list theirs as they go: none)."""
    from mousse.experiments.ablation import shard_runs

    if ablation.plan.tune:
        return []
    return shard_runs(ablation.plan.runs, shard) if shard else ablation.plan.runs


def dashboards_for(
    ablations: Mapping[str | None, Ablation], setup: AblateSetup, root: Path
) -> dict[str | None, Dashboards]:
    """The dashboards of each ablation dir (a missing package: one line, before any work); with
    several presets, one group per preset."""
    return {
        p: Dashboards(
            coerce("log", setup.base.get("log")),  # a view setting, left out of the plan
            notice,
            ab.dir,  # one group per ablation
            group=f"{root.name}-{p}" if setup.presets else None,
        )
        for p, ab in ablations.items()
    }


def ablation_cost(
    ablations: Mapping[str | None, Ablation], max_hours: float | None, force: bool
) -> list[str]:
    """`check_cost` over every variant of every preset (none under torchrun). A resumed ablation
    is timed by the pace of its finished runs (their own conditions, --parallel included), not
    by a fresh probe."""
    if env_world_size() != 1:
        return []
    variants = [ab.variant_configs() for ab in ablations.values()]
    left = [ab.time_left() for ab in ablations.values()]
    measured = None
    known = [x for x in left if x is not None]
    if len(known) == len(left):
        seconds, runs = sum(x[0] for x in known), sum(x[1] for x in known)
        exact = all(x[3] for x in known)
        done = sum(x[2] for x in known)
        measured = (
            seconds,
            f"nothing left to run: the {counted(done, 'run')} in the ablation dir finished"
            if exact and not runs
            else f"about {duration(seconds)} for the {counted(runs, 'run')} left"
            f"{'' if exact else ' at most'}, at the pace of the {done} finished in the "
            "ablation dir",
        )
    return check_cost(
        [c for vs in variants for c in vs],
        max_hours,
        force,
        runs=sum(ab.upper_bound_runs() for ab in ablations.values()),
        measured=measured,
    )


def show_plans(
    ablations: Mapping[str | None, Ablation], shard: str | None, cost: list[str]
) -> None:
    """Every preset's planned runs (when tuning: the variants, their grids and the run count),
    then the cost lines, to stderr."""
    for ab in ablations.values():
        if ab.plan.tune:
            _show_tuned_plan(ab, shard)
        else:
            _show_runs(ab, shard_of(ab, shard), shard)
        if (budgets := budgets_text(ab)) is not None:
            console.print(budgets, highlight=False, soft_wrap=True, markup=False)
    show_lines(cost)


def budgets_text(ablation: Ablation) -> str | None:
    """What every run of an ablation with budgets trains: each budget and the steps it makes
    (the largest the run itself, the others its cooldown branches); None without budgets."""
    from mousse.train.config import budget_steps, resolve

    cfg = resolve(ablation.plan.settings(ablation.plan.runs[0]))
    steps = budget_steps(cfg)
    if not steps:
        return None
    listed = ", ".join(f"{b:g}x {counted(s, 'step')}" for b, s in steps)
    return (
        f"budgets: {listed}; each run trains the largest ({cfg.schedule}, warmup "
        f"{counted(cfg.warmup_steps or 0, 'step')}) and cools down a branch for each smaller one"
    )


def _show_runs(ablation: Ablation, runs: list[RunSpec], shard: str | None) -> None:
    """A plan without tuning: the run count, then the runs this invocation trains."""
    plan, here = ablation.plan, counted(len(runs), "run")
    console.print(
        f"[bold]mousse ablate[/]: {counted(len(plan.runs), 'run')} ({plan.mode}, seeds "
        f"{plan.seeds}){f', shard {shard}: {here}' if shard else ''} in "
        f"{escape(str(ablation.dir))}",
        highlight=False,
        soft_wrap=True,
    )
    for run in runs:
        console.print(
            f"  {run.name:<28} {knob_text(run.knobs)}{'  (baseline)' if run.is_baseline else ''}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )


def _show_tuned_plan(ablation: Ablation, shard: str | None) -> None:
    """A tuned plan: the variants with the grids each tunes, and the most runs it can take."""
    from mousse.experiments.tuning import fmt_value

    plan, tune, grids = ablation.plan, ablation.tune, ablation.grids()
    assert tune is not None  # a tuned plan's
    console.print(
        f"[bold]mousse ablate[/]: {counted(len(plan.variants), 'variant')}, each tuned "
        f"({', '.join(tune.knobs)}) on tuning seeds {list(tune.seeds)}, then "
        f"compared over seeds {plan.seeds}{f', shard {shard}' if shard else ''} in "
        f"{escape(str(ablation.dir))}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(tune_seed_text(len(tune.seeds)), highlight=False, soft_wrap=True)
    if ablation.budgets:
        console.print(budget_tuning_text(ablation.budgets), highlight=False, soft_wrap=True)
    for name, variant in plan.variants.items():
        phases = "; ".join(f"{k} {'/'.join(fmt_value(v) for v in grid)}" for k, grid in grids[name])
        console.print(
            f"  {name:<28} {knob_text(variant.knobs)}"
            f"{'  (baseline)' if variant.is_baseline else ''}  tune {phases}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
    console.print(
        f"at most {counted(ablation.upper_bound_runs(), 'run')}, grid extensions included",
        highlight=False,
        soft_wrap=True,
    )


def tune_seed_text(n: int) -> str:
    """How the plan's tuning seeds stand to its comparison seeds, and what --tune-seeds costs."""
    from mousse.experiments.tuning import TUNE_SEED_BASE

    return (
        "tuning seeds are kept apart from the comparison seeds (a count of them starts at "
        f"{TUNE_SEED_BASE}, comparison seeds at 0), so no comparison run is one a tuning choice "
        f"was made on; each candidate value scores the mean of {counted(n, 'tuning seed')} "
        "(--tune-seeds N averages N, at N times the tuning runs"
        + ("; the default 1 keeps one run per candidate)" if n == 1 else ")")
    )


def budget_tuning_text(budgets: list[float]) -> str:
    """How a --budgets plan tunes: each budget's choice from the same runs, and what the
    comparison then trains."""
    listed = ", ".join(f"{b:g}" for b in budgets)
    return (
        f"each variant's values are chosen per budget ({listed}) from the same tuning runs, "
        "each of which yields every budget; the comparison trains every variant and seed once "
        "per distinct choice, and each budget reads the runs at its own"
    )


def knob_text(knobs: Mapping[str, object]) -> str:
    """A variant's knobs as 'k=v, ...' (switches as on/off); 'the shared settings' for none."""
    return (
        ", ".join(
            f"{k}={ ({True: 'on', False: 'off'}.get(v, v) if isinstance(v, bool) else v) }"
            for k, v in knobs.items()
        )
        or "the shared settings"
    )
