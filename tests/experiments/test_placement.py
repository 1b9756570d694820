"""Where an ablation's runs go: each `--parallel` worker on its own GPU, round-robin (`--devices`),
checked on the CPU through the assignment and the environment each worker receives; `--shard i/n`
across machines, merged by `mousse report`; the bad input of both, one line and exit 2."""

from __future__ import annotations

import json
import threading

import pytest
from support.cli import FAST, FAST_SETTINGS, assert_one_line_error

from mousse.experiments.runner import Job, train_runs, worker_devices, worker_env
from mousse_cli.ablate_plan import gpu_slots

TINY_RUN = ["--steps", "2", "--eval-every", "2", *FAST, "--no-timing-pass"]


def test_worker_slots_go_round_robin_over_the_devices():
    assert worker_devices(4, ["0", "1"]) == ["0", "1", "0", "1"]
    assert worker_devices(3, ["2", "5", "7", "9"]) == ["2", "5", "7"]
    assert worker_devices(2, None) == [None, None]
    assert worker_env("3") == {"CUDA_VISIBLE_DEVICES": "3"} and worker_env(None) == {}


def test_gpu_slots_default_to_every_visible_gpu_and_map_indices_to_ids():
    visible = ["4", "5", "6"]  # CUDA_VISIBLE_DEVICES=4,5,6: index 1 is GPU 5
    assert gpu_slots(None, visible, on_cuda=True, parallel=3) == visible
    assert gpu_slots(None, visible, on_cuda=True, parallel=1) is None  # one run at a time
    assert gpu_slots(None, ["0"], on_cuda=True, parallel=4) is None  # one GPU: nothing to place
    assert gpu_slots(None, [], on_cuda=False, parallel=4) is None  # CPU: as before
    assert gpu_slots("2,0", visible, on_cuda=True, parallel=2) == ["6", "4"]


@pytest.mark.parametrize(
    "devices, visible, on_cuda, words",
    [
        ("0,3", ["0", "1"], True, "GPU 3 is not there (2 visible: 0-1)"),
        ("0", [], False, "GPU 0 is not there (no GPU is visible)"),
        ("0", ["0"], False, "use the CPU"),
        ("a,b", ["0"], True, "bad --devices"),
    ],
)
def test_gpu_slots_refuse_what_is_not_there(devices, visible, on_cuda, words):
    from mousse.train.config import ConfigError

    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        gpu_slots(devices, visible, on_cuda, parallel=2)


def test_each_worker_sees_only_its_gpu_and_env_json_records_it(builtin_data, tmp_path):
    """Two CPU runs in workers placed on 'GPUs' 3 and 5: each worker's environment shows only
    its own, and each run's env.json records which it was."""
    settings = {**FAST_SETTINGS, "preset": "tiny", "steps": 1, "eval_every": 1, "device": "cpu"}
    jobs = [Job(f"r{i}", {**settings, "seed": i}, tmp_path / f"r{i}") for i in range(2)]
    updates: list = []
    train_runs(jobs, updates.append, 2, threading.Event(), {}, lambda: None, set(), ["3", "5"])
    seen = {
        json.loads((job.run_dir / "env.json").read_text()).get("cuda_visible_devices")
        for job in jobs
    }
    assert seen == {"3", "5"}
    assert all(json.loads((j.run_dir / "summary.json").read_text())["status"] for j in jobs)


def test_devices_that_are_not_there_and_too_many_workers_are_one_line(cli, tmp_path):
    adir = tmp_path / "a"
    res = cli("ablate", "--alpha", "0.0", *TINY_RUN, "--devices", "0", "--ablation-dir", adir)
    assert_one_line_error(res, "--devices 0", "not there")
    res = cli("ablate", "--alpha", "0.0", *TINY_RUN, "--parallel", "4", "--ablation-dir", adir)
    assert_one_line_error(res, "--parallel 4", "3 runs")
    res = cli("ablate", "--alpha", "0.0", *TINY_RUN, "--shard", "1/2", "--parallel", "3")
    assert_one_line_error(res, "--parallel 3", "2 runs", "in this shard")
    assert not adir.exists()


def test_two_shards_merge_in_report_and_a_shard_of_another_plan_is_refused(cli, tmp_path):
    """What a Slurm job array does (docs/scaling.md): shard 1/2 and 2/2 of one plan into one
    shared dir, then `mousse report` over the lot; a shard of a different plan is refused."""
    adir = tmp_path / "shared"
    for shard in ("1/2", "2/2"):
        res = cli("ablate", "--alpha", "0.0", *TINY_RUN, "--shard", shard, "--ablation-dir", adir)
        assert res.exit_code == 0, res
    report = cli("report", adir, "--format", "json")
    assert report.exit_code == 0, report
    runs = {r["name"]: r["status"] for r in report.json()["runs"]}
    assert runs == {"muon": "completed", "mousse": "completed", "alpha=0.0": "completed"}
    other = cli("ablate", "--alpha", "0.5", *TINY_RUN, "--shard", "2/2", "--ablation-dir", adir)
    assert_one_line_error(other, "different ablation plan")
