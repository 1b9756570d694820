"""Expectations on an ablation's results, for CI gates: `mousse report DIR --expect "mousse < muon"`.

An expectation compares two terms with <, <=, > or >=, optionally followed by `significant`
(then a comparison of two variants' losses also needs Welch p < 0.05) or `paired significant`
(the paired t-test's p < 0.05 over the seeds both ran). A term is a number, a variant name (its
mean final validation loss), or a function of a variant: `loss(v)`, `speedup(v)` (the paper's
speedup over the baseline), `speedup_low(v)` (the low end of its 95% interval), `paired_low(v)`
and `paired_high(v)` (the ends of the 95% bootstrap interval of its mean per-seed loss
difference from the baseline), `overhead(v)` (step-time overhead over the baseline, in %); with
`--budgets`, `speedup_at(v, D)` (the speedup in data at budget D, a multiple of 20 tokens per
parameter, as `budget_speedup` reads it; inf where the baseline's law never reaches the loss) and
`speedup_at_low(v, D)` (the low end of its 95% interval).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mousse.train.config import ConfigError

if TYPE_CHECKING:
    from .results import Results, RunRow, VariantRow

OPS = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
FUNCTIONS = {"loss": "final_val_loss_mean", "speedup": "speedup", "overhead": "overhead_pct"}
INTERVAL_ENDS = {  # function -> (the interval's field, which end)
    "speedup_low": ("speedup_ci", 0),
    "paired_low": ("paired_delta_ci", 0),
    "paired_high": ("paired_delta_ci", 1),
}
AT_BUDGET = ("speedup_at", "speedup_at_low")  # functions of a variant and a budget
_EXPR = re.compile(r"^\s*(.+?)\s*(<=|>=|<|>)\s*(.+?)(?:\s+((?:paired\s+)?significant))?\s*$")
_CALL = re.compile(r"^([a-z_]+)\((.+)\)$")


@dataclass(frozen=True)
class Term:
    text: str
    number: float | None = None
    variant: str | None = None
    field: str = "final_val_loss_mean"
    budget: float | None = None


def _term(text: str) -> Term:
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):  # every comparison with NaN fails: a typo, not a gate
            raise ConfigError(f"bad --expect term {text!r}: a number must be finite")
        return Term(text, number=number)
    call = _CALL.match(text)
    if call:
        name, arg = call.group(1), call.group(2).strip()
        if name in INTERVAL_ENDS:
            return Term(text, variant=arg, field=name)
        if name in AT_BUDGET:
            return _budget_term(text, name, arg)
        if name not in FUNCTIONS:
            raise ConfigError(
                f"unknown function {name!r} in --expect; use loss(v), speedup(v), "
                "speedup_low(v), paired_low(v), paired_high(v), overhead(v), "
                "speedup_at(v, D) or speedup_at_low(v, D)"
            )
        return Term(text, variant=arg, field=FUNCTIONS[name])
    return Term(text, variant=text)


def _budget_term(text: str, name: str, args: str) -> Term:
    """`name`(variant, budget): ConfigError unless the budget is a positive number."""
    variant, _, budget = args.rpartition(",")
    try:
        value = float(budget)
    except ValueError:
        value = math.nan
    if not variant.strip() or not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"bad --expect term {text!r}: {name} takes a variant and a budget (a positive "
            f"multiple of 20 tokens per parameter), e.g. {name}(mousse, 1)"
        )
    return Term(text, variant=variant.strip(), field=name, budget=value)


def budgets_of(results: Results) -> dict[str, list[float]]:
    """Per variant, the budgets it has a speedup at (`budget_speedup`)."""
    return {
        v["variant"]: [row["budget"] for row in v.get("budget_speedups") or ()]
        for v in results["variants"]
    }


def parse(expr: str) -> tuple[Term, str, Term, str | None]:
    """(left, op, right, test) of an expectation, test being None, "significant" (Welch) or
    "paired significant"; ConfigError when it does not parse."""
    match = _EXPR.match(expr)
    if not match:
        raise ConfigError(
            f'bad --expect {expr!r}: write A < B, e.g. "mousse < muon" or "speedup(mousse) >= 1.05"'
        )
    test = " ".join(match.group(4).split()) if match.group(4) else None
    left, right = _term(match.group(1)), _term(match.group(3))
    if test and not all(t.variant and t.field == "final_val_loss_mean" for t in (left, right)):
        raise ConfigError(f"'{test}' compares two variants' losses, e.g. \"mousse < muon {test}\"")
    return left, match.group(2), right, test


def validate(expr: str, variants: list[str], budgets: dict[str, list[float]] | None = None) -> None:
    """Refuse `expr` (ConfigError) when it does not parse, names a variant not in `variants` or,
    given each variant's `budgets` (`budgets_of`), a budget its variant has no speedup at: a
    malformed expectation is bad input whatever the results, never a failed gate."""
    for term in parse(expr)[::2]:
        if term.variant is not None and term.variant not in variants:
            raise ConfigError(
                f"--expect names {term.variant!r}, not a variant of this ablation "
                f"({', '.join(variants)})"
            )
        if term.budget is not None and budgets is not None:
            _check_budget(term, budgets.get(term.variant or "", []))


def _check_budget(term: Term, budgets: list[float]) -> None:
    """ConfigError unless the term's variant has a speedup at its budget."""
    if any(math.isclose(term.budget or 0.0, b) for b in budgets):
        return
    if not budgets:
        raise ConfigError(
            f"--expect {term.text!r}: {term.variant} has no speedups from budgets (they need "
            "an ablation run with --budgets, and a variant that is not the baseline)"
        )
    raise ConfigError(
        f"--expect {term.text!r}: {term.variant} has speedups at "
        f"{', '.join(f'{b:g}' for b in budgets)}, not at {term.budget:g}"
    )


def _term_value(term: Term, variants: dict[str, VariantRow]) -> float:
    if term.number is not None:
        return term.number
    assert term.variant is not None  # a term is a number or a variant's value
    v = variants[term.variant]
    if term.budget is not None:
        return _at_budget(term, v)
    row: Mapping[str, object] = v  # the term names its field: read by that name
    if term.field in INTERVAL_ENDS:
        name, end = INTERVAL_ENDS[term.field]
        interval = row.get(name)
        value = interval[end] if isinstance(interval, list) and interval else None
    else:
        value = row.get(term.field)
    return float(value) if isinstance(value, int | float) else math.nan  # None: missing


def _at_budget(term: Term, v: VariantRow) -> float:
    """The speedup at the term's budget (or its interval's low end): inf where unbounded, nan
    where missing."""
    row = next(
        r for r in v.get("budget_speedups") or () if math.isclose(r["budget"], term.budget or 0.0)
    )
    ci = row["speedup_ci"]
    if term.field == "speedup_at":
        value = math.inf if row["unbounded"] else row["speedup"]
    else:
        value = None if ci is None else math.inf if ci[0] is None else ci[0]
    return math.nan if value is None else float(value)


def check(expr: str, results: Results) -> tuple[bool, str]:
    """Whether `expr` holds for `results`, and a one-line reason either way."""
    variants = {v["variant"]: v for v in results["variants"]}
    validate(expr, list(variants), budgets_of(results))
    left, op, right, test = parse(expr)
    a, b = _term_value(left, variants), _term_value(right, variants)
    shown = ", ".join(
        f"{term.text} = {x:.4g}" for term, x in ((left, a), (right, b)) if term.number is None
    )
    if math.isnan(a) or math.isnan(b):
        return False, f"{expr!r} cannot be decided: {shown} (a value is missing)"
    if not OPS[op](a, b):
        return False, f"{expr!r} fails: {shown}"
    if test:
        assert left.variant is not None and right.variant is not None  # parse checked
        p = _p_value(test, results["runs"], left.variant, right.variant)
        if p is None or p >= 0.05:
            return False, (
                f"{expr!r} fails: {shown}, but p = "
                f"{'n/a (fewer than 2 seeds)' if p is None else f'{p:.3g}'} >= 0.05"
            )
        shown += f", p = {p:.3g}"
    return True, f"{expr!r} holds: {shown}"


def _p_value(test: str, runs: list[RunRow], a: str, b: str) -> float | None:
    """The p of `test` between variants a and b's completed runs: Welch's over all their seeds,
    or the paired t-test over the seeds both ran ("paired significant")."""
    from .results import seed_losses
    from .stats import paired_differences, paired_t_test, welch_t_test

    if test == "paired significant":
        paired: float | None = paired_t_test(
            paired_differences(seed_losses(runs, a), seed_losses(runs, b))
        )["p"]
        return paired
    losses = [
        [
            r["final_val_loss"]
            for r in runs
            if r["variant"] == v and r["status"] == "completed" and r["final_val_loss"] is not None
        ]
        for v in (a, b)
    ]
    welch: float | None = welch_t_test(*losses)["p"]
    return welch
