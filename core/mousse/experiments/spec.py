"""Ablation spec files: a TOML file read into `plan_ablation`'s arguments, every error naming
the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mousse.train import config
from mousse.train.config import ConfigError, closest

from .inputs import check_mode, seed_list, tune_spec, typed_settings, typed_sweeps
from .settings import Settings
from .tuning import TuneRecord

SPEC_KEYS = ("name", "mode", "seeds", "baseline", "base", "sweep", "tune")
TUNE_KEYS = ("knobs", "seeds", "max_extensions")
# A TOML table as read (tomllib's own typing: Any, each key of whichever TOML type it holds), and
# the spec's arguments built from it.
Table = dict[str, Any]


def load_spec(path: str | Path) -> Table:
    """Read an ablation spec TOML into plan_ablation's arguments (plus `name` when given).

    Keys: name, mode, seeds (count or list), baseline, a [base] table of TrainConfig settings and a
    [sweep] table knob -> list of values. Every error names the file.
    """
    raw = config.read_toml(path)
    try:
        _check_shape(raw)
        return _spec(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _check_shape(raw: Table) -> None:
    """Only known keys, [base] and [sweep] as tables, and a [sweep] with at least one knob."""
    for key in raw:
        if key not in SPEC_KEYS:
            raise ConfigError(
                f"unknown key '{key}'{closest(key, SPEC_KEYS)}; valid keys: {', '.join(SPEC_KEYS)}"
            )
    for key in ("base", "sweep"):
        if not isinstance(raw.get(key, {}), dict):
            raise ConfigError(f"'{key}' must be a table ([{key}])")
    if not raw.get("sweep", {}):
        raise ConfigError("empty [sweep]: add at least one knob, e.g. alpha = [0.0, 0.125, 0.25]")


def _spec(raw: Table) -> Table:
    """The checked arguments from a spec file's tables (`presets` from a list of presets in
    [base]: one ablation per preset; a list of one is the base's preset, checked as such)."""
    spec: Table = {"sweeps": typed_sweeps(raw.get("sweep", {}))}
    if "base" in raw:
        spec["base"], presets = _base_table(raw["base"])
        if presets is not None:
            spec["presets"] = presets
    if "mode" in raw:
        spec["mode"] = check_mode(raw["mode"])
    if "seeds" in raw:
        spec["seeds"] = seed_list(raw["seeds"])
    if "baseline" in raw:
        if not isinstance(raw["baseline"], bool):
            raise ConfigError(f"'baseline' must be true or false, not {raw['baseline']!r}")
        spec["baseline"] = raw["baseline"]
    if "name" in raw:
        spec["name"] = str(raw["name"])
    if "tune" in raw:
        spec["tune"] = _tune_table(raw["tune"])
    return spec


def _base_table(table: Table) -> tuple[Settings, list[str] | None]:
    """(typed [base] settings, the presets to scale over or None): a list of several presets
    is one ablation per preset; a list of one is the base's preset, as `preset = "small"`.
    Every name is checked, so a typo or a path is refused here, naming the file."""
    base = dict(table)
    if not isinstance(base.get("preset"), list):
        return typed_settings(base), None
    presets = [str(p) for p in base.pop("preset")]
    for name in presets:
        config.preset_named(name)
    if len(presets) == 1:
        return typed_settings({**base, "preset": presets[0]}), None
    return typed_settings(base), presets


def _tune_table(table: object) -> TuneRecord:
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
