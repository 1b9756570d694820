"""Run settings by name, typed (`mousse.train.config.Settings`, re-exported here): what an
ablation's base, sweeps and runs hold, and what it saves in ablation.toml. A dict, not
`config.Overrides`, because the order the settings were given in is kept (in ablation.toml and the
run records) and they merge by name (`ablation.run_settings`)."""

from __future__ import annotations

from mousse.train.config import Settings as Settings
from mousse.train.config import settings_of as settings_of

# One setting's value, as `config.coerce` types it.
Value = bool | int | float | str
# setting -> the values an ablation sweeps it over (`inputs.typed_sweeps`), in TrainConfig order
Sweeps = dict[str, list[Value]]
