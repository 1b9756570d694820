"""WSD cooldown branches (`--budgets`): one run trains at the peak lr to the largest of its
budgets (the trunk, itself that budget's WSD run), and each smaller budget b cools down a branch
from the trunk's state at step S_b - C_b (S_b the steps of budget b, C_b its cooldown). Every
branch is the run `--schedule wsd --budget b --warmup-steps W` of the same settings, bit for bit:
the trunk's steps up to the fork are that run's (same warmup, same peak), and the branch goes on
from the trunk's exact state under its own config.

Layout: each branch is an ordinary run dir, `<run>/branches/budget-<b>/`. When the trunk passes a
fork step it writes the branch's env.json, config.toml and metrics.jsonl (the trunk's records up
to there, with the evaluations the branch's own run makes: where the trunk does not evaluate, it
evaluates for its branches, logged under SIDE_EVAL), then, last and atomically, the branch's first
checkpoint: a branch exists once that checkpoint does, and the trunk writes its own checkpoint of
the step only after it, so a kill never leaves the trunk past a fork that was lost. Branches
train after the trunk, each resumed from its own latest checkpoint like any run. The trunk's
summary.json lists every budget's result (`budgets`), and its status is that of the whole: a
budget whose branch has not finished has its status and no loss.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from .budget import gpt_non_embedding_params
from .checkpoint import list_checkpoints
from .config import GPT_SHAPE, TrainConfig, budget_steps, number_text, validate
from .evaluation import eval_due
from .events import CheckpointSaved, MetricsRecord
from .fileio import append_jsonl, atomic_write_text, dumps, write_json
from .machine import default_run_dir, environment
from .model import GPTConfig
from .rundir import FINISHED, RunLock, prepare_run_dir, read_metrics
from .schedule import cooldown_length
from .summary import BudgetResult, CurvePoint, RunSummary, TrainerState, read_summary
from .trainer import Trainer

BRANCHES = "branches"  # the branches' folder in the trunk's run dir
SIDE_EVAL: Final = (
    "branch_val_loss"  # a trunk's metrics.jsonl key: a loss evaluated for its branches
)
UNFINISHED = ("interrupted", "pending")  # a budget still to train (the run resumes it)


@dataclass(frozen=True)
class Branch:
    """One smaller budget of a run: its own run's config, the trunk step it starts from and its
    run dir."""

    budget: float
    cfg: TrainConfig
    fork: int
    run_dir: Path


class MakeTrainer(Protocol):
    """How the caller builds a Trainer (its events, stop flag and world already chosen)."""

    def __call__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        *,
        resume: Path | None,
        restart: bool,
        lock: RunLock | None,
    ) -> Trainer: ...


def branch_dir(budget: float) -> str:
    """A branch's run dir, relative to the trunk's: branches/budget-0.25."""
    return f"{BRANCHES}/budget-{number_text(budget)}"


def plan_branches(cfg: TrainConfig, run_dir: Path) -> list[Branch]:
    """The branches of a run with budgets (`cfg`, resolved), smallest first: each its budget's
    own WSD run (its steps and budget, no budgets, a checkpoint cadence within its steps)."""
    out = []
    for budget, steps in budget_steps(cfg)[:-1]:
        own = dataclasses.replace(
            cfg,
            budgets=None,
            budget=budget,
            steps=steps,
            checkpoint_every=min(cfg.checkpoint_every, steps),
        )
        validate(own)
        fork = steps - cooldown_length(steps, cfg.cooldown)
        out.append(Branch(budget, own, fork, run_dir / branch_dir(budget)))
    return out


def fork_state(state: TrainerState, curve: list[CurvePoint], cfg: TrainConfig) -> TrainerState:
    """A branch's trainer state at its fork: the trunk's totals, with the losses of the
    evaluations its own run makes (`curve`, already kept to those)."""
    finite = [
        (p, loss) for p in curve if (loss := p["val_loss"]) is not None and math.isfinite(loss)
    ]
    target = cfg.target_loss
    reached = next((p for p, loss in finite if target is not None and loss <= target), None)
    return {
        **state,
        "best_val_loss": min((loss for _, loss in finite), default=math.inf),
        "final_val_loss": curve[-1]["val_loss"] if curve else None,
        "target_step": reached["step"] if reached else None,
        "target_seconds": reached["seconds"] if reached else None,
    }


def _went_on(branch: Branch) -> bool:
    """Whether the branch has trained past its fork (a later checkpoint, or a summary): its
    fork is not written again."""
    later = [
        c
        for c in list_checkpoints(branch.run_dir / "checkpoints")
        if c.name != f"step-{branch.fork}"
    ]
    return bool(later) or (branch.run_dir / "summary.json").exists()


def fork(trunk: Trainer, branch: Branch, argv: list[str] | None) -> None:
    """Start `branch` from the trunk's state at this step: its files, then its first checkpoint
    (the trunk's exact state under the branch's config), atomically and last."""
    if _went_on(branch):
        return
    cfg = branch.cfg
    records = read_metrics(trunk.run_dir)
    kept = [b for r in records if r["step"] <= branch.fork and (b := _branch_record(r, cfg))]
    curve: list[CurvePoint] = [
        {
            "step": r["step"],
            "val_loss": r["val_loss"],
            "val_loss_se": r["val_loss_se"],
            "seconds": r["train_seconds"],
        }
        for r in kept
        if "val_loss" in r
    ]
    if trunk.dist.is_main:
        env = environment(cfg, trunk.device, trunk.precision, argv)
        prepare_run_dir(branch.run_dir, cfg, env, None, 0)
        atomic_write_text(branch.run_dir / "metrics.jsonl", "".join(dumps(r) + "\n" for r in kept))
    path, seconds = trunk.save_state(
        branch.run_dir, cfg, curve, fork_state(trunk.state, curve, cfg)
    )
    trunk.state["checkpoint_seconds"] += seconds
    trunk.emit(CheckpointSaved(trunk.step, path, seconds))


def _branch_record(record: MetricsRecord, cfg: TrainConfig) -> MetricsRecord | None:
    """A trunk's metrics record as the branch of config `cfg` logs it: every step's, and the
    evaluations its own run makes (the trunk's, or one made for its branches); None for the
    others."""
    if "val_loss" not in record and SIDE_EVAL not in record:
        return record
    if not eval_due(record["step"], cfg):
        return None
    return {
        "step": record["step"],
        "val_loss": record.get("val_loss", record.get(SIDE_EVAL)),
        "val_loss_se": record.get("val_loss_se"),
        "train_seconds": record["train_seconds"],
    }


def side_eval_steps(cfg: TrainConfig, branches: list[Branch]) -> set[int]:
    """The steps up to a branch's fork where its own run evaluates and the trunk (`cfg`) does
    not: there the trunk evaluates for its branches."""
    due = eval_due
    return {s for b in branches for s in range(1, b.fork + 1) if due(s, b.cfg) and not due(s, cfg)}


def side_eval(trunk: Trainer) -> None:
    """Evaluate the trunk at this step for its branches only: logged in its metrics.jsonl under
    SIDE_EVAL (cut back with the rest on a resume), not in its own curve or losses."""
    t0 = time.perf_counter()
    result = trunk.evaluate()
    trunk.state["eval_seconds"] += time.perf_counter() - t0
    if trunk.dist.is_main:
        record: MetricsRecord = {
            "step": trunk.step,
            SIDE_EVAL: result.loss,
            "val_loss_se": result.se,
            "train_seconds": trunk.state["train_seconds"],
        }
        append_jsonl(trunk.run_dir / "metrics.jsonl", record)


def budget_results(
    cfg: TrainConfig, branches: list[Branch], trunk: RunSummary, trunk_status: str
) -> list[BudgetResult]:
    """Every budget's result, ascending, the trunk's (`trunk`, its summary, and its own
    `trunk_status`) last: steps, tokens, tokens per non-embedding parameter, status and, for a
    completed one only, its losses. A branch never forked has the trunk's status when the trunk
    ended without reaching it, else it is pending."""
    shape = GPTConfig(**{k: getattr(cfg, k) for k in (*GPT_SHAPE, "seq_len")})
    non_embedding = gpt_non_embedding_params(shape)
    rows: list[BudgetResult] = []
    for budget, steps in budget_steps(cfg):
        branch = next((b for b in branches if b.budget == budget), None)
        summary = trunk if branch is None else read_summary(branch.run_dir)
        status = trunk_status if branch is None else _branch_status(branch, summary, trunk_status)
        result = summary if status == "completed" else None  # losses of completed ones only
        tokens = steps * cfg.batch_size * cfg.seq_len
        rows.append(
            {
                "budget": budget,
                "steps": steps,
                "tokens": tokens,
                "tokens_per_param": tokens / non_embedding,
                "status": status,
                "final_val_loss": result.get("final_val_loss") if result else None,
                "best_val_loss": result.get("best_val_loss") if result else None,
                "run_dir": "." if branch is None else branch_dir(budget),
            }
        )
    return rows


def _branch_status(branch: Branch, summary: RunSummary | None, trunk_status: str) -> str:
    if summary is not None:
        return summary["status"]
    forked = bool(list_checkpoints(branch.run_dir / "checkpoints"))
    return trunk_status if not forked and trunk_status in (*FINISHED, "failed") else "pending"


def overall_status(budgets: list[BudgetResult]) -> str:
    """A run with budgets is interrupted while a budget is left to train (a rerun resumes it),
    failed while one failed, else it ended as its trunk did (a branch's divergence is its
    budget's result)."""
    statuses = [b["status"] for b in budgets]
    if any(s in UNFINISHED for s in statuses):
        return "interrupted"
    return "failed" if "failed" in statuses else statuses[-1]


def with_budgets(
    summary: RunSummary, cfg: TrainConfig, branches: list[Branch], trunk_status: str
) -> RunSummary:
    """The trunk's summary as its summary.json holds it: every budget's result, and the status
    of the whole run (a message naming the budgets left, when some are)."""
    budgets = budget_results(cfg, branches, summary, trunk_status)
    out: RunSummary = {**summary, "status": overall_status(budgets), "budgets": budgets}
    left = [number_text(b["budget"]) for b in budgets if b["status"] in UNFINISHED]
    if left and trunk_status == "completed":
        out["message"] = (
            f"budget{'s' * (len(left) > 1)} {', '.join(left)} not trained to the end yet; "
            f"continue with --resume {summary['run_dir']}"
        )
    return out


def trunk_status(summary: RunSummary | None) -> str | None:
    """The trunk's own status as its summary.json records it (None: no result of it yet)."""
    budgets = summary.get("budgets") if summary is not None else None
    return budgets[-1]["status"] if budgets else None


def train_budgets(
    make: MakeTrainer,
    cfg: TrainConfig,
    run_dir: Path | None,
    stop: threading.Event,
    resume: Path | None = None,
    restart: bool = False,
    lock: RunLock | None = None,
    argv: list[str] | None = None,
) -> RunSummary:
    """Train a run with budgets to its end (or a stop): the trunk unless it has finished, then
    every branch that has not, each from its latest checkpoint, holding the trunk's run dir
    throughout. Returns the trunk's summary with every budget's result (`with_budgets`)."""
    run_dir = run_dir or default_run_dir(cfg)
    branches = plan_branches(cfg, run_dir)
    earlier = read_summary(run_dir) if resume is not None else None
    status = trunk_status(earlier)
    own: RunLock | None = None
    try:
        if earlier is not None and status in FINISHED:
            summary = earlier
            own = None if lock else RunLock(run_dir).acquire()
        else:
            trunk = make(cfg, run_dir, resume=resume, restart=restart, lock=lock)
            if lock is None:
                own = trunk.lock = RunLock(run_dir).acquire()
            side = side_eval_steps(cfg, branches)
            for step in side | {b.fork for b in branches}:
                at = [b for b in branches if b.fork == step]
                trunk.forks[step] = _at_step(trunk, step in side, at, argv)
            trunk.summary_file = lambda s: with_budgets(s, cfg, branches, s["status"])
            summary = trunk.run(argv)
            status = summary["status"]
        for branch in branches:
            if stop.is_set():
                break
            try:
                _train_branch(make, branch, argv)
            finally:  # the budgets as far as they got, a branch's failure included
                _record(run_dir, summary, cfg, branches, str(status))
        return _record(run_dir, summary, cfg, branches, str(status))
    finally:
        if own is not None:
            own.release()


def _record(
    run_dir: Path, summary: RunSummary, cfg: TrainConfig, branches: list[Branch], status: str
) -> RunSummary:
    """Write the trunk's summary.json with every budget's result as it stands; returns it."""
    final = with_budgets(summary, cfg, branches, status)
    write_json(run_dir / "summary.json", final)
    return final


def _at_step(
    trunk: Trainer, evaluate: bool, branches: list[Branch], argv: list[str] | None
) -> Callable[[], None]:
    """What the trunk calls after a step its branches need: an evaluation for them (`evaluate`),
    then each branch forking there (several budgets may cool down from one step)."""

    def write() -> None:
        if evaluate:
            side_eval(trunk)
        for branch in branches:
            fork(trunk, branch, argv)

    return write


def _train_branch(make: MakeTrainer, branch: Branch, argv: list[str] | None) -> None:
    """Train a branch on from its latest checkpoint unless it has finished or was never forked
    (the trunk ended before its fork step)."""
    done = read_summary(branch.run_dir)
    if (done and done["status"] in FINISHED) or not list_checkpoints(
        branch.run_dir / "checkpoints"
    ):
        return
    make(branch.cfg, branch.run_dir, resume=branch.run_dir, restart=False, lock=None).run(argv)
