"""The lr schedule (mousse.train.schedule): each shape against hand-computed values at its
boundaries, old configs on cosine as they ran, WSD end to end through `mousse train --json`,
and a resume that would change the lr refused."""

from __future__ import annotations

import dataclasses
import math
import threading
from pathlib import Path

import pytest
from support.cli import FAST, FAST_SETTINGS, assert_one_line_error, read_metrics, train_losses

from mousse.train import tomlio
from mousse.train.config import resolve
from mousse.train.events import StepLogged
from mousse.train.resume import config_from_checkpoint
from mousse.train.schedule import cooldown_length, cosine, warmup_length, wsd
from mousse.train.trainer import Trainer, lr_factor

FIXTURES = Path(__file__).parents[1] / "fixtures"


def test_warmup_counts_steps_when_given_else_a_fraction():
    assert warmup_length(300, 0.1, None) == 30  # the presets' 10%
    assert warmup_length(300, 0.1, 7) == 7  # steps win over the fraction
    assert warmup_length(300, 0.1, 0) == 0
    assert warmup_length(300, 0.0, None) == 0
    assert warmup_length(5, 0.01, None) == 1  # a fraction above 0 is at least one step


def test_cooldown_is_the_last_fraction_in_whole_steps():
    assert cooldown_length(300, 0.2) == 60
    assert cooldown_length(10, 0.01) == 1
    assert cooldown_length(10, 0.0) == 0


def test_cosine_by_hand():
    """10 steps, 2 of warmup: 1/2, then the peak at step 2, half of it halfway through the
    decay (step 6), 0 at the last step; min_lr_frac lifts the floor."""
    assert [cosine(s, 10, 2, 0.0) for s in (1, 2, 6, 10)] == [0.5, 1.0, 0.5, 0.0]
    assert cosine(10, 10, 2, 0.1) == pytest.approx(0.1)
    assert cosine(0, 10, 0, 0.0) == 1.0  # no warmup: the peak from the start


def test_wsd_by_hand():
    """10 steps, 2 of warmup, 4 of cooldown: 1/2, the peak through step 6 (the last stable
    step), then 3/4, 1/2, 1/4 and 0 at the last step."""
    factors = [wsd(s, 10, 2, 4, 0.0) for s in range(1, 11)]
    assert factors == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    assert wsd(8, 10, 2, 4, 0.1) == pytest.approx(0.55)  # decays to min_lr_frac, not to 0
    assert wsd(10, 10, 2, 4, 0.1) == pytest.approx(0.1)
    assert [wsd(s, 10, 0, 0, 0.0) for s in (1, 10)] == [1.0, 1.0]  # no cooldown: constant


def test_a_1_sqrt_cooldown_by_hand():
    """The same run's cooldown as 1 - sqrt(p), p its progress 1/4, 1/2, 3/4, 1 over steps 7 to
    10: below the linear decay throughout, to the same floor."""
    factors = [wsd(s, 10, 2, 4, 0.0, "1-sqrt") for s in range(1, 11)]
    assert factors[:6] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert factors[6:] == pytest.approx([1 - math.sqrt(p) for p in (0.25, 0.5, 0.75, 1.0)])
    assert all(f < wsd(s, 10, 2, 4, 0.0) for s, f in zip(range(7, 10), factors[6:9], strict=True))
    assert wsd(10, 10, 2, 4, 0.1, "1-sqrt") == pytest.approx(0.1)
    assert wsd(8, 10, 2, 4, 0.1, "1-sqrt") == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(0.5)))


def _old_configs():
    """A config.toml of the December 2026 format, and the config in a checkpoint of 1733ff0."""
    yield resolve(tomlio.load(FIXTURES / "format-2026-12" / "run" / "config.toml"))
    earlier = Path(__file__).parent / "data" / "mousse-1733ff0" / "step-2"
    yield config_from_checkpoint(earlier, {})[0]


@pytest.mark.parametrize("cfg", list(_old_configs()), ids=["format-2026-12", "mousse-1733ff0"])
def test_old_configs_run_cosine_with_their_fractional_warmup(cfg):
    """Configs written before schedule, warmup_steps and cooldown existed resolve to cosine with
    warmup_frac of the steps: the lr they ran with (step / warmup, then the cosine)."""
    assert (cfg.schedule, cfg.warmup_steps) == ("cosine", None)
    warmup = max(1, round(cfg.warmup_frac * cfg.steps))
    assert lr_factor(1, cfg) == 1 / warmup
    assert lr_factor(warmup, cfg) == 1.0
    assert lr_factor(cfg.steps, cfg) == pytest.approx(cfg.min_lr_frac)


WSD_FLAGS = ["--steps", "10", "--warmup-steps", "2", "--log-every", "1", "--eval-every", "5"]


def test_wsd_lr_curve_end_to_end_and_differs_from_cosine_only_in_lr(cli, tmp_path):
    runs = {}
    for schedule, cooldown in (("wsd", ["--cooldown", "0.4"]), ("cosine", [])):
        run_dir = tmp_path / schedule
        res = cli(
            "train", *FAST, *WSD_FLAGS, "--schedule", schedule, *cooldown,
            "--run-dir", run_dir, "--json",
        )  # fmt: skip
        assert res.exit_code == 0, res
        runs[schedule] = run_dir
    peak = resolve({}).lr
    lrs = {r["step"]: r["lr"] for r in read_metrics(runs["wsd"]) if "lr" in r}
    hand = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]  # test_wsd_by_hand's
    assert lrs == {s: pytest.approx(peak * f) for s, f in enumerate(hand, 1)}
    configs = [tomlio.load(runs[s] / "config.toml") for s in ("wsd", "cosine")]
    assert {k for k in configs[0] if configs[0][k] != configs[1][k]} == {"schedule", "cooldown"}
    wsd_losses, cosine_losses = train_losses(runs["wsd"]), train_losses(runs["cosine"])
    # the same warmup lrs: the same losses through step 3; step 3's lr differs (1 vs 0.96)
    assert [wsd_losses[s] for s in (1, 2, 3)] == [cosine_losses[s] for s in (1, 2, 3)]
    assert wsd_losses[4] != cosine_losses[4]


def test_a_wsd_run_resumes_at_the_uninterrupted_runs_lr(builtin_data, tmp_path):
    settings = {
        **FAST_SETTINGS,
        "steps": 10,
        "schedule": "wsd",
        "cooldown": 0.4,
        "warmup_steps": 2,
        "eval_every": 5,
        "log_every": 1,
        "checkpoint_every": 10,
    }
    ref = Trainer(resolve(settings), tmp_path / "ref").run()
    stop = threading.Event()

    def on_event(event):
        if isinstance(event, StepLogged) and event.step == 7:  # in the cooldown
            stop.set()

    run_dir = tmp_path / "stopped"
    Trainer(resolve(settings), run_dir, on_event=on_event, stop=stop).run()
    resumed = Trainer(resolve(settings), run_dir, resume=run_dir).run()
    assert resumed["resumed_from"] == 7 and resumed["final_val_loss"] == ref["final_val_loss"]
    lrs = lambda d: {r["step"]: r["lr"] for r in read_metrics(d) if "lr" in r}
    assert lrs(run_dir) == lrs(tmp_path / "ref")


@pytest.mark.parametrize(
    "first,again,needles",
    [
        (
            [],
            ["--schedule", "wsd"],
            ["--schedule wsd", "schedule=cosine", "pass --schedule cosine"],
        ),
        (
            ["--schedule", "wsd", "--cooldown", "0.5"],
            ["--cooldown", "0.25"],
            ["pass --cooldown 0.5"],
        ),
        (
            ["--schedule", "wsd", "--cooldown-shape", "1-sqrt"],
            ["--cooldown-shape", "linear"],
            ["pass --cooldown-shape 1-sqrt"],
        ),
        ([], ["--warmup-steps", "1"], ["--warmup-steps 1", "drop --warmup-steps"]),
    ],
)
def test_resuming_with_another_schedule_is_refused(cli, tmp_path, first, again, needles):
    run_dir = tmp_path / "r"
    res = cli("train", *FAST, "--steps", "4", *first, "--run-dir", run_dir, "--json")
    assert res.exit_code == 0, res
    before = (run_dir / "metrics.jsonl").read_bytes()
    res = cli("train", "--resume", run_dir, "--steps", "8", *again)
    assert_one_line_error(res, *needles)
    assert (run_dir / "metrics.jsonl").read_bytes() == before  # nothing written


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--schedule", "linear"], ["schedule", "linear", "cosine, wsd"]),
        (["--cooldown", "1.5"], ["cooldown", "1.5", "[0, 1]"]),
        (["--cooldown", "0.5"], ["--cooldown 0.5", "--schedule wsd", "drop --cooldown"]),
        (
            ["--schedule", "cosine", "--cooldown", "0.1"],
            ["--cooldown 0.1 with --schedule cosine", "drop --cooldown"],
        ),
        (
            ["--cooldown-shape", "1-sqrt"],
            ["--cooldown-shape 1-sqrt", "--schedule wsd", "drop --cooldown-shape"],
        ),
        (["--schedule", "wsd", "--cooldown-shape", "sqrt"], ["cooldown_shape", "linear, 1-sqrt"]),
        (["--warmup-steps", "-1"], ["warmup_steps", ">= 0"]),
        (
            ["--steps", "4", "--warmup-steps", "5"],
            ["warmup of 5 steps", "4 steps", "--warmup-steps"],
        ),
        (
            ["--steps", "10", "--schedule", "wsd", "--warmup-steps", "8", "--cooldown", "0.3"],
            ["warmup of 8 steps and a cooldown of 3", "--cooldown"],
        ),
    ],
)
def test_bad_schedules_are_one_line(cli, tmp_path, args, needles):
    res = cli("train", *FAST, *args, "--run-dir", tmp_path / "r")
    assert_one_line_error(res, *needles)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["train", "ablate"])
def test_a_cooldown_for_a_cosine_run_in_a_file_is_refused(cli, tmp_path, command):
    """A cooldown in a --config file or an ablation spec's [base], for a run that is cosine
    (every preset's default) and so has none: refused before anything is written."""
    spec = tmp_path / "spec.toml"
    if command == "train":
        spec.write_text("steps = 4\ncooldown = 0.3\n")
        res = cli("train", *FAST, "--config", spec, "--run-dir", tmp_path / "out")
    else:
        spec.write_text("[base]\nsteps = 4\ncooldown = 0.3\n[sweep]\nalpha = [0.0, 0.25]\n")
        res = cli("ablate", spec, "--ablation-dir", tmp_path / "out")
    assert_one_line_error(res, "--cooldown 0.3", "--schedule wsd", "drop --cooldown")
    assert not (tmp_path / "out").exists()


def test_a_cosine_run_that_recorded_a_cooldown_resumes(cli, tmp_path):
    """A cosine run given a cooldown before one was refused recorded it; it never applied, so the
    run resumes (as every cosine run, whose config.toml records the default cooldown)."""
    settings = {**FAST_SETTINGS, "steps": 4, "checkpoint_every": 2, "eval_every": 2}
    cfg = dataclasses.replace(resolve(settings), cooldown=0.3)  # what `validate` now refuses
    Trainer(cfg, tmp_path / "r").run()
    assert tomlio.load(tmp_path / "r" / "config.toml")["cooldown"] == 0.3
    res = cli("train", "--resume", tmp_path / "r", "--steps", "6", "--json")
    assert res.exit_code == 0, res
    assert res.json()["resumed_from"] == 4
