"""Capture what `mousse` prints and writes, to diff two versions of the code (a refactor must
leave it byte-identical, measured timings aside).

    PYTHONPATH=<checkout>/core:<checkout> python scripts/behaviour_snapshot.py OUT_DIR

writes one file per invocation under OUT_DIR: every command's --help, `mousse presets` (table
and --json), `mousse report` of every recorded ablation result in each format, every spec's
`ablate --dry-run` (its cost estimate from a fixed probe), an unknown preset's error, and the
metrics of two 30-step tiny runs (Muon and Mousse) with their timing fields dropped. Then
`diff -r OLD NEW`: only `mousse presets`' measured times may differ."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path.cwd()  # the checkout being captured (run from its root)
COMMANDS = ["train", "presets", "ablate", "bench", "report"]
FORMATS = ["table", "markdown", "json", "csv"]
# parts of a key that name a measured time or rate (metrics.jsonl's step_ms, tokens_per_s,
# train_seconds, mfu...): they differ from run to run
TIMING_WORDS = ("time", "per_s", "mfu", "_ms", "sec", "elapsed", "wall", "flops")
# measured or where it ran, in summary.json
MEASURED = ("run_dir", "peak_mem_bytes", "peak_mem_source", "timing_context")


def invoke(*args: str) -> str:
    """`mousse ARGS` in-process: exit code, stdout and stderr as one text."""
    from typer.testing import CliRunner

    from mousse_cli.app import app

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "120", "NO_COLOR": "1"})
    return (
        f"exit {result.exit_code}\n--- stdout ---\n{result.stdout}--- stderr ---\n{result.stderr}"
    )


def run_process(*args: str) -> str:
    """`python -m mousse_cli ARGS` as a process (the one-line usage errors live in its entry)."""
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mousse_cli", *args], capture_output=True, text=True, env=env
    )
    return f"exit {done.returncode}\n--- stdout ---\n{done.stdout}--- stderr ---\n{done.stderr}"


def is_ablation_result(path: Path) -> bool:
    """A results file `mousse report` reads (an ablation's results.json or `ablate --json`)."""
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return False
    return isinstance(data, dict) and "variants" in data


def untimed(record: object) -> object:
    """A metrics record without its measured timings, at any depth."""
    if isinstance(record, dict):
        return {
            k: untimed(v)
            for k, v in record.items()
            if k not in MEASURED and not any(w in k for w in TIMING_WORDS)
        }
    if isinstance(record, list):
        return [untimed(v) for v in record]
    return record


def tiny_run(optimizer: str, scratch: Path) -> str:
    """A 30-step tiny run's exit, config.toml, metrics.jsonl and summary.json, timings dropped."""
    run_dir = scratch / optimizer
    out = invoke("train", "--optimizer", optimizer, "--steps", "30", "--run-dir", str(run_dir))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = untimed(json.loads((run_dir / "summary.json").read_text()))
    return "\n".join(
        [
            out.splitlines()[0],
            (run_dir / "config.toml").read_text(),
            *(json.dumps(untimed(r), sort_keys=True) for r in records),
            json.dumps(summary, indent=1, sort_keys=True),
        ]
    )


def fixed_estimates() -> None:
    """The cost estimate's measurements fixed (a probe step of 0.1 s, no other processes' share
    known): they differ from run to run, and probing every variant of every spec on a CPU takes
    most of an hour; the plans and the estimate's arithmetic still compare byte for byte."""
    from mousse.train import estimate

    estimate._probe = lambda cfg, vocab_size, device: 0.1
    estimate.busy_share = lambda device: None


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fixed_estimates()

    def shot(name: str, text: str) -> None:
        (out / f"{name}.txt").write_text(text.replace(str(ROOT), "<root>"))
        print(name, flush=True)

    shot("help", invoke("--help"))
    for command in COMMANDS:
        shot(f"help-{command}", invoke(command, "--help"))
    shot("unknown-preset", run_process("train", "--preset", "huge"))
    for path in sorted(ROOT.glob("benchmarks/**/*.json")):
        if is_ablation_result(path):
            name = str(path.relative_to(ROOT)).replace("/", "_")
            for fmt in FORMATS:
                shot(f"report-{name}-{fmt}", invoke("report", str(path), "--format", fmt))
    for spec in sorted(ROOT.glob("ablations/*.toml")):
        shot(f"dry-run-{spec.stem}", invoke("ablate", str(spec), "--dry-run"))
    with tempfile.TemporaryDirectory() as scratch:
        for optimizer in ("muon", "mousse"):
            shot(f"run-{optimizer}", tiny_run(optimizer, Path(scratch)))
    shot("presets", invoke("presets"))
    shot("presets-json", invoke("presets", "--json"))


def parse_out(argv: list[str] | None = None) -> Path:
    """OUT_DIR from the command line (argparse: --help prints the usage, exit 0; a missing or
    extra argument is its usage error, exit 2), never a flag taken for a folder."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", type=Path, help="folder to write one file per invocation to")
    return parser.parse_args(argv).out_dir


if __name__ == "__main__":
    main(parse_out())
