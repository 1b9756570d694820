"""What a run will cost, said before it costs it: time and memory estimates, refusals, and
progress inside long steps."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from support.cli import FAST, assert_one_line_error, invoke_cli

from mousse.train import estimate as est
from mousse.train import machine
from mousse.train.config import resolve
from mousse.train.events import MicroBatchDone
from mousse.train.precision import peak_flops, resolve_precision

CPU = torch.device("cpu")


def test_small_runs_are_probed_and_priced_per_step_and_run():
    cfg = resolve({"preset": "tiny", "steps": 40})
    e = est.estimate(cfg, 256, CPU)
    assert e.method == "probe" and e.step_seconds > 0 and e.steps == 40
    assert e.run_seconds == pytest.approx(40 * e.step_seconds)
    assert e.memory_bytes > 0 and e.fits


def test_gpu_presets_on_a_cpu_are_priced_from_flops_without_running_them():
    cfg = resolve({"preset": "160m", "device": "cpu"})
    e = est.estimate(cfg, 50304, CPU)
    assert e.method == "flops"
    # at least the forward and backward FLOPs at twice the measured matmul peak
    n = est.flops_per_token(cfg, 124_000_000) * cfg.batch_size * cfg.seq_len
    assert e.step_seconds > n / peak_flops(CPU, resolve_precision("auto", CPU))
    hint = est.warning(cfg, e, CPU)
    assert "--preset small" in hint and "GPU" in hint
    assert (
        est.warning(
            resolve({"preset": "tiny"}), est.estimate(resolve({"preset": "tiny"}), 256, CPU), CPU
        )
        is None
    )


def test_the_estimate_scales_with_the_work():
    small = resolve({"preset": "160m", "device": "cpu", "n_layers": 2})
    big = resolve({"preset": "160m", "device": "cpu", "n_layers": 12})
    ratio = (
        est.estimate(big, 50304, CPU).step_seconds / est.estimate(small, 50304, CPU).step_seconds
    )
    assert ratio > 1.5  # 10 more blocks of 7M parameters on top of the 77M of embedding and head


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0.04, "40 ms"),
        (12, "12 s"),
        (186, "3.1 min"),
        (11160, "3.1 h"),
        (3 * 86400, "3.0 days"),
        (3.5 * 365 * 86400, "3.5 years"),
    ],
)
def test_durations_read_naturally(seconds, text):
    assert est.duration(seconds) == text


def test_memory_refusal_names_both_numbers_and_a_micro_batch_that_fits(monkeypatch):
    cfg = resolve({"preset": "tiny", "batch_size": 16, "micro_batch_size": 16})
    need = est.memory_bytes(cfg, 256)
    monkeypatch.setattr(est, "available_bytes", lambda device: need - 1)
    out = invoke_cli("train", "--steps", "2", "--run-dir", "/nonexistent/never-written")
    assert_one_line_error(out, "needs about", "GiB free", "--micro-batch-size 8 fits", "--force")
    fit = est.fitting_micro_batch(cfg, 256, need - 1)
    assert fit == 8 and est.memory_bytes(cfg, 256, fit) < need


def test_max_hours_refuses_with_the_estimate_in_one_line(tmp_path):
    out = invoke_cli(
        "train",
        "--preset",
        "160m",
        "--device",
        "cpu",
        "--force",
        "--max-hours",
        "1",
        "--run-dir",
        tmp_path / "r",
    )
    assert_one_line_error(out, "estimated about", "more than --max-hours 1")
    assert not (tmp_path / "r").exists()
    abl = invoke_cli(
        "ablate",
        "--alpha",
        "0.0",
        "--preset",
        "160m",
        "--device",
        "cpu",
        "--force",
        "--max-hours",
        "1",
        "--dry-run",
        "--ablation-dir",
        tmp_path / "a",
    )
    assert_one_line_error(abl, "for 3 runs", "more than --max-hours 1")


def test_train_and_dry_run_print_the_estimate(tmp_path):
    out = invoke_cli("train", "--steps", "2", *FAST, "--run-dir", tmp_path / "r")
    assert out.exit_code == 0 and "estimate: about" in out.stderr and "for 2 steps" in out.stderr
    dry = invoke_cli("ablate", "--alpha", "0.0", "--dry-run", "--ablation-dir", tmp_path / "a")
    assert dry.exit_code == 0 and "for 3 runs on this CPU" in dry.stderr


def test_an_ablation_estimate_counts_one_run_as_one():
    from mousse_cli.cost import _total_time

    run = est.Estimate(1.0, 60, "probe", 0, None, "cpu")
    configs = [resolve({"preset": "tiny"})] * 2
    assert _total_time(configs, [run, run], 1)[1].startswith("about 60 s for 1 run on this CPU")
    assert " for 3 runs on this CPU" in _total_time(configs, [run, run], 3)[1]


def test_presets_list_at_once_without_measuring(presets_rows, monkeypatch):
    """A listing probes nothing: no estimate, no time columns, and the flag that measures named."""

    def refuse(*args, **kwargs):
        raise AssertionError("mousse presets measured the machine without --measure")

    monkeypatch.setattr(est, "estimate", refuse)
    res = invoke_cli("presets")
    assert res.exit_code == 0, res
    assert "mousse presets --measure" in res.stdout and "run here" not in res.stdout
    assert all(r["step_seconds"] is None and r["estimate"] is None for r in presets_rows)


@pytest.mark.slow
def test_presets_measure_prices_every_preset_here(monkeypatch):
    import mousse.train.estimate as estimate_module

    measured: dict[str, object] = {}  # the table shows the JSON's measurements, not new ones
    real = estimate_module.estimate

    def once(cfg, *args):
        if cfg.preset not in measured:
            measured[cfg.preset] = real(cfg, *args)
        return measured[cfg.preset]

    monkeypatch.setattr(estimate_module, "estimate", once)
    res = invoke_cli("presets", "--json", "--measure")
    assert res.exit_code == 0, res
    rows = {r["name"]: r for r in res.json()}
    assert rows["160m"]["estimate"] == "flops" and rows["tiny"]["estimate"] == "probe"
    assert all(r["step_seconds"] > 0 and r["run_time"] for r in rows.values())
    assert "run here" in invoke_cli("presets", "--measure").stdout


def test_long_steps_report_their_micro_batches(tmp_path, monkeypatch):
    import mousse.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "SLOW_STEP_S", 0.0)
    out = invoke_cli(
        "train",
        "--steps",
        "2",
        "--d-model",
        "64",
        "--seq-len",
        "64",
        "--batch-size",
        "4",
        "--micro-batch-size",
        "1",
        "--eval-tokens",
        "4096",
        "--run-dir",
        tmp_path / "r",
    )
    assert out.exit_code == 0
    assert "step 1: micro batch 1/4" in out.stderr and "step eta" in out.stderr
    e = MicroBatchDone(step=3, done=2, total=8, seconds=10.0)
    assert e.eta_seconds == 30.0


def test_an_estimate_measured_on_a_busy_cpu_says_so():
    """Other processes slow the probe and the matmul rate alike; the estimate then says that the
    run alone is faster, instead of silently overstating it."""
    hz = 100
    # 2 cores for 1 s (200 ticks), 150 ticks busy, 0.5 s of them this process's own: 50% others
    assert machine.others_share((1000, 5000), (1150, 5200), 0.5, hz) == pytest.approx(0.5)
    assert machine.others_share((1000, 5000), (1050, 5200), 0.5, hz) == 0.0  # only this process
    assert machine.others_share((1000, 5000), (1000, 5000), 0.0, hz) is None
    if machine.cpu_jiffies() is not None:  # Linux
        busy, total = machine.cpu_jiffies()
        assert 0 <= busy <= total
    e = est.estimate(resolve({"preset": "tiny", "steps": 1}), 256, CPU)
    assert e.busy is None or 0 <= e.busy <= 1
    quiet, busy = dataclasses.replace(e, busy=0.1), dataclasses.replace(e, busy=0.62)
    assert "for 1 step on this CPU (measured probe)" in est.describe(quiet)
    assert est.describe(busy).endswith(
        "(measured probe; other processes used 62% of the CPU meanwhile: alone it is faster)"
    )
