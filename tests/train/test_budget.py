"""Budgets in tokens per non-embedding parameter (mousse.train.budget): `--budget X` sets the
steps, `--steps` wins, bad budgets are one line, and runs, ablation results and `mousse presets`
say the regime they are in (results: tests/experiments/test_regime.py)."""

from __future__ import annotations

import pytest
from support.cli import FAST, FAST_SETTINGS, assert_one_line_error, summary

from mousse.train.budget import gpt_non_embedding_params, steps_for_budget
from mousse.train.config import resolve
from mousse.train.presets import get_preset

# FAST's GPT: d_model 64, 2 blocks of 4 heads of 32 (attention 4 x 64 x 128, MLP 2 x 64 x 256)
FAST_NON_EMBEDDING = 2 * (4 * 64 * 128 + 2 * 64 * 256)
FAST_TOKENS_PER_STEP = 2 * 64
FIVE_STEPS = 5 * FAST_TOKENS_PER_STEP / (20 * FAST_NON_EMBEDDING)  # = 1/4096, exact in binary


def test_non_embedding_parameters_are_the_blocks():
    """tiny: 2 blocks of 12 d^2 (q, k, v, o: 4 d^2; the MLP: 8 d^2) at d 128; no embedding or head."""
    assert gpt_non_embedding_params(get_preset("tiny").model_config()) == 2 * 12 * 128**2
    assert resolve({**FAST_SETTINGS, "budget": FIVE_STEPS}).steps == 5


def test_steps_for_budget_round_up_but_not_for_float_error():
    assert steps_for_budget(1, 393_216, 2048) == 3840  # tiny at 1x: 20 x 393,216 / 2,048
    assert steps_for_budget(1.0001, 393_216, 2048) == 3841  # past a step: the next one
    assert steps_for_budget(0.3, 10, 2) == 30  # 0.3 x 20 x 10 / 2 is 30.000000000000004 in floats


def test_steps_win_over_budget_and_both_are_recorded():
    cfg = resolve({"budget": 1, "steps": 7})
    assert (cfg.steps, cfg.budget) == (7, 1.0)
    assert resolve({"budget": 1}).steps == 3840 and resolve({}).steps == 300  # tiny's default
    assert resolve(cfg.to_dict()) == cfg  # a recorded config resolves to itself


@pytest.mark.parametrize(
    "value,needle",
    [
        ("nan", "> 0"),
        ("inf", "> 0"),
        ("0", "> 0"),
        ("-1", "> 0"),
        ("1e-30", "0 steps"),
        ("1e30", "1,000,000,000"),
    ],
)
def test_bad_budgets_are_one_line(cli, tmp_path, value, needle):
    res = cli("train", *FAST, "--budget", value, "--run-dir", tmp_path / "r")
    assert_one_line_error(res, "budget", needle)
    assert not (tmp_path / "r").exists()


def test_budget_with_a_model_of_ones_own_asks_for_steps(cli, tmp_path):
    res = cli("train", "--model", "examples/llama.py:llama", "--budget", "1")
    assert_one_line_error(res, "--budget", "--steps")


def test_a_budget_run_says_its_regime_and_resumes_to_a_larger_budget(cli, tmp_path, builtin_data):
    run_dir = tmp_path / "r"
    res = cli("train", *FAST, "--budget", FIVE_STEPS, "--run-dir", run_dir, "--json")
    assert res.exit_code == 0, res
    done = summary(run_dir)
    assert done["steps"] == done["planned_steps"] == 5
    tokens = 5 * FAST_TOKENS_PER_STEP
    assert done["regime"] == {
        "tokens": tokens,
        "non_embedding_params": FAST_NON_EMBEDDING,
        "tokens_per_param": tokens / FAST_NON_EMBEDDING,
        "budget": FIVE_STEPS,
        "epochs": tokens / len(builtin_data.train),
    }
    res = cli("train", "--resume", run_dir, "--budget", 2 * FIVE_STEPS, "--json")
    assert res.exit_code == 0, res
    assert summary(run_dir)["steps"] == 10
    assert summary(run_dir)["regime"]["budget"] == 2 * FIVE_STEPS


def test_presets_show_their_default_budget(presets_rows, builtin_data):
    rows = {r["name"]: r for r in presets_rows}
    tiny = rows["tiny"]
    assert tiny["non_embedding_params"] == 393_216 and tiny["tokens_per_step"] == 16 * 128
    assert tiny["tokens_per_param"] == 300 * 2048 / 393_216 == 20 * tiny["budget"]
    assert tiny["epochs"] == 300 * 2048 / len(builtin_data.train)
    assert rows["160m"]["epochs"] is None  # sized for token shards: its corpus is --data
    assert round(rows["160m"]["budget"], 1) == 12.3  # the released recipe: about 12x


def test_presets_list_without_epochs_where_the_builtin_corpus_cannot_be_built(cli, monkeypatch):
    from mousse.train import data

    def no_corpus(*args, **kwargs):
        raise data.DataError("no standard-library sources found")

    monkeypatch.setattr(data, "load_dataset", no_corpus)
    res = cli("presets", "--json")
    assert res.exit_code == 0, res
    assert all(r["epochs"] is None for r in res.json())
    assert res.json()[0]["non_embedding_params"] == 393_216
