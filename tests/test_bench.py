"""`mousse bench`: runs on CPU, documented JSON keys, positive timings, one-line errors."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_one_line_error, invoke_cli

from mousse import optim
from mousse.bench import COMPILED, OPTIMIZERS, bench_steps, matrix_shapes, ns_flops

KEYS = {"preset", "device", "device_name", "cpu_count", "threads", "torch", "repeats", "compiled", "cycle_steps", "step_ms",
        "vs_muon", "state_bytes", "cache_bytes", "refresh_ms", "shapes", "targets", "train"}
SHAPE_KEYS = {"shape", "count", "ns_ms", "ns_tflops", "ns_pct_peak", "refresh_eigh_ms",
              "refresh_qr_ms"}


def test_bench_json_on_cpu():
    res = invoke_cli("bench", "--json", "--preset", "tiny", "--repeats", "1", "--device", "cpu")
    assert res.exit_code == 0, res
    r = res.json()
    assert set(r) == KEYS and r["device"] == "cpu" and r["train"] is None and not r["compiled"]
    assert set(r["step_ms"]) == set(OPTIMIZERS) and all(ms > 0 for ms in r["step_ms"].values())
    assert r["vs_muon"]["muon"] == 1.0
    assert all(ms > 0 for ms in r["refresh_ms"].values()) and set(r["refresh_ms"]) == {"eigh", "qr"}
    assert {tuple(s["shape"]): s["count"] for s in r["shapes"]} == matrix_shapes("tiny")
    for s in r["shapes"]:
        assert set(s) == SHAPE_KEYS and s["ns_pct_peak"] is None  # no known peak on CPU
        assert min(s["ns_ms"], s["ns_tflops"], s["refresh_eigh_ms"], s["refresh_qr_ms"]) > 0
    # state: Muon one momentum per matrix (fp32); Mousse adds L, Q_L, R, Q_R and eigenvalues
    n_matrix = sum(m * n * c for (m, n), c in matrix_shapes("tiny").items())
    assert r["state_bytes"]["torch_muon"] == 4 * n_matrix
    assert r["state_bytes"]["mousse_both_f10"] > r["state_bytes"]["mousse_left_f10"] > 4 * n_matrix
    assert r["cache_bytes"]["muon"] == 0 and r["cache_bytes"]["mousse_both_f10"] > 0
    assert set(r["targets"]) == {"mousse_f10_vs_muon", "muon_vs_torch_muon",
                                 "muon_bf16_vs_torch_muon"}
    assert "optimizer step" in res.stderr  # the table goes to stderr, JSON alone to stdout


def test_ns_flops_counts_the_short_side():
    assert ns_flops(128, 512) == ns_flops(512, 128) == 5 * (4 * 128**2 * 512 + 2 * 128**3)


def test_bench_bad_input_exits_2():
    assert_one_line_error(invoke_cli("bench", "--preset", "huge"), "huge", "tiny")
    assert_one_line_error(invoke_cli("bench", "--repeats", "0"), "repeats")
    assert_one_line_error(invoke_cli("bench", "--device", "tpu"), "device")


def test_bench_compiled_rows(monkeypatch):
    """--compile adds the torch.compile rows (dynamo's capture without codegen here, for speed)."""
    torch._dynamo.reset()
    monkeypatch.setattr(optim, "COMPILE_OPTIONS", {"backend": "eager", "fullgraph": True})
    step_ms, memory, _ = bench_steps({(16, 8): 2, (8, 8): 1}, torch.device("cpu"), 1, compiled=True)
    assert set(step_ms) == set(OPTIMIZERS) | set(COMPILED) and all(v > 0 for v in step_ms.values())
    assert memory["mousse_both_f10_compiled"] == memory["mousse_both_f10"]
    torch._dynamo.reset()


def test_bench_train_mode(builtin_data):
    """--train: whole training steps of Muon and Mousse through the Trainer, and the overhead."""
    from mousse.bench import bench_train

    t = bench_train("tiny", "cpu", 2)
    assert t["steps"] == 2 and t["compiled"] is False
    for name in ("muon", "mousse"):
        assert set(t[name]) == {"step_ms_median", "step_ms_mean", "fwd_bwd_ms_median", "opt_ms_mean"}
        assert all(v > 0 for v in t[name].values())
    assert t["overhead_pct_mean"] == pytest.approx(
        100 * (t["mousse"]["step_ms_mean"] / t["muon"]["step_ms_mean"] - 1))
