"""Dashboards (`--log tensorboard,wandb`): a run's scalars and resolved config in TensorBoard
and/or Weights & Biases. An event sink beside the views (config -> engine -> events -> views and
files); metrics.jsonl stays the record. A dashboard that fails at run time warns once and is
dropped; the runs go on.

One `Dashboards` serves one run (`mousse train`: `<run dir>/tb`, each cooldown branch's in its
own run dir) or every run of an ablation (`root`: `<ablation dir>/tb/<run>`, a cooldown branch's
`<ablation dir>/tb/<run>/budget-<b>`, so TensorBoard overlays them; W&B runs grouped by the
ablation, a branch's named `<run>/budget-<b>`). It takes (event, run name) from the process that
owns the log files: under `--parallel` the parent, which hears the workers' events through its
queue.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypedDict, TypeVar

from .config import VIEW_SETTINGS, ConfigError, Settings, parse_log, settings_of
from .events import EvalDone, Event, RunFinished, RunStarted, StepLogged

T = TypeVar("T")

# scalar tag of each StepLogged / EvalDone field
STEP_TAGS = {
    "train_loss": "train/loss",
    "lr": "train/lr",
    "step_ms": "time/step_ms",
    "fwd_bwd_ms": "time/fwd_bwd_ms",
    "opt_ms": "time/opt_ms",
    "tokens_per_s": "time/tokens_per_s",
}
FISHER_TAG = "time/fisher_ms"  # TNT's sampled-label backward: only runs with fisher = sampled
EVAL_TAGS = {"val_loss": "val/loss", "best_val_loss": "val/best_loss"}
# written once, at the last step: what only the whole run measures (a refresh's extra cost)
SUMMARY_TAGS = {
    f"{key}_median": f"time/{key}_median"
    for key in ("step_ms", "fwd_bwd_ms", "opt_ms", "fisher_ms")
}
SUMMARY_TAGS.update(
    {
        "refresh_ms_median": "time/refresh_ms",
        "refresh_ms_amortized": "time/refresh_ms_amortized",
        "peak_mem_bytes": "memory/peak_bytes",
        "mfu": "time/mfu",
    }
)
HPARAM_METRIC = "hparams/final_val_loss"  # the hparams view's metric: the run's final val loss


def check_installed(names: Iterable[str]) -> None:
    """A one-line ConfigError naming the install command for each dashboard whose package is
    missing (checked before any run starts)."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ConfigError(
                f"--log {name} needs the {name} package: pip install 'mousse[{name}]'"
            ) from None


def hparams(config: Settings) -> Settings:
    """The resolved config's settings as hyperparameters, views left out."""
    return settings_of((k, v) for k, v in config.items() if k not in VIEW_SETTINGS)


class TensorBoardRun:
    """One run's event files in `logdir`. A resumed run hides what its last session logged after
    the checkpoint it continues from (TensorBoard's purge step), as metrics.jsonl drops it."""

    def __init__(self, logdir: Path, name: str, started: RunStarted, group: str | None):
        from torch.utils.tensorboard import SummaryWriter

        resumed = started.info.get("resumed_from") or 0
        self.writer = SummaryWriter(str(logdir), purge_step=resumed + 1)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def finish(self, config: Settings, final: dict[str, float], step: int) -> None:
        """The hparams view's entry for this run (in its own dir, so it lines up with the
        scalars), its metric and the closing scalars."""
        from torch.utils.tensorboard.summary import hparams as hparam_summaries

        # torch leaves hparams unannotated, and types file_writer as None (set in __init__)
        for summary in hparam_summaries(config, {HPARAM_METRIC: None}):  # type: ignore[no-untyped-call]
            self.writer.file_writer.add_summary(summary, step)  # type: ignore[attr-defined]
        self.log(final, step)
        self.close()

    def close(self) -> None:
        self.writer.close()


class WandbRun:
    """One W&B run per mousse run (a resumed run starts another), in project $WANDB_PROJECT or
    'mousse'; W&B's own settings ($WANDB_MODE=offline, $WANDB_DIR, ...) apply, and without
    $WANDB_DIR its files go beside the run's (the ablation dir, or the run dir). The console is
    not captured: runs of an ablation share it."""

    def __init__(self, files: Path, name: str, started: RunStarted, group: str | None):
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "mousse",
            name=name,
            group=group,
            config=dict(hparams(started.config)),
            dir=os.environ.get("WANDB_DIR") or str(files),
            reinit="create_new",  # several at once under --parallel
            settings=wandb.Settings(silent=True, console="off"),
        )

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def finish(self, config: Settings, final: dict[str, float], step: int) -> None:
        self.run.log(final, step=step)
        self.close()

    def close(self) -> None:
        self.run.finish()


Writer = TensorBoardRun | WandbRun
WRITERS: dict[str, type[Writer]] = {"tensorboard": TensorBoardRun, "wandb": WandbRun}


class _RunState(TypedDict):
    """One run's dashboards: its writers by dashboard, its hparams, its last step logged, and
    whether it logs TNT's sampled-label time."""

    writers: dict[str, Writer]
    config: Settings
    step: int
    fisher: bool


def dashboard_name(run: str, run_dir: Path) -> str:
    """An ablation run's name in the dashboards: its own, or `<run>/budget-<b>` for a cooldown
    branch of it (`--budgets`: trained under the run's name), whose TensorBoard dir is then its
    own, lest its curves mix with the trunk's (and a branch's resume purge the trunk's steps)."""
    from .branches import BRANCHES  # a run is starting: the trainer is loaded already

    return f"{run}/{run_dir.name}" if run_dir.parent.name == BRANCHES else run


class Dashboards:
    """The `log` setting's dashboards for one run or one ablation's runs: call it with each
    (event, run name); writers open on RunStarted and close on RunFinished (or `close()`)."""

    def __init__(
        self,
        log: str | None,
        warn: Callable[[str], None],
        root: Path | None = None,
        group: str | None = None,
    ):
        self.names = parse_log(log)
        check_installed(self.names)
        self.warn, self.root = warn, root
        self.group = group or (root.name if root else None)
        self.runs: dict[str | None, _RunState] = {}  # run -> its writers, config, last step
        self.failed: set[str] = set()  # dashboards dropped after an error

    def __enter__(self) -> Dashboards:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, event: Event, run: str | None = None) -> None:
        """Take one event of run `run` (None for the one run of `mousse train`: it is named
        after its run dir)."""
        if not self.names:
            return
        if isinstance(event, RunStarted):
            self._open(run, event)
            return
        state = self.runs.get(run)
        if state is None:  # a run that never started here (e.g. every checkpoint damaged)
            return
        if isinstance(event, StepLogged):
            scalars = {tag: getattr(event, key) for key, tag in STEP_TAGS.items()}
            if state["fisher"]:
                scalars[FISHER_TAG] = event.fisher_ms
            scalars.update({f"optim/{key}": value for key, value in event.telemetry.items()})
            state["step"] = event.step
            self._each(state, "log", scalars, event.step)
        elif isinstance(event, EvalDone):
            state["step"] = event.step
            self._each(
                state,
                "log",
                {tag: getattr(event, key) for key, tag in EVAL_TAGS.items()},
                event.step,
            )
        elif isinstance(event, RunFinished):
            summary = event.summary
            final = {
                tag: value
                for key, tag in SUMMARY_TAGS.items()
                if isinstance(value := summary.get(key), (int, float))
            }
            loss = summary.get("final_val_loss")
            final[HPARAM_METRIC] = loss if loss is not None else math.nan
            step = summary.get("steps") or state["step"]
            self._each(state, "finish", state["config"], final, step)
            del self.runs[run]

    def close(self) -> None:
        """Close every writer still open (a run that ended without RunFinished)."""
        for state in self.runs.values():
            self._each(state, "close")
        self.runs.clear()

    def _open(self, run: str | None, event: RunStarted) -> None:
        name = event.run_dir.name if run is None else dashboard_name(run, event.run_dir)
        if self.root is not None:
            where = {"tensorboard": self.root / "tb" / name, "wandb": self.root}
        else:
            where = {"tensorboard": event.run_dir / "tb", "wandb": event.run_dir}
        writers: dict[str, Writer] = {}
        self.runs[run] = {
            "writers": writers,
            "config": hparams(event.config),
            "step": 0,
            "fisher": event.config.get("fisher") == "sampled",
        }
        for dashboard in self.names:
            if dashboard not in self.failed:
                writer = self._guard(
                    dashboard, lambda d=dashboard: WRITERS[d](where[d], name, event, self.group)
                )
                if writer is not None:
                    writers[dashboard] = writer

    def _each(self, state: _RunState, method: str, *args: object) -> None:
        for dashboard, writer in list(state["writers"].items()):
            self._guard(dashboard, lambda w=writer: getattr(w, method)(*args))

    def _guard(self, dashboard: str, call: Callable[..., T]) -> T | None:
        """One dashboard's call and its result; on any error warn (once per dashboard), drop
        the dashboard from every run (closing what it has open) and go on: None."""
        try:
            return call()
        except Exception as exc:  # a dashboard never stops a run
            self.failed.add(dashboard)  # no writer of it is left to fail again: warned once
            self.warn(
                f"--log {dashboard} failed ({type(exc).__name__}: {exc}); the runs go on "
                "without it (metrics.jsonl has every value)"
            )
            for state in self.runs.values():
                writer = state["writers"].pop(dashboard, None)
                try:
                    if writer is not None:
                        writer.close()
                except Exception:  # reported once above
                    pass
            return None
