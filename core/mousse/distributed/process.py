"""The process side of a torchrun job: this process's rank from torchrun's environment, and
ending a rank promptly and cleanly. (Starting torchrun is the CLI's: `mousse_cli.launch`.)

- Environment: `env_world_size`, `env_rank`, `is_main_process` (rank 0 renders and writes shared
  files), `rank_prefix` for messages; `batch_split`, the global batch's share per rank, checked
  once here before launching and used by every rank (`rank.Dist`).
- Failures: collectives time out after MOUSSE_DIST_TIMEOUT seconds (default 600; read here, set
  by `rank.setup`); an error on any rank prints one line (rank and message) and ends that
  process with a non-zero code (`exit_on_error`), and torchrun then stops the other ranks.
  `run_rank` ends a rank's process after its work: every rank together, without the interpreter's
  teardown. `leave_process_group` is the one way a rank leaves its process group (a barrier with
  a timeout, then the group destroyed).

Test hook: MOUSSE_FAIL_AT="RANK:STEP" raises a RuntimeError on that rank at that step (checked in
`rank.Dist.reduce_gradients`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import torch.distributed as dist

from mousse.train.config import ConfigError

TIMEOUT_ENV, FAIL_ENV, TRACEBACK_ENV = "MOUSSE_DIST_TIMEOUT", "MOUSSE_FAIL_AT", "MOUSSE_TRACEBACK"
DEFAULT_TIMEOUT_S = 600
LINGER_S = 3.0  # a rank that lost a peer waits this long for torchrun to stop it
PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


# ---- the launch environment ---------------------------------------------------------------------


def env_world_size() -> int:
    """Ranks in this job, from torchrun's environment (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Rank 0, or a single process: the one that renders and writes shared files."""
    return env_rank() == 0


def rank_prefix() -> str:
    """'rank R/N: ' under torchrun with more than one rank, else ''."""
    return f"rank {env_rank()}/{env_world_size()}: " if env_world_size() > 1 else ""


def timeout_seconds() -> float:
    value = os.environ.get(TIMEOUT_ENV)
    try:
        return float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}={value!r} is not a number of seconds") from None


def inject_failure(rank: int, step: int) -> None:
    """The MOUSSE_FAIL_AT="RANK:STEP" test hook."""
    spec = os.environ.get(FAIL_ENV)
    if spec and spec == f"{rank}:{step}":
        raise RuntimeError(f"injected failure at step {step} ({FAIL_ENV}={spec})")


def _hard_exit(code: int, linger: float = 0.0) -> None:
    """Exit now, without atexit handlers (which could wait on a dead process group)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if linger:
        time.sleep(linger)
    os._exit(code)


@contextlib.contextmanager
def exit_on_error(exit_types: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Under torchrun (more than one rank): an error ends this rank at once, with one line on
    stderr naming the rank and the error and a non-zero exit code (130 for Ctrl-C), so torchrun
    stops the other ranks instead of leaving them waiting in a collective. `exit_types` are
    exceptions that carry an `exit_code` (a CLI's exit): non-zero codes end the process the same
    way, without a message. A no-op in a single process. MOUSSE_TRACEBACK=1 adds the traceback."""
    if env_world_size() <= 1:
        yield
        return
    try:
        yield
    except exit_types as exc:
        code = getattr(exc, "exit_code", 1)
        if code:
            _hard_exit(code)
        raise
    except SystemExit as exc:
        if exc.code not in (0, None):
            _hard_exit(exc.code if isinstance(exc.code, int) else 1)
        raise
    except KeyboardInterrupt:
        print(f"error: {rank_prefix()}interrupted", file=sys.stderr)
        _hard_exit(130)
    except BaseException as exc:  # every error must end the rank
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if _lost_peer(exc):
            # most likely another rank failed first: say so briefly, and give torchrun a moment
            # to see that rank's exit (and stop this one) so it reports the root cause
            print(
                f"error: {rank_prefix()}stopped: a collective failed, most likely because "
                f"another rank stopped ({text[:160]})",
                file=sys.stderr,
            )
            _hard_exit(1, linger=LINGER_S)
        print(f"error: {rank_prefix()}{type(exc).__name__}: {text}", file=sys.stderr)
        if os.environ.get(TRACEBACK_ENV) == "1":
            import traceback

            traceback.print_exc()
        _hard_exit(1)


def _lost_peer(exc: BaseException) -> bool:
    """Whether an error is a failed collective (a peer that exited or timed out)."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text
        for s in (
            "/gloo/",
            "Connection reset by peer",
            "Connection closed by peer",
            "NCCL",
            "ProcessGroup",
        )
    )


def run_rank(entry: Callable[[], object]) -> None:
    """Run a command-line entry point as one rank of a torchrun job and end the process the safe
    way: wait for every rank, leave the process group, then exit without the interpreter's
    teardown (gloo's threads can abort the process in it, after the work is done)."""
    try:
        entry()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    # 0, diverged and interrupted (Ctrl-C, SIGTERM) end every rank on the same step; anything
    # else may be one rank's alone, and the others may be in a collective: leave at once
    if code in (0, 3, 130, 143):
        try:
            leave_process_group()
        except Exception as exc:  # the work is done; say why the exit was unclean
            print(f"error: {rank_prefix()}leaving the process group: {exc}", file=sys.stderr)
            code = code or 1
    _hard_exit(code)


def leave_process_group(timeout: float | None = None) -> None:
    """Leave the process group the one safe way, on every rank: wait at a barrier until every
    rank has finished its collectives, then destroy the group. Destroying it while a peer still
    exchanges data with this rank kills that peer's gloo threads (SIGABRT, "terminate called
    without an active exception"). A rank that does not arrive within `timeout` seconds
    (default MOUSSE_DIST_TIMEOUT) raises a RuntimeError naming it instead of hanging."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    seconds = timeout_seconds() if timeout is None else timeout
    if dist.get_backend() == "gloo":
        dist.monitored_barrier(timeout=timedelta(seconds=seconds), wait_all_ranks=True)
    else:
        dist.barrier()
    dist.destroy_process_group()


def signal_when_parent_dies(parent: int, signum: int) -> bool:
    """Have the kernel send `signum` to this process when its parent dies (PR_SET_PDEATHSIG, on
    Linux; elsewhere nothing). Returns whether the parent, pid `parent`, is still alive: one that
    died before this call sends nothing, and the caller ends itself."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum)
    return os.getppid() == parent


def batch_split(batch_size: int, micro_batch_size: int, world_size: int) -> tuple[int, int]:
    """(sequences per rank, micro batch per rank) for a global batch; ConfigError if it does not
    split evenly. The micro batch shrinks to the rank's share when that is smaller."""
    if batch_size % world_size:
        raise ConfigError(
            f"batch_size {batch_size} does not split over {world_size} ranks; use a "
            f"multiple of {world_size}"
        )
    share = batch_size // world_size
    micro = min(micro_batch_size, share)
    if share % micro:
        raise ConfigError(
            f"each of {world_size} ranks gets {share} sequences of batch_size "
            f"{batch_size}, not a multiple of micro_batch_size {micro}; pick sizes "
            f"that divide"
        )
    return share, micro


__all__ = [
    "batch_split",
    "env_rank",
    "env_world_size",
    "exit_on_error",
    "is_main_process",
    "leave_process_group",
    "rank_prefix",
    "run_rank",
    "timeout_seconds",
]
