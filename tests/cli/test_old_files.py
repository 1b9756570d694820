"""Files written by earlier versions still read: a run dir and an ablation's results.json kept
in tests/fixtures/format-2026-12 (written by its make.py) resume and report with today's code.
A change of the settings, the checkpoint or the optimizer state's form must keep these passing,
or refuse the old files in one line that says what to do (docs/reliability.md)."""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

import pytest
from support.cli import assert_one_line_error, read_metrics, summary, train_losses, val_losses

from mousse.train.checkpoint import list_checkpoints, verify_checksums

DEC_2026 = Path(__file__).parents[1] / "fixtures" / "format-2026-12"
MADE = runpy.run_path(str(DEC_2026 / "make.py"))  # its SETTINGS and STOP_AFTER, not its main
# A run resumed on another machine than the one that wrote the checkpoint differs from a fresh
# run there in the last bits only; a state read wrongly (a buffer dropped, a factor transposed)
# moves the next losses by far more.
SAME = {"rel": 1e-4}


@pytest.fixture
def old_run(tmp_path) -> Path:
    """A copy of the December 2026 run dir (stopped after step STOP_AFTER of 8)."""
    return Path(shutil.copytree(DEC_2026 / "run", tmp_path / "old"))


@pytest.fixture(scope="module")
def fresh_run(builtin_data, tmp_path_factory) -> Path:
    """The same settings trained without a stop by today's code: the losses to match. In fp32
    and on the corpus tail: runs from before --precision trained in it on a CPU, and runs from
    before --split validated on the tail; they resume in both."""
    from mousse.train.config import resolve
    from mousse.train.trainer import Trainer

    run_dir = tmp_path_factory.mktemp("fresh") / "run"
    settings = {**MADE["SETTINGS"], "precision": "fp32", "split": "tail"}
    assert Trainer(resolve(settings), run_dir).run()["status"] == "completed"
    return run_dir


def test_the_kept_checkpoint_verifies(old_run):
    (ckpt,) = list_checkpoints(old_run / "checkpoints")
    assert ckpt.name == f"step-{MADE['STOP_AFTER']}"
    verify_checksums(ckpt)


def test_an_old_run_resumes_to_the_losses_of_an_uninterrupted_run(cli, old_run, fresh_run):
    before = read_metrics(old_run)
    res = cli("train", "--resume", old_run)
    assert res.exit_code == 0, res
    done = summary(old_run)
    assert done["status"] == "completed" and done["steps"] == MADE["SETTINGS"]["steps"]
    assert done["resumed_from"] is not None
    assert read_metrics(old_run)[: len(before)] == before  # the old rows are kept as written
    stop = MADE["STOP_AFTER"]
    resumed = {s: loss for s, loss in train_losses(old_run).items() if s > stop}
    assert sorted(resumed) == [s for s in train_losses(fresh_run) if s > stop]
    assert resumed == {s: pytest.approx(train_losses(fresh_run)[s], **SAME) for s in resumed}
    # the same evaluations, bar the fresh run's at step 0 (the old run started before there was one)
    fresh_vals = val_losses(fresh_run)
    assert sorted(val_losses(old_run)) == sorted(set(fresh_vals) - {0})
    assert val_losses(old_run) == {
        s: pytest.approx(fresh_vals[s], **SAME) for s in val_losses(old_run)
    }
    assert done["final_val_loss"] == pytest.approx(summary(fresh_run)["final_val_loss"], **SAME)
    assert done["precision"] == "fp32" and done["compiled"] is False  # as it trained
    assert done["split"] == "tail"


@pytest.mark.parametrize(
    ("flag", "trained"),
    [
        (["--precision", "bf16"], "--precision bf16: this run trained in fp32"),
        (["--compile", "on"], "--compile on: this run trained eager"),
    ],
)
def test_an_old_run_refuses_another_arithmetic_than_it_trained_in(cli, old_run, flag, trained):
    """The December 2026 run records neither precision nor compile mode: it trained in fp32 on
    a CPU, eager as its config's `compile = false` says (not as the flag given now), so asking
    for the other is one line, and neither its checkpoint nor its log is touched."""
    before = {p: p.read_bytes() for p in old_run.rglob("*") if p.is_file()}
    assert_one_line_error(cli("train", "--resume", old_run, *flag), trained)
    assert {
        p: p.read_bytes() for p in old_run.rglob("*") if p.is_file() and p.name != ".lock"
    } == before


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "json"])
def test_an_old_results_file_renders_its_variants(cli, fmt):
    """Each variant's name and mean final loss as the file holds them (the tables round it)."""
    variants = json.loads((DEC_2026 / "results.json").read_text())["variants"]
    res = cli("report", DEC_2026 / "results.json", "--format", fmt)
    assert res.exit_code == 0, res
    if fmt == "json":
        means = {v["variant"]: v["final_val_loss_mean"] for v in res.json()["variants"]}
        assert means == {v["variant"]: v["final_val_loss_mean"] for v in variants}
        return
    shown = "{!r}" if fmt == "csv" else "{:.4f}"
    for variant in variants:
        row = next(line for line in res.stdout.splitlines() if variant["variant"] in line)
        assert shown.format(variant["final_val_loss_mean"]) in row, res


def test_an_old_results_file_answers_expectations(cli):
    res = cli("report", DEC_2026 / "results.json", "--expect", "alpha=0.0 < alpha=0.5")
    assert res.exit_code == 0, res
    assert "ok:" in res.stderr
