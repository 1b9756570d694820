"""The run config follows the knob table (mousse.optim.knobs): one typed field per run knob,
ranges from the table. The table itself: tests/optim/test_knobs.py."""

from __future__ import annotations

import pytest

from mousse.optim import knobs
from mousse.train import config


def test_run_config_has_one_typed_field_per_knob():
    run_knobs = [k for k in knobs.TABLE if k.run_setting]
    assert config.FAMILY_KNOBS == tuple(k.name for k in run_knobs)
    for k in run_knobs:
        assert config.FIELD_TYPES[k.name] is k.kind
        assert getattr(config.TrainConfig(), k.name) is None  # None: the optimizer's recipe
    assert set(config.PRECONDITIONER_KNOBS) == {k.name for k in run_knobs if k.preconditioner}
    assert "ns_dtype" not in config.FAMILY_KNOBS  # a run chooses it by name (auto, bf16, ...)


def test_run_config_ranges_come_from_the_table():
    with pytest.raises(config.ConfigError, match="'momentum': 1.5; must be a number in"):
        config.resolve({"momentum": 1.5})
    with pytest.raises(config.ConfigError, match="'stat_freq': 0; must be an integer >= 1"):
        config.resolve({"stat_freq": 0})
    assert config.in_range("precond_beta", 0.5) and not config.in_range("precond_beta", 1.0)
    assert config.in_range("steps", 1) and not config.in_range("steps", 0)
