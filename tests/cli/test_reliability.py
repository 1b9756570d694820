"""Never lose a run: run dirs claimed by one run, locks, honest resume, checksummed checkpoints,
SIGTERM, and bad input as one line. Each case is a fault injected on purpose (docs/reliability.md
lists them with what the tool promises)."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.cli import (
    FAST,
    FAST_SETTINGS,
    assert_one_line_error,
    flip_tensor_bytes,
    invoke_cli,
    mousse_command,
    read_metrics,
    summary,
    train_losses,
)

from mousse.train.checkpoint import list_checkpoints, verify_checksums
from mousse.train.events import CheckpointSaved
from mousse.train.rundir import LOCK_FILE, RunInUse, RunLock

RUN = [
    "--steps",
    "6",
    "--checkpoint-every",
    "2",
    "--keep-checkpoints",
    "3",
    "--eval-every",
    "3",
    *FAST,
]


def train(run_dir, *extra):
    return invoke_cli("train", *RUN, "--run-dir", run_dir, *extra)


# ---- a run dir belongs to one run -------------------------------------------------------------


def test_a_fresh_run_never_overwrites_an_earlier_one(tmp_path):
    run = tmp_path / "R"
    assert train(run).exit_code == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    again = train(run)
    assert_one_line_error(again, "already holds a run", f"--resume {run}")
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-2", "step-4", "step-6"]


@pytest.mark.parametrize("target", ["", "file"])
def test_the_current_dir_or_a_file_is_not_a_run_dir(tmp_path, monkeypatch, target):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x")
    assert_one_line_error(train(target), "--run-dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_locked_run_dir_is_refused_naming_its_holder(tmp_path):
    run = tmp_path / "R"
    assert train(run).exit_code == 0
    lock = RunLock(run).acquire()  # another process training it
    try:
        res = invoke_cli("train", "--resume", run, *RUN[:2], "--steps", "8")
        assert_one_line_error(res, "is in use by pid", str(os.getpid()))
        with pytest.raises(RunInUse):
            RunLock(run).acquire()
    finally:
        lock.release()
    assert invoke_cli("train", "--resume", run, "--steps", "8").exit_code == 0


def test_a_dead_processes_lock_is_taken_over(tmp_path):
    run = tmp_path / "R"
    run.mkdir()
    (run / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "gone", "since": "then"}))
    RunLock(run).acquire().release()  # no live holder: flock is free
    assert train(run, "--resume", "auto").exit_code == 0


@pytest.mark.parametrize("then", ["removed", "taken"])
def test_a_run_whose_lock_is_removed_or_taken_stops_before_writing_more(
    tmp_path, monkeypatch, then
):
    """`rm R/.lock` while R trains (and another run taking a new lock there): the run stops at
    its next write, in one line, and writes nothing more (no metrics, checkpoint or summary
    beside the other run's)."""
    from mousse_cli.train_view import TrainView

    run, others = tmp_path / "R", []

    class LockThief(TrainView):
        def __call__(self, event) -> None:
            super().__call__(event)
            if isinstance(event, CheckpointSaved) and event.step == 2:
                (run / LOCK_FILE).unlink()
                if then == "taken":
                    others.append(RunLock(run).acquire())

    monkeypatch.setattr("mousse_cli.train_cmd.TrainView", LockThief)
    res = train(run, "--log-every", "1")
    assert res.exit_code == 2 and "Traceback" not in res.stderr, res  # the error ends the log
    last = res.stderr_lines()[-1]
    assert last.startswith(f"error: the lock file {run / LOCK_FILE} of this run was removed")
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-2"]
    assert {r["step"] for r in read_metrics(run)} == {0, 1, 2}  # 0: its first evaluation
    assert not (run / "summary.json").exists()
    for lock in others:
        lock.release()


def test_a_live_run_before_its_first_checkpoint_is_in_use_not_ended(tmp_path):
    """A run dir holding a live run's first files (no checkpoint yet) is refused as in use by
    that run, not as a run that ended before its first checkpoint."""
    run = tmp_path / "R"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "train_loss": 3.0}\n')
    with RunLock(run).acquire():
        res = train(run)
    assert res.exit_code == 2 and "is in use by pid" in res.stderr, res
    assert "ended" not in res.stderr


@pytest.mark.slow
def test_two_runs_started_together_never_share_a_dir(tmp_path):
    """Two real processes on one run dir: exactly one trains it."""
    run = tmp_path / "R"
    cmd = [*mousse_command(), "train", *RUN, "--steps", "40", "--run-dir", str(run)]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = outs[[p.returncode for p in procs].index(2)][1]
    assert "already holds a run" in loser or "is in use by" in loser
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # one run's log, not two interleaved


# ---- resume is honest ---------------------------------------------------------------------------


def test_resume_refuses_a_knob_the_optimizer_state_would_override(tmp_path):
    run = tmp_path / "R"
    assert train(run).exit_code == 0
    res = invoke_cli("train", "--resume", run, "--steps", "8", "--momentum", "0.5")
    assert_one_line_error(res, "--momentum 0.5", "momentum=0.8", "start a new run")
    res = invoke_cli("train", "--resume", run, "--steps", "8", "--sides", "left")
    assert_one_line_error(res, "--sides left")
    ok = invoke_cli("train", "--resume", run, "--steps", "8", "--lr", "0.01")
    assert ok.exit_code == 0
    assert "lr = 0.01" in (run / "config.toml").read_text()


def test_resuming_an_earlier_checkpoint_sets_the_later_ones_aside(tmp_path):
    run = tmp_path / "R"
    assert train(run).exit_code == 0
    res = invoke_cli("train", "--resume", run / "checkpoints" / "step-2", "--run-dir", run)
    assert res.exit_code == 0, res.stderr
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-2", "step-4", "step-6"]
    abandoned = sorted(p.name.split("-2")[0] for p in (run / "checkpoints" / "abandoned").iterdir())
    assert abandoned == ["step-4", "step-6"]


def test_an_abandoned_checkpoint_is_resumed_only_into_a_run_dir_of_its_own(tmp_path):
    """`--resume R/checkpoints/abandoned/step-4-...` does not make R/checkpoints a run dir, nor
    continue R (whose log is of another trajectory): refused, with --run-dir NEW as the way."""
    run = tmp_path / "R"
    assert train(run).exit_code == 0
    assert invoke_cli("train", "--resume", run / "checkpoints" / "step-2").exit_code == 0
    set_aside = sorted((run / "checkpoints" / "abandoned").iterdir())[0]
    before = _files(run)
    res = invoke_cli("train", "--resume", set_aside)
    assert_one_line_error(res, f"checkpoint {set_aside} is not in a run dir", "--run-dir NEW")
    res = invoke_cli("train", "--resume", set_aside, "--run-dir", run)
    assert_one_line_error(res, f"run dir {run} already holds a run")
    assert _files(run) == before
    assert not (run / "checkpoints" / LOCK_FILE).exists()
    res = invoke_cli("train", "--resume", set_aside, "--run-dir", tmp_path / "NEW", "--json")
    assert res.exit_code == 0 and res.json()["resumed_from"] == 4, res


# ---- damaged checkpoints ------------------------------------------------------------------------


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path):
    run = tmp_path / "R"
    assert train(run).exit_code == 0
    flip_tensor_bytes(run / "checkpoints" / "step-6" / "model.safetensors")
    res = invoke_cli("train", "--resume", run, "--steps", "8")
    assert res.exit_code == 0, res.stderr
    assert "step-6/model.safetensors is damaged" in res.stderr and "falling back" in res.stderr
    assert "resumed at step 4" in res.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"] == 4


def test_every_checkpoint_damaged_is_one_line(tmp_path):
    run = tmp_path / "R"
    assert train(run).exit_code == 0
    for ckpt in list_checkpoints(run / "checkpoints"):
        flip_tensor_bytes(ckpt / "optimizer.safetensors")
    res = invoke_cli("train", "--resume", run, "--steps", "8")
    assert "every checkpoint" in res.stderr and res.exit_code == 2


def _latest_step(run) -> int:
    ckpts = list_checkpoints(run / "checkpoints") if (run / "checkpoints").is_dir() else []
    return int(ckpts[-1].name.removeprefix("step-")) if ckpts else 0


@pytest.mark.slow
def test_kill_9_at_random_points_of_checkpoint_writes_never_loses_the_run(tmp_path):
    """SIGKILL at random moments of a run that checkpoints every step, so most kills land in or
    near a write: every checkpoint left in place verifies, each rerun resumes from the last one,
    and the run ends where an uninterrupted one does, bit for bit."""
    rng = random.Random(0)
    settings = [
        *FAST,
        "--steps",
        "60",
        "--eval-every",
        "60",
        "--log-every",
        "1",
        "--checkpoint-every",
        "1",
        "--keep-checkpoints",
        "2",
    ]
    whole = tmp_path / "whole"
    assert invoke_cli("train", *settings, "--run-dir", whole).exit_code == 0
    run, kills = tmp_path / "R", 0
    cmd = [*mousse_command(), "train", *settings, "--run-dir", str(run)]
    while kills < 6:
        before = _latest_step(run)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while _latest_step(run) <= before and proc.poll() is None:  # past start-up: writing
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.2))
        if proc.poll() is not None:  # finished before the kill
            break
        proc.kill()
        proc.communicate(timeout=60)
        kills += 1
        for ckpt in list_checkpoints(run / "checkpoints"):
            verify_checksums(ckpt)  # raises on a damaged file
        cmd = [*mousse_command(), "train", "--resume", str(run)]
    assert kills >= 3
    final = invoke_cli("train", "--resume", run)
    assert final.exit_code == 0, final
    assert summary(run)["status"] == "completed" and summary(run)["steps"] == 60
    assert summary(run)["final_val_loss"] == summary(whole)["final_val_loss"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_killed_checkpoint_writes_leave_no_temp_dirs(tmp_path):
    run = tmp_path / "R"
    assert train(run).exit_code == 0
    stale = run / "checkpoints" / ".step-7-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    assert invoke_cli("train", "--resume", run, "--steps", "8").exit_code == 0
    assert not stale.exists()


# ---- signals ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_143_then_resumes(tmp_path):
    run = tmp_path / "R"
    cmd = [
        *mousse_command(),
        "train",
        *FAST,
        "--steps",
        "400",
        "--log-every",
        "1",
        "--checkpoint-every",
        "1000",
        "--run-dir",
        str(run),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() or "step" not in (run / "metrics.jsonl").read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] < 400
    assert list_checkpoints(run / "checkpoints")[-1].name == f"step-{summary['steps']}"
    again = invoke_cli("train", "--resume", run)
    assert again.exit_code == 0 and json.loads((run / "summary.json").read_text())["steps"] == 400


@pytest.mark.slow
def test_sigterm_to_a_parallel_ablations_process_group_checkpoints_every_run(tmp_path):
    """`timeout`, Slurm and a terminal signal the whole process group, workers included: each
    worker leaves the stopping to the parent, so every run checkpoints and the rerun resumes."""
    root = tmp_path / "A"
    cmd = [
        *mousse_command(),
        "ablate",
        *FAST,
        "--alpha",
        "0.0",
        "--steps",
        "400",
        "--log-every",
        "1",
        "--checkpoint-every",
        "1000",
        "--parallel",
        "2",
        "--no-timing-pass",
        "--ablation-dir",
        str(root),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 180
    metrics = [root / "runs" / name / "metrics.jsonl" for name in ("muon", "mousse", "alpha=0.0")]
    while sum(m.exists() and '"step"' in m.read_text() for m in metrics) < 2:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    started = [m.parent for m in metrics if m.exists()]
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    for run in started:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "interrupted", (run.name, summary["status"])
        assert list_checkpoints(run / "checkpoints")[-1].name == f"step-{summary['steps']}"
    # the run the pool had queued does not start after the signal: no dir, no "0 steps" line
    (queued,) = [m.parent for m in metrics if m.parent not in started]
    assert not queued.exists() and "after 0 steps" not in err


def _parallel_ablation(root, steps: int) -> subprocess.Popen:
    """`ablate --parallel 2` of three runs in a session of its own, started in the background."""
    cmd = [
        *mousse_command(),
        "ablate",
        *FAST,
        "--alpha",
        "0.0",
        "--steps",
        str(steps),
        "--log-every",
        "1",
        "--checkpoint-every",
        "10",
        "--parallel",
        "2",
        "--no-timing-pass",
        "--ablation-dir",
        str(root),
    ]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _workers(parent: int) -> list[int]:
    """The worker processes `parent` spawned (Linux: /proc)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [
        int(pid)
        for pid in children
        if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    ]


def _wait_for_training(proc, root, runs: int) -> None:
    """Until `runs` runs of the ablation in `root` have logged a step."""
    deadline = time.monotonic() + 120
    metrics = (root / "runs").glob("*/metrics.jsonl")
    while sum('"step"' in m.read_text() for m in metrics) < runs:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
        metrics = (root / "runs").glob("*/metrics.jsonl")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"  # a zombie has ended; only its parent's wait is missing


@pytest.mark.slow
def test_workers_of_a_parallel_ablation_die_with_their_parent(tmp_path):
    """kill -9 of the parent: no orphan trains on (the kernel's parent-death signal)."""
    proc = _parallel_ablation(tmp_path / "A", steps=2000)
    _wait_for_training(proc, tmp_path / "A", runs=2)
    workers = _workers(proc.pid)
    assert len(workers) == 2
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers):
        assert time.monotonic() < deadline, "a worker outlived its parent"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_killed_worker_fails_its_run_alone(tmp_path):
    """kill -9 of one worker (the OOM killer): its run is failed in one line, the others
    finish, the exit code says a run failed (6), and the rerun resumes the failed run."""
    root = tmp_path / "A"
    proc = _parallel_ablation(root, steps=60)
    _wait_for_training(proc, root, runs=2)
    victim = _workers(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 6, err
    assert "Traceback" not in err and "BrokenProcessPool" not in err
    statuses = {d.name: summary(d)["status"] for d in (root / "runs").iterdir()}
    assert sorted(statuses.values()) == ["completed", "completed", "failed"], statuses
    (failed,) = [name for name, status in statuses.items() if status == "failed"]
    assert f"[{failed}] failed: its worker process ended with signal SIGKILL" in err
    again = invoke_cli(
        "ablate",
        *FAST,
        "--alpha",
        "0.0",
        "--steps",
        "60",
        "--log-every",
        "1",
        "--checkpoint-every",
        "10",
        "--no-timing-pass",
        "--ablation-dir",
        root,
    )
    assert again.exit_code == 0, again
    assert summary(root / "runs" / failed)["status"] == "completed"


def test_an_ablation_that_skipped_a_run_another_process_holds_exits_4(tmp_path):
    """The run left to another process is missing from the results: exit 4, saying so."""
    root = tmp_path / "A"
    (root / "runs" / "mousse").mkdir(parents=True)
    lock = RunLock(root / "runs" / "mousse").acquire()  # another process training it
    try:
        res = invoke_cli(
            "ablate",
            *FAST,
            "--alpha",
            "0.0",
            "--no-baseline",
            "--steps",
            "2",
            "--no-timing-pass",
            "--ablation-dir",
            root,
        )
    finally:
        lock.release()
    assert res.exit_code == 4, res
    assert "waits for 1 run that other shards or processes train (mousse)" in res.stderr
    assert "--run-dir" not in res.stderr  # `ablate` has none


ABLATE = ["ablate", *FAST, "--alpha", "0.0", "--no-baseline", "--steps", "2", "--no-timing-pass"]


@pytest.mark.parametrize("target", ["file", "inside-a-file", "train-run", "user-files"])
def test_an_ablation_dir_train_would_refuse_is_refused_before_the_plan(tmp_path, target):
    """A file, a path inside one, a train run's dir, a dir of one's own files: one line naming
    --ablation-dir before the plan and estimate, nothing written (as `train` refuses them)."""
    (tmp_path / "file").write_text("x")
    if target == "train-run":
        assert train(tmp_path / "R").exit_code == 0
    (tmp_path / "U").mkdir()
    (tmp_path / "U" / "notes.txt").write_text("mine")
    where = {"file": "file", "inside-a-file": "file/A", "train-run": "R", "user-files": "U"}
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    res = invoke_cli(*ABLATE, "--ablation-dir", tmp_path / where[target], "--dry-run")
    assert_one_line_error(res, f"--ablation-dir {tmp_path / where[target]}")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_run_dir_of_ones_own_files_in_an_ablation_advises_the_ablation_dir(tmp_path):
    """`ablate` has no --run-dir: a run dir it may not use says --ablation-dir."""
    (tmp_path / "A" / "runs" / "mousse").mkdir(parents=True)
    (tmp_path / "A" / "runs" / "mousse" / "notes.txt").write_text("mine")
    res = invoke_cli(*ABLATE, "--ablation-dir", tmp_path / "A")
    assert "pass another --ablation-dir" in res.stderr and "--run-dir" not in res.stderr, res
    assert (tmp_path / "A" / "runs" / "mousse" / "notes.txt").read_text() == "mine"


def test_a_second_sigterm_aborts_with_143():
    """The second signal aborts at once, with its own shell code (143, not Ctrl-C's 130)."""
    from mousse_cli.interrupts import graceful_stop

    with pytest.raises(SystemExit) as exit_info, graceful_stop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5) and stop.signal == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here
    assert exit_info.value.code == 143


def test_a_stop_in_a_long_step_drops_it_and_the_run_resumes_from_the_step_before(
    builtin_data, tmp_path, monkeypatch
):
    """A Ctrl-C that would wait hours for the step to end stops at the next micro batch: the
    step is dropped, the step before is kept (checkpointed), the notice says where the run
    resumes, and the resumed run ends where an uninterrupted one does."""
    import threading

    import mousse.train.trainer as trainer_module
    from mousse.train.config import resolve
    from mousse.train.events import Notice
    from mousse.train.trainer import Trainer

    settings = {**FAST_SETTINGS, "batch_size": 8, "steps": 4, "eval_every": 4, "log_every": 1}
    whole = Trainer(resolve(settings), tmp_path / "whole").run()
    stop, notices, batch = threading.Event(), [], trainer_module.train_batch

    def stop_in_step_3(data, seed, step, *rest):
        if step == 3:
            stop.set()  # Ctrl-C during step 3's first micro batch (of 4)
        return batch(data, seed, step, *rest)

    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "STOP_WAIT_S", 0.0)  # every step counts as long
        patch.setattr(trainer_module, "train_batch", stop_in_step_3)
        cut = Trainer(
            resolve(settings),
            tmp_path / "cut",
            on_event=lambda e: notices.append(e.text) if isinstance(e, Notice) else None,
            stop=stop,
        ).run()
    assert cut["status"] == "interrupted" and cut["steps"] == 2
    assert len(notices) == 1 and "stopped in step 3 after 1 of 4 micro batches" in notices[0]
    assert notices[0].endswith("the run resumes from step 2")
    assert list_checkpoints(tmp_path / "cut" / "checkpoints")[-1].name == "step-2"
    again = Trainer(resolve(settings), tmp_path / "cut", resume=tmp_path / "cut").run()
    assert again["final_val_loss"] == whole["final_val_loss"]
    assert train_losses(tmp_path / "cut") == train_losses(tmp_path / "whole")


def test_a_reader_that_goes_away_does_not_stop_the_run(tmp_path):
    """`mousse train ... 2>&1 | head -3`: head exits, and the run trains on to its summary
    (a BrokenPipeError used to end it with exit 1, no summary and a dir that refused a rerun)."""
    run = tmp_path / "R"
    cmd = [*mousse_command(), "train", *FAST, "--steps", "100", "--log-every", "1"]
    proc = subprocess.Popen(
        [*cmd, "--run-dir", str(run)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    for _ in range(3):
        proc.stdout.readline()
    proc.stdout.close()  # what head does after its lines
    assert proc.wait(timeout=300) == 0
    assert summary(run)["status"] == "completed" and summary(run)["steps"] == 100


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("command", ["--version", "report", "train"])
def test_stdout_on_a_full_device_is_one_line(tmp_path, command):
    """`mousse ... > /dev/full`: one line naming stdout, exit 2 (was a traceback, exit 1); a run
    trains to its summary first."""
    from support.results import results_file

    args = {
        "--version": ["--version"],
        "report": ["report", str(results_file(tmp_path / "results.json"))],
        "train": ["train", *FAST, "--steps", "2", "--run-dir", str(tmp_path / "R")],
    }[command]
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [*mousse_command(), *args], stdout=full, stderr=subprocess.PIPE, text=True, timeout=300
        )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[-1].startswith("error: cannot write the output to stdout"), proc.stderr
    if command == "train":
        assert summary(tmp_path / "R")["status"] == "completed"


HAS_TRITON = importlib.util.find_spec("triton") is not None
# (point, signal) in order of start-up; `import:M` signals as M's import begins, `import:E>M`
# as M's does inside E's: a C++ extension's initialization (triton's aborted the process, exit
# 134; torch's swallowed the Ctrl-C and trained on)
START_UP = [
    ("start", "SIGINT"),  # before any import of the command's
    ("import:torch", "SIGTERM"),
    ("import:torch._C>numpy", "SIGINT"),
    *[(p, "SIGINT") for p in ("import:triton", "import:triton._C.libtriton>enum") if HAS_TRITON],
    ("command", "SIGTERM"),  # the imports done, the command about to parse its flags
    ("import:mousse.train.estimate", "SIGINT"),  # the cost estimate: data read, model on meta
]
# once the run takes the signals over: (point, signal, the steps it stops after)
TRAINING = [
    ("import:mousse.train.trainer", "SIGTERM", 0),  # the trainer about to read data, build
    ("RunStarted", "SIGINT", 0),  # the run dir made, the first step next
    ("StepLogged", "SIGTERM", 1),  # the first step done
]


SIGNALLED_RUN = ["train", *FAST, "--steps", "4", "--log-every", "1"]


def _train_signalled_at(tmp_path, point: str, sig: str, *flags: str):
    """`mousse train` (4 fast steps, and `flags`) signalling itself with `sig` at `point`:
    checked to have got there, once, and to end with the signal's exit code and no traceback
    or crash."""
    args = [*SIGNALLED_RUN, *flags, "--run-dir", tmp_path / "R"]
    log = tmp_path / "signalled"
    env = {**os.environ, "MOUSSE_TEST_SIGNAL": f"{sig}@{point}", "MOUSSE_TEST_SIGNAL_LOG": str(log)}
    proc = subprocess.run(
        [*mousse_command(), *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )
    assert log.exists() and log.read_text() == f"{point}\n", proc.stderr
    assert proc.returncode == 128 + signal.Signals[sig], proc.stderr
    for crash in ("Traceback", "terminate called", "Error", "Aborted"):
        assert crash not in proc.stderr + proc.stdout, proc.stderr
    return proc


@pytest.mark.parametrize(("point", "sig"), START_UP)
def test_a_signal_during_start_up_is_one_line_and_its_exit_code(builtin_data, tmp_path, point, sig):
    """Ctrl-C or SIGTERM at each named point of `mousse train`'s start-up, sent by the process
    itself there (so the same under any load), inside the C++ extensions' imports included:
    exit 130 or 143 with one line, nothing written."""
    proc = _train_signalled_at(tmp_path, point, sig)
    name = "Ctrl-C" if sig == "SIGINT" else sig
    assert proc.stderr.splitlines()[-1] == f"interrupted by {name}", proc.stderr
    assert proc.stderr.count("interrupted") == 1, proc.stderr
    assert not (tmp_path / "R").exists()


@pytest.mark.slow  # trains twice
@pytest.mark.parametrize(("point", "sig", "steps"), TRAINING)
def test_a_signal_once_the_run_starts_stops_it_resumably(builtin_data, tmp_path, point, sig, steps):
    """The same once the run has taken the signals over: it stops after the current step (none
    yet: before the first), exit 130 or 143, and `--resume auto` finishes it."""
    proc = _train_signalled_at(tmp_path, point, sig)
    name = "Ctrl-C" if sig == "SIGINT" else sig
    assert f"{name}: stopping after this step" in proc.stderr, proc.stderr
    run = tmp_path / "R"
    assert summary(run)["status"] == "interrupted" and summary(run)["steps"] == steps
    again = invoke_cli(*SIGNALLED_RUN, "--resume", "auto", "--run-dir", run)
    assert again.exit_code == 0 and summary(run)["steps"] == 4, again


def test_the_test_signal_fires_once_at_its_point_only(tmp_path, monkeypatch):
    """MOUSSE_TEST_SIGNAL's points: an event point is not an import (a relative import's empty
    name included), `import:E>M` fires only inside E's import, and each fires once."""
    from mousse_cli import startup

    sent: list[int] = []
    monkeypatch.setattr(startup.os, "kill", lambda pid, sig: sent.append(sig))
    monkeypatch.setenv("MOUSSE_TEST_SIGNAL_LOG", str(tmp_path / "log"))
    monkeypatch.setenv("MOUSSE_TEST_SIGNAL", "SIGINT@RunStarted")
    for name in ("", "RunStarted"):
        startup._reached_import(name)
    startup.reached("StepLogged")
    assert sent == []
    startup.reached("RunStarted")
    startup.reached("RunStarted")
    assert sent == [signal.SIGINT]
    monkeypatch.setenv("MOUSSE_TEST_SIGNAL", "SIGTERM@import:torch._C>numpy")
    monkeypatch.setattr(startup._State, "importing", ["numpy"])
    startup._reached_import("numpy")  # not inside torch._C
    monkeypatch.setattr(startup._State, "importing", ["torch", "torch._C", "numpy"])
    startup._reached_import("numpy")
    assert sent == [signal.SIGINT, signal.SIGTERM]
    assert (tmp_path / "log").read_text() == "RunStarted\nimport:torch._C>numpy\n"


def test_the_test_signal_counts_its_point_when_told(tmp_path, monkeypatch):
    """`SIG@POINT#N` fires at the N-th time POINT is reached, once (a point inside a later part
    of a run: a budgets run's branch)."""
    from mousse_cli import startup

    sent: list[int] = []
    monkeypatch.setattr(startup.os, "kill", lambda pid, sig: sent.append(sig))
    monkeypatch.setattr(startup._State, "reached", 0)
    monkeypatch.setenv("MOUSSE_TEST_SIGNAL_LOG", str(tmp_path / "log"))
    monkeypatch.setenv("MOUSSE_TEST_SIGNAL", "SIGKILL@StepLogged#3")
    for point in ("StepLogged", "RunStarted", "StepLogged"):
        startup.reached(point)
    assert sent == []
    for _ in range(3):
        startup.reached("StepLogged")
    assert sent == [signal.SIGKILL]
    assert (tmp_path / "log").read_text() == "StepLogged\n"


@pytest.mark.slow  # torch.compile
def test_a_signal_while_compiling_stops_the_run(builtin_data, tmp_path):
    """Ctrl-C as `--compile on` imports inductor (the compiler's C++ side): the run stops, 130."""
    point = "import:torch._inductor.compile_fx"
    proc = _train_signalled_at(tmp_path, point, "SIGINT", "--compile", "on")
    assert "Ctrl-C: stopping after this step" in proc.stderr, proc.stderr
    assert summary(tmp_path / "R")["status"] == "interrupted"


RESULTS_FILE = Path(__file__).parents[1] / "fixtures" / "format-2026-12" / "results.json"
COMPILERS = ("triton", "torch._dynamo", "torch._inductor", "sympy", "transformers", "matplotlib")


@pytest.mark.parametrize(
    "args", [["--help"], ["train", "--help"], ["report", str(RESULTS_FILE), "--format", "json"]]
)
def test_commands_that_build_no_model_import_no_compiler(args):
    """Help and `report` (without --plot) never import triton, torch's compiler or
    transformers: their start-up stays short and no signal can meet those imports there
    (`train`, `ablate`, `bench` and `presets` do: torch.optim's optimizers import torch._dynamo)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mousse_cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = {
        line.rpartition("|")[2].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "torch" in imported  # the measure works
    heavy = sorted(m for m in imported if m.partition(".")[0] in COMPILERS or m in COMPILERS)
    assert not heavy


# ---- model code named in a file runs only when the user says so ----------------------------------


def _refuse_import(spec):
    """Stands in for the model import: a refusal must come before it."""
    raise AssertionError(f"imported {spec}")


def test_a_run_dirs_model_code_is_imported_only_when_trusted(cli, tmp_path, monkeypatch):
    """`train --resume R` of a run someone sent: their model file is not run unless named
    again with --model or trusted with --trust-model-code."""
    from support.usermodel import FAST as MODEL_FAST
    from support.usermodel import LLAMA, SMALL

    run = tmp_path / "R"
    first = cli("train", "--model", LLAMA, *SMALL, *MODEL_FAST, "--steps", "2", "--run-dir", run)
    assert first.exit_code == 0, first
    with monkeypatch.context() as patch:  # refused before anything imports it
        patch.setattr("mousse.train.usermodel.load_factory", _refuse_import)
        refused = cli("train", "--resume", run, "--steps", "3")
        assert_one_line_error(refused, "llama.py:llama", "--trust-model-code", f"--model {LLAMA}")
    assert summary(run)["steps"] == 2
    assert cli("train", "--resume", run, "--steps", "3", "--model", LLAMA).exit_code == 0
    assert cli("train", "--resume", run, "--steps", "4", "--trust-model-code").exit_code == 0
    assert summary(run)["steps"] == 4


def test_a_spec_or_config_that_names_model_code_needs_the_flag(cli, tmp_path, monkeypatch):
    """`ablate spec.toml --dry-run` and `train --config c.toml`: a file someone sent."""
    monkeypatch.setattr("mousse.train.usermodel.load_factory", _refuse_import)
    spec, conf = tmp_path / "spec.toml", tmp_path / "c.toml"
    spec.write_text('[base]\nmodel = "evil.py:make"\n[sweep]\noptimizer = ["muon"]\n')
    conf.write_text('model = "evil.py:make"\n')
    assert_one_line_error(cli("ablate", spec, "--dry-run"), str(spec), "evil.py:make", "--trust")
    refused = cli("train", "--config", conf, "--run-dir", tmp_path / "R")
    assert_one_line_error(refused, str(conf), "evil.py:make", "--trust-model-code")
    assert not (tmp_path / "R").exists()


def test_model_code_in_a_specs_tune_table_needs_the_flag(cli, tmp_path, monkeypatch):
    """[tune] names code as [base] and [sweep] do: refused on --dry-run already."""
    monkeypatch.setattr("mousse.train.usermodel.load_factory", _refuse_import)
    spec = tmp_path / "spec.toml"
    spec.write_text(
        '[sweep]\noptimizer = ["muon"]\n'
        '[tune]\nknobs = ["model"]\nmodel = ["evil.py:make", "evil.py:make2"]\n'
    )
    assert_one_line_error(cli("ablate", spec, "--dry-run"), str(spec), "evil.py:make", "--trust")
    refused = cli("ablate", "--optimizer", "muon", "--tune", "model=evil.py:a,evil.py:b")
    assert_one_line_error(refused, "--tune", "evil.py:a", "--trust-model-code")


def test_named_models_finds_every_table_that_names_code():
    from mousse.experiments.ablation import plan_ablation
    from mousse.experiments.inputs import tune_spec
    from mousse_cli.trust import named_models

    tune = tune_spec([("model", ["t.py:a", "t.py:b"])])
    plan = plan_ablation({"model": ["s.py:a"]}, base={"model": "b.py:a"}, tune=tune)
    assert named_models(plan.to_dict()) == {"t.py:a", "t.py:b", "s.py:a", "b.py:a"}
    assert named_models({"model": None, "base": {"model_config": "model=x"}}) == set()


def test_report_retime_imports_an_ablations_model_code_only_when_trusted(
    cli, tmp_path, monkeypatch
):
    from mousse.experiments.ablation import plan_ablation
    from mousse.experiments.inputs import tune_spec
    from mousse.train import tomlio

    monkeypatch.setattr("mousse.train.usermodel.load_factory", _refuse_import)
    plan = plan_ablation({"alpha": [0.0]}, base={"model": "evil.py:make"})
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "ablation.toml").write_text(tomlio.dumps(plan.to_dict()))
    refused = cli("report", tmp_path / "A", "--retime")
    assert_one_line_error(refused, "ablation.toml", "evil.py:make", "--trust-model-code")
    tune = tune_spec([("model", ["evil.py:t1", "evil.py:t2"])])
    plan = plan_ablation({"alpha": [0.0]}, tune=tune)
    (tmp_path / "A" / "ablation.toml").write_text(tomlio.dumps(plan.to_dict()))
    refused = cli("report", tmp_path / "A", "--retime")
    assert_one_line_error(refused, "ablation.toml", "evil.py:t1", "--trust-model-code")


# ---- strict JSON and permissions ---------------------------------------------------------------


def test_a_diverged_run_writes_strict_json(tmp_path):
    run = tmp_path / "R"
    res = invoke_cli(
        "train",
        *FAST,
        "--steps",
        "6",
        "--lr",
        "1e6",
        "--scalar-lr",
        "1e6",
        "--run-dir",
        run,
        "--json",
    )
    assert res.exit_code == 3
    for text in (res.stdout, (run / "summary.json").read_text()):
        assert "NaN" not in text and "Infinity" not in text
        assert json.loads(text)["status"] == "diverged"
    metrics = run / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))


def test_run_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        run = tmp_path / "R"
        assert train(run).exit_code == 0
    finally:
        os.umask(old)
    assert (run / "summary.json").stat().st_mode & 0o777 == 0o644
    assert (run / "checkpoints" / "step-6").stat().st_mode & 0o777 == 0o755
    for path in (run / "checkpoints" / "step-6").iterdir():  # the tensors too
        assert path.stat().st_mode & 0o777 == 0o644, path.name


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--config", "."], "Is a directory"),
        (["--run-dir", "file/run"], "lies inside the file"),
    ],
)
def test_file_system_errors_are_one_line_exit_2(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x")
    assert_one_line_error(invoke_cli("train", *FAST, "--steps", "2", *args), needle)


def test_resume_auto_on_an_empty_dir_starts_the_run(tmp_path):
    run = tmp_path / "R"
    run.mkdir()
    res = invoke_cli("train", *RUN, "--run-dir", run, "--resume", "auto")
    assert res.exit_code == 0 and json.loads((run / "summary.json").read_text())["steps"] == 6


@pytest.mark.slow
def test_a_corrupt_checkpoint_fails_its_ablation_run_alone(tmp_path):
    root = tmp_path / "abl"
    args = [
        "ablate",
        "--alpha",
        "0.0",
        "--no-baseline",
        "--steps",
        "4",
        "--checkpoint-every",
        "2",
        *FAST,
        "--ablation-dir",
        root,
        "--no-timing-pass",
    ]
    assert invoke_cli(*args).exit_code == 0
    victim = root / "runs" / "mousse"
    (victim / "summary.json").unlink()  # as if killed before it finished
    for ckpt in list_checkpoints(victim / "checkpoints"):
        flip_tensor_bytes(ckpt / "model.safetensors")
    shutil.rmtree(root / "runs" / "alpha=0.0")
    res = invoke_cli(*args)
    summaries = {
        d.name: json.loads((d / "summary.json").read_text()) for d in (root / "runs").iterdir()
    }
    assert summaries["mousse"]["status"] == "failed" and "damaged" in summaries["mousse"]["message"]
    assert summaries["alpha=0.0"]["status"] == "completed", res.stderr
    assert res.exit_code == 6  # a run failed: not 0


# ---- bad input: one line, exit 2, nothing written ------------------------------------------------


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            ["ablate", "--alpha", "0.0", "--seeds", "99999999999999999999", "--dry-run"],
            "at most 1000",
        ),
        (["ablate", "--alpha", "0.0", "--seeds", "100000000", "--dry-run"], "at most 1000"),
        (["train", "--seed", "99999999999999999999"], "'seed'"),
        (["train", "--lr", "nan"], "finite number"),
        (["train", "--target-loss", "nan"], "'target_loss'"),
        (["train", "--target-loss", "-inf"], "'target_loss'"),
        (["train", "--max-hours", "nan"], "--max-hours"),
        (["train", "--steps", "100000000000000000000"], "at most 1,000,000,000"),
        (["ablate", "--alpha", "0.0", "--timing-budget", "-5"], "--timing-budget"),
        (["ablate", "--alpha", "0.0", "--timing-budget", "nan"], "--timing-budget"),
        (["report", "nowhere", "--retime", "--timing-budget", "nan"], "--timing-budget"),
        (["ablate", "--alpha", "0.0", "--ablation-dir", "", "--dry-run"], "--ablation-dir"),
        (["ablate", "--alpha", "0.0", "--shard", "", "--dry-run"], "--shard"),
    ],
)
def test_out_of_range_numbers_are_one_line(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(invoke_cli(*args), needle)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--data", "--val-data"])
def test_an_empty_data_path_is_not_the_current_dir(tmp_path, monkeypatch, flag):
    """`--data ""` named no corpus; it is refused, not read as the current directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("the current directory holds a corpus. " * 2000)
    other = [] if flag == "--data" else ["--data", "notes.txt"]
    res = invoke_cli("train", *FAST, "--steps", "1", *other, flag, "", "--run-dir", "R")
    assert_one_line_error(res, f"bad value for '{flag[2:].replace('-', '_')}': empty")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    "shape,needle",
    [
        (["--d-model", "1000000000000"], "more than any machine holds"),
        (["--n-layers", "1000000"], "weights and gradients alone"),
    ],
)
def test_a_model_far_too_big_is_refused_before_it_is_built(tmp_path, monkeypatch, shape, needle):
    """A shape whose sizes overflow torch's, or that takes minutes to build even on the meta
    device, is refused from its parameter count at once: the model is never built."""

    def never(*_args):
        raise AssertionError("the model was built")

    monkeypatch.setattr("mousse.train.estimate.build_model", never)
    monkeypatch.setattr("mousse.train.presets.meta_model", never)
    res = invoke_cli("train", *shape, "--steps", "2", "--run-dir", tmp_path / "R")
    assert_one_line_error(res, needle)
    assert not (tmp_path / "R").exists()


@pytest.mark.parametrize(
    "line,key",
    [
        ("steps = true", "'steps'"),
        ("eval_every = true", "'eval_every'"),
        ("bias_correction = 1", "'bias_correction'"),
        ('steps = "5"', "'steps'"),
        ('bias_correction = "on"', "'bias_correction'"),
        ('lr = "0.01"', "'lr'"),
    ],
)
def test_a_bool_for_a_count_or_a_count_for_a_switch_is_one_line(tmp_path, line, key):
    """TOML's true is not 1 step, nor its 1 a switch, nor "5" a count: the setting is named."""
    conf = tmp_path / "run.toml"
    conf.write_text(line + "\n")
    assert_one_line_error(invoke_cli("train", "--config", conf, "--run-dir", tmp_path / "R"), key)
    assert not (tmp_path / "R").exists()


@pytest.mark.parametrize(
    "args",
    [["muon", "--refresh-delay", "10"], ["muon", "--alpha", "0.5"], ["adamw", "--alpha", "0"]],
)
def test_a_knob_the_optimizer_does_not_use_is_one_line(tmp_path, args):
    """`--optimizer muon --refresh-delay 10` would train Muon as if it were not given."""
    res = invoke_cli("train", "--optimizer", *args, "--run-dir", tmp_path / "R")
    assert_one_line_error(res, f"{args[1]} does nothing with --optimizer {args[0]}")
    assert not (tmp_path / "R").exists()


def test_an_emoji_code_in_a_path_is_printed_as_typed(tmp_path):
    """Rich turns `:llama:` into an emoji; a user's path is printed as it was typed."""
    res = invoke_cli("train", "--model", "examples/llama.py:llama:", "--run-dir", tmp_path / "R")
    assert_one_line_error(res, "examples/llama.py:llama:")


def test_a_config_that_is_not_utf8_is_one_line(tmp_path):
    bad = tmp_path / "run.toml"
    bad.write_bytes(b'steps = 3\nname = "\xff\xfe"\n')
    assert_one_line_error(invoke_cli("train", "--config", bad), "not UTF-8")


@pytest.mark.slow
def test_a_damaged_ablation_toml_is_one_line_and_kept(tmp_path):
    root = tmp_path / "abl"
    args = [
        "ablate",
        "--alpha",
        "0.0",
        "--no-baseline",
        "--steps",
        "2",
        *FAST,
        "--ablation-dir",
        root,
        "--no-timing-pass",
    ]
    assert invoke_cli(*args).exit_code == 0
    (root / "ablation.toml").write_text("mode = [unclosed")
    assert_one_line_error(invoke_cli(*args), "ablation.toml is damaged")
    assert (root / "ablation.toml").read_text() == "mode = [unclosed"


def test_token_ids_outside_the_vocabulary_are_one_line(tmp_path):
    from support.data import write_shard

    (tmp_path / "d").mkdir()
    write_shard(tmp_path / "d" / "train_000.bin", [1, 2, 60000] * 4000)
    write_shard(tmp_path / "d" / "val_000.bin", [1, 2, 3] * 4000)
    res = invoke_cli(
        "train",
        "--data",
        tmp_path / "d",
        "--steps",
        "2",
        *FAST,
        "--run-dir",
        tmp_path / "r",
    )
    # found when a batch holds it (shards are never scanned whole): the run's header lines, then
    # the error as the last line, exit 2, no traceback
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    last = res.stderr_lines()[-1]
    assert last.startswith("error:") and "token id 60000" in last and "vocabulary of 50304" in last


def test_a_validation_split_too_small_is_refused_before_training(tmp_path):
    from support.data import write_shard

    (tmp_path / "d").mkdir()
    write_shard(tmp_path / "d" / "train_000.bin", [1, 2, 3] * 4000)
    write_shard(tmp_path / "d" / "val_000.bin", [1, 2, 3])
    res = invoke_cli(
        "train",
        "--data",
        tmp_path / "d",
        "--steps",
        "2",
        *FAST,
        "--run-dir",
        tmp_path / "r",
    )
    assert_one_line_error(res, "validation split")
    assert not (tmp_path / "r").exists()


def test_a_run_name_too_long_for_the_file_system_is_refused_before_anything_is_written(tmp_path):
    """A grid over many float knobs with long values: names over 255 bytes."""
    spec = tmp_path / "long.toml"
    knobs = [
        "alpha",
        "post_alpha",
        "precond_beta",
        "eps",
        "adam_eps",
        "beta2",
        "momentum",
        "weight_decay",
        "lr",
        "average_rate",
    ]
    spec.write_text(
        'mode = "grid"\n[sweep]\n'
        + "".join(f"{k} = [{0.0123456789012345 + i * 1e-15!r}]\n" for i, k in enumerate(knobs))
    )
    res = invoke_cli("ablate", spec, "--ablation-dir", tmp_path / "a", "--dry-run")
    assert_one_line_error(res, "more than a file name may hold")
    assert not (tmp_path / "a").exists()


# ---- second pass: a run is never lost (issue 31) ----------------------------------------------


def _files(run):
    """Every file under `run` with its bytes (what a refused command must leave as it was)."""
    return {
        p.relative_to(run): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE  # the lock names its last holder
    }


def test_resuming_into_another_run_dir_that_holds_a_run_is_refused(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    assert train(a).exit_code == 0 and train(b).exit_code == 0
    before = _files(b)
    res = invoke_cli("train", "--resume", a, "--run-dir", b, "--steps", "8")
    assert_one_line_error(res, f"run dir {b} already holds a run")
    assert _files(b) == before
    fresh = invoke_cli("train", "--resume", a, "--run-dir", tmp_path / "C", "--steps", "8")
    assert fresh.exit_code == 0 and summary(tmp_path / "C")["resumed_from"] == 6


@pytest.mark.parametrize("holds", ["user-files", "finished-run"])
def test_resume_auto_never_overwrites_a_dir_without_checkpoints(tmp_path, holds):
    run = tmp_path / "R"
    if holds == "user-files":
        run.mkdir()
        (run / "notes.txt").write_text("mine")
    else:
        assert train(run).exit_code == 0
        shutil.rmtree(run / "checkpoints")
    before = _files(run)
    res = train(run, "--resume", "auto")
    assert_one_line_error(res, f"run dir {run}", "pass another --run-dir")
    assert "--resume" not in res.stderr  # no advice that leads nowhere
    assert _files(run) == before


@pytest.mark.parametrize("name", ["config.toml", "metrics.jsonl"])
def test_resume_auto_never_takes_a_users_file_for_a_runs(tmp_path, name):
    """A user's own config.toml (even the --config of this command) or metrics.jsonl, alone in
    the run dir, is no run that ended before its first checkpoint: refused, kept as it was."""
    run = tmp_path / "R"
    run.mkdir()
    mine = "# my notes\nsteps = 2\n" if name == "config.toml" else '{"note": "mine"}\n'
    (run / name).write_text(mine)
    config = ["--config", run / name] if name == "config.toml" else []
    res = invoke_cli("train", *config, *RUN[2:], "--run-dir", run, "--resume", "auto")
    assert_one_line_error(res, f"run dir {run}", "pass another --run-dir")
    assert _files(run) == {Path(name): mine.encode()}


def _failed_run(run):
    """A run dir as a run that failed before its first checkpoint leaves it."""
    run.mkdir()
    (run / "config.toml").write_text("steps = 6\n")
    (run / "env.json").write_text('{"mousse": "0.1.0"}\n')
    (run / "summary.json").write_text(json.dumps({"status": "failed", "steps": 0}))


def test_a_run_that_failed_before_its_first_checkpoint_starts_again(tmp_path):
    run = tmp_path / "R"
    _failed_run(run)
    assert_one_line_error(train(run), "ended before its first checkpoint", "--resume auto")
    res = invoke_cli("train", "--resume", run)
    assert_one_line_error(res, "no checkpoint found", f"--resume auto --run-dir {run}")
    assert train(run, "--resume", "auto").exit_code == 0
    assert summary(run)["status"] == "completed" and summary(run)["steps"] == 6


@pytest.mark.parametrize("began", [False, True], ids=["first-file", "later-file"])
def test_a_run_killed_in_an_atomic_write_leaves_nothing_that_blocks_it(tmp_path, began):
    """kill -9 between an atomic write's temporary file and its rename leaves `.NAME.xxxxxxxx`:
    not a user's file. Killed while writing its first file (env.json), the dir holds no run and
    a plain rerun starts there; killed later, `--resume auto` starts it again. Either removes it."""
    run = tmp_path / "R"
    if began:
        _failed_run(run)
    else:
        run.mkdir()
    (run / ".env.json.k1ll3d_9").write_text('{"mou')
    (run / ".lock").write_text("")
    res = train(run, "--resume", "auto") if began else train(run)
    assert res.exit_code == 0, res.stderr
    assert summary(run)["status"] == "completed"
    assert not list(run.glob(".env.json.*"))


@pytest.mark.parametrize(
    "line,why",
    [
        (b"{garbage", "Expecting"),
        (b'{"step": "\xff"}', "utf-8"),
        (b"[1, 2]", "not an object"),
        (b'{"val_loss": 1.0}', "no integer 'step'"),
    ],
    ids=["not-json", "not-utf8", "a-list", "no-step"],
)
def test_a_damaged_metrics_line_is_refused_not_cut(tmp_path, line, why):
    run = tmp_path / "R"
    assert train(run).exit_code == 0
    metrics = run / "metrics.jsonl"
    lines = metrics.read_bytes().splitlines(keepends=True)
    metrics.write_bytes(b"".join([*lines[:3], line + b"\n", *lines[3:]]))
    before = _files(run)
    res = invoke_cli("train", "--resume", run, "--steps", "8")
    assert_one_line_error(res, f"{metrics} line 4 is damaged", why, "repair or delete that line")
    assert _files(run) == before


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    run = tmp_path / "R"
    assert train(run).exit_code == 0
    with open(run / "metrics.jsonl", "ab") as fh:
        fh.write(b'{"step": 7, "train_lo')  # an append cut short
    assert invoke_cli("train", "--resume", run, "--steps", "8").exit_code == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 8


@pytest.mark.parametrize(
    "content,why",
    [
        (b"{garbage", "Expecting"),
        (b"[1, 2]", "not an object"),
        (b'{"host": "\xff"}', "utf-8"),
        (b'{"resumes": 5}', "list of resumes"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
    ids=["garbage", "a-list", "not-utf8", "resumes-5", "deep"],
)
def test_a_damaged_env_json_is_one_line_on_resume(tmp_path, content, why):
    run = tmp_path / "R"
    assert train(run).exit_code == 0
    (run / "env.json").write_bytes(content)
    before = _files(run)
    res = invoke_cli("train", "--resume", run, "--steps", "8")
    assert_one_line_error(res, f"{run / 'env.json'} is damaged", why, "move it away")
    assert _files(run) == before


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("fifo", ["metrics.jsonl", "env.json", "config"])
def test_a_fifo_where_a_file_is_read_is_one_line_not_a_hang(tmp_path, fifo):
    """A FIFO as a run's file or as --config would block its reader until a writer comes (and
    SIGTERM would not end the wait): refused at once, naming it (a real process, so that a hang
    ends in the timeout instead of stopping the suite)."""
    run = tmp_path / "R"
    assert train(run).exit_code == 0
    args = ["train", "--resume", str(run), "--steps", "8"]
    if fifo == "config":
        os.mkfifo(tmp_path / "c.toml")
        args += ["--config", str(tmp_path / "c.toml")]
    else:
        (run / fifo).unlink()
        os.mkfifo(run / fifo)
    before = _files(run)
    proc = subprocess.run([*mousse_command(), *args], capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "not a regular file" in lines[0] and (fifo in lines[0] or "c.toml" in lines[0])
    assert _files(run) == before


def test_json_nested_too_deeply_is_damage_not_a_traceback(tmp_path):
    """100,000 nested brackets overflow Python's recursion: a results file so nested is one line,
    a summary.json so nested one that cannot be read (kept, never restarted over)."""
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "results.json").write_text(deep)
    assert_one_line_error(invoke_cli("report", tmp_path / "results.json"), "not a results file")
    run = tmp_path / "R"
    run.mkdir()
    (run / "summary.json").write_text(deep)
    res = invoke_cli("train", "--resume", "auto", "--run-dir", run, *RUN)
    assert_one_line_error(res, "already holds files")
    assert (run / "summary.json").read_text() == deep


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-user-file", "dangling"])
def test_a_lock_file_that_is_a_symbolic_link_is_refused(tmp_path, dangling):
    run, target = tmp_path / "R", tmp_path / "precious.txt"
    run.mkdir()
    if not dangling:
        target.write_text("mine")
    (run / LOCK_FILE).symlink_to(target)
    assert_one_line_error(train(run), "is a symbolic link", "remove the link")
    assert (target.read_text() == "mine") if not dangling else not target.exists()


@pytest.mark.parametrize("how", ["resume", "fresh", "auto"])
def test_a_checkpoints_link_into_another_run_names_that_run(tmp_path, how):
    """S/checkpoints a link to R's: the advice names R and the link (it used to be `--resume S`,
    the very command that was refused); R is untouched."""
    run, other = tmp_path / "R", tmp_path / "S"
    assert train(run).exit_code == 0
    other.mkdir()
    (other / "checkpoints").symlink_to(run / "checkpoints")
    before = _files(run)
    args = {
        "resume": ["train", "--resume", other, "--steps", "8"],
        "fresh": ["train", *RUN, "--run-dir", other],
        "auto": ["train", *RUN, "--resume", "auto", "--run-dir", other],
    }[how]
    res = invoke_cli(*args)
    assert_one_line_error(res, "link to another run's checkpoints", f"--resume {run}")
    assert _files(run) == before


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_while_appending_metrics_names_the_file(tmp_path, monkeypatch):
    """The disk fills as a run appends to metrics.jsonl (its appends go to /dev/full): one line
    naming the file, exit 2."""
    from mousse.train import fileio

    def full_metrics(path, *args, **kwargs):
        return open("/dev/full" if str(path).endswith("metrics.jsonl") else path, *args, **kwargs)

    monkeypatch.setattr(fileio, "open", full_metrics, raising=False)
    run = tmp_path / "R"
    res = train(run)
    assert res.exit_code == 2 and "Traceback" not in res.stderr, res
    last = res.stderr_lines()[-1]  # after the run's start-up lines
    assert last == f"error: No space left on device ({run / 'metrics.jsonl'})", res


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_lock_file_that_is_a_fifo_is_refused_naming_it(tmp_path):
    fresh, done = tmp_path / "F", tmp_path / "R"
    fresh.mkdir()
    os.mkfifo(fresh / LOCK_FILE)
    assert_one_line_error(train(fresh), f"{fresh / LOCK_FILE} is not a regular file", "remove it")
    assert train(done).exit_code == 0
    (done / LOCK_FILE).unlink()
    os.mkfifo(done / LOCK_FILE)
    res = invoke_cli("train", "--resume", done, "--steps", "8")
    assert_one_line_error(res, f"{done / LOCK_FILE} is not a regular file")


@pytest.mark.parametrize("resume, needle", [("", "it is empty"), ("E", "no checkpoint found at E")])
def test_a_resume_with_nothing_to_resume_leaves_no_lock(tmp_path, monkeypatch, resume, needle):
    """`--resume ""` (the current dir) and an empty dir: refused, and no `.lock` left behind."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "E").mkdir()
    assert_one_line_error(invoke_cli("train", "--resume", resume, "--steps", "2"), needle)
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*")] == [Path("E")]


def test_resuming_a_completed_run_keeps_its_timings(tmp_path):
    run = tmp_path / "R"
    assert train(run).exit_code == 0
    before = summary(run)
    assert invoke_cli("train", "--resume", run).exit_code == 0
    after = summary(run)
    for key in ("step_ms_median", "fwd_bwd_ms_median", "opt_ms_median", "tokens_per_s"):
        assert after[key] == before[key] is not None, key
    assert after["status"] == "completed" and after["steps"] == 6


@pytest.mark.parametrize(
    "flags,needles",
    [
        (["--seed", "5"], ["--seed 5", "seed=0", "start a new run"]),
        (["--eval-tokens", "8192"], ["--eval-tokens 8192", "eval_tokens=4096"]),
        (["--split", "tail"], ["--split tail", "split='files'"]),
        (["--steps", "4"], ["--steps 4", "at step 6", "--steps 6 or more"]),
    ],
    ids=["seed", "eval-tokens", "split", "fewer-steps"],
)
def test_resume_refuses_what_would_make_its_losses_incomparable(tmp_path, flags, needles):
    run = tmp_path / "R"
    assert train(run).exit_code == 0
    before = _files(run)
    assert_one_line_error(invoke_cli("train", "--resume", run, *flags), *needles)
    assert _files(run) == before


def test_resume_auto_locks_the_run_dir_before_choosing_its_checkpoint(tmp_path, monkeypatch):
    """A `--resume auto` started while the run is still training is refused; it never resumes
    a checkpoint the live run has since gone past (here the live run ends just after the
    choice would have been made)."""
    import mousse.train.resume as resume

    run = tmp_path / "R"
    assert train(run).exit_code == 0
    live = RunLock(run).acquire()
    choose = resume.latest_valid_checkpoint

    def chosen_as_the_live_run_ends(path, warn=None):
        ckpt = choose(path, warn)
        live.release()
        return ckpt

    monkeypatch.setattr(resume, "latest_valid_checkpoint", chosen_as_the_live_run_ends)
    before = _files(run)
    try:
        res = train(run, "--resume", "auto", "--steps", "8")
    finally:
        live.release()
    assert_one_line_error(res, "is in use by pid")
    assert _files(run) == before


def test_two_ablations_with_different_plans_never_share_a_dir(tmp_path):
    """Both checked the empty dir before either wrote its plan: the second to write is refused
    under the dir's lock instead of replacing the first's plan."""
    from mousse.experiments.ablation import plan_ablation
    from mousse.experiments.sweep import Ablation
    from mousse.train.config import ConfigError

    root = tmp_path / "A"
    first = Ablation(plan_ablation({"alpha": [0.0]}, {"steps": 2}), root)
    second = Ablation(plan_ablation({"alpha": [0.25]}, {"steps": 2}), root)
    first.validate()
    second.validate()
    first.prepare()
    with pytest.raises(ConfigError, match="holds a different ablation plan"):
        second.prepare()
    assert "0.0" in (root / "ablation.toml").read_text()
    first.prepare()  # the same plan again (a rerun, another shard): fine


@pytest.mark.parametrize(
    ("recorded", "given", "fix"),
    [
        ({"precision": "fp32"}, {"precision": "bf16"}, "pass --precision fp32"),
        ({"precision": "fp32"}, {}, "pass --precision fp32"),
        ({}, {"precision": "bf16"}, "drop --precision"),
        ({"compile": "on"}, {"compile": "off"}, "pass --compile on"),
    ],
)
def test_an_ablation_resumed_in_another_arithmetic_is_another_plan(tmp_path, recorded, given, fix):
    """Runs of another precision or compile mode would not compare with those already trained
    (nor resume from their checkpoints): the dir's plan refuses them, naming the flag that
    continues it."""
    from mousse.experiments.ablation import plan_ablation
    from mousse.experiments.sweep import Ablation
    from mousse.train.config import ConfigError

    root = tmp_path / "A"
    Ablation(plan_ablation({"alpha": [0.0]}, {"steps": 2, **recorded}), root).prepare()
    plan = (root / "ablation.toml").read_text()
    other = Ablation(plan_ablation({"alpha": [0.0]}, {"steps": 2, **given}), root)
    with pytest.raises(ConfigError, match=f"holds a different ablation plan .*{fix} to continue"):
        other.validate()
    assert (root / "ablation.toml").read_text() == plan


def test_a_damaged_checkpoint_without_its_checksums_is_still_detected(tmp_path):
    run = tmp_path / "R"
    assert train(run).exit_code == 0
    latest = run / "checkpoints" / "step-6"
    (latest / "checksums.json").unlink()
    flip_tensor_bytes(latest / "model.safetensors")
    res = invoke_cli("train", "--resume", run, "--steps", "8")
    assert res.exit_code == 0, res
    assert "checksums.json is missing" in res.stderr and "falling back" in res.stderr
    assert summary(run)["resumed_from"] == 4 and summary(run)["status"] == "completed"


def test_an_unreadable_checkpoint_file_is_not_taken_for_damage(tmp_path, monkeypatch):
    import mousse.train.checkpoint as checkpoint

    run = tmp_path / "R"
    assert train(run).exit_code == 0
    denied = run / "checkpoints" / "step-6" / "optimizer.safetensors"
    digest = checkpoint.file_digest

    def permission_denied(path):  # chmod 000 does not stop root, who runs CI containers
        if path == denied:
            raise PermissionError(13, "Permission denied", str(path))
        return digest(path)

    monkeypatch.setattr(checkpoint, "file_digest", permission_denied)
    before = _files(run)
    res = invoke_cli("train", "--resume", run, "--steps", "8")
    assert_one_line_error(res, f"{denied} cannot be read", "Permission denied", "chmod u+r")
    assert _files(run) == before  # nothing set aside, nothing resumed


def test_a_checkpoint_file_from_another_step_is_refused(tmp_path):
    from mousse.train.checkpoint import write_checksums

    run = tmp_path / "R"
    assert train(run).exit_code == 0
    ckpts = run / "checkpoints"
    shutil.copy(ckpts / "step-4" / "optimizer.safetensors", ckpts / "step-6")
    (ckpts / "step-6" / "checksums.json").unlink()
    write_checksums(ckpts / "step-6")  # checksums recomputed: they cannot tell
    res = invoke_cli("train", "--resume", run, "--steps", "8")
    assert_one_line_error(res, "optimizer.safetensors was written at step 4, not 6")


def test_a_checkpoint_that_lost_a_file_is_refused_and_kept(tmp_path):
    run = tmp_path / "R"
    assert train(run).exit_code == 0
    (run / "checkpoints" / "step-6" / "model.safetensors").unlink()
    before = _files(run)
    for args in (["--resume", run], ["--run-dir", run, "--resume", "auto"]):
        res = invoke_cli("train", *args, "--steps", "8")
        assert_one_line_error(res, "step-6 is missing model.safetensors", "put it back")
    assert _files(run) == before


def _text_data(folder):
    folder.mkdir()
    (folder / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * 400)
    return folder


def test_a_data_file_that_cannot_be_read_is_one_line(tmp_path, monkeypatch):
    import torch

    data = _text_data(tmp_path / "d")
    from_file = torch.from_file

    def denied(path, *args, **kwargs):  # chmod 000 does not stop root, who runs CI containers
        if path.endswith("a.txt"):
            raise RuntimeError(f"unable to open file <{path}> in read-only mode: Permission denied")
        return from_file(path, *args, **kwargs)

    monkeypatch.setattr(torch, "from_file", denied)
    res = train(tmp_path / "R", "--data", data)
    assert_one_line_error(res, f"{data / 'a.txt'}: cannot be read (Permission denied)")
    assert not (tmp_path / "R").exists()


def test_non_utf8_data_and_model_paths_are_one_line_or_work(tmp_path):
    odd = os.fsdecode(os.fsencode(tmp_path) + b"/d\xff")  # a name the file system allows
    data = _text_data(tmp_path / odd)
    res = train(tmp_path / "R", "--data", data)
    assert_one_line_error(res, "its name is not UTF-8", "rename it")
    model = tmp_path / os.fsdecode(b"m\xff.py")
    shutil.copy(os.path.join(os.path.dirname(__file__), "..", "..", "examples", "llama.py"), model)
    res = invoke_cli(  # a model file's name is only hashed and imported: it trains
        "train",
        "--model",
        f"{model}:llama",
        "--model-config",
        "d_model=64,n_layers=1",
        "--seq-len",
        "64",
        "--batch-size",
        "2",
        "--micro-batch-size",
        "2",
        "--eval-tokens",
        "4096",
        "--steps",
        "2",
        "--run-dir",
        tmp_path / "M",
    )
    assert res.exit_code == 0, res
