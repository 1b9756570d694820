"""The process side of a torchrun job: this process's rank from torchrun's environment, starting
torchrun (`mousse train --nproc N`), and ending a rank promptly and cleanly.

- Environment: `env_world_size`, `env_rank`, `is_main_process` (rank 0 renders and writes shared
  files), `rank_prefix` for messages; `batch_split`, the global batch's share per rank, checked
  once here before launching and used by every rank (`distributed.Dist`).
- Failures: collectives time out after MOUSSE_DIST_TIMEOUT seconds (default 600; read here, set
  by `distributed.setup`); an error on any rank prints one line (rank and message) and ends that
  process with a non-zero code (`exit_on_error`), and torchrun then stops the other ranks.
  `run_rank` ends a rank's process after its work: every rank together, without the interpreter's
  teardown. `torchrun_main` is torchrun with a one-line report of the first failed rank.

Test hook: MOUSSE_FAIL_AT="RANK:STEP" raises a RuntimeError on that rank at that step (checked in
`distributed.Dist.reduce_gradients`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch.distributed as dist

from .config import ConfigError

TIMEOUT_ENV, FAIL_ENV, TRACEBACK_ENV = "MOUSSE_DIST_TIMEOUT", "MOUSSE_FAIL_AT", "MOUSSE_TRACEBACK"
DEFAULT_TIMEOUT_S = 600
LINGER_S = 3.0  # a rank that lost a peer waits this long for torchrun to stop it


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


def _inject_failure(rank: int, step: int) -> None:
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
def exit_on_error(exit_types: tuple[type, ...] = ()) -> Iterator[None]:
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
    except BaseException as exc:  # noqa: BLE001 - every error must end the rank
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if _lost_peer(exc):
            # most likely another rank failed first: say so briefly, and give torchrun a moment
            # to see that rank's exit (and stop this one) so it reports the root cause
            print(f"error: {rank_prefix()}stopped: a collective failed, most likely because "
                  f"another rank stopped ({text[:160]})", file=sys.stderr)
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
        s in text for s in ("/gloo/", "Connection reset by peer", "Connection closed by peer",
                            "NCCL", "ProcessGroup"))


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
    # 0, diverged and interrupted end every rank on the same step; anything else may be one
    # rank's alone, and the others may be in a collective: leave without waiting for them
    if code in (0, 3, 130) and dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.barrier()
            dist.destroy_process_group()
    _hard_exit(code)


# ---- launching ------------------------------------------------------------------------------------


def torchrun_main(argv: list[str] | None = None) -> None:
    """`torchrun` with a short report: on failure one line names the first failed rank and its
    exit code (the rank printed its own error), instead of torchrun's traceback, and the exit code
    is that rank's."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except SignalException:  # Ctrl-C: torchrun passed it on to the ranks, which stopped
        sys.exit(130)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if isinstance(failure.exitcode, int) and 0 < failure.exitcode < 256 else 1
        if code not in (2, 3, 130):  # bad input, divergence and Ctrl-C were reported by the ranks
            how = f"exit code {failure.exitcode}" if failure.exitcode >= 0 else \
                f"signal {-failure.exitcode}"
            print(f"error: rank {rank} ended with {how}; torchrun stopped the other ranks",
                  file=sys.stderr)
        sys.exit(code)


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python -m mousse_cli ARGV` on `nproc` ranks of this machine under torchrun (standalone
    rendezvous on a free port); returns the job's exit code. Each rank gets an equal share of the
    CPU threads unless OMP_NUM_THREADS is set."""
    cmd = [sys.executable, "-c", "from mousse.launch import torchrun_main; torchrun_main()",
           "--standalone", f"--nproc-per-node={nproc}", "-m", "mousse_cli", *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    proc = subprocess.Popen(cmd, env=env)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:  # torchrun got it too and passes it on to the ranks
            continue


def launch_train(nproc: int, settings: dict, cfg, run_dir: Path | None, resume: str | None,
                 json_out: bool) -> int:
    """`mousse train --nproc N`: check what can be checked once (batch split, data), then start
    torchrun with the resolved settings and one run dir for every rank."""
    import tempfile

    from . import tomlio
    from .data import load_dataset
    from .train import default_run_dir

    if nproc < 1:
        raise ConfigError(f"bad value for '--nproc': {nproc}; must be >= 1")
    if env_world_size() > 1:
        raise ConfigError("--nproc starts torchrun, but this process already runs under it; "
                          "drop --nproc")
    batch_split(cfg.batch_size, cfg.micro_batch_size, nproc)
    load_dataset(cfg.data, cfg.val_data)  # bad data: one error line here, not one per rank
    run_dir = run_dir or default_run_dir(cfg)
    with tempfile.TemporaryDirectory(prefix="mousse-launch-") as tmp:
        conf = Path(tmp) / "settings.toml"
        conf.write_text(tomlio.dumps(settings))
        args = ["train", "--config", str(conf), "--run-dir", str(run_dir)]
        args += ["--resume", str(resume)] if resume is not None else []
        args += ["--json"] if json_out else []
        return launch(nproc, args)


def batch_split(batch_size: int, micro_batch_size: int, world_size: int) -> tuple[int, int]:
    """(sequences per rank, micro batch per rank) for a global batch; ConfigError if it does not
    split evenly. The micro batch shrinks to the rank's share when that is smaller."""
    if batch_size % world_size:
        raise ConfigError(f"batch_size {batch_size} does not split over {world_size} ranks; use a "
                          f"multiple of {world_size}")
    share = batch_size // world_size
    micro = min(micro_batch_size, share)
    if share % micro:
        raise ConfigError(f"each of {world_size} ranks gets {share} sequences of batch_size "
                          f"{batch_size}, not a multiple of micro_batch_size {micro}; pick sizes "
                          f"that divide")
    return share, micro


__all__ = ["batch_split", "env_rank", "env_world_size", "exit_on_error", "is_main_process",
           "launch", "launch_train", "rank_prefix", "run_rank", "timeout_seconds", "torchrun_main"]
