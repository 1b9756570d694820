"""An ablation's inputs, typed and checked: knobs and their values, sweeps, seeds, mode and
tuning. Shared by planning (`ablation`) and spec files (`spec`), with parsers for the CLI's flags;
every error is a ConfigError that names the bad input."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, get_args

from mousse.optim.knobs import KNOB_CHOICES
from mousse.train import compat, config, presets
from mousse.train.config import (
    FIELD_TYPES,
    VIEW_SETTINGS,
    ConfigError,
    check_choice,
    closest,
    coerce,
)

from .settings import Settings, Sweeps, Value, settings_of
from .tuning import MAX_EXTENSIONS, TUNE_SEED_BASE, TuneRecord, TuneSpec, check_phases

# How sweeps expand to variants: each value of each knob alone, or every combination.
Mode = Literal["one-at-a-time", "grid"]
MODES: tuple[Mode, ...] = get_args(Mode)
MAX_SEEDS = 1000
# Seeds are planned separately (`seeds`), so `seed` is not a knob.
ABLATION_SETTINGS = tuple(k for k in FIELD_TYPES if k != "seed")
SETTING_CHOICES = {
    "optimizer": presets.OPTIMIZER_NAMES,
    "scalar_optimizer": config.SCALAR_OPTIMIZERS,
    "device": config.DEVICES,
    # checked as given, so that a bad value to tune is refused before any run trains
    "precision": config.PRECISIONS,
    "compile": config.COMPILE_MODES,
    "gather_dtype": config.GATHER_DTYPES,
    "ns_dtype": tuple(config.NS_DTYPES),
    "split": config.SPLITS,
    **KNOB_CHOICES,
}
_FIELDS = list(FIELD_TYPES)


def _check_knob(knob: str) -> str:
    """The knob's field name (hyphens allowed, as in CLI flags); ConfigError if unknown."""
    key = knob.replace("-", "_")
    if key == "seed":
        raise ConfigError("'seed' is not a knob; use seeds (--seeds N or a list) to repeat runs")
    if key in compat.RENAMED:
        raise ConfigError(f"'{knob}' is now {compat.RENAMED[key]}")
    if key not in ABLATION_SETTINGS:
        raise ConfigError(f"unknown knob '{knob}'{closest(key, ABLATION_SETTINGS)}")
    return key


def _typed_value(key: str, value: object) -> Value:
    """`value` coerced to the knob's type and checked against its allowed choices."""
    typed: Value = coerce(key, value)
    if key in SETTING_CHOICES:
        check_choice(key, typed, SETTING_CHOICES[key])
    return typed


def typed_settings(table: Mapping[str, object]) -> Settings:
    """Typed TrainConfig settings keyed by field name."""
    named = ((_check_knob(knob), value) for knob, value in table.items())
    return settings_of((key, _typed_value(key, value)) for key, value in named)


def typed_sweeps(table: Mapping[str, object]) -> Sweeps:
    """Typed sweeps keyed by field name, in TrainConfig field order (so names do not depend on the
    order the flags were given in)."""
    out: Sweeps = {}
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


def check_mode(mode: object) -> Mode:
    """`mode` when it is one of MODES; ConfigError otherwise."""
    if mode not in MODES:
        raise ConfigError(
            f"unknown mode {mode!r}{closest(str(mode), MODES)}; choose one of {', '.join(MODES)}"
        )
    return MODES[MODES.index(mode)]


def _sweep_values(knob: str, values: Iterable[object]) -> list[Value]:
    """Typed, de-duplicated (order kept) values; ConfigError when empty."""
    typed = list(dict.fromkeys(_typed_value(knob, v) for v in values))
    if not typed:
        raise ConfigError(f"empty sweep for '{knob}': give at least one value")
    return typed


def parse_sweep_values(knob: str, text: str) -> list[Value]:
    """Values of a CLI sweep flag: '0.0,0.125,0.25', 'on,off', 'both,left,right'."""
    key = _check_knob(knob)
    return _sweep_values(key, [part.strip() for part in text.split(",") if part.strip()])


def seed_list(value: object, start: int = 0) -> list[int]:
    """An int N means seeds start..start+N-1; a list is taken as given (de-duplicated)."""
    if isinstance(value, bool) or not isinstance(value, (int, list, tuple, range)):
        raise ConfigError(f"bad seeds {value!r}: give a count N or a list of seeds")
    if (isinstance(value, int) and value > MAX_SEEDS) or (
        not isinstance(value, int) and len(value) > MAX_SEEDS
    ):
        raise ConfigError(f"bad seeds {value!r}: at most {MAX_SEEDS} seeds per variant")
    seeds = list(range(start, start + value)) if isinstance(value, int) else list(value)
    if any(isinstance(s, int) and not 0 <= s < 2**63 for s in seeds):
        raise ConfigError(f"bad seeds {value!r}: each seed must be in [0, 2^63)")
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError(f"bad seeds {value!r}: need a count >= 1 or non-negative integer seeds")
    return list(dict.fromkeys(seeds))


def parse_seeds(text: str, start: int = 0, flag: str = "--seeds") -> list[int]:
    """'3' -> [0, 1, 2] (a count, from `start`); '0,5,7' -> [0, 5, 7]; '5,' -> [5] (a one-seed
    list)."""
    try:
        value = [int(p) for p in text.split(",") if p.strip()] if "," in text else int(text)
    except ValueError:
        raise ConfigError(
            f"bad {flag} {text!r}: give a count like 3 or a list like {start},{start + 5},{start + 7}"
        ) from None
    return seed_list(value, start)


def check_tune_seeds(seeds: list[int], tune_seeds: list[int]) -> None:
    """Refuse tuning seeds that are comparison seeds too: a variant's tuned value would be the one
    that did best on a seed it is then compared on, which favours it (the winner's curse)."""
    shared = sorted(set(seeds) & set(tune_seeds))
    if shared:
        raise ConfigError(
            f"tuning seeds {shared} are comparison seeds too (the tuned value would be picked "
            "on the seeds it is compared on); leave --tune-seeds a count (seeds from "
            f"{TUNE_SEED_BASE} up) or list seeds outside --seeds"
        )


def tune_spec(
    phases: Iterable[tuple[str, Sequence[object] | None]],
    seeds: object = 1,
    max_extensions: int | None = None,
) -> TuneRecord:
    """A checked TuneSpec dict from phases ((knob, values or None), ...) and tuning seeds (a
    count N: seeds TUNE_SEED_BASE.. TUNE_SEED_BASE+N-1, apart from every comparison seed)."""
    if max_extensions is not None and (
        isinstance(max_extensions, bool)
        or not isinstance(max_extensions, int)
        or max_extensions < 0
    ):
        raise ConfigError(f"bad max_extensions {max_extensions!r}: need an integer >= 0")
    spec = TuneSpec(
        check_phases(phases, SETTING_CHOICES),
        tuple(seed_list(seeds, TUNE_SEED_BASE)),
        MAX_EXTENSIONS if max_extensions is None else max_extensions,
    )
    return spec.to_dict()
