"""One comparison over several scales, from results recorded by separate ablations: each preset's
results file, its variants renamed to common labels (the rest left out), as one scaled results
object that `mousse report` tabulates and plots (speedup against parameters).

    .venv/bin/python scripts/combine_scales.py benchmarks/tuned/cpu-2core-decisive-scale.toml \
        benchmarks/tuned/cpu-2core-decisive-scale.json
    .venv/bin/mousse report benchmarks/tuned/cpu-2core-decisive-scale.json --format markdown \
        --plot benchmarks/tuned/cpu-2core-decisive-scale.png

The spec lists one [[point]] per preset, in order: `preset`, `results` (a path relative to the
spec) and `variants`, a table from each kept variant's recorded name to its label.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mousse.experiments.results import with_delta_intervals
from mousse.experiments.scale import combine, relabel
from mousse.train.config import read_toml
from mousse.train.fileio import write_json


def combined(spec: Path) -> dict:
    """The scaled results object the spec describes."""
    by_preset = {}
    for point in read_toml(spec)["point"]:
        results = json.loads((spec.parent / point["results"]).read_text())
        by_preset[point["preset"]] = relabel(with_delta_intervals(results), point["variants"])
    return combine(by_preset)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        write_json(Path(argv[1]), combined(Path(argv[0])))
    except (OSError, ValueError, KeyError, TypeError) as exc:  # ConfigError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
