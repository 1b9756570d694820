"""Ablation planning: turn sweeps (knob -> values) into a deterministic list of named runs.

Pure and fast (no training here): the CLI prints the plan, the runner executes it, and the resolved
plan is saved as `ablation.toml` so a rerun in the same directory resumes the same runs.

Knobs are TrainConfig fields. Each run stores only the knobs that differ from what that run would
get anyway (TrainConfig defaults, its optimizer's recipe, the model preset's momentum and rule for
it, the shared `base` settings), so identical runs collapse into one. Knobs that cannot matter
for a run's optimizer are dropped from it: the family's knobs from AdamW runs (except lr and
weight_decay), and the preconditioner's knobs (`knobs.PRECONDITIONER_KNOBS`: alpha, sides,
factor_norm, precond_*, refresh*, graft, ...) from runs whose optimizer preconditions no side
(resolved sides "none": Muon, SpecGD). So
`--optimizer muon --alpha 0.0,0.25` does not run Muon three times.

The inputs are checked in `inputs`; spec files are read in `spec`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict, TypeVar

from mousse.optim.knobs import PRECONDITIONER_KNOBS, RUN_KNOBS
from mousse.train import compat, config
from mousse.train.config import (
    VIEW_SETTINGS,
    ConfigError,
)
from mousse.train.estimate import counted
from mousse.train.presets import ADAMW_KNOBS

from .inputs import Mode, check_mode, check_tune_seeds, seed_list, typed_settings, typed_sweeps
from .settings import Settings, Sweeps, settings_of
from .tuning import Tuned, TuneRecord

BASELINE_KNOBS: Settings = {"optimizer": "muon"}


@dataclass(frozen=True)
class RunSpec:
    """One planned run; `knobs` are merged over the plan's `base` settings (`run_settings`)."""

    name: str
    variant: str
    knobs: Settings = field(hash=False)
    seed: int
    is_baseline: bool = False


def run_settings(base: Settings, knobs: Settings, seed: int) -> Settings:
    """A run's settings by name, what `config.resolve` takes: the shared base, the run's knobs
    over it, and its seed. A run that is not WSD leaves out the base's cooldown settings, which
    are for the ablation's WSD runs (a cosine run has none; `plan_ablation` refuses them when no
    run uses them)."""
    settings: Settings = {**base, **knobs, "seed": seed}
    shared = [k for k in config.WSD_ONLY if k in base and k not in knobs]
    if shared and not _is_wsd(settings):
        return _without(settings, shared)
    return settings


def _spell_budgets(base: Settings) -> None:
    """Budgets in their one spelling (`config.budgets_text`), so that "1,0.5", "0.5,1" and
    "0.50,1.0" are one plan, with one id and one ablation dir."""
    if base.get("budgets") is not None:
        base["budgets"] = config.budgets_text(config.parse_budgets(base["budgets"]))


def _is_wsd(settings: Settings) -> bool:
    """Whether a run of these settings has a WSD schedule (resolved: budgets make one)."""
    return config.resolve(_without(settings, config.WSD_ONLY)).schedule == "wsd"


class SavedRun(TypedDict):
    """A run as ablation.toml records it (`AblationPlan.to_dict`)."""

    name: str
    variant: str
    seed: int
    is_baseline: bool
    knobs: Settings


class _SavedInputs(TypedDict):
    mode: Mode
    seeds: list[int]
    baseline: bool
    base: Settings
    sweeps: Sweeps
    runs: list[SavedRun]


class SavedPlan(_SavedInputs, total=False):
    """A plan as ablation.toml records it (`AblationPlan.to_dict`); `tune` only when it tunes."""

    tune: TuneRecord


PLAN_ID = 8  # hex digits of a plan's hash, which ends its default dir's name

# Settings that never change what a run computes, only when it checkpoints and logs: a rerun may
# change them (they apply from then on), and they neither make another plan nor name its dir.
BOOKKEEPING = ("checkpoint_every", "keep_checkpoints", "log_every", "log")


@dataclass
class AblationPlan:
    """The resolved plan: its inputs and the runs they expand to."""

    base: Settings  # shared by every run
    sweeps: Sweeps
    mode: Mode
    seeds: list[int]
    baseline: bool
    runs: list[RunSpec]
    tune: TuneRecord | None = None  # TuneSpec.to_dict() when every variant is tuned first

    def settings(self, run: RunSpec) -> Settings:
        """The settings `run` resolves (`run_settings` over this plan's base)."""
        return run_settings(self.base, run.knobs, run.seed)

    def plan_id(self) -> str:
        """8 hex digits identifying the plan's inputs (stable across processes and key order)."""
        inputs = {k: v for k, v in self.defining().items() if k != "runs"}
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:PLAN_ID]

    def default_dir_name(self, name: str | None = None) -> str:
        """Default ablation directory name, e.g. 'ablate-alpha-1a2b3c4d'."""
        label = _safe(name) if name else "-".join(self.sweeps)
        return f"ablate-{label}-{self.plan_id()}"

    def defining(self) -> SavedPlan:
        """`to_dict` without the BOOKKEEPING settings: what two plans must share to be one."""
        out = self.to_dict()
        out["base"] = _without(out["base"], BOOKKEEPING)
        return out

    def setting_change(self, saved: AblationPlan) -> str | None:
        """The first run setting (bookkeeping aside) this plan gives otherwise than `saved`, and
        the flag that continues `saved` (a run of another precision would not compare with
        those trained): what the refusal of another plan in `saved`'s dir names. None when the
        settings agree (the sweeps, seeds or tuning differ)."""
        mine, theirs = self.defining()["base"], saved.defining()["base"]
        for key in sorted(mine.keys() | theirs.keys()):
            if mine.get(key) != theirs.get(key):
                flag = "--" + key.replace("_", "-")
                fix = f"pass {flag} {theirs.get(key)}" if key in theirs else f"drop {flag}"
                return (
                    f"its {key} is {theirs.get(key, 'unset')}, this command's "
                    f"{mine.get(key, 'unset')}: {fix} to continue it"
                )
        return None

    def adds_seeds_to(self, other: AblationPlan) -> bool:
        """Whether this plan is `other` with more seeds: the same inputs (bookkeeping aside),
        `other`'s comparison and tuning seeds first and every run of `other` among its own, so
        that an ablation takes more seeds in its own dir. Its runs stand (a single seed's keep
        their dirs, named without the seed: `Ablation.run_dir`); more tuning seeds
        replay the tuning over them all, and where that chooses anew the comparison trains at
        the new choice (the runs at the old one stay in the dir, unread)."""
        mine, theirs = self.defining(), other.defining()

        def rest(plan: SavedPlan) -> dict[str, object]:
            out: dict[str, object] = {k: v for k, v in plan.items() if k not in ("seeds", "runs")}
            if "tune" in plan:
                out["tune"] = {k: v for k, v in plan["tune"].items() if k != "seeds"}
            return out

        def extends(longer: list[int], shorter: list[int]) -> bool:
            return longer[: len(shorter)] == shorter

        single = len(theirs["seeds"]) == 1 < len(mine["seeds"])

        def named(run: SavedRun) -> SavedRun:  # a single seed's run is named as with several
            if not single:
                return run
            out = run.copy()
            out["name"] = f"{run['name']}-s{run['seed']}"
            return out

        return (
            rest(mine) == rest(theirs)
            and extends(mine["seeds"], theirs["seeds"])
            and extends(
                mine.get("tune", {}).get("seeds", []), theirs.get("tune", {}).get("seeds", [])
            )
            and all(named(run) in mine["runs"] for run in theirs["runs"])
        )

    def to_dict(self) -> SavedPlan:
        """The plan as ablation.toml records it."""
        out: SavedPlan = {
            "mode": self.mode,
            "seeds": list(self.seeds),
            "baseline": self.baseline,
            "base": self.base.copy(),
            "sweeps": {k: list(v) for k, v in self.sweeps.items()},
            "runs": [
                {
                    "name": r.name,
                    "variant": r.variant,
                    "seed": r.seed,
                    "is_baseline": r.is_baseline,
                    "knobs": r.knobs.copy(),
                }
                for r in self.runs
            ],
        }
        if self.tune is not None:
            out["tune"] = self.tune
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AblationPlan:
        """The plan recorded as `to_dict` wrote it (a plan from before `split` held out the
        corpus tail: `compat.recorded`); a run of the wrong shape is a TypeError. Any: TOML as
        read, each value of the type `to_dict` wrote (the settings are checked by `resolve`)."""
        runs = [
            RunSpec(
                _typed(r, "name", str),
                _typed(r, "variant", str),
                settings_of(_typed(r, "knobs", dict, {}).items()),
                _typed(r, "seed", int),
                _typed(r, "is_baseline", bool, False),
            )
            for r in data["runs"]
        ]
        base = settings_of(compat.recorded(dict(data.get("base", {}))).items())
        _spell_budgets(base)  # a plan recorded before budgets had one spelling
        return cls(
            base,
            {k: list(v) for k, v in data["sweeps"].items()},
            data["mode"],
            list(data["seeds"]),
            data["baseline"],
            runs,
            data.get("tune"),
        )

    @property
    def variants(self) -> dict[str, RunSpec]:
        """Each variant's first run (its knobs and baseline flag), in plan order."""
        out: dict[str, RunSpec] = {}
        for run in self.runs:
            out.setdefault(run.variant, run)
        return out


T = TypeVar("T")


def _typed(run: object, key: str, kind: type[T], default: T | None = None) -> T:
    """`run[key]` (or `default`), a TypeError naming it unless it is a `kind`."""
    if not isinstance(run, dict):
        raise TypeError(f"a run is {type(run).__name__}, not a table")
    value = run.get(key, default) if default is not None else run[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"run {key} {value!r} is not a {kind.__name__}")
    return value


def _safe(text: str) -> str:
    """`text` with every character a file name should not hold replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text)


def _without(settings: Settings, names: Iterable[str]) -> Settings:
    """`settings` less those `names`, in order."""
    drop = set(names)
    return settings_of((k, v) for k, v in settings.items() if k not in drop)


def _format(value: object) -> str:
    """A knob value as a variant name shows it: on/off for booleans, floats exactly."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return repr(value) if isinstance(value, float) else str(value)


def _variant_name(knobs: Settings, centre_optimizer: str) -> str:
    """'mousse' for the centre, 'muon' / 'adamw' for bare optimizers, else 'k=v+k=v'."""
    parts = [knobs["optimizer"]] if "optimizer" in knobs else []
    parts += [f"{k}={_format(v)}" for k, v in knobs.items() if k != "optimizer"]
    return _safe("+".join(parts) or centre_optimizer)


def _reference(optimizer: str, base: Mapping[str, object]) -> dict[str, object]:
    """What a run with `optimizer` gets for each setting it does not set itself: TrainConfig
    defaults, the optimizer's knobs (class preset < LM recipe < the model preset's momentum and
    rule for it; lr left to the model preset), then the shared base settings."""
    preset = config.preset_named(str(base.get("preset", config.TrainConfig.preset)))
    knobs = config.resolved_knobs(optimizer, preset, base)
    knobs.pop("lr", None)
    return {**config.FIELD_DEFAULTS, **knobs, **base}


def _used(
    knob: str,
    value: object,
    reference: object,
    optimizer: str,
    own_sides: object,
    run_sides: object,
) -> bool:
    """Whether setting `knob` to `value` (from `reference`) can change a run of `optimizer`:
    AdamW uses only lr and weight_decay of the family's knobs; an optimizer that preconditions no
    side (`own_sides`, from its recipe and the base: Muon, SpecGD) ignores `sides`, and a run that
    ends up preconditioning no side (`run_sides`) ignores the other preconditioner knobs, except
    that Adam grafting still replaces its step with Adam's (docs/family.md, step 5)."""
    if knob not in RUN_KNOBS:
        return True
    if optimizer == "adamw":
        return knob in ADAMW_KNOBS
    if knob == "sides":
        return own_sides != "none"
    if knob == "graft" and run_sides == "none":
        return (value == "adam") != (reference == "adam")
    return knob not in PRECONDITIONER_KNOBS or run_sides != "none"


def _effective(assignment: Settings, base: Settings) -> Settings:
    """The knobs of `assignment` that change its run: those that differ from what the run gets
    anyway (`_reference`; the optimizer is compared with the centre's), minus those its optimizer
    does not use (`_used`)."""
    optimizer = assignment.get("optimizer", base.get("optimizer", config.TrainConfig.optimizer))
    reference = _reference(optimizer, base)
    changed = settings_of((k, v) for k, v in assignment.items() if v != reference[k])
    used = _used_by(optimizer, reference, changed)
    return settings_of((k, v) for k, v in changed.items() if used(k, v))


def _used_by(
    optimizer: str, reference: Mapping[str, object], changed: Mapping[str, object]
) -> Callable[[str, object], bool]:
    """`_used` for a run of `optimizer` whose knobs `changed` differ from `reference`."""
    own_sides = reference["sides"]
    run_sides = changed.get("sides", own_sides) if own_sides != "none" else "none"
    return lambda k, v: _used(k, v, reference[k], optimizer, own_sides, run_sides)


def unused_knobs(settings: Mapping[str, object]) -> list[str]:
    """The family's knobs set in a run's `settings` (its optimizer and preset among them) to
    another value than the run gets anyway, which its optimizer does not use (`_used`): an
    ablation drops them from its runs, and `train` refuses them rather than ignore them."""
    base = {k: v for k, v in settings.items() if k not in RUN_KNOBS}
    optimizer = str(base.get("optimizer", config.TrainConfig.optimizer))
    reference = _reference(optimizer, base)
    changed = {
        k: v for k, v in settings.items() if k in RUN_KNOBS and v not in (None, reference[k])
    }
    used = _used_by(optimizer, reference, changed)
    return [k for k, v in changed.items() if not used(k, v)]


def plan_ablation(
    sweeps: Mapping[str, object],
    base: Mapping[str, object] | None = None,
    mode: str = "one-at-a-time",
    seeds: object = (0,),
    baseline: bool = True,
    tune: TuneRecord | None = None,
) -> AblationPlan:
    """Expand sweeps into runs.

    one-at-a-time: the centre configuration plus, for each knob, each listed value with every other
    knob at the centre; grid: the full product. Runs with identical effective knobs collapse. The
    Muon baseline (same budget) comes first unless `baseline` is False. Every variant runs once per
    seed; names get '-s<seed>' when there are several seeds. `sweeps`, `base` and `seeds` are
    the user's, typed and checked here (`inputs`). With `tune` (a TuneSpec dict) these
    runs are the comparison's skeleton: each variant is tuned first (`tuning`), and its runs are
    trained at its tuned values, on seeds none of its tuning runs used (`check_tune_seeds`).
    """
    checked = check_mode(mode)
    # view settings (--log) are left out: they change no run, so neither its name nor the plan;
    # the split is always in: a plan on another validation set is another plan
    shared = _without(typed_settings(base or {}), VIEW_SETTINGS)
    config.refuse_with_budgets(shared)
    _spell_budgets(shared)
    shared.setdefault("split", config.TrainConfig.split)
    typed = typed_sweeps(sweeps)
    if not typed:
        raise ConfigError("nothing to sweep: give at least one knob, e.g. --alpha 0.0,0.125,0.25")
    planned = seed_list(seeds)
    variants = _variants(_assignments(typed, checked, baseline), shared)
    wsd_only = [(k, v) for k, v in shared.items() if k in config.WSD_ONLY]
    if wsd_only and not any(_is_wsd({**shared, **knobs}) for knobs in variants.values()):
        key, value = wsd_only[0]
        flag = "--" + key.replace("_", "-")
        raise ConfigError(
            f"{flag} {value}: no run of this ablation is WSD, and a cosine run has no cooldown; "
            f"add --schedule wsd (or --budgets) or drop {flag}"
        )
    baseline_knobs = _effective(BASELINE_KNOBS, shared) if baseline else None
    runs = [
        RunSpec(
            f"{name}-s{seed}" if len(planned) > 1 else name,
            name,
            knobs.copy(),
            seed,
            knobs == baseline_knobs,
        )
        for seed in planned
        for name, knobs in variants.items()
    ]
    if tune is not None:
        check_tune_seeds(planned, tune["seeds"])
        tune = _with_centres(tune, shared, variants, planned[0])
    return AblationPlan(shared, typed, checked, planned, baseline, runs, tune)


def _assignments(typed: Sweeps, mode: Mode, baseline: bool) -> list[Settings]:
    """The knob assignments the sweeps expand to: the centre ({}) and each value of each knob
    alone (one-at-a-time), or every combination (grid); the baseline's first when there is one."""
    if mode == "grid":
        assignments = [
            settings_of(zip(typed, combo, strict=True))
            for combo in itertools.product(*typed.values())
        ]
    else:
        assignments = [Settings()] + [
            settings_of([(k, v)]) for k, values in typed.items() for v in values
        ]
    if baseline:
        assignments.insert(0, BASELINE_KNOBS)
    return assignments


def _variants(assignments: list[Settings], base: Settings) -> dict[str, Settings]:
    """Variant name -> effective knobs, one variant per distinct set of effective knobs (the first
    assignment that gives it wins); distinct knobs whose names sanitize alike get a hash suffix."""
    centre_optimizer = base.get("optimizer", config.TrainConfig.optimizer)
    variants: dict[str, Settings] = {}
    for assignment in assignments:
        knobs = _effective(assignment, base)
        if knobs in variants.values():
            continue
        name = _variant_name(knobs, centre_optimizer)
        if name in variants:
            name += "-" + hashlib.sha256(repr(knobs).encode()).hexdigest()[:6]
        variants[name] = knobs
    return variants


def _with_centres(
    tune: TuneRecord, base: Settings, variants: Mapping[str, Settings], seed: int
) -> TuneRecord:
    """`tune` with each variant's own value of each tuned knob (its default grid's centre),
    resolved from today's presets and frozen into the plan: a later preset change must not
    change what an ablation dir replays."""
    centres: dict[str, Tuned] = {}
    for name, knobs in variants.items():
        cfg = config.resolve(run_settings(base, knobs, seed))
        centres[name] = {k: getattr(cfg, k) for k in tune["knobs"] if getattr(cfg, k) is not None}
    return {**tune, "centres": centres}


def check_max_runs(plan: AblationPlan, max_runs: int, count: int | None = None) -> None:
    """Guard against accidentally huge grids (`count`: the plan's run count when it is more than
    its listed runs, e.g. an upper bound with tuning)."""
    count = len(plan.runs) if count is None else count
    if count > max_runs:
        what = "up to " if plan.tune else ""
        raise ConfigError(
            f"the plan has {what}{counted(count, 'run')}, more than --max-runs {max_runs}; "
            "pass a "
            f"larger --max-runs (e.g. --max-runs {count}) or sweep fewer values"
        )


def parse_shard(shard: str) -> tuple[int, int]:
    """'i/n' (1-based) -> (i, n); ConfigError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ConfigError(f"bad --shard {shard!r}: expected i/n with 1 <= i <= n, e.g. 1/2")
    return int(match[1]), int(match[2])


def shard_runs(runs: list[RunSpec], shard: str) -> list[RunSpec]:
    """Runs of shard 'i/n' (1-based), round-robin so each shard gets a mix of variants."""
    i, n = parse_shard(shard)
    return runs[i - 1 :: n]


def in_shard(name: str, shard: tuple[int, int]) -> bool:
    """Whether run `name` belongs to shard (i, n) of a plan whose runs are only known as it goes
    (tuning): by a hash of the name, the same in every process and on every machine."""
    i, n = shard
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % n == i - 1
