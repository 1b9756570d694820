"""The refresh knobs (refresh, refresh_delay, refresh_schedule) as run settings, `train` flags
and ablation sweeps. Their math: tests/optim/test_refresh.py and test_refresh_offpath.py."""

from __future__ import annotations

import pytest
from support.cli import assert_one_line_error, invoke_cli

from mousse.train.config import ConfigError, resolve


def test_refresh_is_a_train_flag_and_an_ablation_sweep(builtin_data):
    with pytest.raises(ConfigError, match="'refresh'"):
        resolve({"refresh": "svd"})  # the engine's own check: tests/optim/test_refresh.py
    assert resolve({"refresh": "qr"}).refresh == "qr"
    assert_one_line_error(invoke_cli("train", "--refresh", "svd"), "refresh")
    res = invoke_cli("ablate", "--refresh", "eigh,qr", "--dry-run", "--ablation-dir", "unused")
    assert res.exit_code == 0, res
    assert "refresh=qr" in res.stderr


def test_refresh_knobs_are_run_settings_and_flags(builtin_data):
    cfg = resolve({"refresh_delay": 2, "refresh_schedule": "staggered", "refresh": "root"})
    assert (cfg.refresh_delay, cfg.refresh_schedule, cfg.refresh) == (2, "staggered", "root")
    with pytest.raises(ConfigError, match="refresh_delay"):
        resolve({"refresh_delay": -1})
    assert_one_line_error(invoke_cli("train", "--refresh-delay", "20"), "refresh_delay")
    res = invoke_cli("ablate", "--refresh-delay", "0,1,5", "--dry-run", "--ablation-dir", "unused")
    assert res.exit_code == 0, res
    assert "refresh_delay=5" in res.stderr + res.stdout
