"""mousse.train.branches' pure parts: a branch's state at its fork and a run's status from its
budgets' (the runs themselves: tests/cli/test_budgets.py)."""

import math

from mousse.train.branches import fork_state, overall_status
from mousse.train.config import resolve


def test_a_forks_state_takes_the_losses_of_the_evaluations_its_own_run_makes():
    cfg = resolve({"preset": "tiny", "target_loss": 2.5})
    state = {"train_seconds": 3.0, "best_val_loss": 1.0, "final_val_loss": 1.0, "first_loss": 4}
    curve = [
        {"step": 3, "val_loss": 3.0, "seconds": 1.0},
        {"step": 6, "val_loss": None, "seconds": 2.0},  # a non-finite loss, as JSON writes it
        {"step": 9, "val_loss": 2.4, "seconds": 3.0},
    ]
    out = fork_state(state, curve, cfg)
    assert (out["best_val_loss"], out["final_val_loss"]) == (2.4, 2.4)
    assert (out["target_step"], out["target_seconds"]) == (9, 3.0)
    assert out["train_seconds"] == 3.0 and out["first_loss"] == 4
    empty = fork_state(state, [], cfg)
    assert empty["best_val_loss"] == math.inf and empty["final_val_loss"] is None


def test_a_run_is_interrupted_while_a_budget_is_left_failed_while_one_failed():
    def budgets(*statuses):
        return [{"status": s} for s in statuses]

    assert overall_status(budgets("completed", "pending", "completed")) == "interrupted"
    assert overall_status(budgets("interrupted", "completed", "interrupted")) == "interrupted"
    assert overall_status(budgets("failed", "completed", "completed")) == "failed"
    assert overall_status(budgets("diverged", "completed", "completed")) == "completed"
    assert overall_status(budgets("completed", "diverged", "diverged")) == "diverged"
