"""Commit subjects of at most 72 characters (the body carries detail and measurements).

    python scripts/check_commits.py MSGFILE      # one message: pre-commit's commit-msg hook
    python scripts/check_commits.py --since REV  # every commit after REV: CI (.ci/run)

Exit 1, naming each subject that is too long; 0 otherwise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LIMIT = 72
# The rule holds from the commit after this one; the history before it stays as it was written.
RULE_SINCE = "4db36de"


def too_long(subjects: list[tuple[str, str]]) -> list[str]:
    """'<where>: <n> characters: <subject>' for each subject over LIMIT."""
    return [f"{where}: {len(s)} characters: {s}" for where, s in subjects if len(s) > LIMIT]


def subject_of(message: str) -> str:
    """A message's first line that is not a git comment."""
    lines = [line for line in message.splitlines() if not line.startswith("#")]
    return lines[0].rstrip() if lines else ""


def since(rev: str) -> list[tuple[str, str]]:
    """(short hash, subject) of every commit after `rev` on the current branch; only HEAD's in a
    shallow clone that lacks `rev`."""
    known = subprocess.run(["git", "cat-file", "-e", f"{rev}^{{commit}}"], capture_output=True)
    span = [f"{rev}..HEAD"] if known.returncode == 0 else ["-1", "HEAD"]
    out = subprocess.run(
        ["git", "log", "--format=%h%x09%s", *span], check=True, capture_output=True, text=True
    ).stdout
    pairs = [line.split("\t", 1) for line in out.splitlines()]
    return [(h, s) for h, s in pairs]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--since"]:
        subjects = since(argv[1] if len(argv) > 1 else RULE_SINCE)
    elif len(argv) == 1:
        subjects = [(argv[0], subject_of(Path(argv[0]).read_text(encoding="utf-8")))]
    else:
        print(__doc__, file=sys.stderr)
        return 2
    bad = too_long(subjects)
    for line in bad:
        print(f"commit subject over {LIMIT} characters: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
