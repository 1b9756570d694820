"""Starting torchrun for `mousse train --nproc N` and reporting how its ranks ended."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from mousse.distributed.process import batch_split, env_world_size, signal_when_parent_dies
from mousse.train import tomlio
from mousse.train.config import ConfigError, TrainConfig
from mousse.train.data import load_dataset
from mousse.train.machine import default_run_dir

STOP = (signal.SIGINT, signal.SIGTERM)  # the signals the ranks stop on (and checkpoint)


def torchrun_main(
    argv: list[str] | None = None, launcher: int | None = None, owned: str | None = None
) -> None:
    """`torchrun` with a short report: on failure one line names the first failed rank and its
    exit code (the rank printed its own error), instead of torchrun's traceback, and the exit code
    is that rank's. Started by `launch`: it ends with its `launcher` process, however that ends
    (SIGTERM when it dies, even by kill -9, passed on to the ranks, which checkpoint and stop),
    and removes the folder it was `owned` (the ranks' settings) when it ends."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # torch leaves torchrun's parse_args and run unannotated
    args = parse_args(sys.argv[1:] if argv is None else argv)  # type: ignore[no-untyped-call]
    try:
        if launcher is not None and not signal_when_parent_dies(launcher, signal.SIGTERM):
            sys.exit(128 + signal.SIGTERM)  # the launcher is gone already
        run(args)  # type: ignore[no-untyped-call]
    except SignalException as exc:  # torchrun passed it on to the ranks, which stopped
        sys.exit(128 + int(exc.sigval))  # the shell's code: 130 Ctrl-C, 143 SIGTERM
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = (
            failure.exitcode
            if isinstance(failure.exitcode, int) and 0 < failure.exitcode < 256
            else 1
        )
        if code not in (2, 3, 130, 143):  # bad input, divergence, signals: the ranks said so
            how = (
                f"exit code {failure.exitcode}"
                if failure.exitcode >= 0
                else f"signal {-failure.exitcode}"
            )
            print(
                f"error: rank {rank} ended with {how}; torchrun stopped the other ranks",
                file=sys.stderr,
            )
        sys.exit(code)
    finally:
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)


def launch(nproc: int, argv: list[str], owned: str | None = None) -> int:
    """Run `python -m mousse_cli ARGV` on `nproc` ranks of this machine under torchrun (standalone
    rendezvous on a free port); returns the job's exit code. Each rank gets an equal share of the
    CPU threads unless OMP_NUM_THREADS is set. torchrun runs in a session of its own, and every
    Ctrl-C or SIGTERM this process gets is passed on to it once (it passes it on to the ranks,
    which checkpoint and stop): `kill PID` reaches the ranks, and a terminal's Ctrl-C, which
    signals the whole foreground group, is not delivered twice. torchrun ends with this process
    (a kill -9 of it leaves nothing running) and removes the folder `owned` when it ends."""
    main = f"torchrun_main(launcher={os.getpid()}, owned={owned!r})"
    cmd = [
        sys.executable,
        "-c",
        f"from mousse_cli.launch import torchrun_main; {main}",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "mousse_cli",
        *argv,
    ]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    previous = {s: signal.signal(s, lambda signum, _: proc.send_signal(signum)) for s in STOP}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def launch_train(
    nproc: int,
    settings: Mapping[str, object],
    cfg: TrainConfig,
    run_dir: Path | None,
    resume: str | None,
    json_out: bool,
) -> int:
    """`mousse train --nproc N`: check what can be checked once (batch split, data), then start
    torchrun with the resolved settings and one run dir for every rank."""
    if nproc < 1:
        raise ConfigError(f"bad value for '--nproc': {nproc}; must be >= 1")
    if env_world_size() > 1:
        raise ConfigError(
            "--nproc starts torchrun, but this process already runs under it; drop --nproc"
        )
    batch_split(cfg.batch_size, cfg.micro_batch_size, nproc)
    load_dataset(cfg.data, cfg.val_data, cfg.split)  # bad data: one error line, not one per rank
    run_dir = run_dir or default_run_dir(cfg)
    # torchrun removes it when it ends, even after a kill -9 of this process
    with tempfile.TemporaryDirectory(prefix="mousse-launch-", ignore_cleanup_errors=True) as tmp:
        conf = Path(tmp) / "settings.toml"
        conf.write_text(tomlio.dumps(settings))
        # the ranks import the model this process has checked (its code named or trusted)
        args = ["train", "--config", str(conf), "--run-dir", str(run_dir), "--trust-model-code"]
        args += ["--resume", str(resume)] if resume is not None else []
        args += ["--json"] if json_out else []
        return launch(nproc, args, owned=tmp)
