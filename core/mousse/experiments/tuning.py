"""Tuning inside an ablation: every variant, the baseline included, gets its own best value of each
tuned knob before the comparison (coordinate descent, one knob per phase, in the order given).

Pure and deterministic: `tune_variant` replays the decisions from the results found so far (a
lookup of final val losses by run), so a rerun after Ctrl-C, another shard or another machine
reaches the same decisions from the same files. It returns the runs the current phase still needs;
the runner trains them and asks again.

- A phase tries every value of its grid with the knobs of earlier phases at their chosen values,
  on the tuning seeds, at the full budget, and keeps the value with the lowest mean final val loss
  (a diverged or failed run counts as infinitely bad); each value's spread over the tuning seeds
  is recorded beside its mean. Ties go to the value nearest the grid's centre, then to the
  smaller value. The tuning seeds are none of the comparison's (`TUNE_SEED_BASE`).
- Numeric grids: when the best value is at an edge, the grid grows by one step that way (the ratio
  of the last two values when all are positive, else their difference) until the best is interior,
  the next value would leave the knob's range, or `max_extensions` steps were added; the knob is
  then reported as `tuned_at_edge`.
- Default grids: 5 values a factor 2 apart centred on the variant's own value (its preset lr for
  `lr`); `DEFAULT_GRIDS` fixes a few knobs' grids; a categorical knob tries all its choices.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypedDict, TypeGuard

from mousse.train.config import (
    FIELD_TYPES,
    VIEW_SETTINGS,
    ConfigError,
    closest,
    coerce,
    in_range,
)
from mousse.train.rundir import FINISHED
from mousse.train.summary import RunSummary

from .settings import Value

DEFAULT_GRIDS: dict[str, tuple[Value, ...]] = {"momentum": (0.8, 0.9, 0.95, 0.98)}
DEFAULT_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
MAX_EXTENSIONS = 3
# Tuning seeds count from here, comparison seeds from 0: a count of either (--tune-seeds 2,
# --seeds 3) never names a seed of the other, so no comparison run is one a choice was made on.
TUNE_SEED_BASE = 1000
TUNABLE = tuple(k for k in FIELD_TYPES if k != "seed" and k not in VIEW_SETTINGS)
# Tuning phases in order: (knob, its explicit values, or None for its default grid).
Phases = tuple[tuple[str, tuple[Value, ...] | None], ...]
# Each choice knob's allowed values (`inputs.SETTING_CHOICES`).
Choices = Mapping[str, tuple[str, ...]]
# Values of the tuned knobs by knob: those a run trains with, or a variant's own (its centres).
Tuned = dict[str, Value]


class TuneRecord(TypedDict, total=False):
    """A TuneSpec as a plan saves it (`TuneSpec.to_dict`), with each variant's own value of each
    tuned knob once planned (`centres`, `ablation.plan_ablation`). Plans from before a key was
    saved lack it (`TuneSpec.from_dict`'s defaults); `knobs` is always there."""

    knobs: list[str]
    grids: dict[str, list[Value]]
    seeds: list[int]
    max_extensions: int
    centres: dict[str, Tuned]


@dataclass(frozen=True)
class TuneSpec:
    """What to tune: phases (knob, explicit values or None for the default grid) in order, the
    tuning seeds and the cap on grid extensions per phase."""

    phases: Phases
    seeds: tuple[int, ...] = (TUNE_SEED_BASE,)
    max_extensions: int = MAX_EXTENSIONS

    @property
    def knobs(self) -> list[str]:
        return [k for k, _ in self.phases]

    def to_dict(self) -> TuneRecord:
        return {
            "knobs": [k for k, _ in self.phases],
            "grids": {k: list(v) for k, v in self.phases if v is not None},
            "seeds": list(self.seeds),
            "max_extensions": self.max_extensions,
        }

    @classmethod
    def from_dict(cls, data: TuneRecord) -> TuneSpec:  # "centres" (per variant) is the plan's
        grids = data.get("grids", {})
        return cls(
            tuple((k, tuple(grids[k]) if k in grids else None) for k in data["knobs"]),
            tuple(data.get("seeds", (0,))),
            int(data.get("max_extensions", MAX_EXTENSIONS)),
        )


def _tunable_key(knob: str) -> str:
    key = knob.strip().replace("-", "_")
    if key not in TUNABLE:
        raise ConfigError(
            f"cannot tune '{knob}'{closest(key, TUNABLE)}: tune a knob of the run "
            f"config, e.g. --tune lr or --tune lr,momentum"
        )
    return key


def parse_tune(text: str, choices: Choices) -> Phases:
    """'lr' / 'lr,weight_decay' / 'lr=0.01,0.02,0.04' / 'lr,momentum_style=heavy_ball,nesterov':
    a token naming a knob starts a phase; 'knob=value' starts one with explicit values; any other
    token is one more value of the phase before it."""
    phases: list[tuple[str, list[str] | None]] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        name, eq, value = token.partition("=")
        listed = phases[-1][1] if phases else None  # the values of the phase before
        if eq or name.replace("-", "_") in TUNABLE:
            phases.append((_tunable_key(name), [value] if eq else None))
        elif listed is not None:
            listed.append(token)
        elif re.fullmatch(r"[-+.\deE]+", token):
            raise ConfigError(
                f"bad --tune {text!r}: '{token}' is neither a knob nor a value after "
                "'knob='; e.g. --tune lr or --tune lr=0.01,0.02,0.04"
            )
        else:
            _tunable_key(token)  # names the closest knob
    return check_phases(phases, choices)


def check_phases(phases: Iterable[tuple[str, Sequence[object] | None]], choices: Choices) -> Phases:
    """Typed, de-duplicated phases; ConfigError for an unknown knob, a bad value, a knob tuned
    twice or a knob that has no grid to try."""
    out: list[tuple[str, tuple[Value, ...] | None]] = []
    seen: set[str] = set()
    for knob, given in phases:
        key = _tunable_key(knob)
        if key in seen:
            raise ConfigError(f"--tune names '{key}' twice; give each knob once")
        seen.add(key)
        values: tuple[Value, ...] | None = None
        if given is not None:
            typed: list[Value] = []
            for raw in given:
                v = coerce(key, raw)
                if key in choices and v not in choices[key]:
                    raise ConfigError(
                        f"bad value {v!r} to tune '{key}'; choose from "
                        f"{', '.join(map(str, choices[key]))}"
                    )
                if not in_range(key, v):
                    raise ConfigError(f"bad value {v!r} to tune '{key}': out of its range")
                typed.append(v)
            values = tuple(dict.fromkeys(typed))
            if not values:
                raise ConfigError(f"no values to tune '{key}'")
        elif FIELD_TYPES[key] not in (int, float) and key not in choices:
            raise ConfigError(
                f"'{key}' has no default grid: list its values, e.g. --tune {key}=a,b"
            )
        out.append((key, values))
    if not out:
        raise ConfigError("nothing to tune: e.g. --tune lr")
    return tuple(out)


def is_numeric(knob: str) -> bool:
    return FIELD_TYPES[knob] in (int, float)


def default_grid(knob: str, centre: Value | None, choices: Choices) -> list[Value]:
    """The grid a phase starts from when none is given."""
    if knob in DEFAULT_GRIDS:
        return list(DEFAULT_GRIDS[knob])
    if knob in choices or FIELD_TYPES[knob] is bool:
        return list(choices.get(knob, (False, True)))
    if centre is None or isinstance(centre, str) or centre <= 0:
        raise ConfigError(
            f"'{knob}' is {centre!r} for this variant, so it has no grid around it: "
            f"list the values, e.g. --tune {knob}=0.01,0.1"
        )
    exact = FIELD_TYPES[knob] is float
    values = [
        coerce(knob, centre * f if exact else max(1, round(centre * f))) for f in DEFAULT_FACTORS
    ]
    return sorted(dict.fromkeys(values))


def extend(grid: list[Value], knob: str, upward: bool) -> Value | None:
    """The next value beyond the grid's top (or bottom), or None when the knob's range or type
    allows none."""
    if len(grid) < 2 or not is_numeric(knob):
        return None
    a, b = (grid[-2], grid[-1]) if upward else (grid[1], grid[0])
    assert not isinstance(a, str) and not isinstance(b, str)  # a number knob's values
    value = b * (b / a) if a > 0 and b > 0 else b + (b - a)
    typed: Value = coerce(knob, round(value) if FIELD_TYPES[knob] is int else value)
    return typed if in_range(knob, typed) and typed not in grid else None


def fmt_value(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def run_label(variant: str, values: Mapping[str, Value]) -> str:
    """A tuned run's variant-and-values label, e.g. 'mousse@lr=0.015+momentum=0.9'."""
    text = "+".join(f"{k}={fmt_value(v)}" for k, v in values.items())
    return re.sub(r"[^A-Za-z0-9._=+@-]", "_", f"{variant}@{text}")


def same_runs(values: Mapping[str, Value], centre: Mapping[str, Value | None]) -> list[Tuned]:
    """`values` and the shorter assignments that name the same run, longest first: a last phase's
    knob at the variant's own value (`centre`) changes nothing, so without it the values name the
    run an earlier phase trained (the momentum phase's 0.8 on a preset at 0.8 is the lr phase's
    best run). Never empty: the first phase's knob stays."""
    out = [dict(values)]
    keys = list(values)
    while len(keys) > 1 and keys[-1] in centre and values[keys[-1]] == centre[keys[-1]]:
        keys.pop()
        out.append({k: values[k] for k in keys})
    return out


class _PhaseColumns(TypedDict):
    knob: str
    grid: list[Value]
    losses: list[float | None]  # mean final val loss at each grid value (None: none, or inf)
    chosen: Value | None
    at_edge: bool
    extensions: int


class PhaseRecord(_PhaseColumns, total=False):
    """One phase as a variant's results row records it (`Phase.to_dict`); results files from
    before a key existed lack it."""

    spreads: list[float | None]  # the standard deviation over seeds at each grid value
    diverged: list[Value]


@dataclass
class Phase:
    """One knob's search: the grid tried so far, its mean losses, the choice once decided."""

    knob: str
    grid: list[Value]
    # value -> mean final val loss (inf: diverged)
    losses: dict[Value, float] = field(default_factory=dict)
    # value -> its standard deviation over seeds (None: one seed, or a diverged run)
    spreads: dict[Value, float | None] = field(default_factory=dict)
    chosen: Value | None = None
    at_edge: bool = False
    extensions: int = 0

    def to_dict(self) -> PhaseRecord:
        """The phase as a variant's results row records it (`tuning`)."""

        def finite(x: float | None) -> float | None:
            return x if x is not None and math.isfinite(x) else None

        return {
            "knob": self.knob,
            "grid": list(self.grid),
            "losses": [finite(self.losses.get(v)) for v in self.grid],
            "spreads": [self.spreads.get(v) for v in self.grid],
            "diverged": [v for v in self.grid if self.losses.get(v) == math.inf],
            "chosen": self.chosen,
            "at_edge": self.at_edge,
            "extensions": self.extensions,
        }


@dataclass
class TuningState:
    """Where one variant's tuning stands: its phases, the runs still needed, and once `done` the
    tuned values."""

    variant: str
    phases: list[Phase]
    needed: list[tuple[Tuned, int]]  # (tuned values, seed) of runs without a result yet
    done: bool

    @property
    def tuned(self) -> Tuned:
        return {p.knob: p.chosen for p in self.phases if p.chosen is not None}

    @property
    def at_edge(self) -> list[str]:
        return [p.knob for p in self.phases if p.at_edge]


def choose(grid: list[Value], losses: Mapping[Value, float], centre_index: float) -> Value:
    """The value with the lowest loss; ties to the value nearest the centre, then the smaller."""

    def rank(item: tuple[int, Value]) -> tuple[float, float, float]:
        index, value = item
        return (losses[value], abs(index - centre_index), value if is_orderable(value) else index)

    return min(enumerate(grid), key=rank)[1]


def is_orderable(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# The final val loss of the run at some tuned values on a seed (inf: diverged or failed), or
# None while it has no result.
Lookup = Callable[[Tuned, int], float | None]


def tune_variant(
    variant: str,
    centre: Mapping[str, Value | None],
    spec: TuneSpec,
    lookup: Lookup,
    choices: Choices,
) -> TuningState:
    """Replay the tuning of one variant. `centre` holds the variant's own value of every tuned
    knob (the default grid's centre); `lookup(values, seed)` returns the final val loss of the run
    with those tuned values (inf for a diverged or failed run) or None when it has no result."""
    chosen: Tuned = {}
    phases: list[Phase] = []
    for knob, explicit in spec.phases:
        grid = start_grid(knob, explicit, centre.get(knob), choices)
        phase = Phase(knob, grid)
        phases.append(phase)
        while True:
            needed: list[tuple[Tuned, int]] = []
            for value in phase.grid:
                if value in phase.losses:
                    continue
                results = [lookup({**chosen, knob: value}, seed) for seed in spec.seeds]
                missing = [
                    (dict(chosen, **{knob: value}), s)
                    for s, r in zip(spec.seeds, results, strict=True)
                    if r is None
                ]
                if missing:
                    needed += missing
                else:
                    known = [r for r in results if r is not None]  # all of them
                    phase.losses[value] = sum(known) / len(known)
                    phase.spreads[value] = spread(known)
            if needed:
                return TuningState(variant, phases, needed, False)
            centre_index = _centre_index(phase.grid, centre.get(knob))
            best = choose(phase.grid, phase.losses, centre_index)
            edge = (
                is_numeric(knob) and best in (phase.grid[0], phase.grid[-1]) and len(phase.grid) > 1
            )
            if edge and phase.extensions < spec.max_extensions:
                upward = best == phase.grid[-1]
                beyond = extend(phase.grid, knob, upward)
                if beyond is not None:
                    phase.grid = [*phase.grid, beyond] if upward else [beyond, *phase.grid]
                    phase.extensions += 1
                    continue
            phase.chosen, phase.at_edge = best, edge
            chosen[knob] = best
            break
    return TuningState(variant, phases, [], True)


def spread(losses: list[float]) -> float | None:
    """The standard deviation of a candidate's losses over its tuning seeds: how far apart two
    candidates must be to be told apart (None with one seed, or when a run diverged)."""
    if len(losses) < 2 or not all(math.isfinite(x) for x in losses):
        return None
    return statistics.stdev(losses)


def sort_key(value: Value) -> tuple[int, float | str]:
    return (0, value) if is_orderable(value) else (1, str(value))


def start_grid(
    knob: str, explicit: Sequence[Value] | None, centre: Value | None, choices: Choices
) -> list[Value]:
    """A phase's first grid: the given values in order, or the knob's default grid."""
    return sorted(explicit, key=sort_key) if explicit else default_grid(knob, centre, choices)


def _centre_index(grid: list[Value], centre: Value | None) -> float:
    """Where the variant's own value sits in the grid (the middle of an explicit grid that does
    not contain it)."""
    if centre in grid:
        return float(grid.index(centre))
    return (len(grid) - 1) / 2


def upper_bound_runs(
    spec: TuneSpec,
    grids: Sequence[Sequence[Value]],
    centre: Mapping[str, Value | None],
    budgets: int = 1,
) -> int:
    """Most tuning runs one variant can need: every phase's grid (`grids`, in phase order) plus
    the extensions a numeric phase may add, less the run of the variant's own value in a later
    phase (an earlier phase trained it: `same_runs`). With several `budgets` chosen from the same
    runs (`tune_by_budget`) the first phase's grid may grow both ways, one budget's choice at
    each edge, and every later phase may run once per budget (each starts from its budget's
    choice)."""
    total = 0
    for i, ((knob, _), grid) in enumerate(zip(spec.phases, grids, strict=True)):
        grows = spec.max_extensions if is_numeric(knob) and len(grid) > 1 else 0
        if i == 0 and budgets > 1:
            grows *= 2
        runs = len(grid) + grows - (i > 0 and knob in centre and centre[knob] in grid)
        total += runs * len(spec.seeds) * (budgets if i > 0 else 1)
    return total


# ---- budgets (`--budgets`) -----------------------------------------------------------------------


def budget_score(summary: RunSummary | None, budget: float) -> float | None:
    """A finished run's score for tuning at one of its budgets (`--budgets`): that budget's final
    val loss from the summary's "budgets" list, inf when its branch did not complete (diverged,
    failed, or never reached because the run ended first), None while the run has no result."""
    if not summary or summary.get("status") not in (*FINISHED, "failed"):
        return None
    entry = next((b for b in summary.get("budgets") or () if b["budget"] == budget), None)
    loss = entry["final_val_loss"] if entry is not None else None
    if entry is None or entry["status"] != "completed" or loss is None or not math.isfinite(loss):
        return math.inf
    return float(loss)


def tune_by_budget(
    variant: str,
    centre: Mapping[str, Value | None],
    spec: TuneSpec,
    summary_of: Callable[[Tuned, int], RunSummary | None],
    choices: Choices,
    budgets: Iterable[float],
) -> dict[float, TuningState]:
    """One variant's tuning replayed once per budget over the same tuning runs: every run of a
    `--budgets` ablation yields a final loss per budget, and each budget's choice reads its own
    (`records.budget_score`). `summary_of(values, seed)` is the summary of the run with those
    tuned values, or None. The runs still needed are those of every budget (`needed_by_budget`):
    a grid may grow at one budget and not at another, and a later phase starts from each
    budget's own choice."""
    return {
        b: tune_variant(
            variant,
            centre,
            spec,
            _scored_at(summary_of, b),
            choices,
        )
        for b in budgets
    }


def _scored_at(summary_of: Callable[[Tuned, int], RunSummary | None], budget: float) -> Lookup:
    """The `lookup` of `budget`'s tuning: the score at `budget` of the run's summary."""
    return lambda values, seed: budget_score(summary_of(values, seed), budget)


def needed_by_budget(states: Mapping[float, TuningState]) -> list[tuple[Tuned, int]]:
    """The (tuned values, seed) runs any budget's tuning still needs, each once, in order."""
    out: list[tuple[Tuned, int]] = []
    for state in states.values():
        out += [run for run in state.needed if run not in out]
    return out
