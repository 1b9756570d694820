"""--precision and --compile: auto resolved against the hardware and the run's length, bf16
autocast against fp32, what a run keeps on resume, Newton-Schulz following the precision, and the
measurements behind them (the matmul peak behind MFU, compile times)."""

from __future__ import annotations

import json
import os
import threading

import pytest
import torch
from support.cli import FAST, assert_one_line_error, summary

from mousse.train import estimate as est
from mousse.train import precision as prec
from mousse.train.compat import upgrade
from mousse.train.config import matrix_kwargs, resolve
from mousse.train.machine import label

CPU = torch.device("cpu")


@pytest.mark.parametrize(("avx512_bf16", "amx", "native"), [(1, 0, 1), (0, 1, 1), (0, 0, 0)])
def test_native_bf16_is_detected_from_the_cpu(monkeypatch, avx512_bf16, amx, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bool(avx512_bf16))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: bool(amx))
    assert prec.native_bf16(CPU) is bool(native)
    assert prec.resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
    assert prec.resolve_precision("fp32", CPU) == "fp32"  # given values are taken as given
    assert prec.resolve_precision("bf16", CPU) == "bf16"


def test_a_resumed_run_keeps_its_precision():
    assert prec.resumed_precision("auto", CPU, "bf16") == "bf16"
    assert prec.resumed_precision("bf16", CPU, "bf16") == "bf16"
    assert prec.resumed_precision("auto", CPU, None) == "fp32"  # recorded before the setting
    assert prec.resumed_precision("auto", torch.device("cuda"), None) == "bf16"
    with pytest.raises(prec.ConfigError, match=r"--precision fp32: this run trained in bf16"):
        prec.resumed_precision("fp32", CPU, "bf16")


def test_newton_schulz_follows_the_precision_unless_set():
    cfg = resolve({"optimizer": "mousse"})
    assert matrix_kwargs(cfg, "bf16")["ns_dtype"] == torch.bfloat16
    assert matrix_kwargs(cfg, "fp32")["ns_dtype"] == torch.float32
    explicit = resolve({"optimizer": "mousse", "ns_dtype": "fp32"})
    assert matrix_kwargs(explicit, "bf16")["ns_dtype"] == torch.float32


def test_the_peak_is_measured_once_per_machine_and_only_kept_when_quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("MOUSSE_CACHE", str(tmp_path))
    calls = []

    def probe(device, precision, quiet=True):
        calls.append(precision)
        return 1e12 if precision == "bf16" else 2e11, quiet

    monkeypatch.setattr(prec, "measure_peak", probe)
    monkeypatch.setattr(prec, "_PEAKS", {})
    assert prec.peak_flops(CPU, "bf16") == 1e12
    assert prec.peak_flops(CPU, "bf16") == 1e12  # this process: no second probe
    monkeypatch.setattr(prec, "_PEAKS", {})  # a new process reads the machine's cache
    assert prec.peak_flops(CPU, "bf16") == 1e12
    assert calls == ["bf16"]
    cached = json.loads((tmp_path / "peak-flops.json").read_text())
    assert list(cached.values()) == [1e12]

    monkeypatch.setattr(prec, "measure_peak", lambda d, p: probe(d, p, quiet=False))
    assert prec.peak_flops(CPU, "fp32") == 2e11  # measured on a busy machine: used, not kept
    assert len(json.loads((tmp_path / "peak-flops.json").read_text())) == 1

    (tmp_path / "peak-flops.json").write_text("{not json")  # a damaged cache is measured again
    monkeypatch.setattr(prec, "_PEAKS", {})
    monkeypatch.setattr(prec, "measure_peak", probe)
    assert prec.peak_flops(CPU, "bf16") == 1e12


@pytest.mark.parametrize("kept", ["0", "-1", "NaN", "Infinity", "1e400", "true", '"1e12"', "null"])
def test_a_kept_value_no_measurement_gives_is_measured_again(monkeypatch, tmp_path, kept):
    """A peak of 0 would divide the cost estimate by zero, NaN or a negative one would make
    every MFU and `--compile auto` decision meaningless: such a cache entry is not used."""
    monkeypatch.setenv("MOUSSE_CACHE", str(tmp_path))
    key = prec.machine_key(CPU, "fp32")
    (tmp_path / prec.PEAK_FILE).write_text(f'{{"{key}": {kept}}}')
    assert prec.recalled(prec.PEAK_FILE, key) is None
    monkeypatch.setattr(prec, "_PEAKS", {})
    monkeypatch.setattr(prec, "measure_peak", lambda device, precision: (2e11, True))
    assert prec.peak_flops(CPU, "fp32") == 2e11
    assert json.loads((tmp_path / prec.PEAK_FILE).read_text()) == {key: 2e11}


@pytest.mark.parametrize("odd", ["fifo", "dir"])
def test_a_cache_file_that_is_no_regular_file_is_passed_over(monkeypatch, tmp_path, odd):
    """A FIFO (which blocks whoever opens it to read) or a directory in place of a cache file:
    nothing kept, read at once; remembering leaves a directory alone and replaces a FIFO."""
    monkeypatch.setenv("MOUSSE_CACHE", str(tmp_path))
    path = tmp_path / est.COMPILE_FILE
    os.mkfifo(path) if odd == "fifo" else path.mkdir()
    got: list[float | None] = []
    reader = threading.Thread(target=lambda: got.append(prec.recalled(path.name, "k")), daemon=True)
    reader.start()
    reader.join(30)  # a guard against a hang, not a timing: the read takes milliseconds
    if reader.is_alive():  # let the blocked reader go before failing
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    assert got == [None]
    prec.remember(path.name, "k", 5.0)
    assert path.is_dir() if odd == "dir" else json.loads(path.read_text()) == {"k": 5.0}


def test_the_probe_measures_a_matmul():
    flops, _ = prec.measure_peak(CPU, "fp32")
    assert 1e8 < flops < 1e14


def test_runs_record_their_precision_and_speed(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(prec, "_PEAKS", {})
    monkeypatch.setattr(prec, "recalled", lambda name, key: None)  # not a peak kept earlier
    monkeypatch.setattr(prec, "remember", lambda name, key, value: None)
    monkeypatch.setattr(prec, "measure_peak", lambda device, precision: (5e11, True))
    runs = {}
    for name in ("fp32", "bf16"):
        run = tmp_path / name
        res = cli("train", *FAST, "--steps", "6", "--precision", name, "--run-dir", run, "--json")
        assert res.exit_code == 0, res
        runs[name] = run
        s = summary(run)
        assert s["precision"] == label(name)
        assert json.loads((run / "env.json").read_text())["precision"] == label(name)
        assert s["peak_flops"] == 5e11
        assert s["model_flops_per_s"] > 0
        assert s["mfu"] == pytest.approx(s["model_flops_per_s"] / 5e11)
        assert "MFU" in res.stdout + res.stderr
    fp32, bf16 = (summary(runs[n])["final_val_loss"] for n in ("fp32", "bf16"))
    assert fp32 != bf16  # autocast is on: the arithmetic differs
    assert bf16 == pytest.approx(fp32, abs=0.05)  # and the losses agree to bf16's rounding


def test_resume_refuses_another_precision_and_keeps_its_own(cli, tmp_path):
    run = tmp_path / "run"
    assert (
        cli("train", *FAST, "--steps", "4", "--precision", "bf16", "--run-dir", run).exit_code == 0
    )
    res = cli("train", "--resume", run, "--steps", "6", "--precision", "fp32")
    assert_one_line_error(res, "--precision fp32")
    res = cli("train", "--resume", run, "--steps", "6", "--json")
    assert res.exit_code == 0, res
    assert summary(run)["precision"] == "bf16 autocast"


def test_compile_auto_compiles_runs_much_longer_than_the_compile_time(monkeypatch, tmp_path):
    monkeypatch.setenv("MOUSSE_CACHE", str(tmp_path))
    monkeypatch.setattr(est, "_flop_estimate", lambda cfg, vocab, device: (1.0, 0.5))
    long, short = resolve({"steps": 600}), resolve({"steps": 599})
    assert est.DEFAULT_COMPILE_S * est.COMPILE_PAYS == 600  # before a measurement here
    assert est.compile_pays(long, 256, CPU, "fp32") and not est.compile_pays(
        short, 256, CPU, "fp32"
    )
    est.record_compile_seconds(short, CPU, "fp32", 5.0)  # measured: 5 s for this model here
    assert est.compile_pays(resolve({"steps": 50}), 256, CPU, "fp32")
    assert not est.compile_pays(resolve({"steps": 49}), 256, CPU, "fp32")
    other = resolve({"steps": 50, "d_model": 64})  # another model has no measurement yet
    assert not est.compile_pays(other, 256, CPU, "fp32")


def test_a_resumed_run_keeps_its_compile_mode():
    assert prec.resumed_compile("auto", True, "auto") is True
    assert prec.resumed_compile("auto", False, "auto") is False
    # recorded before the record: as the checkpoint's config set it, never as the flag given now
    assert prec.resumed_compile("on", None, "on") is True
    assert prec.resumed_compile("auto", None, "on") is True
    assert prec.resumed_compile("auto", None, "auto") is False
    with pytest.raises(prec.ConfigError, match=r"--compile off: this run trained compiled"):
        prec.resumed_compile("off", True, "on")
    with pytest.raises(prec.ConfigError, match=r"--compile on: this run trained eager"):
        prec.resumed_compile("on", False, "on")
    with pytest.raises(prec.ConfigError, match=r"--compile on: this run trained eager"):
        prec.resumed_compile("on", None, "off")
    with pytest.raises(prec.ConfigError, match=r"--compile off: this run trained compiled"):
        prec.resumed_compile("off", None, "on")


def test_compile_settings_from_before_auto_still_read(cli, tmp_path):
    assert upgrade({"compile": True})["compile"] == "on"
    assert upgrade({"compile": False})["compile"] == "off"
    assert_one_line_error(cli("train", "--compile", "yes"), "compile", "auto, on, off")


def test_short_runs_stay_eager_and_resume_refuses_to_compile(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", *FAST, "--steps", "4", "--run-dir", run).exit_code == 0
    assert summary(run)["compiled"] is False  # auto: seconds of training, not worth compiling
    res = cli("train", "--resume", run, "--steps", "6", "--compile", "on")
    assert_one_line_error(res, "--compile on: this run trained eager")
