"""Rewrite the knob list of docs/family.md from the knob table (mousse.optim.knobs); the test
suite fails while the two differ."""

from pathlib import Path

from mousse.optim.knobs import rewrite

if __name__ == "__main__":
    path = Path(__file__).resolve().parent.parent / "docs" / "family.md"
    print(f"{path}: {'rewritten' if rewrite(path) else 'up to date'}")
