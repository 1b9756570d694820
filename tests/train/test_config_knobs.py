"""The run config follows the knob table (mousse.optim.knobs): one typed field per run knob,
ranges from the table. The table itself: tests/optim/test_knobs.py."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import pytest
from support.generated import assert_generated

from mousse.optim import knobs
from mousse.train import config
from mousse.train.presets import ADAMW_KNOBS


def _parts(hint: object) -> tuple[object, bool]:
    """(X, whether None is allowed) of a field's type X or X | None."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        assert len(rest) == 1, hint
        return rest[0], type(None) in args
    return hint, False


def test_run_config_has_one_typed_field_per_knob():
    run_knobs = [k for k in knobs.TABLE if k.run_setting]
    assert knobs.RUN_KNOBS == tuple(k.name for k in run_knobs)
    for k in run_knobs:
        assert config.FIELD_TYPES[k.name] is k.kind
        assert config.FIELD_DEFAULTS[k.name] is None  # None: the optimizer's recipe
        assert getattr(config.Overrides(), k.name) is None
    assert set(knobs.PRECONDITIONER_KNOBS) == {k.name for k in run_knobs if k.preconditioner}
    assert "ns_dtype" not in knobs.RUN_KNOBS  # a run chooses it by name (auto, bf16, ...)


def test_written_out_knob_fields_match_the_table():
    """TrainConfig's knob fields are written out: the same names in TABLE's order, choices as a
    Literal of TABLE's choices in order, else TABLE's kind; None allowed except for the knobs
    every run uses (ADAMW_KNOBS), and no default (resolve sets each)."""
    hints = typing.get_type_hints(config.TrainConfig)
    own = {f.name: f for f in dataclasses.fields(config.TrainConfig)}
    assert tuple(n for n in own if n in knobs.RUN_KNOBS) == knobs.RUN_KNOBS
    for before, k in zip((None, *knobs.TABLE), knobs.TABLE, strict=False):
        if not k.run_setting:
            assert k.name not in own or k.name == "ns_dtype", k.name
            continue
        assert k.name in own, (
            f"config.TrainConfig lacks the knob {k.name!r} of mousse.optim.knobs.TABLE: add "
            f"its line after {before and before.name!r}, typed as in knobs.KnobArgs (or None), "
            "then run python scripts/typed_fields.py"
        )
        base, optional = _parts(hints[k.name])
        if k.choices:
            assert typing.get_origin(base) is typing.Literal, k.name
            assert typing.get_args(base) == k.choices, k.name
        else:
            assert base is k.kind, k.name
        assert optional == (k.name not in ADAMW_KNOBS), k.name
        assert own[k.name].default is dataclasses.MISSING, k.name


def test_overrides_lines_are_generated_from_the_run_settings(tmp_path):
    """Overrides's lines are written from TrainConfig's; a field added to TrainConfig alone fails
    here, naming the field and the script that writes its line."""
    assert_generated(
        Path(config.__file__), "TrainConfig", config.overrides_lines(), "config.Overrides", tmp_path
    )


def test_overrides_mirror_the_run_settings():
    """Overrides: TrainConfig's fields in its order, each its type or None, default None."""
    run = typing.get_type_hints(config.TrainConfig)
    given = typing.get_type_hints(config.Overrides)
    assert list(given) == list(run) == list(config.FIELD_TYPES) == list(config.FIELD_DEFAULTS)
    for name, hint in run.items():
        base, _ = _parts(hint)
        assert _parts(given[name]) == (base, True), name
    assert all(f.default is None for f in dataclasses.fields(config.Overrides))
    assert config.Overrides().to_dict() == {}
    assert config.Overrides.from_dict({"steps": "7", "lr": None}) == config.Overrides(steps=7)
    with pytest.raises(config.ConfigError, match="unknown setting 'stepz'"):
        config.Overrides.from_dict({"stepz": 3})


def test_resolved_settings_are_concrete_and_frozen():
    """What resolve returns has a value of its type in every field not typed optional; changed
    copies come from dataclasses.replace."""
    hints = typing.get_type_hints(config.TrainConfig)
    for optimizer in ("mousse", "adamw", "shampoo"):
        cfg = config.resolve(config.Overrides(optimizer=optimizer))
        assert cfg == config.resolve({"optimizer": optimizer})
        for name, hint in hints.items():
            value = getattr(cfg, name)
            if value is None:
                assert _parts(hint)[1], (optimizer, name)
            else:
                assert isinstance(value, config.FIELD_TYPES[name]), (optimizer, name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3  # type: ignore[misc]
    assert dataclasses.replace(cfg, steps=3).steps == 3
    assert config.NS_DTYPES.keys() == set(typing.get_args(config.NsDtype))


def test_run_config_ranges_come_from_the_table():
    with pytest.raises(config.ConfigError, match=r"'momentum': 1\.5; must be a number in"):
        config.resolve({"momentum": 1.5})
    with pytest.raises(config.ConfigError, match="'stat_freq': 0; must be an integer >= 1"):
        config.resolve({"stat_freq": 0})
    assert config.in_range("precond_beta", 0.5) and not config.in_range("precond_beta", 1.0)
    assert config.in_range("steps", 1) and not config.in_range("steps", 0)


def test_matrix_kwargs_are_the_typed_knobs_the_optimizer_takes():
    """What the trainer hands build_optimizer: KnobArgs's keys (lr and weight_decay apart), each
    a value the knob allows; none for AdamW."""
    names = set(typing.get_type_hints(knobs.KnobArgs)) - {"lr", "weight_decay"}
    for optimizer in ("mousse", "muon", "soap"):
        given = config.matrix_kwargs(config.resolve({"optimizer": optimizer}), "fp32")
        assert set(given) <= names and "ns_dtype" in given, optimizer
        knobs.check_knobs(dict(given))
    assert config.matrix_kwargs(config.resolve({"optimizer": "adamw"}), "fp32") == {}
