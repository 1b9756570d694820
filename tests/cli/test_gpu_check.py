"""scripts/gpu_check.sh's scale and evidence parts, dry: each plans its ablation on each preset in
turn and says how each went, without a GPU (the runs themselves need one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _dry(tmp_path: Path, part: str, **env: str) -> subprocess.CompletedProcess:
    """`scripts/gpu_check.sh OUT 300 PART` planning on the CPU (`--dry-run` through
    GPU_CHECK_SCALE_ARGS), a run at a time."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_PARALLEL": "1",
        "GPU_CHECK_SCALE_ARGS": "--dry-run",
        **env,
    }
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path), "300", part],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_the_scale_part_plans_the_decisive_set_on_each_preset(tmp_path):
    """On the CPU presets (the ladder's rungs take a minute each to price on a busy CPU), with
    no --budgets (empty GPU_CHECK_SCALE_BUDGETS: the dry path does not need the flag). The
    plan's run bound passes the script's --max-runs."""
    done = _dry(tmp_path, "scale", GPU_CHECK_SCALE_PRESETS="tiny,small", GPU_CHECK_SCALE_BUDGETS="")
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "scale.txt").read_text().splitlines()
    assert lines == ["tiny: done (exit 0)", "small: done (exit 0)"], lines
    plan = (tmp_path / "scale-small.log").read_text()
    assert "3 variants, each tuned (lr) on tuning seeds [1000]" in plan


@pytest.mark.slow
def test_the_evidence_part_plans_the_budgets_spec_with_its_own_budgets(tmp_path):
    """ablations/budgets.toml as written (its budgets, lr tuned per budget), no scale part."""
    done = _dry(tmp_path, "evidence", GPU_CHECK_EVIDENCE_PRESETS="tiny")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "evidence.txt").read_text().splitlines() == ["tiny: done (exit 0)"]
    assert not (tmp_path / "scale.txt").exists()
    plan = (tmp_path / "evidence-tiny.log").read_text()
    assert "chosen per budget (0.25, 0.5, 1, 2)" in plan and "2x 7,680 steps" in plan
