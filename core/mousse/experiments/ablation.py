"""Ablation planning: turn sweeps (knob -> values) into a deterministic list of named runs.

Pure and fast (no training here): the CLI prints the plan, the runner executes it, and the resolved
plan is saved as `ablation.toml` so a rerun in the same directory resumes the same runs.

Knobs are TrainConfig fields. Each run stores only the knobs that differ from what that run would
get anyway (TrainConfig defaults, its optimizer's recipe, the shared `base` settings), so identical
runs collapse into one. Knobs that cannot matter for a run's optimizer are dropped from it: the
family's knobs from AdamW runs (except lr and weight_decay), and the preconditioner's knobs
(`config.PRECONDITIONER_KNOBS`: alpha, sides, factor_norm, precond_*, refresh*, graft, ...) from
runs whose optimizer preconditions no side (resolved sides "none": Muon, SpecGD). So
`--optimizer muon --alpha 0.0,0.25` does not run Muon three times.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from mousse.optim import knobs as engine_knobs
from mousse.train import compat, config
from mousse.train.config import (
    FAMILY_KNOBS,
    FIELD_TYPES,
    PRECONDITIONER_KNOBS,
    VIEW_SETTINGS,
    ConfigError,
    TrainConfig,
    check_choice,
    closest,
    coerce,
)
from mousse.train.presets import ADAMW_KNOBS, optimizer_knobs

MODES = ("one-at-a-time", "grid")
MAX_SEEDS = 1000
BASELINE_KNOBS = {"optimizer": "muon"}
SPEC_KEYS = ("name", "mode", "seeds", "baseline", "base", "sweep", "tune")
TUNE_KEYS = ("knobs", "seeds", "max_extensions")
# Seeds are planned separately (`seeds`), so `seed` is not a knob.
KNOBS = tuple(k for k in FIELD_TYPES if k != "seed")
_CHOICES = {
    "optimizer": config.OPTIMIZERS,
    "scalar_optimizer": config.SCALAR_OPTIMIZERS,
    "device": config.DEVICES,
    **engine_knobs.CHOICES,
}
_DEFAULTS = TrainConfig().to_dict()
_FIELDS = list(FIELD_TYPES)


@dataclass(frozen=True)
class RunSpec:
    """One planned run; `knobs` are merged over the plan's `base` settings by the runner."""

    name: str
    variant: str
    knobs: dict = field(hash=False)
    seed: int
    is_baseline: bool = False


@dataclass
class AblationPlan:
    """The resolved plan: its inputs and the runs they expand to."""

    base: dict
    sweeps: dict
    mode: str
    seeds: list
    baseline: bool
    runs: list
    tune: dict | None = None  # TuneSpec.to_dict() when every variant is tuned first

    def plan_id(self) -> str:
        """8 hex digits identifying the plan's inputs (stable across processes and key order)."""
        inputs = {k: v for k, v in self.to_dict().items() if k != "runs"}
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:8]

    def default_dir_name(self, name: str | None = None) -> str:
        """Default ablation directory name, e.g. 'ablate-alpha-1a2b3c4d'."""
        label = _safe(name) if name else "-".join(self.sweeps)
        return f"ablate-{label}-{self.plan_id()}"

    def to_dict(self) -> dict:
        out = {
            "mode": self.mode,
            "seeds": list(self.seeds),
            "baseline": self.baseline,
            "base": dict(self.base),
            "sweeps": {k: list(v) for k, v in self.sweeps.items()},
            "runs": [
                {
                    "name": r.name,
                    "variant": r.variant,
                    "seed": r.seed,
                    "is_baseline": r.is_baseline,
                    "knobs": dict(r.knobs),
                }
                for r in self.runs
            ],
        }
        if self.tune is not None:
            out["tune"] = self.tune
        return out

    @classmethod
    def from_dict(cls, data: dict) -> AblationPlan:
        runs = [
            RunSpec(
                r["name"],
                r["variant"],
                dict(r.get("knobs", {})),
                r["seed"],
                r.get("is_baseline", False),
            )
            for r in data["runs"]
        ]
        return cls(
            dict(data.get("base", {})),
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


def _check_knob(knob: str) -> str:
    """The knob's field name (hyphens allowed, as in CLI flags); ConfigError if unknown."""
    key = knob.replace("-", "_")
    if key == "seed":
        raise ConfigError("'seed' is not a knob; use seeds (--seeds N or a list) to repeat runs")
    if key in compat.RENAMED:
        raise ConfigError(f"'{knob}' is now {compat.RENAMED[key]}")
    if key not in KNOBS:
        raise ConfigError(f"unknown knob '{knob}'{closest(key, KNOBS)}")
    return key


def _value(key: str, value):
    """`value` coerced to the knob's type and checked against its allowed choices."""
    value = coerce(key, value)
    if key in _CHOICES:
        check_choice(key, value, _CHOICES[key])
    return value


def _settings(table: dict) -> dict:
    """Typed TrainConfig settings keyed by field name."""
    out = {}
    for knob, value in table.items():
        key = _check_knob(knob)
        out[key] = _value(key, value)
    return out


def _sweeps(table: dict) -> dict:
    """Typed sweeps keyed by field name, in TrainConfig field order (so names do not depend on the
    order the flags were given in)."""
    out = {}
    for knob, values in table.items():
        key = _check_knob(knob)
        if key in VIEW_SETTINGS:
            raise ConfigError(
                f"'{key}' sets where every run is shown, not a variant; set it in "
                f"[base] or with --{key}, not as a sweep"
            )
        if not isinstance(values, (list, tuple)):
            raise ConfigError(f"sweep '{knob}' must be a list of values, e.g. {key} = [...]")
        out[key] = _sweep_values(key, values)
    return dict(sorted(out.items(), key=lambda kv: _FIELDS.index(kv[0])))


def _check_mode(mode) -> str:
    if mode not in MODES:
        raise ConfigError(
            f"unknown mode {mode!r}{closest(str(mode), MODES)}; choose one of {', '.join(MODES)}"
        )
    return mode


def _sweep_values(knob: str, values) -> list:
    """Typed, de-duplicated (order kept) values; ConfigError when empty."""
    typed = list(dict.fromkeys(_value(knob, v) for v in values))
    if not typed:
        raise ConfigError(f"empty sweep for '{knob}': give at least one value")
    return typed


def parse_sweep_values(knob: str, text: str) -> list:
    """Values of a CLI sweep flag: '0.0,0.125,0.25', 'on,off', 'both,left,right'."""
    key = _check_knob(knob)
    return _sweep_values(key, [part.strip() for part in text.split(",") if part.strip()])


def _seed_list(value) -> list[int]:
    """An int N means seeds 0..N-1; a list is taken as given (de-duplicated)."""
    if isinstance(value, bool) or not isinstance(value, (int, list, tuple, range)):
        raise ConfigError(f"bad seeds {value!r}: give a count N or a list of seeds")
    if (
        isinstance(value, int)
        and value > MAX_SEEDS
        or not isinstance(value, int)
        and len(value) > MAX_SEEDS
    ):
        raise ConfigError(f"bad seeds {value!r}: at most {MAX_SEEDS} seeds per variant")
    seeds = list(range(value)) if isinstance(value, int) else list(value)
    if any(isinstance(s, int) and not 0 <= s < 2**63 for s in seeds):
        raise ConfigError(f"bad seeds {value!r}: each seed must be in [0, 2^63)")
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError(f"bad seeds {value!r}: need a count >= 1 or non-negative integer seeds")
    return list(dict.fromkeys(seeds))


def parse_seeds(text: str) -> list[int]:
    """'3' -> [0, 1, 2] (a count); '0,5,7' -> [0, 5, 7]; '5,' -> [5] (a one-seed list)."""
    try:
        value = [int(p) for p in text.split(",") if p.strip()] if "," in text else int(text)
    except ValueError:
        raise ConfigError(
            f"bad --seeds {text!r}: give a count like 3 or a list like 0,5,7"
        ) from None
    return _seed_list(value)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text)


def _format(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return repr(value) if isinstance(value, float) else str(value)


def _variant_name(knobs: dict, centre_optimizer: str) -> str:
    """'mousse' for the centre, 'muon' / 'adamw' for bare optimizers, else 'k=v+k=v'."""
    parts = [knobs["optimizer"]] if "optimizer" in knobs else []
    parts += [f"{k}={_format(v)}" for k, v in knobs.items() if k != "optimizer"]
    return _safe("+".join(parts) or centre_optimizer)


def _reference(optimizer: str, base: dict) -> dict:
    """What a run with `optimizer` gets for each setting it does not set itself: TrainConfig
    defaults, the optimizer's knobs (class preset < LM recipe, lr left to the model preset), then
    the shared base settings."""
    knobs = optimizer_knobs(optimizer, {k: v for k, v in base.items() if k in FAMILY_KNOBS})
    knobs.pop("lr", None)
    return {**_DEFAULTS, **knobs, **base}


def _used(
    knob: str, value, reference, optimizer: str, own_sides: str | None, run_sides: str | None
) -> bool:
    """Whether setting `knob` to `value` (from `reference`) can change a run of `optimizer`:
    AdamW uses only lr and weight_decay of the family's knobs; an optimizer that preconditions no
    side (`own_sides`, from its recipe and the base: Muon, SpecGD) ignores `sides`, and a run that
    ends up preconditioning no side (`run_sides`) ignores the other preconditioner knobs, except
    that Adam grafting still replaces its step with Adam's (docs/family.md, step 5)."""
    if knob not in FAMILY_KNOBS:
        return True
    if optimizer == "adamw":
        return knob in ADAMW_KNOBS
    if knob == "sides":
        return own_sides != "none"
    if knob == "graft" and run_sides == "none":
        return (value == "adam") != (reference == "adam")
    return knob not in PRECONDITIONER_KNOBS or run_sides != "none"


def _effective(assignment: dict, base: dict) -> dict:
    """The knobs of `assignment` that change its run: those that differ from what the run gets
    anyway (`_reference`; the optimizer is compared with the centre's), minus those its optimizer
    does not use (`_used`)."""
    optimizer = assignment.get("optimizer", base.get("optimizer", _DEFAULTS["optimizer"]))
    reference = _reference(optimizer, base)
    changed = {k: v for k, v in assignment.items() if v != reference[k]}
    own_sides = reference["sides"]
    run_sides = changed.get("sides", own_sides) if own_sides != "none" else "none"
    return {
        k: v
        for k, v in changed.items()
        if _used(k, v, reference[k], optimizer, own_sides, run_sides)
    }


def plan_ablation(
    sweeps: dict,
    base: dict | None = None,
    mode: str = "one-at-a-time",
    seeds=(0,),
    baseline: bool = True,
    tune: dict | None = None,
) -> AblationPlan:
    """Expand sweeps into runs.

    one-at-a-time: the centre configuration plus, for each knob, each listed value with every other
    knob at the centre; grid: the full product. Runs with identical effective knobs collapse. The
    Muon baseline (same budget) comes first unless `baseline` is False. Every variant runs once per
    seed; names get '-s<seed>' when there are several seeds. With `tune` (a TuneSpec dict) these
    runs are the comparison's skeleton: each variant is tuned first (`tuning`), and its runs are
    trained at its tuned values.
    """
    mode = _check_mode(mode)
    # view settings (--log) are left out: they change no run, so neither its name nor the plan
    base = {k: v for k, v in _settings(base or {}).items() if k not in VIEW_SETTINGS}
    typed = _sweeps(sweeps)
    if not typed:
        raise ConfigError("nothing to sweep: give at least one knob, e.g. --alpha 0.0,0.125,0.25")
    seeds = _seed_list(seeds)
    centre_optimizer = base.get("optimizer", _DEFAULTS["optimizer"])

    if mode == "grid":
        assignments = [dict(zip(typed, combo)) for combo in itertools.product(*typed.values())]
    else:
        assignments = [{}] + [{k: v} for k, values in typed.items() for v in values]
    if baseline:
        assignments.insert(0, BASELINE_KNOBS)
    variants: dict[str, dict] = {}  # name -> knobs, first occurrence wins
    for assignment in assignments:
        knobs = _effective(assignment, base)
        if knobs in variants.values():
            continue
        name = _variant_name(knobs, centre_optimizer)
        if name in variants:  # distinct strings that sanitize alike
            name += "-" + hashlib.sha256(repr(knobs).encode()).hexdigest()[:6]
        variants[name] = knobs
    baseline_knobs = _effective(BASELINE_KNOBS, base) if baseline else None

    runs = [
        RunSpec(
            f"{name}-s{seed}" if len(seeds) > 1 else name,
            name,
            dict(knobs),
            seed,
            knobs == baseline_knobs,
        )
        for seed in seeds
        for name, knobs in variants.items()
    ]
    if tune is not None:  # freeze each variant's default-grid centres: a later preset change
        tune = {
            **tune,
            "centres": {  # must not change what an ablation dir replays
                name: _centres(base, knobs, seeds[0], tune["knobs"])
                for name, knobs in variants.items()
            },
        }
    return AblationPlan(base, typed, mode, seeds, baseline, runs, tune)


def _centres(base: dict, knobs: dict, seed: int, tuned: list[str]) -> dict:
    """A variant's own value of each tuned knob, resolved from today's presets."""
    cfg = config.resolve({**base, **knobs, "seed": seed})
    return {k: getattr(cfg, k) for k in tuned if getattr(cfg, k) is not None}


def check_max_runs(plan: AblationPlan, max_runs: int, count: int | None = None) -> None:
    """Guard against accidentally huge grids (`count`: the plan's run count when it is more than
    its listed runs, e.g. an upper bound with tuning)."""
    count = len(plan.runs) if count is None else count
    if count > max_runs:
        what = "up to " if plan.tune else ""
        raise ConfigError(
            f"the plan has {what}{count} runs, more than --max-runs {max_runs}; pass a "
            f"larger --max-runs (e.g. --max-runs {count}) or sweep fewer values"
        )


def load_spec(path: str | Path) -> dict:
    """Read an ablation spec TOML into plan_ablation's arguments (plus `name` when given).

    Keys: name, mode, seeds (count or list), baseline, a [base] table of TrainConfig settings and a
    [sweep] table knob -> list of values. Every error names the file.
    """
    raw = config.read_toml(path)
    try:
        for key in raw:
            if key not in SPEC_KEYS:
                raise ConfigError(
                    f"unknown key '{key}'{closest(key, SPEC_KEYS)}; "
                    f"valid keys: {', '.join(SPEC_KEYS)}"
                )
        for key in ("base", "sweep"):
            if not isinstance(raw.get(key, {}), dict):
                raise ConfigError(f"'{key}' must be a table ([{key}])")
        sweep = raw.get("sweep", {})
        if not sweep:
            raise ConfigError(
                "empty [sweep]: add at least one knob, e.g. alpha = [0.0, 0.125, 0.25]"
            )
        spec: dict = {"sweeps": _sweeps(sweep)}
        if "base" in raw:
            base = dict(raw["base"])
            if isinstance(base.get("preset"), list):  # several scales: one ablation per preset
                spec["presets"] = [str(p) for p in base.pop("preset")]
            spec["base"] = _settings(base)
        if "mode" in raw:
            spec["mode"] = _check_mode(raw["mode"])
        if "seeds" in raw:
            spec["seeds"] = _seed_list(raw["seeds"])
        if "baseline" in raw:
            if not isinstance(raw["baseline"], bool):
                raise ConfigError(f"'baseline' must be true or false, not {raw['baseline']!r}")
            spec["baseline"] = raw["baseline"]
        if "name" in raw:
            spec["name"] = str(raw["name"])
        if "tune" in raw:
            spec["tune"] = _tune_table(raw["tune"])
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return spec


def parse_shard(shard: str) -> tuple[int, int]:
    """'i/n' (1-based) -> (i, n); ConfigError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ConfigError(f"bad --shard {shard!r}: expected i/n with 1 <= i <= n, e.g. 1/2")
    return int(match[1]), int(match[2])


def tune_spec(phases, seeds=(0,), max_extensions: int | None = None) -> dict:
    """A checked TuneSpec dict from phases ((knob, values or None), ...) and tuning seeds."""
    from .tuning import MAX_EXTENSIONS, TuneSpec, check_phases

    if max_extensions is not None and (
        isinstance(max_extensions, bool)
        or not isinstance(max_extensions, int)
        or max_extensions < 0
    ):
        raise ConfigError(f"bad max_extensions {max_extensions!r}: need an integer >= 0")
    spec = TuneSpec(
        check_phases(phases, _CHOICES),
        tuple(_seed_list(seeds)),
        MAX_EXTENSIONS if max_extensions is None else max_extensions,
    )
    return spec.to_dict()


def _tune_table(table) -> dict:
    """A spec file's [tune] table: knobs = [...] (phases in order), optional per-knob value lists,
    seeds (tuning seeds) and max_extensions."""
    if not isinstance(table, dict):
        raise ConfigError("'tune' must be a table ([tune]) with knobs = [\"lr\", ...]")
    knobs = table.get("knobs")
    if not isinstance(knobs, list) or not knobs:
        raise ConfigError('[tune] needs knobs = ["lr", ...]: the knobs to tune, in order')
    extra = [k for k in table if k not in TUNE_KEYS and k not in knobs]
    if extra:
        raise ConfigError(
            f"[tune] has '{extra[0]}', which is not a tuned knob or one of {', '.join(TUNE_KEYS)}"
        )
    phases = [(k, table[k] if isinstance(table.get(k), list) else None) for k in knobs]
    return tune_spec(phases, table.get("seeds", 1), table.get("max_extensions"))


def shard_runs(runs: list, shard: str) -> list:
    """Runs of shard 'i/n' (1-based), round-robin so each shard gets a mix of variants."""
    i, n = parse_shard(shard)
    return runs[i - 1 :: n]


def in_shard(name: str, shard: tuple[int, int]) -> bool:
    """Whether run `name` belongs to shard (i, n) of a plan whose runs are only known as it goes
    (tuning): by a hash of the name, the same in every process and on every machine."""
    i, n = shard
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % n == i - 1
