"""The CLI's train flags and ablation sweep flags follow the knob table (mousse.optim.knobs)."""

from __future__ import annotations

from mousse.optim import knobs
from mousse.train.config import Overrides
from mousse_cli import options


def test_cli_flags_and_sweeps_come_from_the_table():
    for k in knobs.TABLE:
        if k.run_setting:
            assert k.name in options.TRAIN_FLAGS
            assert k.text in options.TRAIN_FLAGS[k.name][1].help
        assert (k.name in options.SWEEP_FLAGS) == bool(k.sweep)
        if k.sweep:
            assert k.sweep in options.SWEEP_FLAGS[k.name][1].help


def _received(flags: dict, sweep_flags=(), **given):
    """What a command decorated by `with_flags(flags, sweep_flags)` receives for `given`."""
    seen = {}

    @options.with_flags(flags, sweep_flags)
    def command(overrides, sweeps=None):
        seen.update(overrides=overrides, sweeps=sweeps)

    command(**{**dict.fromkeys(flags), **given})
    return seen


def test_train_flags_arrive_typed_as_overrides():
    seen = _received(options.TRAIN_FLAGS, alpha=0.25, steps=7, trace_norm=False)
    assert seen["overrides"] == Overrides(alpha=0.25, steps=7, factor_norm="none")
    assert seen["sweeps"] is None
    file = Overrides.from_dict({"steps": 3, "lr": 0.1})  # a --config file's, under the flags
    assert file.updated(seen["overrides"]) == Overrides(
        alpha=0.25, steps=7, lr=0.1, factor_norm="none"
    )


def test_ablate_flags_split_into_typed_settings_and_sweeps():
    flags = {**options.SWEEP_FLAGS, **options.BASE_FLAGS}
    seen = _received(flags, options.SWEEP_FLAGS, alpha="0.0,0.25", trace_norm="on,off", steps=5)
    assert seen["overrides"] == Overrides(steps=5)
    assert seen["sweeps"] == {"alpha": "0.0,0.25", "factor_norm": "trace,none"}
