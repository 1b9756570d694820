"""The same ablation at several model scales (`mousse ablate --preset tiny,small`): one ablation
dir per preset under a common root, and the speedup of each variant per scale, read back from
those dirs (pure: the results objects in, rows out)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypedDict, TypeVar

from mousse.train.config import ConfigError
from mousse.train.fileio import read_json

from .results import Results
from .tuning import Tuned

SCALE_FILE = "scale.json"


class ScaleRow(TypedDict):
    """One variant at one preset (`scale_summary`'s "rows"), from that preset's variant row."""

    preset: str
    params: int | None
    variant: str
    is_baseline: bool
    tuned: Tuned | None  # knob -> its tuned value
    n_seeds: int | None
    final_val_loss_mean: float | None
    final_val_loss_std: float | None
    p_value: float | None
    speedup: float | None
    speedup_ci: list[float] | None


class ScaleSummary(TypedDict):
    """The speedup of every variant at every preset (`scale_summary`): scale.json's "scale"."""

    presets: list[str]
    rows: list[ScaleRow]


class ScaledResults(TypedDict):
    """One comparison at several presets (`combine`): what `mousse ablate --preset a,b --json`
    prints."""

    presets: dict[str, Results]
    scale: ScaleSummary


def split_presets(value: str | list[str] | None) -> list[str] | None:
    """'tiny,small' or ['tiny', 'small'] -> the list; a single preset (or none) -> None."""
    if value is None:
        return None
    presets = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    presets = [p for p in presets if p]
    if not presets or not all(isinstance(p, str) for p in presets):
        raise ConfigError(f"bad preset list {value!r}: give names, e.g. --preset tiny,small")
    if len(set(presets)) != len(presets):
        raise ConfigError(f"preset list {value!r} names a preset twice")
    return presets if len(presets) > 1 else None


def preset_dirs(root: Path) -> dict[str, Path]:
    """The per-preset ablation dirs of a scale root, in the order the root records."""
    try:
        order = read_json(root / SCALE_FILE)["presets"]
    except (OSError, ValueError, KeyError, TypeError):
        order = (
            sorted(p.name for p in root.iterdir() if (p / "ablation.toml").is_file())
            if root.is_dir()
            else []
        )
    return {name: root / name for name in order if (root / name / "ablation.toml").is_file()}


def scale_summary(results_by_preset: Mapping[str, Results]) -> ScaleSummary:
    """Per preset and variant: parameters, tuned values, final loss and the speedup over that
    preset's baseline with its interval."""
    rows: list[ScaleRow] = []
    for preset, results in results_by_preset.items():
        for v in results["variants"]:
            rows.append(
                {
                    "preset": preset,
                    "params": v.get("n_params"),
                    "variant": v["variant"],
                    "is_baseline": v["is_baseline"],
                    "tuned": v.get("tuned"),
                    "n_seeds": v.get("n_seeds"),
                    "final_val_loss_mean": v["final_val_loss_mean"],
                    "final_val_loss_std": v["final_val_loss_std"],
                    "p_value": v["p_value"],
                    "speedup": v.get("speedup"),
                    "speedup_ci": v.get("speedup_ci"),
                }
            )
    return {"presets": list(results_by_preset), "rows": rows}


_V = TypeVar("_V")


def _renamed(d: Mapping[str, _V], names: dict[str, str]) -> dict[str, _V]:
    """`d` with only the keys `names` lists, each renamed to its label."""
    return {names[k]: v for k, v in d.items() if k in names}


def relabel(results: Results, names: dict[str, str]) -> Results:
    """`results` with only the variants `names` lists (the baseline among them), each renamed to
    its label, in the order `names` gives: so that ablations recorded under different variant
    names (a spec that swept `momentum_style=nesterov` at one scale and made it the default at
    another) line up as one comparison over scales. Every statistic stays as its own ablation
    computed it."""
    variants = {v["variant"]: v for v in results["variants"]}
    base = results["baseline"]
    if base is None or base not in names:
        raise ConfigError(f"the labels must include the baseline {base!r}")
    missing = set(names) - set(variants)
    if missing:
        raise ConfigError(f"no variant {sorted(missing)[0]!r} in these results")

    timing = results.get("timing_pass")
    if timing is not None:
        passed = timing["baseline"]
        timing = {
            **timing,
            "baseline": None if passed is None else names[passed],
            "order": [[names[n] for n in row if n in names] for row in timing["order"]],
            "round_ms": _renamed(timing["round_ms"], names),
            "variants": _renamed(timing["variants"], names),
        }
    return {
        **results,
        "baseline": names[base],
        "variants": [{**variants[old], "variant": new} for old, new in names.items()],
        "runs": [
            {**r, "variant": names[r["variant"]]} for r in results["runs"] if r["variant"] in names
        ],
        "timing_pass": timing,
    }


def combine(results_by_preset: Mapping[str, Results]) -> ScaledResults:
    """Recorded results of one comparison at several presets as one scaled results object (what
    `mousse ablate --preset a,b --json` prints), for `mousse report` to tabulate and plot."""
    return {"presets": dict(results_by_preset), "scale": scale_summary(results_by_preset)}
