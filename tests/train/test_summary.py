"""summary.json is read back through one function, `read_summary`, which returns the typed
`RunSummary` only for a file of its shape: every summary recorded in this repository (by
earlier versions too) reads, and one whose keys hold other types reads as no summary."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mousse.train.fileio import shaped
from mousse.train.summary import CurvePoint, RunSummary, read_summary

REPO = Path(__file__).parents[2]


def recorded_summaries() -> list[Path]:
    """Every summary.json the repository keeps (fixtures of earlier formats, benchmarks)."""
    listed = subprocess.run(
        ["git", "ls-files", "*summary.json"], cwd=REPO, capture_output=True, text=True, check=True
    )
    return [REPO / line for line in listed.stdout.splitlines()]


def test_the_repository_keeps_recorded_summaries():
    assert any("fixtures" in p.parts for p in recorded_summaries())


@pytest.mark.parametrize("path", recorded_summaries(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_recorded_summary_reads_into_the_typed_form(path):
    summary = read_summary(path.parent)
    assert summary is not None
    assert summary == json.loads(path.read_text())  # read as it is, nothing filled in or dropped


def write(tmp_path: Path, summary: object) -> Path:
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def test_a_minimal_summary_reads(tmp_path):
    """A status is all a summary must have (a run that failed before training has little more)."""
    assert read_summary(write(tmp_path, {"status": "failed"})) == {"status": "failed"}


def test_keys_it_does_not_declare_are_kept(tmp_path):
    """A later version may write more: an unknown key is no reason to refuse the file."""
    later = {"status": "completed", "steps": 4, "new_key": {"any": [1, "x"]}}
    assert read_summary(write(tmp_path, later)) == later


@pytest.mark.parametrize(
    "summary",
    [
        [1, 2],
        {"steps": 4},  # no status
        {"status": 1},
        {"status": "completed", "steps": "4"},
        {"status": "completed", "steps": True},  # a bool is no count
        {"status": "completed", "final_val_loss": "nan"},
        {"status": "completed", "curve": {"step": 1}},
        {"status": "completed", "curve": [{"val_loss": 2.0}]},  # a point without its step
        {"status": "completed", "regime": {"tokens": 1}},  # a regime lacks its other keys
        {"status": "completed", "budgets": [{"budget": 1, "status": "completed"}]},
    ],
)
def test_a_summary_of_another_shape_reads_as_none(tmp_path, summary):
    assert read_summary(write(tmp_path, summary)) is None


def test_unreadable_files_read_as_none(tmp_path):
    assert read_summary(tmp_path) is None  # none yet
    (tmp_path / "summary.json").write_bytes(b'{"status": "comp')
    assert read_summary(tmp_path) is None
    (tmp_path / "summary.json").write_bytes(b'{"status": "\xff"}')
    assert read_summary(tmp_path) is None


def test_shaped_reads_json_numbers_as_json_has_them():
    """An int is a float (JSON has numbers), a bool neither; None only where declared."""
    assert shaped({"step": 1, "val_loss": 2}, CurvePoint)
    assert shaped({"step": 1, "val_loss": None, "seconds": 0.5}, CurvePoint)
    assert not shaped({"step": 1.5, "val_loss": 2.0}, CurvePoint)
    assert not shaped({"step": 1, "val_loss": False}, CurvePoint)
    assert not shaped({"status": "completed", "train_seconds": None}, RunSummary)
