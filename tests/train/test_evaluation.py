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
from mousse.train.evaluation import standard_error
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
