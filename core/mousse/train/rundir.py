"""A run directory belongs to one run: claimed with an exclusive lock for as long as the run
trains, and never silently reused by another run.

- A new run refuses a directory that already holds files, unless it resumes the run that is
  there (or, for an ablation's own run dir, restarts that same run when it left no checkpoint).
- The lock is `fcntl.flock` on `<run dir>/.lock`: the kernel drops it when its process ends,
  however it ends, so a dead process's lock is taken over at once; the file names the holder
  (pid, host, start time) for the error message of whoever finds it held.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from . import tomlio
from .checkpoint import set_aside_later_checkpoints
from .config import ConfigError, TrainConfig
from .fileio import atomic_write_text, dumps, read_jsonl, write_json

LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:  # not POSIX: no lock, the refusal of non-empty dirs still holds
    fcntl = None


class RunDirError(ConfigError):
    """A run dir that cannot be used for this run; the message names it and the fix."""


class RunInUse(RunDirError):
    """Another live process holds the run dir's lock."""


def _holds_a_run(run_dir: Path) -> bool:
    return any(p.name != LOCK_FILE for p in run_dir.iterdir())


def check_free(run_dir: Path, resume: bool, restart: bool = False) -> None:
    """Refuse, in one line, a run dir this run may not use: a file, or a directory that already
    holds another run's files (`resume`: this run continues the one there; `restart`: it holds
    this same run's files from before its first checkpoint)."""
    if str(run_dir) in ("", "."):
        raise RunDirError("--run-dir must name a directory for this run, not the current one")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--run-dir {run_dir} is a file; pass a directory")
    if run_dir.is_dir() and not (resume or restart) and _holds_a_run(run_dir):
        raise RunDirError(
            f"run dir {run_dir} already holds a run; continue it with --resume "
            f"{run_dir}, or pass another --run-dir"
        )
    ancestor = run_dir.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunDirError(f"--run-dir {run_dir} lies inside the file {ancestor}; pass a directory")
    if not os.access(ancestor, os.W_OK):
        raise RunDirError(
            f"run dir {run_dir} cannot be created or written ({ancestor} is not "
            "writable); pass a --run-dir you can write to"
        )
    if run_dir.is_dir():  # held by a live run now? (taken for real when training starts)
        RunLock(run_dir).acquire().release()


class RunLock:
    """The exclusive claim on a run dir, held from `acquire` to `release` (or process exit)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:
            raise RunDirError(
                f"run dir {self.path.parent} is not writable; pass a --run-dir you can write to"
            ) from None
        except OSError as exc:
            raise RunDirError(
                f"run dir {self.path.parent} cannot be used ({exc.strerror}); "
                "pass another --run-dir"
            ) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _holder(fd)
                os.close(fd)
                raise RunInUse(
                    f"run dir {self.path.parent} is in use by {holder}; wait for it "
                    "to finish or pass another --run-dir"
                ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": platform.node(),
                    "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
            ).encode(),
        )
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def prepare_run_dir(
    run_dir: Path, cfg: TrainConfig, env: dict, resumed_from: int | None, step: int
) -> None:
    """A run's files before its first step: config.toml, env.json (a resume keeps the original
    and appends itself), and metrics.jsonl cut back to the checkpoint's step on a resume
    (checkpoints from after it set aside), or removed when the run starts over."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.toml", tomlio.dumps(cfg.to_dict()))
    env_file = run_dir / "env.json"
    if resumed_from is not None and env_file.exists():  # keep the original, log the resume
        original = json.loads(env_file.read_text())
        env = {
            **original,
            "resumes": [*original.get("resumes", []), {**env, "from_step": resumed_from}],
        }
    write_json(env_file, env)
    metrics = run_dir / "metrics.jsonl"
    if resumed_from is not None:  # drop what was logged after the checkpoint
        kept = [r for r in read_jsonl(metrics) if r["step"] <= step]
        atomic_write_text(metrics, "".join(dumps(r) + "\n" for r in kept))
        set_aside_later_checkpoints(run_dir / "checkpoints", step)
    elif metrics.exists():
        metrics.unlink()
