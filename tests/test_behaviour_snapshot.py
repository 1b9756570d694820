"""scripts/behaviour_snapshot.py's command line: --help is its usage, not a folder to write to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "behaviour_snapshot.py"


def snapshot(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_help_prints_the_usage_and_writes_nothing(tmp_path):
    for flag in ("--help", "-h"):
        done = snapshot(tmp_path, flag)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("usage:") and "OUT_DIR" in done.stdout
    assert list(tmp_path.iterdir()) == []  # no folder named --help


def test_a_missing_or_extra_folder_is_a_usage_error(tmp_path):
    for args in ((), ("a", "b")):
        done = snapshot(tmp_path, *args)
        assert done.returncode == 2 and "usage:" in done.stderr and "error:" in done.stderr
        assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []
