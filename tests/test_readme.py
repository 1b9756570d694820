"""The README runs as written: every command in its bash blocks works when pasted, in order, into a
fresh shell at the repository root after the set-up line. `.venv/bin/X` is this interpreter's X.
The commands that install, need a GPU or take minutes are listed below with why; the long ones
that can be cut short run with a few flags appended (seconds of training, or only the plan)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import FAST, mousse_command

from mousse_cli.errors import EXIT_EXPECTATION

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SETUP = "bash scripts/setup.sh"

# README command -> why it is not run here
NOT_RUN = {
    f"{SETUP} && .venv/bin/mousse ablate --alpha 0.0,0.125,0.25": "the set-up line: it installs "
    "(a test must not); its ablation runs cut short, below, for the `report` lines to read",
    f"{SETUP} && .venv/bin/python -m pytest": "installs, then this whole suite: CI's job "
    "(test_ci_installs_everything_and_runs_the_readme_test_command)",
    ".venv/bin/mousse presets --measure": "probes every preset here, tens of seconds "
    "(train/test_estimate.py::test_presets_measure_prices_every_preset_here)",
    ".venv/bin/mousse bench --preset small": "times every optimizer, a minute even at one repeat "
    "(experiments/test_bench.py)",
    ".venv/bin/mousse train --preset 160m --data 'fineweb10B/fineweb_*.bin'": "a GPU and the "
    "FineWeb shards",
    ".venv/bin/mousse bench --preset 160m --train --steps 30": "a GPU (160m: hours a step here)",
}
# README command -> the flags appended to cut it short
SHORTENED = {
    ".venv/bin/mousse train": [*FAST, "--steps", "2"],
    ".venv/bin/mousse train --model examples/llama.py:llama --model-config d_model=128": [
        *FAST[2:],  # the model's own width (FAST's --d-model is the built-in GPT's)
        "--steps",
        "2",
    ],
    ".venv/bin/mousse ablate --alpha 0.0,0.125,0.25 --tune lr --seeds 3": ["--dry-run"],
    ".venv/bin/mousse ablate --optimizer mousse,muon,adamw,shampoo,soap,splus,tnt,specgd": [
        "--dry-run"
    ],
    ".venv/bin/mousse ablate ablations/paper-tuned.toml --max-runs 200": ["--dry-run"],
}


def readme_commands() -> list[str]:
    """The command lines of the README's bash blocks, in order, without their comments."""
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(), flags=re.M | re.S)
    lines = [
        re.sub(r"\s+#\s.*$", "", line).strip() for block in blocks for line in block.split("\n")
    ]
    return [line for line in lines if line]


def parts(command: str) -> list[list[str]]:
    """A command line's commands (split at `&&`) as argument lists."""
    words, out = shlex.split(command), [[]]
    for word in words:
        if word == "&&":
            out.append([])
        else:
            out[-1].append(word)
    return out


def resolved(argv: list[str]) -> list[str]:
    """`argv` with `.venv/bin/X` as this interpreter's X (`mousse`: its console script)."""
    if not argv[0].startswith(".venv/bin/"):
        return argv
    name = argv[0].removeprefix(".venv/bin/")
    head = mousse_command() if name == "mousse" else [str(Path(sys.executable).parent / name)]
    return [*head, *argv[1:]]


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(resolved(argv), cwd=cwd, capture_output=True, text=True, timeout=600)


def test_every_readme_command_runs_from_the_venv():
    """No bare `mousse` that a fresh shell cannot find: each command is the set-up script or
    spelled `.venv/bin/...`."""
    for command in readme_commands():
        for argv in parts(command):
            assert argv[:2] == SETUP.split() or argv[0].startswith(".venv/bin/"), command


def test_the_lists_name_readme_commands():
    """A command listed here that the README no longer has is a stale reason."""
    commands = set(readme_commands())
    assert not (set(NOT_RUN) | set(SHORTENED)) - commands


def test_ci_installs_everything_and_runs_the_readme_test_command():
    """.ci/run: the full set-up (never --cpu-light), then the README's test command."""
    ci = [line.split("#")[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    test_line = next(c for c in readme_commands() if c.startswith(SETUP) and "pytest" in c)
    assert SETUP in ci and test_line.split("&&")[1].strip() in ci
    assert not any("--cpu-light" in line for line in ci)


def test_setup_refuses_an_unknown_option_before_installing_anything():
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup.sh"), "--light"], capture_output=True, text=True
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res
    assert "--cpu-light" in res.stderr and not res.stdout


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path):
    """In order, from a fresh folder that holds the repository's examples and specs: the set-up
    line's ablation (cut short, in the dir its plan names: the one the `report` lines read), then
    every command not listed in NOT_RUN, as written or cut short."""
    for folder in ("examples", "ablations"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    commands = readme_commands()
    setup_ablation = parts(commands[0])[1]
    plan = run([*setup_ablation, "--dry-run"], tmp_path)
    assert plan.returncode == 0, plan.stderr
    ablation_dir = re.search(r" in (runs/\S+)", plan.stderr).group(1)
    short = [*FAST, "--steps", "4", "--eval-every", "2", "--ablation-dir", ablation_dir]
    trained = run([*setup_ablation, *short], tmp_path)
    assert trained.returncode == 0, trained.stderr
    ran = []
    for command in commands:
        if command in NOT_RUN:
            continue
        (argv,) = parts(command)
        res = run([*argv, *SHORTENED.get(command, [])], tmp_path)
        # a gate whose expectation a seconds-long ablation does not meet still works as one
        ok = (0, EXIT_EXPECTATION) if "--expect" in argv else (0,)
        assert res.returncode in ok, f"{command}\n{res.stderr[-2000:]}"
        ran.append(command)
    assert any(ablation_dir in c for c in ran), "the report lines read the set-up line's ablation"
    assert (tmp_path / "alpha.png").is_file()
