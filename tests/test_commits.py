"""scripts/check_commits.py: commit subjects of at most 72 characters, in the commit-msg hook and
in CI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_commits.py"
spec = importlib.util.spec_from_file_location("check_commits", SCRIPT)
assert spec and spec.loader
check_commits = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_commits)


def test_subjects_over_72_characters_are_named():
    ok, long = "x" * 72, "y" * 73
    assert check_commits.too_long([("a", ok), ("b", long)]) == [f"b: 73 characters: {long}"]


def test_a_message_file_is_judged_by_its_first_line(tmp_path, capsys):
    msg = tmp_path / "COMMIT_EDITMSG"
    msg.write_text("# a git comment\nShort subject\n\n" + "a body line far longer " * 10 + "\n")
    assert check_commits.main([str(msg)]) == 0
    msg.write_text("A subject that runs on and on " * 3 + "\n\nbody\n")
    assert check_commits.main([str(msg)]) == 1
    assert "over 72 characters" in capsys.readouterr().err


def test_this_repository_keeps_the_rule_since_it_began(monkeypatch):
    monkeypatch.chdir(SCRIPT.parents[1])
    assert check_commits.main(["--since"]) == 0
