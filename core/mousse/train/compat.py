"""Every name an earlier version wrote that today's code no longer knows, in one place.

Config files and checkpoints from before the family engine still load: their boolean knobs are
renamed on read (`upgrade`). Anywhere a person types a setting (flags, spec files), an old name
is refused with its new one (`RENAMED`). A setting whose default changed keeps, in what a run or
a plan recorded before it existed, the value that run had (`recorded`). The rest of the code
only knows today's names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

# old boolean knob -> (new knob, its value)
_UPGRADES: dict[str, Callable[[bool], tuple[str, str]]] = {
    "trace_norm": lambda v: ("factor_norm", "trace" if v else "none"),
    "nesterov": lambda v: ("momentum_style", "nesterov" if v else "heavy_ball"),
    "graft": lambda v: ("graft", "orthogonalizer" if v else "none"),
}
# old knob -> what to write instead, for the error a person sees
RENAMED = {
    "trace_norm": "factor_norm (trace = on, none = off)",
    "nesterov": "momentum_style (nesterov = on, heavy_ball = off)",
}

# a preset that no longer exists -> what to use instead (the GPU ladder was 10.8M and 31.7M
# parameters at 0.02x and 0.005x the compute-optimal budget; its rungs now train at 1x)
_LADDER = (
    "the GPU ladder's rungs now train at 1x the compute-optimal budget and are sized for "
    "minutes on one GPU: pass --preset 1.4m (was 10m) or 2.2m (was 30m)"
)
RENAMED_PRESETS = {"10m": _LADDER, "30m": _LADDER}

# old command-line flag -> what to type instead
RENAMED_FLAGS = {
    "--nesterov": "--momentum-style nesterov",
    "--no-nesterov": "--momentum-style heavy_ball",
    "--no-graft": "--graft none",
    "--no-compile": "--compile off",
}


def upgrade(settings: Mapping[str, object]) -> dict[str, object]:
    """Settings with the pre-family engine's knobs renamed: trace_norm -> factor_norm, nesterov ->
    momentum_style, graft on/off -> graft orthogonalizer/none, compile true/false -> on/off (only
    boolean values: a new-style value is never one). A new-style setting given alongside wins. (ns = "exact" is now
    orthogonalizer = "exact"; config validation says so.)"""
    out = dict(settings)
    if isinstance(out.get("compile"), bool):  # compile was on/off before auto
        out["compile"] = "on" if out["compile"] else "off"
    for old, convert in _UPGRADES.items():
        value = out.get(old)
        if isinstance(value, bool):  # the old knobs were all booleans
            del out[old]
            new, new_value = convert(value)
            out.setdefault(new, new_value)
    return out


# setting -> the value every run recorded before the setting existed ran with
_BEFORE = {"split": "tail"}  # the built-in corpus's tail was its validation set


def recorded(settings: Mapping[str, object]) -> dict[str, object]:
    """Settings a run or plan recorded (a checkpoint's config, an ablation.toml's base), with the
    value it ran with for each setting it predates (`_BEFORE`): it then resumes, and reads, as
    it trained. Never for settings a person gives, where a missing one means today's default."""
    return {**_BEFORE, **settings}
