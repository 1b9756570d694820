"""Expectations on an ablation's results, for CI gates: `mousse report DIR --expect "mousse < muon"`.

An expectation compares two terms with <, <=, > or >=, optionally followed by `significant`
(then a comparison of two variants' losses also needs Welch p < 0.05). A term is a number, a
variant name (its mean final validation loss), or a function of a variant: `loss(v)`,
`speedup(v)` (the paper's speedup over the baseline), `speedup_low(v)` (the low end of its 95%
interval), `overhead(v)` (step-time overhead over the baseline, in %).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mousse.train.config import ConfigError

OPS = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
FUNCTIONS = {"loss": "final_val_loss_mean", "speedup": "speedup", "overhead": "overhead_pct"}
_EXPR = re.compile(r"^\s*(.+?)\s*(<=|>=|<|>)\s*(.+?)\s*(\bsignificant)?\s*$")
_CALL = re.compile(r"^([a-z_]+)\((.+)\)$")


@dataclass(frozen=True)
class Term:
    text: str
    number: float | None = None
    variant: str | None = None
    field: str = "final_val_loss_mean"


def _term(text: str) -> Term:
    try:
        return Term(text, number=float(text))
    except ValueError:
        pass
    call = _CALL.match(text)
    if call:
        name, arg = call.group(1), call.group(2).strip()
        if name == "speedup_low":
            return Term(text, variant=arg, field="speedup_low")
        if name not in FUNCTIONS:
            raise ConfigError(
                f"unknown function {name!r} in --expect; use loss(v), speedup(v), "
                "speedup_low(v) or overhead(v)"
            )
        return Term(text, variant=arg, field=FUNCTIONS[name])
    return Term(text, variant=text)


def parse(expr: str) -> tuple[Term, str, Term, bool]:
    """(left, op, right, significant) of an expectation; ConfigError when it does not parse."""
    match = _EXPR.match(expr)
    if not match:
        raise ConfigError(
            f'bad --expect {expr!r}: write A < B, e.g. "mousse < muon" or "speedup(mousse) >= 1.05"'
        )
    return _term(match.group(1)), match.group(2), _term(match.group(3)), bool(match.group(4))


def _value(term: Term, variants: dict) -> float:
    if term.number is not None:
        return term.number
    if term.variant not in variants:
        raise ConfigError(
            f"--expect names {term.variant!r}, not a variant of this ablation "
            f"({', '.join(variants)})"
        )
    v = variants[term.variant]
    value = (v.get("speedup_ci") or [None])[0] if term.field == "speedup_low" else v.get(term.field)
    return math.nan if value is None else float(value)


def check(expr: str, results: dict) -> tuple[bool, str]:
    """Whether `expr` holds for `results`, and a one-line reason either way."""
    from .stats import welch_t_test

    left, op, right, significant = parse(expr)
    variants = {v["variant"]: v for v in results["variants"]}
    a, b = _value(left, variants), _value(right, variants)
    shown = f"{left.text} = {a:.4g}, {right.text} = {b:.4g}"
    if math.isnan(a) or math.isnan(b):
        return False, f"{expr!r} cannot be decided: {shown} (a value is missing)"
    if not OPS[op](a, b):
        return False, f"{expr!r} fails: {shown}"
    if significant:
        if left.variant is None or right.variant is None or left.field != "final_val_loss_mean":
            raise ConfigError(
                "'significant' compares two variants' losses, e.g. \"mousse < muon significant\""
            )
        losses = [
            [
                r["final_val_loss"]
                for r in results["runs"]
                if r["variant"] == t.variant
                and r["status"] == "completed"
                and r["final_val_loss"] is not None
            ]
            for t in (left, right)
        ]
        p = welch_t_test(*losses)["p"]
        if p is None or p >= 0.05:
            return False, (
                f"{expr!r} fails: {shown}, but p = "
                f"{'n/a (fewer than 2 seeds)' if p is None else f'{p:.3g}'} >= 0.05"
            )
        shown += f", p = {p:.3g}"
    return True, f"{expr!r} holds: {shown}"
