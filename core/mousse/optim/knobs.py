"""The engine's knobs, each declared once: name, default (Mousse's), type, allowed values or range,
one line of help, an example sweep, and whether it acts only through a preconditioned side.

Everything else derives from `TABLE`: the engine's defaults and validation (`KNOB_DEFAULTS`,
`KNOB_CHOICES`, `check_knobs`), the run config's ranges, the `train` flags and the `ablate` sweep flags with
their help, the ablation planner's knob classes and the knob list in docs/family.md
(`python scripts/knob_docs.py` rewrites it). Adding a knob is one entry here plus
its use in the step (`mousse.optim.step`) and its one typed line in the run config's
`TrainConfig`; `python scripts/typed_fields.py` then writes the other typed lines editors and
mypy see (`KnobArgs` below, the run config's `Overrides`), and tests fail, naming the place,
while any of them differs from TABLE. A choice knob's choices are a Literal alias named once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict, get_args, get_origin

import torch

from .orthogonalize import NsSchedule as NsSchedule
from .orthogonalize import Orthogonalization
from .precondition import EigFloor as EigFloor
from .precondition import FactorNorm as FactorNorm
from .precondition import Refresh as Refresh
from .precondition import root_order

# Each knob's choices, named once: the table's choices, KnobArgs's and the run config's types.
MomentumStyle = Literal["heavy_ball", "nesterov", "ema"]
WeightDecayStyle = Literal["decoupled", "after", "after_scaled"]
Sides = Literal["both", "left", "right", "none"]
RefreshSchedule = Literal["offset", "multiples", "staggered"]
RefreshDevice = Literal["same", "cpu", "auto"]
Graft = Literal["orthogonalizer", "adam", "none"]
Orthogonalizer = Literal[Orthogonalization, "adam"]
LrScale = Literal["spectral", "muon", "rms", "mean_dim", "none"]
Fisher = Literal["empirical", "sampled"]
LR_SCALE_RULES: tuple[LrScale, ...] = get_args(LrScale)
SIDES: tuple[Sides, ...] = get_args(Sides)
# A knob's value: a number, a choice, a switch, a dtype, or None where the knob allows it.
KnobValue = float | str | bool | torch.dtype | None
# The aliases by their choices (each alias above or imported here): how KnobArgs's generated lines
# name a choice knob's type.
CHOICE_TYPES: dict[tuple[str, ...], str] = {
    get_args(alias): name for name, alias in dict(globals()).items() if get_origin(alias) is Literal
}


@dataclass(frozen=True)
class Knob:
    """One knob. `help` may name `{choices}`; `low`/`high` bound a number (`high` excluded,
    `low` excluded too when `low_open`); `optional` allows None; `sweep` is an example value list
    for `mousse ablate --NAME` ("" when the knob has no sweep flag)."""

    name: str
    default: KnobValue
    kind: type
    help: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    optional: bool = False
    sweep: str = ""
    preconditioner: bool = False
    run_setting: bool = True  # a field of the run config (ns_dtype is set there by name)

    @property
    def text(self) -> str:
        """The help with the allowed values filled in."""
        return self.help.format(choices=" | ".join(self.choices))

    @property
    def allowed(self) -> str:
        """What a valid value is, in words."""
        if self.choices:
            return " | ".join(self.choices)
        if self.kind is bool:
            return "True or False"
        if self.kind is torch.dtype:
            return "a floating torch.dtype"
        if self.kind is int:
            return f"an integer >= {self.low:g}"
        if self.high is not None:
            return f"a number in [{self.low:g}, {self.high:g})"
        return f"a finite number {'>' if self.low_open else '>='} {self.low:g}"

    def check(self, value: object) -> str | None:
        """None when `value` is valid, else what is allowed (with 'None or' for optional knobs)."""
        if value is None and self.optional:
            return None
        if not self._valid(value):
            return ("None or " if self.optional else "") + self.allowed
        return None

    def _valid(self, value: object) -> bool:
        if self.choices:
            return value in self.choices
        if self.kind is bool:
            return isinstance(value, bool)
        if self.kind is torch.dtype:
            return isinstance(value, torch.dtype) and value.is_floating_point
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        low = -math.inf if self.low is None else self.low
        above = value > low if self.low_open else value >= low
        below = value < self.high if self.high is not None else math.isfinite(value)
        return above and below


def _unit(name: str, default: float, help: str, sweep: str = "", pre: bool = False) -> Knob:
    return Knob(name, default, float, help, low=0, high=1, sweep=sweep, preconditioner=pre)


def _count(name: str, default: int, help: str, low: int = 1, sweep: str = "") -> Knob:
    return Knob(name, default, int, help, low=low, sweep=sweep, preconditioner=name != "ns_steps")


def _choice(name: str, default: str, choices: object, help: str, **kw: bool) -> Knob:
    """A knob of one of `choices`, a Literal alias (its values, in order, are the choices)."""
    values: tuple[str, ...] = get_args(choices)
    return Knob(name, default, str, help, choices=values, sweep=",".join(values), **kw)


def _bool_knob(name: str, default: bool, help: str, pre: bool = False) -> Knob:
    return Knob(name, default, bool, help, sweep="on,off", preconditioner=pre)


TABLE: tuple[Knob, ...] = (
    Knob("lr", 0.06, float, "Peak lr of the block-matrix optimizer.", low=0),
    _unit("momentum", 0.95, "Momentum mu in [0, 1)."),
    _choice(
        "momentum_style",
        "heavy_ball",
        MomentumStyle,
        "{choices}: heavy_ball M = mu M + G; nesterov uses G + mu M; ema M = mu M + (1-mu) G, "
        "bias-corrected (Mousse heavy_ball, Muon nesterov).",
    ),
    Knob("weight_decay", 0.01, float, "Weight decay of the block matrices.", low=0),
    _choice(
        "weight_decay_style",
        "decoupled",
        WeightDecayStyle,
        "{choices}: decoupled W(1 - lr wd) with the update; after: W -= lr wd W after it (SOAP); "
        "after_scaled: W *= 1 - lr s wd (SPlus).",
    ),
    Knob(
        "alpha",
        0.125,
        float,
        "Whitening exponent: P = Q diag(lam^-alpha) before the orthogonalizer (0.25 "
        "untempered; 0 = Muon on Mousse's code path).",
        low=0,
        sweep="0.0,0.125,0.25",
        preconditioner=True,
    ),
    Knob(
        "post_alpha",
        None,
        float,
        "Exponent of the whitening after the orthogonalizer (default: = alpha).",
        low=0,
        optional=True,
        sweep="0.0,0.125",
        preconditioner=True,
    ),
    _choice(
        "sides",
        "both",
        Sides,
        "Preconditioned sides: {choices}. left = L = E[G G^T], the OUTPUT side of an (out, in) "
        "weight (m x m); right = R = E[G^T G], the INPUT side (n x n).",
        preconditioner=True,
    ),
    _choice(
        "factor_norm",
        "trace",
        FactorNorm,
        "Factor normalization before eigh: {choices} (trace: mean eigenvalue 1, Mousse; "
        "same_trace: TNT).",
        preconditioner=True,
    ),
    _count("precond_freq", 10, "Eigen refresh every T steps.", sweep="1,10,100"),
    _choice(
        "refresh_schedule",
        "offset",
        RefreshSchedule,
        "Refresh steps: {choices} (offset: 1, T+1, 2T+1, ..., Mousse; multiples: 1, T, 2T, ..., "
        "SPlus's authors; staggered: each matrix at its own phase, about 1/T of the work a step).",
        preconditioner=True,
    ),
    _count(
        "refresh_delay",
        0,
        "A refresh due at step s is used from step s+k on, computed off the step's critical "
        "path meanwhile (0: at once; the first refresh is always at once; k < precond_freq).",
        low=0,
        sweep="0,1,5",
    ),
    _choice(
        "refresh_device",
        "same",
        RefreshDevice,
        "Where refreshes run: {choices} (same: the factor's device; cpu: the host; auto: the "
        "host for CUDA factors up to 512 wide).",
        preconditioner=True,
    ),
    _unit("precond_beta", 0.95, "EMA rate of the factor statistics.", "0.9,0.95,0.99", pre=True),
    _count("stat_freq", 1, "Update the factor statistics every N steps.", sweep="1,10"),
    _count(
        "refresh_warmup",
        0,
        "Refresh at every statistics update during the first N steps (TNT: precond_freq).",
        low=0,
    ),
    _count("precond_start", 1, "No whitening before this step (Shampoo: precond_freq + 1)."),
    Knob("eps", 1e-5, float, "Eigenvalue damping.", low=0, low_open=True, preconditioner=True),
    _choice(
        "eig_floor",
        "shift",
        EigFloor,
        "Eigenvalue floor: {choices} (shift: Mousse; clamp: max(lam, eps)).",
        preconditioner=True,
    ),
    _choice(
        "graft",
        "orthogonalizer",
        Graft,
        "Grafting: {choices} (orthogonalizer: to the norm of the orthogonalized whitened "
        "momentum, Mousse; adam: Adam's norm, Shampoo).",
        preconditioner=True,
    ),
    _bool_knob("bias_correction", True, "Bias-correct the factor EMA before refresh.", pre=True),
    _choice(
        "refresh",
        "eigh",
        Refresh,
        "Factor refresh: {choices} (eigh exact; qr one power iteration + QR from the previous "
        "basis, SOAP; root: the whitening power by matmuls only, coupled Newton, alpha = 1/p).",
        preconditioner=True,
    ),
    _bool_knob(
        "refresh_after_update",
        False,
        "Update statistics and refresh after the weight update (SOAP, SPlus).",
        pre=True,
    ),
    _bool_knob("skip_first_step", False, "Step 1 only builds the statistics, no update (SOAP)."),
    _choice(
        "orthogonalizer",
        "newton_schulz",
        Orthogonalizer,
        "{choices} applied to the whitened momentum (Mousse/Muon newton_schulz, SpecGD exact, "
        "SPlus sign, Shampoo/TNT identity, SOAP adam).",
    ),
    _choice("ns", "you5", NsSchedule, "Newton-Schulz schedule: {choices}."),
    _count("ns_steps", 5, "Newton-Schulz iterations.", sweep="3,5"),
    Knob(
        "ns_dtype",
        None,
        torch.dtype,
        "Newton-Schulz precision (None: bf16 on CUDA, fp32 elsewhere).",
        optional=True,
        run_setting=False,
    ),
    _unit("beta2", 0.999, "Second-moment EMA rate of orthogonalizer/graft adam."),
    Knob("adam_eps", 1e-8, float, "Epsilon of orthogonalizer/graft adam.", low=0, low_open=True),
    _choice(
        "lr_scale",
        "spectral",
        LrScale,
        "Per-matrix lr rule: spectral sqrt(m/n) | muon sqrt(max(1,m/n)) | rms 0.2 sqrt(max(m,n)) "
        "| mean_dim 2/(m+n) | none.",
    ),
    _unit(
        "average_rate",
        0.0,
        "Iterate-average rate, evaluated on the average (0 = off).",
        "0.0,0.999",
    ),
    _choice(
        "fisher",
        "empirical",
        Fisher,
        "Factor statistics from {choices} gradients (sampled: labels drawn from the model, TNT).",
        preconditioner=True,
    ),
)


class KnobArgs(TypedDict, total=False):
    """The knobs as keyword arguments, typed, so an editor and a type checker see them in
    `Mousse(params, lr=..., ...)`. Its lines are generated from TABLE."""

    # generated from TABLE by `python scripts/typed_fields.py`; do not edit
    lr: float
    momentum: float
    momentum_style: MomentumStyle
    weight_decay: float
    weight_decay_style: WeightDecayStyle
    alpha: float
    post_alpha: float | None
    sides: Sides
    factor_norm: FactorNorm
    precond_freq: int
    refresh_schedule: RefreshSchedule
    refresh_delay: int
    refresh_device: RefreshDevice
    precond_beta: float
    stat_freq: int
    refresh_warmup: int
    precond_start: int
    eps: float
    eig_floor: EigFloor
    graft: Graft
    bias_correction: bool
    refresh: Refresh
    refresh_after_update: bool
    skip_first_step: bool
    orthogonalizer: Orthogonalizer
    ns: NsSchedule
    ns_steps: int
    ns_dtype: torch.dtype | None
    beta2: float
    adam_eps: float
    lr_scale: LrScale
    average_rate: float
    fisher: Fisher
    # /generated


BY_NAME: dict[str, Knob] = {k.name: k for k in TABLE}
KNOB_DEFAULTS: dict[str, KnobValue] = {k.name: k.default for k in TABLE}
KNOB_CHOICES: dict[str, tuple[str, ...]] = {k.name: k.choices for k in TABLE if k.choices}
RUN_KNOBS: tuple[str, ...] = tuple(
    k.name for k in TABLE if k.run_setting
)  # a run config sets these
PRECONDITIONER_KNOBS: tuple[str, ...] = tuple(k.name for k in TABLE if k.preconditioner)


def check_knobs(knobs: Mapping[str, object]) -> None:
    """Raise ValueError naming the first invalid knob of `knobs`, its value and what is allowed."""
    for name, value in knobs.items():
        if name in BY_NAME and (allowed := BY_NAME[name].check(value)) is not None:
            raise ValueError(f"invalid {name}={value!r}: expected {allowed}")


def check_together(knobs: dict[str, Any]) -> None:  # Any: a torch param group (family.Knobs)
    """Raise ValueError naming the first pair of knobs that cannot go together (each valid on
    its own): a delay that reaches the next refresh, or a matmul root it cannot compute."""
    if knobs.get("sides") == "none":
        return
    if knobs["refresh_delay"] >= knobs["precond_freq"]:
        raise ValueError(
            f"invalid refresh_delay={knobs['refresh_delay']}: expected less than "
            f"precond_freq={knobs['precond_freq']} (a refresh is used before the next is due)"
        )
    if knobs["refresh"] != "root":
        return
    root_order(knobs["alpha"])  # ValueError unless alpha = 1/p or 0
    if knobs.get("post_alpha") not in (None, knobs["alpha"]):
        raise ValueError(
            f"invalid post_alpha={knobs['post_alpha']} with refresh='root': the matmul root "
            "computes one power; use post_alpha=None or refresh='eigh'"
        )
    if knobs["orthogonalizer"] not in ("newton_schulz", "exact", "identity"):
        raise ValueError(
            f"invalid refresh='root' with orthogonalizer={knobs['orthogonalizer']!r}: it acts "
            "in the eigenbasis, which the root does not compute; use refresh='eigh'"
        )


# ---- the docs' knob list -----------------------------------------------------------------------

BEGIN = "<!-- knobs: generated from mousse.optim.knobs by `python scripts/knob_docs.py` -->"
END = "<!-- /knobs -->"


def markdown() -> str:
    """The knob list of docs/family.md: one row per knob."""
    rows = [
        "| knob | default | allowed | sweep | meaning |",
        "|---|---|---|---|---|",
    ]
    for k in TABLE:
        where = " (preconditioner)" if k.preconditioner else ""
        allowed = ("None or " if k.optional else "") + k.allowed.replace(" | ", ", ")
        rows.append(
            f"| `{k.name}`{where} | {k.default!r} | {allowed} | "
            f"{k.sweep and '`' + k.sweep + '`'} | {k.text.replace('|', '/')} |"
        )
    return "\n".join([BEGIN, *rows, END])


def rewrite(path: Path, begin: str = BEGIN, end: str = END, block: str | None = None) -> bool:
    """Put `block` (default: today's knob list) between the markers `begin` ... `end` of
    `path`; whether the file changed."""
    text = path.read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{path} lacks the knob list's markers {begin!r} ... {end!r}")
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    new = head + (markdown() if block is None else begin + block + end) + tail
    if new != text:
        path.write_text(new)
    return new != text


# ---- typed lines written from a declaration (KnobArgs's from TABLE) ----------------------------

GENERATED = "# generated from {source} by `python scripts/typed_fields.py`; do not edit\n"
GENERATED_END = "    # /generated"


def rewrite_lines(path: Path, source: str, lines: list[str]) -> bool:
    """Put `lines` (a class body's, unindented) between the markers naming `source` in `path`;
    whether the file changed."""
    block = "".join(f"    {line}\n" for line in lines)
    return rewrite(path, GENERATED.format(source=source), GENERATED_END, block)


def knob_args_lines() -> list[str]:
    """KnobArgs's lines: every knob of TABLE, typed by its choices' alias or its kind."""
    return [f"{k.name}: {_hint(k)}" for k in TABLE]


def _hint(k: Knob) -> str:
    base = CHOICE_TYPES[k.choices] if k.choices else _type_name(k.kind)
    return f"{base} | None" if k.optional else base


def _type_name(kind: type) -> str:
    return kind.__name__ if kind.__module__ == "builtins" else f"torch.{kind.__name__}"
