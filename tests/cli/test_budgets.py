"""`--budgets`: one WSD run whose smaller budgets are cooldown branches, each the same, bit for
bit, as that budget's own `--schedule wsd --budget B` run; their layout, results, refusals, and
resuming after a stop or a kill in the stable phase, while a fork is written, or in a branch
(docs/cli.md, Budgets; docs/reliability.md)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from functools import partial
from pathlib import Path

import pytest
from support.cli import (
    FAST,
    FAST_SETTINGS,
    CliResult,
    assert_one_line_error,
    invoke_cli,
    mousse_command,
    read_metrics,
    signal_once_logged,
    summary,
    train_losses,
    val_losses,
)

from mousse.train import trainer
from mousse.train.branches import train_budgets
from mousse.train.checkpoint import list_checkpoints, verify_checksums
from mousse.train.config import ConfigError, resolve
from mousse.train.events import CheckpointSaved, RunFinished, StepLogged
from mousse.train.tomlio import load

# 5, 9 and 17 steps of the FAST shape; forks at steps 4 and 7 (cooldowns of 1 and 2 steps)
BUDGETS = "0.0002,0.0004,0.0008"
SMALL = [(0.0002, 5, 4, "branches/budget-0.0002"), (0.0004, 9, 7, "branches/budget-0.0004")]
TRUNK_STEPS = 17
IN_BRANCH = TRUNK_STEPS + 2  # the StepLogged of step 8, in the second branch (forked at 7)
ARGS = [*FAST, "--eval-every", "3", "--log-every", "1"]
RUN = ["train", *ARGS, "--budgets", BUDGETS]
KEYS = {
    "budget",
    "steps",
    "tokens",
    "tokens_per_param",
    "status",
    "final_val_loss",
    "best_val_loss",
    "run_dir",
}


@pytest.fixture(scope="module")
def whole(tmp_path_factory, builtin_data):
    """An uninterrupted run with budgets, and what `--json` printed."""
    run = tmp_path_factory.mktemp("budgets") / "whole"
    res = invoke_cli(*RUN, "--run-dir", run, "--json")
    assert res.exit_code == 0, res
    return run, res.json()


def losses(run_dir) -> tuple[dict, dict]:
    return train_losses(run_dir), val_losses(run_dir)


def same_run(run_dir, whole_dir) -> None:
    """`run_dir` ended as `whole_dir` did: every budget's losses, bit for bit, and its list."""
    assert losses(run_dir) == losses(whole_dir)
    for *_, rel in SMALL:
        assert losses(run_dir / rel) == losses(whole_dir / rel)
    strip = lambda s: [{k: b[k] for k in KEYS} for b in s["budgets"]]
    assert strip(summary(run_dir)) == strip(summary(whole_dir))
    assert summary(run_dir)["status"] == "completed"


def test_a_budgets_runs_recorded_config_trains_it_again(whole, tmp_path):
    """`--config RUN/config.toml` of a run with budgets (which records its steps and budget,
    those its budgets make) is the same run again, bit for bit; --steps given beside it is not."""
    run, _ = whole
    again = tmp_path / "again"
    res = invoke_cli("train", "--config", run / "config.toml", "--run-dir", again)
    assert res.exit_code == 0, res
    same_run(again, run)
    res = invoke_cli("train", "--config", run / "config.toml", "--steps", "9", "--run-dir", again)
    assert_one_line_error(res, "--steps", "drop --steps")


def test_each_branch_is_its_budgets_own_wsd_run(whole, tmp_path):
    run, _ = whole
    warmup = load(run / "config.toml")["warmup_steps"]
    assert warmup == 1  # warmup_frac of the smallest budget's steps, recorded in steps
    for budget, *_, rel in SMALL:
        alone = tmp_path / f"alone-{budget}"
        res = invoke_cli(
            "train", *ARGS, "--schedule", "wsd", "--budget", budget, "--warmup-steps", warmup,
            "--run-dir", alone,
        )  # fmt: skip
        assert res.exit_code == 0, res
        assert losses(run / rel) == losses(alone)
        assert summary(run / rel)["final_val_loss"] == summary(alone)["final_val_loss"]


def test_a_1_sqrt_cooldown_branch_is_its_budgets_own_1_sqrt_run(whole, tmp_path):
    """--cooldown-shape 1-sqrt holds for the branches too: the 2-step cooldown of budget 0.0004
    is its own 1-sqrt run bit for bit, and not the linear one (its first cooldown step is at
    1 - sqrt(1/2) of the peak, not 1/2)."""
    run, _ = whole
    shape = ["--cooldown-shape", "1-sqrt"]
    curved = tmp_path / "curved"
    assert invoke_cli(*RUN, *shape, "--run-dir", curved).exit_code == 0
    budget, _, fork, rel = SMALL[1]
    alone = tmp_path / "alone"
    res = invoke_cli(
        "train", *ARGS, *shape, "--schedule", "wsd", "--budget", budget, "--warmup-steps", "1",
        "--run-dir", alone,
    )  # fmt: skip
    assert res.exit_code == 0, res
    assert losses(curved / rel) == losses(alone)
    lrs = lambda d: {r["step"]: r["lr"] for r in read_metrics(d) if "lr" in r}
    peak = lrs(alone)[fork]
    assert lrs(alone)[fork + 1] == pytest.approx(peak * (1 - 0.5**0.5))
    assert lrs(run / rel)[fork + 1] == pytest.approx(peak * 0.5)  # the linear one


def test_a_branch_has_every_evaluation_its_own_run_makes_before_its_fork(tmp_path, monkeypatch):
    """Under an evaluation schedule that depends on a run's length (dense over its last 40%),
    a branch's own run evaluates before its fork where the trunk does not: the trunk evaluates
    there for it (its own losses untouched), and the branch stays its own run, bit for bit."""
    from mousse.train import branches, trainer

    plain = trainer.eval_due
    due = lambda s, cfg: plain(s, cfg) or s > 0.6 * cfg.steps
    monkeypatch.setattr(trainer, "eval_due", due)  # the trunk's and its branches' runs
    monkeypatch.setattr(branches, "eval_due", due)
    run = tmp_path / "R"
    assert invoke_cli(*RUN, "--run-dir", run).exit_code == 0
    for budget, _, fork, rel in SMALL:
        alone = tmp_path / f"alone-{budget}"
        res = invoke_cli("train", *ARGS, "--schedule", "wsd", "--budget", budget,
                         "--warmup-steps", 1, "--run-dir", alone)  # fmt: skip
        assert res.exit_code == 0, res
        assert fork in val_losses(alone) and fork % 3  # an evaluation the trunk does not make
        assert losses(run / rel) == losses(alone)
    assert sorted(val_losses(run)) == [s for s in range(TRUNK_STEPS + 1) if s % 3 == 0 or s > 10.2]


def test_the_trunk_is_the_largest_budgets_run_and_lists_every_budget(whole):
    run, printed = whole
    cfg = load(run / "config.toml")
    assert (cfg["schedule"], cfg["budget"], cfg["steps"]) == ("wsd", 0.0008, TRUNK_STEPS)
    budgets = summary(run)["budgets"]
    assert printed["budgets"] == budgets
    assert [b["budget"] for b in budgets] == [0.0002, 0.0004, 0.0008]
    assert [b["steps"] for b in budgets] == [5, 9, TRUNK_STEPS]
    assert [b["run_dir"] for b in budgets] == [rel for *_, rel in SMALL] + ["."]
    for b in budgets:
        assert set(b) == KEYS and b["status"] == "completed"
        where = run / b["run_dir"]
        assert b["final_val_loss"] == summary(where)["final_val_loss"]
        assert b["tokens"] == b["steps"] * 2 * 64
        assert b["tokens_per_param"] == pytest.approx(summary(where)["regime"]["tokens_per_param"])
    for budget, steps, fork, rel in SMALL:  # each an ordinary run dir
        branch = run / rel
        assert {p.name for p in branch.iterdir()} >= {
            "config.toml", "env.json", "metrics.jsonl", "summary.json", "checkpoints"
        }  # fmt: skip
        own = load(branch / "config.toml")
        assert (own["steps"], own["budget"], own.get("budgets")) == (steps, budget, None)
        assert summary(branch)["resumed_from"] == fork


def test_resuming_a_finished_run_trains_nothing_and_lists_the_budgets(whole, tmp_path):
    run = tmp_path / "R"
    shutil.copytree(whole[0], run)
    before = {rel: read_metrics(run / rel) for *_, rel in SMALL}
    res = invoke_cli("train", "--resume", run)
    assert res.exit_code == 0, res
    for budget, steps, *_ in SMALL:
        assert f"budget {budget:g} ({steps} steps" in res.stdout
    assert {rel: read_metrics(run / rel) for *_, rel in SMALL} == before
    same_run(run, whole[0])


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--schedule", "cosine"], ["--schedule cosine", "--schedule wsd"]),
        (["--steps", "20"], ["--steps", "drop --steps"]),
        (["--budget", "0.0008"], ["--budget", "drop --budget"]),
        (["--model", "examples/llama.py:llama"], ["--budgets", "--model"]),
        (["--warmup-steps", "5"], ["warmup of 5 steps", "--warmup-steps"]),
        (["--cooldown", "1"], ["no stable phase", "--cooldown"]),
        (["--nproc", "2"], ["--budgets", "drop --nproc"]),
    ],
)
def test_what_cannot_be_exact_is_refused_in_one_line(tmp_path, args, needles):
    shape = [] if "--model" in args else FAST  # (the GPT's shape flags refused with --model)
    res = invoke_cli("train", *shape, "--budgets", BUDGETS, *args, "--run-dir", tmp_path / "R")
    assert_one_line_error(res, *needles)
    assert not (tmp_path / "R").exists()


@pytest.mark.parametrize(
    ("budgets", "needle"),
    [
        ("0.5,0.5", "0.5 is given twice"),
        ("0.5,-1", "-1"),
        ("0.5,0", "> 0"),
        ("0.5,x", "'x'"),
        ("0.5,", "is not a number"),
        ("1e-15,0.5", "0 steps"),
        ("0.0002,0.00021", "both make 5 steps"),
        ("0.5,inf", "finite"),
    ],
)
def test_bad_budgets_are_one_line(tmp_path, budgets, needle):
    res = invoke_cli("train", *FAST, "--budgets", budgets, "--run-dir", tmp_path / "R")
    assert_one_line_error(res, "budgets", needle)
    assert not (tmp_path / "R").exists()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--budgets", "0.0002,0.0008"], "--budgets 0.0002,0.0004,0.0008"),
        (["--cooldown", "0.5"], "--cooldown 0.2"),
        (["--schedule", "cosine"], "--schedule"),
        (["--steps", "30"], "drop --steps"),
    ],
)
def test_resuming_with_other_budgets_or_schedule_is_refused(whole, tmp_path, args, flag):
    run = tmp_path / "R"
    shutil.copytree(whole[0], run)
    before = (run / "summary.json").read_bytes()
    res = invoke_cli("train", "--resume", run, *args)
    assert_one_line_error(res, flag)
    assert (run / "summary.json").read_bytes() == before


class Killed(BaseException):
    """Ends a run as a kill would: nothing more written, no summary, no checkpoint on the way."""


def train_until(run_dir: Path, when, end=Killed, **settings) -> None:
    """Train the budgets run (and `settings`) in this process until `when(event, count)` says
    so (count: the StepLogged events so far), then stop it (`end` "stop": as Ctrl-C would) or
    raise Killed."""
    import threading

    from mousse.train.trainer import Trainer

    stop, seen = threading.Event(), [0]

    def on_event(event) -> None:
        seen[0] += isinstance(event, StepLogged)
        if when(event, seen[0]):
            if end == "stop":
                stop.set()
            else:
                raise Killed

    flags = {k[2:].replace("-", "_"): v for k, v in zip(ARGS[::2], ARGS[1::2], strict=True)}
    cfg = resolve({**flags, "budgets": BUDGETS, **settings})
    make = partial(Trainer, on_event=on_event, stop=stop)
    with contextlib.suppress(Killed):
        train_budgets(make, cfg, run_dir, stop)


def test_a_stop_in_the_stable_phase_resumes_to_the_same_losses(whole, tmp_path):
    run = tmp_path / "R"
    train_until(run, lambda e, n: isinstance(e, CheckpointSaved), end="stop")  # the first fork
    s = summary(run)
    assert s["status"] == "interrupted" and s["steps"] == SMALL[0][2]
    assert [b["status"] for b in s["budgets"]] == ["pending", "pending", "interrupted"]
    assert all(b["final_val_loss"] is None for b in s["budgets"])
    res = invoke_cli("train", "--resume", run)
    assert res.exit_code == 0, res
    same_run(run, whole[0])


def test_a_kill_while_a_fork_is_written_loses_no_branch(whole, tmp_path):
    """Killed as the first fork's checkpoint is written: it was never published (its temp dir
    is left) and the trunk has no checkpoint past it, so the rerun forks it again."""
    run = tmp_path / "R"
    train_until(run, lambda e, n: isinstance(e, CheckpointSaved))
    branch = run / SMALL[0][3] / "checkpoints"
    os.replace(branch / "step-4", branch / ".step-4-killed")  # as a kill mid-write leaves it
    assert not (run / "summary.json").exists() and not list_checkpoints(run / "checkpoints")
    res = invoke_cli(*RUN, "--resume", "auto", "--run-dir", run)
    assert res.exit_code == 0, res
    same_run(run, whole[0])
    assert not [p for p in branch.iterdir() if p.name.startswith(".")]


def test_checkpoint_rotation_never_reaches_a_fork(tmp_path):
    """Checkpointing every step, keeping one: the trunk keeps its last checkpoint and each
    branch its fork, in its own dir, until it trains on."""
    run = tmp_path / "R"
    finished = lambda e, n: isinstance(e, RunFinished)  # the trunk's: stop before the branches
    train_until(run, finished, end="stop", checkpoint_every=1, keep_checkpoints=1)
    assert [c.name for c in list_checkpoints(run / "checkpoints")] == [f"step-{TRUNK_STEPS}"]
    for _, _, fork, rel in SMALL:
        assert [c.name for c in list_checkpoints(run / rel / "checkpoints")] == [f"step-{fork}"]


def test_a_stop_in_a_branch_resumes_it_alone(whole, tmp_path):
    run = tmp_path / "R"
    train_until(run, lambda e, n: isinstance(e, StepLogged) and n == IN_BRANCH, end="stop")
    s = summary(run)
    assert s["status"] == "interrupted"
    assert [b["status"] for b in s["budgets"]] == ["completed", "interrupted", "completed"]
    assert s["budgets"][1]["final_val_loss"] is None
    trunk = read_metrics(run)
    res = invoke_cli("train", "--resume", run)
    assert res.exit_code == 0, res
    assert read_metrics(run) == trunk  # the trunk is not trained again
    same_run(run, whole[0])


# ---- kills and signals from outside, through the test hook (slow: separate processes) --------


def _published(run: Path) -> list[Path]:
    """The run's and its branches' checkpoint dirs, listed while a live run writes them."""
    while True:
        try:
            return sorted(run.rglob("checkpoints/step-*"))
        except FileNotFoundError:  # a temporary dir renamed away while it was listed
            continue


@pytest.mark.slow
def test_kill_9_at_random_moments_of_a_budgets_run_never_loses_a_budget(whole, tmp_path):
    """SIGKILL at random moments of a budgets run checkpointing every step (forks and branch
    checkpoints included): every checkpoint left verifies, each rerun (`--resume auto` with
    the same flags) goes on, and every budget ends on the uninterrupted run's losses."""
    rng = random.Random(1)
    run, kills = tmp_path / "R", 0
    every = ["--checkpoint-every", "1", "--keep-checkpoints", "2"]
    cmd = [*mousse_command(), *RUN, *every, "--resume", "auto", "--run-dir", str(run)]
    while kills < 6:
        before = _published(run)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while _published(run) == before and proc.poll() is None:  # past start-up: writing
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is not None:  # finished before the kill
            break
        proc.kill()
        proc.communicate(timeout=60)
        kills += 1
        for ckpt in _published(run):
            verify_checksums(ckpt)  # raises on a damaged file
    assert kills >= 3
    final = invoke_cli(*RUN, *every, "--resume", "auto", "--run-dir", run)
    assert final.exit_code == 0, final
    same_run(run, whole[0])
    assert not [p for p in run.rglob("checkpoints/.*")]


def _signalled(run_dir: Path, spec: str, *args: str) -> subprocess.CompletedProcess:
    """`mousse train` of the budgets run signalling itself as MOUSSE_TEST_SIGNAL says."""
    env = {**os.environ, "MOUSSE_TEST_SIGNAL": spec}
    cmd = [*mousse_command(), *map(str, RUN), "--run-dir", str(run_dir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "code", "resume"),
    [
        ("SIGTERM@StepLogged#6", 143, ["train", "--resume", "{run}"]),  # stable phase, past a fork
        ("SIGKILL@CheckpointSaved", -9, [*RUN, "--resume", "auto", "--run-dir", "{run}"]),  # fork
        (f"SIGTERM@StepLogged#{IN_BRANCH}", 143, ["train", "--resume", "{run}"]),  # in a branch
        (f"SIGKILL@StepLogged#{IN_BRANCH}", -9, ["train", "--resume", "{run}"]),
    ],
)
def test_a_signal_or_kill_9_anywhere_resumes_to_the_same_losses(
    whole, tmp_path, spec, code, resume
):
    run = tmp_path / "R"
    proc = _signalled(run, spec)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for b in summary(run)["budgets"] if (run / "summary.json").exists() else []:
        assert (b["status"] == "completed") == (b["final_val_loss"] is not None)
    res = invoke_cli(*[str(a).format(run=run) for a in resume])
    assert res.exit_code == 0, res
    same_run(run, whole[0])


ABLATE = ["ablate", *ARGS, "--optimizer", "mousse", "--budgets", BUDGETS, "--no-timing-pass"]


@pytest.fixture(scope="module")
def whole_ablation(tmp_path_factory, builtin_data):
    """An uninterrupted ablation over budgets (muon, the baseline, and mousse) and its results."""
    root = tmp_path_factory.mktemp("ablation") / "A"
    res = invoke_cli(*ABLATE, "--ablation-dir", root, "--json")
    assert res.exit_code == 0, res
    return root, res.json()


@pytest.mark.slow
@pytest.mark.parametrize("parallel", [1, 2])
def test_an_ablation_over_budgets_stopped_and_rerun_ends_as_an_uninterrupted_one(
    whole_ablation, tmp_path, parallel
):
    """SIGTERM at the 19th logged step (one at a time: inside the baseline's second branch):
    `report` shows no budget of a cut run as a result; the rerun ends every run and budget as
    an uninterrupted ablation does."""
    cut = tmp_path / "B"
    env = {**os.environ, "MOUSSE_TEST_SIGNAL": f"SIGTERM@StepLogged#{IN_BRANCH}"}
    args = [*ABLATE, "--parallel", parallel, "--ablation-dir", cut]
    proc = subprocess.run(
        [*mousse_command(), *map(str, args)], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 143, proc.stderr
    report = no_half_written_budget(cut)
    if parallel == 1:
        runs = {r["name"]: r for r in report.json()["runs"]}
        statuses = [b["status"] for b in runs["muon"]["budgets"]]
        assert statuses == ["completed", "interrupted", "completed"]
        assert "budgets" not in runs["mousse"]  # not started
        assert [b["n"] for b in report.json()["budgets"]] == [1, 0, 1, 0, 0, 0]
    again = invoke_cli(*ABLATE, "--ablation-dir", cut, "--json")
    assert again.exit_code == 0, again
    assert again.json()["budgets"] == whole_ablation[1]["budgets"]
    for name in ("muon", "mousse"):
        same_run(cut / "runs" / name, whole_ablation[0] / "runs" / name)


def no_half_written_budget(root: Path) -> CliResult:
    """`report` of the ablation in `root`, which shows a budget's loss only once it completed."""
    report = invoke_cli("report", root, "--format", "json")
    assert report.exit_code == 0, report
    for run in report.json()["runs"]:
        for b in run.get("budgets", []):
            assert (b["final_val_loss"] is not None) == (b["status"] == "completed"), run
    return report


@pytest.mark.slow
def test_an_ablation_over_budgets_killed_at_parallel_2_ends_as_an_uninterrupted_one(
    whole_ablation, tmp_path
):
    """kill -9 to the process group of `ablate --budgets --parallel 2` (its workers with it),
    twice, each once a run has logged a step more: every checkpoint left verifies, `report`
    never shows a half-written budget, and the rerun ends every run and budget as an
    uninterrupted ablation does."""
    cut = tmp_path / "K"
    cmd = [*mousse_command(), *map(str, [*ABLATE, "--parallel", 2, "--ablation-dir", cut])]
    for _ in range(2):
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        signal_once_logged(proc, cut, signal.SIGKILL)
        no_half_written_budget(cut)
        for ckpt in (cut / "runs").glob("**/checkpoints/step-*"):
            verify_checksums(ckpt)
    again = invoke_cli(*ABLATE, "--ablation-dir", cut, "--json")
    assert again.exit_code == 0, again
    assert again.json()["budgets"] == whole_ablation[1]["budgets"]
    for name in ("muon", "mousse"):
        same_run(cut / "runs" / name, whole_ablation[0] / "runs" / name)


def test_an_ablation_whose_only_divergence_is_a_branch_exits_3_and_says_so(tmp_path, monkeypatch):
    """The 0.0004x branch blown up after its fork (its lr a million times the schedule's) while
    the trunk completes: the run's status is its trunk's, but the ablation exits 3, as `train`
    does, and the convergence table's status names the budget that diverged."""
    real = trainer.lr_factor

    def blown(step, cfg):
        branch = cfg.budgets is None and cfg.steps == SMALL[1][1]
        return 1e6 if branch and step > SMALL[1][2] else real(step, cfg)

    monkeypatch.setattr(trainer, "lr_factor", blown)
    root = tmp_path / "A"
    res = invoke_cli(*ABLATE, "--no-baseline", "--ablation-dir", root, "--json")
    assert res.exit_code == 3, res
    (run,) = res.json()["runs"]
    assert run["status"] == "completed"
    assert [b["status"] for b in run["budgets"]] == ["completed", "diverged", "completed"]
    shown = invoke_cli("report", root, "--format", "markdown")
    assert "completed; 1 budget diverged (0.0004x)" in shown.stdout, shown


def test_a_specs_base_takes_budgets_as_a_list_and_the_plan_shows_their_steps(tmp_path):
    from mousse.experiments.ablation import plan_ablation
    from mousse.experiments.spec import load_spec
    from mousse.experiments.sweep import Ablation
    from mousse_cli.ablate_plan import budgets_text

    spec = tmp_path / "spec.toml"
    shape = "\n".join(f"{k} = {v}" for k, v in FAST_SETTINGS.items())
    spec.write_text(f"[base]\n{shape}\nbudgets = [0.0004, 0.0002]\n[sweep]\nalpha = [0.0]\n")
    loaded = load_spec(spec)
    plan = plan_ablation(loaded["sweeps"], loaded["base"])
    text = budgets_text(Ablation(plan, tmp_path / "A"))
    assert text is not None and "0.0002x 5 steps, 0.0004x 9 steps" in text
    with pytest.raises(ConfigError, match="drop --steps"):
        plan_ablation(loaded["sweeps"], {**loaded["base"], "steps": 10})


FOUR = "0.0001,0.0002,0.0004,0.0008"  # 3, 5, 9 and 17 steps: the least a speedup fit takes


@pytest.mark.slow
def test_a_tuned_ablation_over_budgets_reads_each_budget_at_its_own_lr(tmp_path):
    """`ablate --budgets --tune lr` end to end: each budget's row of the per-budget table and
    of the speedup vs budget is the mean, over the comparison seeds, of that budget's loss in
    the runs at the lr tuned for that budget; the baseline's law gets all four budgets; every
    `report` format, the plot and a gate on the speedup read the results."""
    root = tmp_path / "A"
    args = [*ABLATE[:-3], "--budgets", FOUR, "--seeds", "2", "--tune", "lr=0.01,0.02"]
    res = invoke_cli(*args, "--no-timing-pass", "--ablation-dir", root, "--json")
    assert res.exit_code == 0, res
    results = res.json()
    by_variant = {v["variant"]: v for v in results["variants"]}
    for row in results["budgets"]:
        (tuned,) = [
            t for t in by_variant[row["variant"]]["tuned_by_budget"] if t["budget"] == row["budget"]
        ]
        name = f"{row['variant']}@lr={tuned['tuned']['lr']:.6g}"
        losses = [
            b["final_val_loss"]
            for seed in (0, 1)
            for b in summary(root / "runs" / f"{name}-s{seed}")["budgets"]
            if b["budget"] == row["budget"]
        ]
        assert row["n"] == 2 and row["final_val_loss_mean"] == pytest.approx(sum(losses) / 2)
        if not row["is_baseline"]:
            (speedup,) = [
                s
                for s in by_variant[row["variant"]]["budget_speedups"]
                if s["budget"] == row["budget"]
            ]
            assert speedup["loss"] == pytest.approx(row["final_val_loss_mean"])
    assert by_variant["muon"]["budget_fit"]["budgets"] == [float(b) for b in FOUR.split(",")]
    for fmt, needle in (
        ("table", "speedup vs budget"),
        ("markdown", "## Speedup vs budget"),
        ("csv", "speedup_at_0.0004x"),
        ("json", '"budget_speedups"'),
    ):
        shown = invoke_cli("report", root, "--format", fmt)
        assert shown.exit_code == 0 and needle in shown.stdout, shown
    plot = tmp_path / "f.png"
    gate = invoke_cli("report", root, "--plot", plot, "--expect", "speedup_at(mousse, 0.0004) > 0")
    assert gate.exit_code in (0, 5), gate  # holds or fails on the numbers, never bad input
    assert plot.is_file() and (tmp_path / "f-budgets.png").is_file()


def test_the_live_ablation_view_says_when_a_row_is_a_branch(tmp_path):
    """A run with budgets trains its branches after its own steps: the live row of a branch
    says so, lest its loss (a smaller budget's) read as the run's."""
    from mousse.experiments.runner import RunUpdate
    from mousse.train.events import RunStarted
    from mousse_cli.ablation_view import AblationView

    view = AblationView([], None, live=False)
    view._add("mousse")
    info = {"resumed_from": 7, "n_params": 1}
    for run_dir, status in (
        (tmp_path, "running"),
        (tmp_path / "branches" / "budget-0.0004", "running (budget-0.0004)"),
    ):
        view(RunUpdate("mousse", RunStarted(run_dir, {"steps": 9}, info)))
        assert view._convergence_cells(view.rows["mousse"])[-1] == status


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ('"abc"', "'abc' is not a number"),
        ("true", "budgets"),
        ("{a = 1}", "budgets"),
        ("[[0.0002]]", "is not a number"),
        ('[0.0002, "x"]', "'x' in"),
        ("[0.0002, nan]", "budgets"),
        ("[-1.0]", "budgets"),
    ],
)
def test_bad_budgets_in_a_specs_base_are_one_line(tmp_path, value, needle):
    """A spec's `budgets` of the wrong TOML type or value: one line, exit 2, no dir made."""
    spec = tmp_path / "spec.toml"
    shape = "\n".join(f"{k} = {v}" for k, v in FAST_SETTINGS.items())
    spec.write_text(f"[base]\n{shape}\nbudgets = {value}\n[sweep]\noptimizer = ['mousse']\n")
    for dry in (["--dry-run"], []):
        res = invoke_cli("ablate", spec, *dry, "--ablation-dir", tmp_path / "A")
        assert_one_line_error(res, needle)
        assert not (tmp_path / "A").exists()
