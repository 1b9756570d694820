"""The knob table (mousse.optim.knobs) is the one declaration: the engine, the run config, the CLI
flags, the planner's knob classes and docs/family.md all follow it. Here the engine's side and the
docs; the run config's in tests/train/test_config_knobs.py, the flags' in
tests/cli/test_knob_flags.py."""

from __future__ import annotations

import shutil
import typing
from pathlib import Path

import pytest
import torch
from support.generated import assert_generated

from mousse import Mousse
from mousse.optim import KroneckerOptimizer, knobs
from mousse.optim.recipes import OPTIMIZER_CLASSES

DOCS = Path(__file__).resolve().parents[2] / "docs" / "family.md"


def test_docs_knob_list_is_the_table(tmp_path):
    copy = tmp_path / "family.md"
    shutil.copy(DOCS, copy)
    assert not knobs.rewrite(copy), "docs/family.md is stale: run python scripts/knob_docs.py"
    assert all(f"`{k.name}`" in DOCS.read_text() for k in knobs.TABLE)
    (tmp_path / "bare.md").write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        knobs.rewrite(tmp_path / "bare.md")


def test_every_recipe_is_valid_under_the_table():
    for cls in OPTIMIZER_CLASSES.values():
        knobs.check_knobs(cls.recipe)
        assert set(cls.recipe) == set(knobs.KNOB_DEFAULTS)


def test_a_subclass_recipe_body_is_completed_from_the_defaults():
    """A subclass's `recipe` body lists only the knobs it changes; the class attribute then holds
    the full knob set, and `resolve_knobs` starts from it."""

    class Half(KroneckerOptimizer):
        recipe = dict(alpha=0.5)  # noqa: RUF012 (no ClassVar: as a user may write it)

    assert Half.recipe == {**knobs.KNOB_DEFAULTS, "alpha": 0.5}
    assert Half.resolve_knobs()["alpha"] == 0.5


@pytest.mark.parametrize(
    ("name", "good", "bad", "words"),
    [
        ("momentum", [0.0, 0.95], [1.0, -0.1, float("nan"), True], "a number in [0, 1)"),
        ("alpha", [0, 0.25], [-1e-9, float("inf")], "a finite number >= 0"),
        ("eps", [1e-30], [0.0], "a finite number > 0"),
        ("precond_freq", [1, 100], [0, 2.0, True], "an integer >= 1"),
        ("refresh_warmup", [0, 5], [-1], "an integer >= 0"),
        ("post_alpha", [None, 0.5], [-0.5], "None or a finite number >= 0"),
        ("bias_correction", [True, False], [1, "yes"], "True or False"),
        ("sides", ["both", "none"], ["top"], "both | left | right | none"),
        ("ns_dtype", [None, torch.bfloat16], [torch.int8, "bf16"], "None or a floating"),
    ],
)
def test_each_knob_is_checked_by_its_entry(name, good, bad, words):
    for value in good:
        assert knobs.BY_NAME[name].check(value) is None
    for value in bad:
        assert words in knobs.BY_NAME[name].check(value)
        with pytest.raises(ValueError, match=rf"invalid {name}="):
            Mousse([torch.nn.Parameter(torch.zeros(4, 3))], **{name: value})


def test_knob_args_lines_are_generated_from_the_table(tmp_path):
    """KnobArgs's lines are written from TABLE; a knob added to the table alone fails here,
    naming the knob and the script that writes its line."""
    copy = assert_generated(
        Path(knobs.__file__), "TABLE", knobs.knob_args_lines(), "knobs.KnobArgs", tmp_path
    )
    assert knobs.rewrite_lines(copy, "TABLE", ["extra: float", *knobs.knob_args_lines()])
    assert "    extra: float\n    lr: float\n" in copy.read_text()


def test_each_choice_set_is_named_once():
    """Every choice knob's choices are one Literal alias's values, in order."""
    for k in knobs.TABLE:
        if k.choices:
            assert k.choices in knobs.CHOICE_TYPES, (
                f"{k.name}'s choices are no Literal alias of mousse.optim.knobs: name them there "
                "(Name = Literal[...]) and pass the alias to _choice"
            )
            alias = getattr(knobs, knobs.CHOICE_TYPES[k.choices])
            assert typing.get_args(alias) == k.choices, k.name


def test_knob_args_type_every_knob_as_the_table_does():
    """The TypedDict an editor shows for Mousse(params, **knobs) is the table, knob for knob."""

    hints = typing.get_type_hints(knobs.KnobArgs)
    assert list(hints) == [k.name for k in knobs.TABLE]
    for k in knobs.TABLE:
        hint = hints[k.name]
        args = set(typing.get_args(hint))
        if k.choices:
            assert typing.get_origin(hint) is typing.Literal and args == set(k.choices), k.name
        elif k.optional:
            assert args == {k.kind, type(None)}, k.name
        else:
            assert hint is k.kind, k.name
    assert hints["ns_dtype"] == torch.dtype | None


def test_ns_schedule_type_is_every_schedule():
    """`NsSchedule`, the `ns` knob's type (and so its choices), names the Newton-Schulz schedules
    NS_METHODS holds, in its order: a schedule added to one is added to the other."""
    import typing

    from mousse.optim.orthogonalize import NS_METHODS, NsSchedule

    assert typing.get_args(NsSchedule) == tuple(NS_METHODS)


def test_help_lists_every_knob_at_the_class_default():
    import inspect

    for cls in OPTIMIZER_CLASSES.values():
        params = inspect.signature(cls).parameters
        assert "params" in params and params["compiled"].default is False
        defaults = {n: p.default for n, p in params.items() if n in knobs.KNOB_DEFAULTS}
        assert defaults == cls.resolve_knobs(), cls.__name__
    assert (
        inspect.signature(OPTIMIZER_CLASSES["shampoo"]).parameters["precond_start"].default == 101
    )
