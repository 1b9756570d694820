"""The CLI's train flags and ablation sweep flags follow the knob table (mousse.optim.knobs)."""

from __future__ import annotations

from mousse.optim import knobs
from mousse_cli import options


def test_cli_flags_and_sweeps_come_from_the_table():
    for k in knobs.TABLE:
        if k.run_setting:
            assert k.name in options.TRAIN_FLAGS
            assert k.text in options.TRAIN_FLAGS[k.name][1].help
        assert (k.name in options.SWEEP_FLAGS) == bool(k.sweep)
        if k.sweep:
            assert k.sweep in options.SWEEP_FLAGS[k.name][1].help
