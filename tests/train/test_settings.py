"""Typed run settings by name (mousse.train.config.Settings) follow the run config's fields."""

from __future__ import annotations

import typing
from pathlib import Path

from support.generated import assert_generated

from mousse.train import config


def test_settings_lines_are_generated_from_the_run_settings(tmp_path):
    """Settings's lines are written from TrainConfig's; a field added to TrainConfig alone fails
    here, naming the field and the script that writes its line."""
    assert_generated(
        Path(config.__file__),
        config.SETTINGS_SOURCE,
        config.settings_lines(),
        "config.Settings",
        tmp_path,
    )


def test_settings_mirror_the_run_settings_without_none():
    """Settings: TrainConfig's fields in its order, each of its type less None, none required."""
    run = typing.get_type_hints(config.TrainConfig)
    given = typing.get_type_hints(config.Settings)
    assert list(given) == list(run)
    assert not config.Settings.__required_keys__
    for name, hint in run.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        own = args[0] if type(None) in typing.get_args(hint) else hint
        assert given[name] == own, name
