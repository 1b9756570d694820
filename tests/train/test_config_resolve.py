"""How `config.resolve` fills in the settings a run is not given: from its model preset, the
optimizer's knobs and the budgets (the knobs' order of precedence: tests/train/test_config_knobs.py;
budgets: tests/train/test_budget.py)."""

from __future__ import annotations

import dataclasses

import pytest

from mousse.train.config import ConfigError, budget_steps, resolve
from mousse.train.presets import get_preset

LLAMA = "examples/llama.py:llama"


@pytest.mark.parametrize("name", ["tiny", "160m"])
def test_what_is_not_given_comes_from_the_preset(name):
    preset = get_preset(name)
    cfg = resolve({"preset": name})
    shape = ("d_model", "n_layers", "n_heads", "head_dim", "seq_len")
    for key in (*shape, "steps", "batch_size", "micro_batch_size", "warmup_frac", "eval_every"):
        assert getattr(cfg, key) == getattr(preset, key), key
    assert (cfg.eval_tokens, cfg.scalar_lr) == (preset.eval_tokens, preset.scalar_lr)
    assert cfg.checkpoint_every == (preset.checkpoint_every or preset.steps)
    assert resolve({"preset": name, "optimizer": "adamw"}).scalar_lr == preset.adamw_lr
    given = resolve({"preset": name, "steps": 7, "checkpoint_every": 3, "scalar_lr": 0.5})
    assert (given.steps, given.checkpoint_every, given.scalar_lr) == (7, 3, 0.5)


def test_a_micro_batch_is_at_most_the_batch():
    assert resolve({"preset": "160m", "batch_size": 8}).micro_batch_size == 8
    assert resolve({"batch_size": 8, "micro_batch_size": 64}).micro_batch_size == 8
    assert resolve({"batch_size": 8, "micro_batch_size": 2}).micro_batch_size == 2


def test_a_model_of_ones_own_has_no_gpt_shape_but_the_presets_sequence_length():
    cfg = resolve({"model": LLAMA, "preset": "small"})
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.head_dim) == (None, None, None, None)
    assert cfg.seq_len == get_preset("small").seq_len


def test_budget_steps_of_a_config_with_a_model_of_ones_own_is_a_config_error():
    """A config changed to --model after `resolve` gets the error `resolve` gives for budgets
    with --model, not a crash counting a GPT of no shape."""
    cfg = resolve({"budgets": "0.001,0.002"})
    shape = dict.fromkeys(("d_model", "n_layers", "n_heads", "head_dim"))
    other = dataclasses.replace(cfg, model=LLAMA, **shape)
    with pytest.raises(ConfigError, match=r"^--budgets counts the built-in GPT's parameters"):
        budget_steps(other)
    assert [s for _, s in budget_steps(cfg)][-1] == cfg.steps


@pytest.mark.parametrize(
    "key", ["d_model", "n_layers", "n_heads", "head_dim", "seq_len", "batch_size"]
)
@pytest.mark.parametrize("budget", [{"budget": 1.0}, {"budgets": "0.5,1"}])
def test_a_shape_out_of_range_is_named_before_a_budget_counts_it(key, budget):
    with pytest.raises(ConfigError, match=f"^bad value for '{key}': 0; must be >= 1$"):
        resolve({"preset": "tiny", key: 0, **budget})
