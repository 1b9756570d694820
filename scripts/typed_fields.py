"""Rewrite the typed lines derived from one declaration: `knobs.KnobArgs` from the knob table
(mousse.optim.knobs.TABLE), and `config.Overrides` and `config.Settings` from
`config.TrainConfig`'s fields. The test suite fails while they differ (tests/optim/test_knobs.py,
tests/train/test_config_knobs.py, tests/train/test_settings.py)."""

from pathlib import Path

from mousse.optim import knobs
from mousse.train import config

if __name__ == "__main__":
    core = Path(__file__).resolve().parent.parent / "core" / "mousse"
    for path, source, lines in (
        (core / "optim" / "knobs.py", "TABLE", knobs.knob_args_lines()),
        (core / "train" / "config.py", "TrainConfig", config.overrides_lines()),
        (core / "train" / "config.py", config.SETTINGS_SOURCE, config.settings_lines()),
    ):
        changed = knobs.rewrite_lines(path, source, lines)
        print(f"{path}: {'rewritten' if changed else 'up to date'}")
