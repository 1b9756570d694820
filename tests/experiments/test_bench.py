"""`mousse bench`: runs on CPU, documented JSON keys, positive timings, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from support.cli import assert_one_line_error, invoke_cli

from mousse.experiments.bench import (
    BENCH_ROWS,
    COMPILED_ROWS,
    bench_steps,
    matrix_shapes,
    ns_flops,
)
from mousse.optim import family
from mousse.train.fileio import shaped

KEYS = {
    "preset",
    "device",
    "device_name",
    "cpu_count",
    "threads",
    "torch",
    "repeats",
    "compiled",
    "lean",
    "precision",
    "cycle_steps",
    "step_ms",
    "step_spread",
    "kernels",
    "vs_muon",
    "state_bytes",
    "cache_bytes",
    "refresh_ms",
    "shapes",
    "targets",
    "train",
}
SHAPE_KEYS = {
    "shape",
    "count",
    "ns_ms",
    "ns_tflops",
    "ns_pct_peak",
    "refresh_eigh_ms",
    "refresh_qr_ms",
    "refresh_root_ms",
}


def test_bench_json_on_cpu():
    res = invoke_cli("bench", "--json", "--preset", "tiny", "--repeats", "1", "--device", "cpu")
    assert res.exit_code == 0, res
    r = res.json()
    assert set(r) == KEYS and r["device"] == "cpu" and r["train"] is None and not r["compiled"]
    assert r["kernels"] is None  # the kernels run on CUDA
    assert set(r["step_ms"]) == set(BENCH_ROWS) and all(ms > 0 for ms in r["step_ms"].values())
    assert r["vs_muon"]["muon"] == 1.0
    assert all(ms > 0 for ms in r["refresh_ms"].values())
    assert set(r["refresh_ms"]) == {"eigh", "qr", "root"}  # eigh on the host too, on CUDA
    for spread in r["step_spread"].values():
        assert 0 < spread["p50"] <= spread["p99"]
    assert {tuple(s["shape"]): s["count"] for s in r["shapes"]} == matrix_shapes("tiny")
    for s in r["shapes"]:
        assert set(s) == SHAPE_KEYS and s["ns_pct_peak"] > 0  # of the peak measured here
        assert min(s["ns_ms"], s["ns_tflops"], s["refresh_eigh_ms"], s["refresh_qr_ms"]) > 0
    # state: Muon one momentum per matrix (fp32); Mousse adds L, Q_L, R, Q_R and eigenvalues
    n_matrix = sum(m * n * c for (m, n), c in matrix_shapes("tiny").items())
    assert r["state_bytes"]["torch_muon"] == 4 * n_matrix
    assert r["state_bytes"]["mousse_both_f10"] > r["state_bytes"]["mousse_left_f10"] > 4 * n_matrix
    assert r["cache_bytes"]["muon"] == 0 and r["cache_bytes"]["mousse_both_f10"] > 0
    assert set(r["targets"]) == {
        "mousse_f10_vs_muon",
        "mousse_f10_offpath_vs_muon",
        "mousse_f10_staggered_p99_vs_p50",
        "muon_vs_torch_muon",
        "muon_bf16_vs_torch_muon",
    }
    spike = r["targets"]["mousse_f10_staggered_p99_vs_p50"]
    spread = r["step_spread"]["mousse_both_f10_staggered"]
    assert spike["ratio"] == spread["p99"] / spread["p50"] and spike["limit"] == 1.2
    assert "optimizer step" in res.stderr  # the table goes to stderr, JSON alone to stdout


def test_ns_flops_counts_the_short_side():
    assert ns_flops(128, 512) == ns_flops(512, 128) == 5 * (4 * 128**2 * 512 + 2 * 128**3)


def test_bench_bad_input_exits_2():
    assert_one_line_error(invoke_cli("bench", "--preset", "huge"), "huge", "tiny")
    assert_one_line_error(invoke_cli("bench", "--repeats", "0"), "repeats")
    assert_one_line_error(invoke_cli("bench", "--device", "tpu"), "device")


@pytest.mark.parametrize("flag", ["--repeats", "--steps"])
def test_bench_refuses_a_count_no_bench_ends_before_timing_anything(monkeypatch, flag):
    """`--repeats 99999999999999999999999` would time for ever: refused before any timing."""

    def never(*_args, **_kwargs):
        raise AssertionError("the bench started timing")

    monkeypatch.setattr("mousse.experiments.bench.bench_steps", never)
    monkeypatch.setattr("mousse.experiments.bench.bench_train", never)
    res = invoke_cli("bench", "--train", flag, "99999999999999999999999")
    assert_one_line_error(res, flag[2:], "10,000")


def test_bench_compiled_rows(monkeypatch):
    """--compile adds the torch.compile rows (dynamo's capture without codegen here, for speed)."""
    torch._dynamo.reset()
    monkeypatch.setattr(family, "COMPILE_OPTIONS", {"backend": "eager", "fullgraph": True})
    step_ms, _, memory, _ = bench_steps(
        {(16, 8): 2, (8, 8): 1}, torch.device("cpu"), 1, compiled=True
    )
    assert set(step_ms) == set(BENCH_ROWS) | set(COMPILED_ROWS) and all(
        v > 0 for v in step_ms.values()
    )
    assert memory["mousse_both_f10_compiled"] == memory["mousse_both_f10"]
    torch._dynamo.reset()


def test_bench_train_mode(builtin_data):
    """--train: whole training steps of Muon, Mousse and Mousse with its refresh off the
    critical path through the Trainer, and the overheads; refresh steps (every 10th from step
    1: step 11 of 12) timed apart from the others."""
    from mousse.experiments.bench import bench_train

    t = bench_train("tiny", "cpu", 11)
    assert t["steps"] == 11 and t["compiled"] is False
    for name in ("muon", "mousse", "mousse_offpath"):
        row = t[name]
        assert set(row) == {
            "step_ms_median",
            "step_ms_mean",
            "step_ms_p50",
            "step_ms_p99",
            "refresh_step_ms_median",
            "plain_step_ms_median",
            "fwd_bwd_ms_median",
            "opt_ms_mean",
            "peak_memory_bytes",
            "tokens_per_s",
            "model_flops_per_s",
            "peak_flops",
            "mfu",
        }
        assert row["peak_memory_bytes"] is None  # CUDA only
        assert row["mfu"] == pytest.approx(row["model_flops_per_s"] / row["peak_flops"])
        assert 0 < row["step_ms_p50"] <= row["step_ms_p99"] and row["plain_step_ms_median"] > 0
        assert (row["refresh_step_ms_median"] is None) == (name == "muon")
    assert set(t) >= {
        "overhead_pct_mean",
        "overhead_pct_median",
        "overhead_pct_mean_offpath",
        "overhead_pct_median_offpath",
    }


def test_bench_lean_times_training_steps_only(builtin_data):
    res = invoke_cli(
        "bench", "--lean", "--json", "--preset", "tiny", "--steps", "2", "--device", "cpu"
    )
    assert res.exit_code == 0, res
    r = res.json()
    assert r["lean"] and "step_ms" not in r and set(r["train"]) >= {"muon", "mousse"}
    assert "train step" in res.stdout + res.stderr


def test_train_overheads_against_hand_computed_values():
    from mousse.experiments.bench import train_overheads

    muon = {"step_ms_mean": 200.0, "step_ms_median": 190.0}
    mousse = {"step_ms_mean": 206.0, "step_ms_median": 171.0}
    assert train_overheads(muon, mousse) == {
        "overhead_pct_median": pytest.approx(-10.0),
        "overhead_pct_mean": pytest.approx(3.0),
    }


def test_bench_kernels_under_the_interpreter(monkeypatch):
    """The kernel-vs-torch section runs wherever triton runs (here the interpreter, on CPU, tiny
    sizes, where the kernels are far slower than torch): with the Gram kernel dispatched at every
    size, each of its sizes is flagged as dispatched where slower."""
    from rich.console import Console

    from mousse.experiments.kernelbench import bench_kernels
    from mousse.optim import kernels
    from mousse_cli.rich_tables import kernel_table

    monkeypatch.setattr(kernels, "use_triton", lambda X, op="gram": op == "gram")
    k = bench_kernels(torch.device("cpu"), 1, sizes=(16, 32), dtype=torch.float32)
    assert [(r["op"], r["size"], r["dispatched"]) for r in k["rows"]] == [
        ("gram", 16, True),
        ("poly", 16, False),
        ("gram", 32, True),
        ("poly", 32, False),
    ]
    assert all(r["kernel_ms"] > 0 and r["torch_ms"] > 0 for r in k["rows"])
    assert k["dtype"] == "float32" and k["dispatched_where_slower"] == ["gram 16", "gram 32"]
    assert k["measured_min_dim"] == {"gram": None, "poly": None}
    # how the table reads when a kernel was measured faster from some size on
    k["measured_min_dim"] = {"gram": 32, "poly": None}
    console = Console(record=True, width=120)
    for part in kernel_table(k):
        console.print(part)
    text = console.export_text()
    assert "gram kernel faster from m = 32" in text and "MOUSSE_GRAM_MIN_DIM=32" in text
    assert (
        "poly kernel never faster" in text and "dispatched where slower: gram 16, gram 32" in text
    )


def test_measured_min_dim_is_where_the_kernel_keeps_winning():
    from mousse.experiments.kernelbench import measured_min_dim

    def rows(*speedups):
        return [{"size": 2 ** (10 + i), "speedup": s} for i, s in enumerate(speedups)]

    assert measured_min_dim(rows(0.5, 1.2, 0.9, 1.4, 1.6)) == 8192  # wins only from 8192 on
    assert measured_min_dim(rows(1.1, 1.2, 1.3, 1.4)) == 1024
    assert measured_min_dim(rows(1.5, 0.8)) is None


def test_kernel_thresholds_from_the_environment(monkeypatch):
    from mousse.optim import kernels

    monkeypatch.setenv("MOUSSE_GRAM_MIN_DIM", "4096")
    monkeypatch.delenv("MOUSSE_POLY_MIN_DIM", raising=False)
    assert kernels.min_dim("gram") == 4096 and kernels.min_dim("poly") == kernels.POLY_MIN_DIM
    monkeypatch.setenv("MOUSSE_POLY_MIN_DIM", "lots")
    with pytest.raises(ValueError, match="MOUSSE_POLY_MIN_DIM"):
        kernels.min_dim("poly")


BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
# every recorded `mousse bench --json` output (tests/cli/test_report_files.py's NOT_REPORTS)
BENCH_OUTPUTS = sorted(
    p
    for pattern in ("cpu-1thread-small*.json", "cpu-2core-small*.json", "cpu-2core-tiny-train.json")
    for p in BENCHMARKS.glob(pattern)
)


def test_every_recorded_kernel_timing_has_the_typed_form():
    """The GPU kernel timings and every `mousse bench` output's "kernels" (None off CUDA)."""
    from mousse.experiments.kernelbench import KernelBench

    recorded = [json.loads((BENCHMARKS / "gpu" / "h100-kernels.json").read_text())]
    for path in BENCH_OUTPUTS:
        recorded.append(json.loads(path.read_text()).get("kernels"))
    kernels = [k for k in recorded if k is not None]
    assert kernels and all(shaped(k, KernelBench) for k in kernels)
    assert not shaped({**kernels[0], "rows": [{"op": "gram"}]}, KernelBench)


def test_bench_keeps_recorded_outputs():
    assert len(BENCH_OUTPUTS) >= 5


@pytest.mark.parametrize("path", BENCH_OUTPUTS, ids=lambda p: p.name)
def test_every_recorded_bench_output_has_the_typed_form(path):
    from mousse.experiments.bench import BenchResult

    assert shaped(json.loads(path.read_text()), BenchResult)
