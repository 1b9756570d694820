"""The validation pass: its loss and standard error over the validation windows, and what a
run records of them."""

from __future__ import annotations

import math
import random
import statistics

import pytest
import torch
import torch.nn.functional as F
from support.cli import FAST, FAST_SETTINGS, read_metrics, summary

from mousse.train.config import resolve
from mousse.train.data import val_batches
from mousse.train.evaluation import eval_due, standard_error
from mousse.train.trainer import Trainer


def test_standard_error_is_the_sample_sd_over_root_n():
    rng = random.Random(0)
    values = [rng.gauss(3.0, 0.4) for _ in range(50)]
    mean = statistics.fmean(values)
    se = standard_error(mean, sum(v * v for v in values), len(values))
    assert se == pytest.approx(statistics.stdev(values) / math.sqrt(len(values)), rel=1e-9)
    assert standard_error(2.0, 4.0, 1) is None  # one window: no spread to measure
    assert standard_error(2.0, 4.0 * 3, 3) == 0.0  # equal windows
    assert standard_error(math.nan, 1.0, 3) is None


def test_an_evaluation_is_the_mean_and_standard_error_of_its_windows(builtin_data, tmp_path):
    """By hand: each window's (row's) mean cross-entropy, then their mean and sd / sqrt(n)."""
    cfg = resolve({**FAST_SETTINGS, "steps": 1, "device": "cpu", "precision": "fp32"})
    trainer = Trainer(cfg, tmp_path / "r")
    result = trainer.evaluate()
    windows = []
    with torch.no_grad():
        for x, y in val_batches(trainer.data, cfg.eval_tokens, cfg.micro_batch_size, cfg.seq_len):
            logits, _ = trainer.model(x, y)
            rows = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            windows += rows.view(y.shape).mean(dim=1).tolist()
    assert len(windows) == cfg.eval_tokens // cfg.seq_len
    assert result.loss == pytest.approx(statistics.fmean(windows), rel=1e-5)
    assert result.se == pytest.approx(statistics.stdev(windows) / math.sqrt(len(windows)), rel=1e-3)


def test_a_run_records_its_split_and_standard_error(cli, tmp_path):
    res = cli("train", *FAST, "--steps", "2", "--eval-every", "1", "--run-dir", tmp_path / "r")
    assert res.exit_code == 0, res
    done = summary(tmp_path / "r")
    evals = [r for r in read_metrics(tmp_path / "r") if "val_loss" in r]
    assert done["split"] == "files" and done["val_loss_se"] > 0
    assert done["val_loss_se"] == evals[-1]["val_loss_se"] == done["curve"][-1]["val_loss_se"]


def _eval_steps(**settings) -> list[int]:
    cfg = resolve({"preset": "small", **settings})
    return [step for step in range(cfg.steps + 1) if eval_due(step, cfg)]


def test_eval_due_by_hand():
    """At 0 and the end, every eval_every steps, and every eval_every / 4 over the last quarter
    of the steps (or a longer wsd cooldown)."""
    assert _eval_steps(steps=600, eval_every=100) == [
        *(0, 100, 200, 300, 400),
        *(475, 500, 525, 550, 575, 600),
    ]
    assert _eval_steps(steps=600, eval_every=100, schedule="wsd", cooldown=0.5) == [
        *(0, 100, 200),
        *range(300, 601, 25),
    ]
    assert _eval_steps(steps=10, eval_every=3) == [0, 3, 6, 8, 9, 10]  # dense: every step
    assert _eval_steps(steps=7, eval_every=100) == [0, 7]  # eval_every beyond it: start and end


def test_when_a_run_evaluates_changes_none_of_its_training(builtin_data, tmp_path, monkeypatch):
    """Evaluating at every step, or at the end only, trains bit for bit the same: evaluation
    draws nothing from the training RNG nor changes the model. A fresh run evaluates at step 0."""
    import mousse.train.trainer as trainer

    settings = {**FAST_SETTINGS, "steps": 8, "eval_every": 4, "log_every": 1, "device": "cpu"}
    runs = {}
    for name, due in (("dense", lambda step, cfg: True), ("end", lambda s, cfg: s == cfg.steps)):
        monkeypatch.setattr(trainer, "eval_due", due)
        runs[name] = tmp_path / name
        assert Trainer(resolve(settings), runs[name]).run()["status"] == "completed"
    monkeypatch.undo()
    Trainer(resolve(settings), tmp_path / "default").run()
    dense, end = (read_metrics(runs[n]) for n in ("dense", "end"))
    losses = {
        n: {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}
        for n, rows in (("dense", dense), ("end", end))
    }
    assert losses["dense"] == losses["end"] and len(losses["end"]) == 8
    assert [r["step"] for r in dense if "val_loss" in r] == list(range(9))
    assert [r["step"] for r in end if "val_loss" in r] == [8]
    assert [r["val_loss"] for r in dense if r["step"] == 8 and "val_loss" in r] == [
        r["val_loss"] for r in end if "val_loss" in r
    ]
    default = read_metrics(tmp_path / "default")
    assert [r["step"] for r in default if "val_loss" in r] == [0, 4, 7, 8]
