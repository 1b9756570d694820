"""scripts/gpu_check.sh's scale part, dry: it plans the decisive set on each preset in turn and
says how each went, without a GPU (the runs themselves need one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_scale_part_plans_the_decisive_set_on_each_preset(tmp_path):
    """`--dry-run` through GPU_CHECK_SCALE_ARGS, on the CPU presets (the ladder's rungs take a
    minute each to price on a busy CPU), with no --budgets (empty GPU_CHECK_SCALE_BUDGETS: the
    dry path does not need the flag). The plan's run bound passes the script's --max-runs."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_PARALLEL": "1",
        "GPU_CHECK_SCALE_PRESETS": "tiny,small",
        "GPU_CHECK_SCALE_BUDGETS": "",
        "GPU_CHECK_SCALE_ARGS": "--dry-run",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path), "300", "scale"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "scale.txt").read_text().splitlines()
    assert lines == ["tiny: done (exit 0)", "small: done (exit 0)"], lines
    plan = (tmp_path / "scale-small.log").read_text()
    assert "3 variants, each tuned (lr) on tuning seeds [1000]" in plan
