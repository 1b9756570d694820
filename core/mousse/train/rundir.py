"""A run directory belongs to one run: claimed with an exclusive lock for as long as the run
trains, and never silently reused by another run.

- A new run refuses a directory that already holds files, unless it resumes the run that is
  there, or restarts (`--resume auto`, an ablation's own run dir) a run that ended before its
  first checkpoint and left nothing else.
- The lock is `fcntl.flock` on `<run dir>/.lock`: the kernel drops it when its process ends,
  however it ends, so a dead process's lock is taken over at once; the file names the holder
  (pid, host, start time) for the error message of whoever finds it held. A resume takes it
  before it chooses its checkpoint, so no other run writes a newer one meanwhile. A run checks
  before each write that the lock file is still the one it locked (`RunLock.check`): removed
  or replaced, another run may hold the dir, and this one stops.
"""

from __future__ import annotations

import json
import os
import platform
import re
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypedDict

from . import tomlio
from .checkpoint import (
    checkpoint_dirs,
    is_checkpoint_dir,
    run_dir_of,
    set_aside_later_checkpoints,
)
from .config import ConfigError, TrainConfig
from .events import MetricsRecord
from .fileio import (
    JsonlError,
    atomic_write_text,
    dumps,
    loads,
    read_json,
    read_jsonl,
    shaped,
    write_json,
)
from .machine import Environment
from .summary import read_summary

LOCK_FILE = ".lock"
# the files a run writes; `branches`: the cooldown branches of a run with budgets (train.branches)
RUN_FILES = {
    "config.toml",
    "env.json",
    "metrics.jsonl",
    "summary.json",
    "checkpoints",
    "branches",
    LOCK_FILE,
}
# what an atomic write of a run file (`fileio.atomic_write_text`: `.NAME.` and mkstemp's 8
# characters) leaves when its process is killed before the rename: not a file of the run
_NAMES = "|".join(map(re.escape, sorted(RUN_FILES)))
_LEFTOVER = re.compile(rf"\.(?:{_NAMES})\.[a-z0-9_]{{8}}")
FINISHED = ("completed", "diverged")  # a summary with this status is a result to keep

try:
    import fcntl
except ImportError:  # not POSIX: no lock, the refusal of non-empty dirs still holds
    fcntl = None  # type: ignore[assignment]  # None: no fcntl module on this platform


class RunDirError(ConfigError):
    """A run dir that cannot be used for this run; the message names it and the fix."""


class RunInUse(RunDirError):
    """Another live process holds the run dir's lock."""


class LockLost(RunDirError):
    """The run dir's lock file was removed or replaced while this run held it: another run may
    write there now, so this one stops before writing anything more."""


def _entries(run_dir: Path) -> list[Path]:
    """What `run_dir` holds, less its lock file and the leftovers of killed atomic writes."""
    return [p for p in run_dir.iterdir() if p.name != LOCK_FILE and not _LEFTOVER.fullmatch(p.name)]


def _holds_a_run(run_dir: Path) -> bool:
    return bool(_entries(run_dir))


def clear_leftovers(run_dir: Path) -> None:
    """Remove what killed atomic writes left in `run_dir` (its lock held: no write is under way)."""
    for p in run_dir.iterdir():
        if _LEFTOVER.fullmatch(p.name) and p.is_file():
            p.unlink(missing_ok=True)


def _run_began(run_dir: Path) -> bool:
    """Whether a run wrote `run_dir`'s files: its env.json, the first file a run writes, is
    mousse's (a user's own config.toml or metrics.jsonl of the same name is not a run's)."""
    try:
        env = json.loads((run_dir / "env.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(env, dict) and "mousse" in env


def restartable(run_dir: Path) -> bool:
    """Whether starting the run in `run_dir` again loses nothing: it holds only the files a run
    wrote, no checkpoint, and no summary of a finished run (it failed, or was stopped or killed
    before its first checkpoint)."""
    if any(p.name not in RUN_FILES for p in _entries(run_dir)) or checkpoint_dirs(run_dir):
        return False
    if not _run_began(run_dir):
        return False
    if not (run_dir / "summary.json").exists():
        return True
    summary = read_summary(run_dir)  # None: a summary that cannot be read, kept
    return summary is not None and summary["status"] not in FINISHED


def _taken(run_dir: Path) -> str:
    """Why a fresh run may not use `run_dir`, and the fix."""
    if checkpoint_dirs(run_dir):
        found = (run_dir / "checkpoints").resolve()
        if not found.is_relative_to(run_dir.resolve()):  # a link: the checkpoints of another run
            return (
                f"holds a link to another run's checkpoints ({found}); remove the link, or "
                f"continue that run with --resume {found.parent}"
            )
        return (
            f"already holds a run; continue it with --resume {run_dir}, or pass another --run-dir"
        )
    if restartable(run_dir):
        return (
            "holds a run that ended before its first checkpoint; start it again with "
            f"--resume auto --run-dir {run_dir}, or pass another --run-dir"
        )
    return "already holds files of a finished run or of your own; pass another --run-dir"


def check_free(run_dir: Path, resume: bool, restart: bool = False, probe: bool = True) -> None:
    """Refuse, in one line, a run dir this run may not use: a file, or a directory that already
    holds other files (`resume`: this run continues the one there; `restart`: it may start a
    `restartable` run there again). `probe`: also refuse a dir another process holds, read
    only (False when this process holds its lock already)."""
    if str(run_dir) in ("", "."):
        raise RunDirError("--run-dir must name a directory for this run, not the current one")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--run-dir {run_dir} is a file; pass a directory")
    if probe and run_dir.is_dir():  # held by a live run now? (taken for real when it trains)
        _check_lock_file(run_dir / LOCK_FILE)
        if holder := held_by(run_dir):
            raise _in_use(run_dir, holder)
    if (
        run_dir.is_dir()
        and not resume
        and _holds_a_run(run_dir)
        and not (restart and restartable(run_dir))
    ):
        raise RunDirError(f"run dir {run_dir} {_taken(run_dir)}")
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


class RunLock:
    """The exclusive claim on a run dir, held from `acquire` to `release` (or process exit)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        fd = open_lock_file(self.path)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _holder(fd)
                os.close(fd)
                raise _in_use(self.path.parent, holder) from None
        os.ftruncate(fd, 0)
        me: LockHolder = {
            "pid": os.getpid(),
            "host": platform.node(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        os.write(fd, json.dumps(me).encode())
        self.fd = fd
        return self

    def check(self) -> None:
        """LockLost unless the lock file is still the one this process locked (not removed,
        not replaced by another run's): checked before each write of the run."""
        if self.fd is None:
            return
        mine = os.fstat(self.fd)
        try:
            now = os.stat(self.path, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                return
        except OSError:
            pass  # removed: lost
        raise LockLost(
            f"the lock file {self.path} of this run was removed or replaced, so another run "
            f"may be writing to {self.path.parent}; this run stopped without writing more: "
            f"once no other run trains there, continue it with --resume {self.path.parent}"
        )

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def open_lock_file(path: Path) -> int:
    """A descriptor of the lock file `path`, created if need be; never through a symbolic link
    (a link to a user's file would have it overwritten with the holder's details)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except PermissionError:
        raise RunDirError(
            f"run dir {path.parent} is not writable; pass a --run-dir you can write to"
        ) from None
    except OSError as exc:
        if path.is_symlink():
            raise _lock_link(path) from None
        raise RunDirError(
            f"run dir {path.parent} cannot be used ({exc.strerror}); pass another --run-dir"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO: its holder could not be written
        os.close(fd)
        raise _lock_not_a_file(path)
    return fd


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (waiting for it) for the block: for short
    check-then-write sections several processes may run at once."""
    fd = open_lock_file(path)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def lock_before_resume(run_dir: Path | None, resume: str | None) -> RunLock | None:
    """The lock of the run dir a resume writes to, taken before its checkpoint is chosen (so a
    run still training there is refused, not raced); None when that dir holds no checkpoint (a
    resume of it fails, or starts afresh and locks it then): no `.lock` left in an empty dir."""
    if resume is None:
        return None
    target = run_dir
    if target is None and resume != "auto":
        source = Path(resume)
        target = run_dir_of(source) if is_checkpoint_dir(source) else source
    if target is None or not checkpoint_dirs(target):
        return None
    return RunLock(target).acquire()


def _lock_link(path: Path) -> RunDirError:
    return RunDirError(f"{path} is a symbolic link, not mousse's lock file; remove the link")


def _check_lock_file(path: Path) -> None:
    """Refuse a lock file that is a symbolic link or not a regular file (a FIFO)."""
    if path.is_symlink():
        raise _lock_link(path)
    if path.exists() and not path.is_file():
        raise _lock_not_a_file(path)


def _lock_not_a_file(path: Path) -> RunDirError:
    return RunDirError(f"{path} is not a regular file, not mousse's lock file; remove it")


def _in_use(run_dir: Path, holder: str) -> RunInUse:
    return RunInUse(
        f"run dir {run_dir} is in use by {holder}; wait for it to finish or pass another --run-dir"
    )


def held_by(run_dir: Path) -> str | None:
    """Who holds `run_dir`'s lock now (None: nobody, or no lock file); reads, never writes."""
    path = run_dir / LOCK_FILE
    if fcntl is None or path.is_symlink() or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # unreadable: taking the lock for real says why
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released again by the close below
    except OSError:
        return _holder(fd)
    finally:
        os.close(fd)
    return None


class LockHolder(TypedDict):
    """Who holds a run dir's lock, as its lock file says (`RunLock.acquire`)."""

    pid: int
    host: str
    since: str  # local time, ISO 8601 to the second


def _holder(fd: int) -> str:
    """Who holds the lock whose file is open as `fd` ("another process" when it does not say)."""
    try:
        info = loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return "another process"
    if not shaped(info, LockHolder):
        return "another process"
    return f"pid {info['pid']} on {info['host']} (since {info['since']})"


class Resumed(Environment):
    """One resume of a run as its env.json records it: where it ran, and from which step."""

    from_step: int


class RunEnv(Environment, total=False):
    """A run's env.json: the `Environment` of its first session, and each resume's after it."""

    resumes: list[Resumed]


def read_metrics(run_dir: Path) -> list[MetricsRecord]:
    """The run's metrics.jsonl records ([] while it has none); a damaged line, or one of
    another shape than `MetricsRecord`, is a JsonlError naming it (`read_jsonl`)."""
    return read_jsonl(run_dir / "metrics.jsonl", MetricsRecord, key="step")


def earlier_logs(run_dir: Path) -> tuple[RunEnv | None, list[MetricsRecord]]:
    """The original env.json (None when there is none) and metrics.jsonl's records of the run a
    resume continues; a damaged one is a RunDirError naming it and the fix (read before
    anything is written, so that nothing of the run is lost)."""
    env_file = run_dir / "env.json"
    try:
        env = read_json(env_file)
        if not isinstance(env, dict) or not isinstance(env.get("resumes", []), list):
            raise ValueError("not an object with a list of resumes")
        if not shaped(env, RunEnv):
            raise ValueError("a value of another type than mousse writes")
    except FileNotFoundError:
        env = None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise RunDirError(
            f"{env_file} is damaged ({exc}); move it away (the resume writes a new one) and resume"
        ) from None
    try:
        return env, read_metrics(run_dir)
    except JsonlError as exc:
        raise RunDirError(f"{exc}; repair or delete that line, then resume") from None


def prepare_run_dir(
    run_dir: Path, cfg: TrainConfig, env: Environment, resumed_from: int | None, step: int
) -> None:
    """A run's files before its first step: env.json first (what marks the dir as a run's; a
    resume keeps the original and appends itself), config.toml, and metrics.jsonl cut back to
    the checkpoint's step on a resume (checkpoints from after it set aside), or removed with
    any summary when the run starts over."""
    original, records = earlier_logs(run_dir) if resumed_from is not None else (None, [])
    run_dir.mkdir(parents=True, exist_ok=True)
    if original is not None and resumed_from is not None:  # keep the original, log the resume
        resumes: list[Resumed] = [*original.get("resumes", []), {**env, "from_step": resumed_from}]
        record: RunEnv = {**original, "resumes": resumes}
        write_json(run_dir / "env.json", record)
    else:
        write_json(run_dir / "env.json", env)
    atomic_write_text(run_dir / "config.toml", tomlio.dumps(cfg.to_dict()))
    metrics = run_dir / "metrics.jsonl"
    if resumed_from is not None:  # drop what was logged after the checkpoint
        kept = [r for r in records if r["step"] <= step]
        atomic_write_text(metrics, "".join(dumps(r) + "\n" for r in kept))
        set_aside_later_checkpoints(run_dir / "checkpoints", step)
    else:  # a restart: the earlier attempt's log and summary would describe another run
        metrics.unlink(missing_ok=True)
        (run_dir / "summary.json").unlink(missing_ok=True)
