"""Old names: files written before the family engine still load; a person typing one is told the
new name (mousse.train.compat holds every rename)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.cli import FAST, assert_one_line_error, invoke_cli

from mousse.experiments.ablation import AblationPlan, plan_ablation
from mousse.train import compat, tomlio
from mousse.train.checkpoint import read_checkpoint
from mousse.train.config import ConfigError, load_config_file, resolve
from mousse.train.resume import config_from_checkpoint, trainer_meta
from mousse.train.rundir import earlier_logs


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"trace_norm": True}, {"factor_norm": "trace"}),
        ({"trace_norm": False}, {"factor_norm": "none"}),
        ({"nesterov": True}, {"momentum_style": "nesterov"}),
        ({"nesterov": False}, {"momentum_style": "heavy_ball"}),
        ({"graft": True}, {"graft": "orthogonalizer"}),
        ({"graft": False}, {"graft": "none"}),
    ],
)
def test_old_boolean_knobs_are_renamed(old, new):
    assert compat.upgrade(old) == new
    cfg = resolve(old)
    assert all(getattr(cfg, k) == v for k, v in new.items())


def test_a_new_name_given_alongside_wins():
    assert compat.upgrade({"trace_norm": True, "factor_norm": "same_trace"}) == {
        "factor_norm": "same_trace"
    }
    assert compat.upgrade({"graft": "adam"}) == {"graft": "adam"}  # a new-style value stays


def test_an_old_config_file_trains(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text(
        tomlio.dumps({"train": {"trace_norm": False, "nesterov": True, "graft": True, "steps": 2}})
    )
    assert load_config_file(path)["factor_norm"] == "none"
    run = tmp_path / "R"
    res = invoke_cli("train", *FAST, "--config", path, "--run-dir", run)
    assert res.exit_code == 0, res
    saved = tomlio.loads((run / "config.toml").read_text())
    assert (saved["factor_norm"], saved["momentum_style"], saved["graft"]) == (
        "none",
        "nesterov",
        "orthogonalizer",
    )
    assert "trace_norm" not in saved and "nesterov" not in saved


def test_typing_an_old_name_names_the_new_one():
    with pytest.raises(ConfigError, match="factor_norm"):
        plan_ablation({}, {"trace_norm": [True]})
    with pytest.raises(ConfigError, match="'nesterov' is now momentum_style"):
        resolve({"nesterov": "on"})  # not an old file's boolean: a person's typing


def test_an_old_name_in_a_spec_file_is_one_line(tmp_path):
    spec = tmp_path / "old.toml"
    spec.write_text("[sweep]\nnesterov = [true, false]\n")
    assert_one_line_error(invoke_cli("ablate", spec, "--dry-run"), "nesterov", "momentum_style")


OLD_CHECKPOINT = Path(__file__).parent / "data" / "mousse-1733ff0" / "step-2"
DEC_2026_RUN = Path(__file__).parents[1] / "fixtures" / "format-2026-12" / "run"


def test_old_run_files_have_the_shapes_todays_readers_check():
    """Checkpoint metadata, env.json and metrics.jsonl that earlier versions wrote (before
    precision, compile and the val loss's standard error were recorded) read back through the
    readers that check their shapes, as a resume reads them."""
    for ckpt in (OLD_CHECKPOINT, DEC_2026_RUN / "checkpoints" / "step-4"):
        meta = trainer_meta(read_checkpoint(ckpt))
        assert "precision" not in meta and "compiled" not in meta and meta["curve"]
    env, records = earlier_logs(DEC_2026_RUN)
    assert env is not None and "precision" not in env and env["seed"] == 0
    assert [r["step"] for r in records] == [1, 2, 3, 4, 4]
    assert "val_loss_se" not in records[-1]


def test_what_runs_recorded_before_the_split_resolves_to_the_tail():
    """A checkpoint's config and an ablation.toml from before `split` held out the corpus tail,
    and resume on it; settings a person gives (no split) get today's default, files."""
    assert config_from_checkpoint(OLD_CHECKPOINT, {})[0].split == "tail"
    assert resolve(compat.recorded(tomlio.load(DEC_2026_RUN / "config.toml"))).split == "tail"
    assert compat.recorded({"split": "files"}) == {"split": "files"}  # recorded: kept
    assert resolve({}).split == "files"
    new = plan_ablation({"alpha": ["0.0", "0.25"]})
    assert new.base["split"] == "files"
    old = new.to_dict()
    del old["base"]["split"]  # as plans from before the split wrote it
    assert AblationPlan.from_dict(old).base["split"] == "tail"
    assert AblationPlan.from_dict(new.to_dict()) == new


def test_an_old_run_resumed_on_the_other_split_is_one_line(tmp_path):
    """Its losses compare only on the split it trained on: `--split files` is refused, and
    nothing of the run dir changes."""
    run = Path(shutil.copytree(DEC_2026_RUN, tmp_path / "old"))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    res = invoke_cli("train", "--resume", run, "--split", "files")
    assert_one_line_error(res, "--split files", "split='tail'")
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


def test_an_ablation_dir_from_before_the_split_continues_on_the_tail(tmp_path):
    """Its plan validated on the tail: today's command (on files) is refused naming the flag that
    continues it, and with that flag the plan is the one recorded."""
    old = plan_ablation({"alpha": ["0.0", "0.25"]}, base={"steps": 2}).to_dict()
    del old["base"]["split"]  # as plans from before the split wrote it
    (tmp_path / "ablation.toml").write_text(tomlio.dumps(old))
    command = ("ablate", "--alpha", "0.0,0.25", "--steps", "2", "--ablation-dir", tmp_path)
    res = invoke_cli(*command, "--dry-run")
    assert_one_line_error(res, "its split is tail", "pass --split tail to continue it")
    assert invoke_cli(*command, "--split", "tail", "--dry-run").exit_code == 0


def test_a_report_of_an_ablation_dir_from_before_the_split_says_the_tail(tmp_path):
    """Its runs' summaries do not say their split; on the builtin corpus it is their plan's."""
    from mousse.experiments.sweep import Ablation, read_plan
    from mousse.train.fileio import write_json

    old = plan_ablation({"alpha": ["0.0"]}, base={"steps": 2}).to_dict()
    del old["base"]["split"]
    (tmp_path / "ablation.toml").write_text(tomlio.dumps(old))
    plan = read_plan(tmp_path / "ablation.toml", "")
    for run in plan.runs:
        curve = [{"step": 2, "val_loss": 2.0, "seconds": 1.0}]
        summary = {"status": "completed", "final_val_loss": 2.0, "steps": 2, "curve": curve}
        write_json(tmp_path / "runs" / run.name / "summary.json", summary)
    results = Ablation(plan, tmp_path).results()
    assert results["splits"] == ["tail"] and {r["split"] for r in results["runs"]} == {"tail"}
    res = invoke_cli("report", tmp_path, "--format", "markdown")
    assert res.exit_code == 0 and "Validation on the corpus tail" in res.stdout, res
