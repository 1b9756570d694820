"""The Kronecker-whitened optimizer family as one torch optimizer, and its named presets.

`KroneckerOptimizer` is the engine: its knobs (docs/family.md) are a pre/post whitening exponent,
the preconditioned sides, an orthogonalizer, a momentum style, grafting, factor normalization and
the refresh schedule. Mousse, Muon, Shampoo, SOAP, SPlus, TNT and SpecGD are presets of those
knobs: thin subclasses that only set defaults. The math lives in pure functions here and in
`orthogonalize` and `precondition`.

Same-shape matrices of a param group are stacked into one bucket: their state lives in batched
tensors (each parameter's `state` entries are views into them), so whitening, Newton-Schulz and
eigh run once per shape rather than once per matrix.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import precondition as pc
from .orthogonalize import NS_SCHEDULES, ORTHOGONALIZERS, frobenius_norm, orthogonalize

if TYPE_CHECKING:
    from torch.optim.optimizer import ParamsT

_P = ParamSpec("_P")
_R = TypeVar("_R")
# A param group's knobs (and "params"), or a set of knobs: name -> value.
Knobs = dict[str, Any]

LR_SCALES: dict[str, Callable[[int, int], float]] = {
    "spectral": lambda m, n: math.sqrt(m / n),
    "muon": lambda m, n: math.sqrt(max(1.0, m / n)),
    "rms": lambda m, n: 0.2 * math.sqrt(max(m, n)),
    "mean_dim": lambda m, n: 2.0 / (m + n),
    "none": lambda m, n: 1.0,
}
_SIDE_FACTORS = {"both": ("L", "R"), "left": ("L",), "right": ("R",), "none": ()}
SIDES = tuple(_SIDE_FACTORS)
# State entries, by side: running factor, eigenvalues, eigenbasis.
_FACTOR_KEYS = {"L": ("L", "lam_L", "Q_L"), "R": ("R", "lam_R", "Q_R")}

# Every knob with the engine's default (Mousse's). Named presets override some of them.
DEFAULTS: Knobs = dict(
    lr=0.06,
    momentum=0.95,
    momentum_style="heavy_ball",
    weight_decay=0.01,
    weight_decay_style="decoupled",
    alpha=0.125,
    post_alpha=None,
    sides="both",
    factor_norm="trace",
    precond_freq=10,
    refresh_schedule="offset",
    precond_beta=0.95,
    stat_freq=1,
    refresh_warmup=0,
    precond_start=1,
    eps=1e-5,
    eig_floor="shift",
    bias_correction=True,
    refresh="eigh",
    refresh_after_update=False,
    skip_first_step=False,
    orthogonalizer="newton_schulz",
    ns="you5",
    ns_steps=5,
    ns_dtype=None,
    graft="orthogonalizer",
    beta2=0.999,
    adam_eps=1e-8,
    lr_scale="spectral",
    average_rate=0.0,
    fisher="empirical",
)
KNOBS = tuple(k for k in DEFAULTS if k != "ns_dtype")  # the ones a run config can set
CHOICES: dict[str, tuple[str, ...]] = {
    "momentum_style": ("heavy_ball", "nesterov", "ema"),
    "weight_decay_style": ("decoupled", "after", "after_scaled"),
    "sides": SIDES,
    "factor_norm": pc.FACTOR_NORMS,
    "eig_floor": pc.EIG_FLOORS,
    "refresh": pc.REFRESHES,
    "refresh_schedule": ("offset", "multiples"),
    "orthogonalizer": (*ORTHOGONALIZERS, "adam"),
    "ns": NS_SCHEDULES,
    "graft": ("orthogonalizer", "adam", "none"),
    "lr_scale": tuple(LR_SCALES),
    "fisher": ("empirical", "sampled"),
}
_UNIT = ("momentum", "precond_beta", "beta2", "average_rate")  # in [0, 1)
_NONNEGATIVE = ("lr", "weight_decay", "alpha")
_POSITIVE = ("eps", "adam_eps")
_COUNTS = {
    "precond_freq": 1,
    "stat_freq": 1,
    "precond_start": 1,
    "ns_steps": 1,
    "refresh_warmup": 0,
}
_FLAGS = ("bias_correction", "refresh_after_update", "skip_first_step")


# ---- the math, as small pure functions ---------------------------------------------------------


def lr_multiplier(rule: str, m: int, n: int) -> float:
    """Learning-rate scale for an (m, n) = (fan_out, fan_in) matrix under the named rule."""
    return LR_SCALES[rule](m, n)


def graft(U: Tensor, gamma: Tensor, norm_U: Tensor) -> Tensor:
    """Rescale each matrix of U from Frobenius norm `norm_U` to `gamma` (shapes (B, 1, 1));
    zero stays zero."""
    return U * (gamma / norm_U.clamp(min=torch.finfo(U.dtype).tiny))


def momentum_step(M: Tensor, G: Tensor, mu: float, style: str, count: int) -> Tensor:
    """Update the momentum buffer M in place and return the momentum the direction uses:
    heavy ball M, Nesterov G + mu M, or the EMA mu M + (1-mu) G bias-corrected for `count`
    updates."""
    if style == "ema":
        M.mul_(mu).add_(G, alpha=1.0 - mu)
        return M / (1.0 - mu**count)
    M.mul_(mu).add_(G)
    return G + mu * M if style == "nesterov" else M


def adam_normalize(
    X: Tensor, Xg: Tensor, V: Tensor, beta2: float, eps: float, count: int
) -> Tensor:
    """Adam's elementwise step: update V <- beta2 V + (1-beta2) Xg^2 in place and return
    X sqrt(1 - beta2^count) / (sqrt(V) + eps) (X already bias-corrected for the first moment)."""
    V.mul_(beta2).addcmul_(Xg, Xg, value=1.0 - beta2)
    return X * math.sqrt(1.0 - beta2**count) / (V.sqrt() + eps)


def refresh_due(knobs: Knobs, t: int) -> bool:
    """Whether step t (1-based) refreshes the eigen-pairs: on step 1, then every `precond_freq`
    steps counted from it (`refresh_schedule` "offset": 1, F+1, 2F+1, ...) or on the multiples of
    `precond_freq` ("multiples": 1, F, 2F, ..., as SPlus's authors' code does); and on every
    statistics step up to `refresh_warmup`."""
    is_stat = (t - 1) % knobs["stat_freq"] == 0
    phase = 1 if knobs["refresh_schedule"] == "offset" else 0
    return (
        t == 1
        or (t - phase) % knobs["precond_freq"] == 0
        or (is_stat and t <= knobs["refresh_warmup"])
    )


def permute_basis_state(V: Tensor, order: Tensor, side: str) -> Tensor:
    """State indexed by eigenbasis columns (rows for L, columns for R) put in the new order."""
    if side == "L":
        return V.gather(-2, order.unsqueeze(-1).expand_as(V))
    return V.gather(-1, order.unsqueeze(-2).expand_as(V))


def accumulate_statistics(
    st: dict[str, Tensor], G: Tensor, sides: tuple[str, ...], beta: float
) -> None:
    """EMA statistics of each side's factor from the gradient stack G, in place; a matrix whose
    contribution is not finite is skipped and counted."""
    for side in sides:
        skipped = pc.accumulate(
            st[_FACTOR_KEYS[side][0]], G, beta, "left" if side == "L" else "right"
        )
        st[f"stat_skips_{side}"] += skipped


def update_matrices(
    g: Knobs,
    params: list[Tensor],
    st: dict[str, Tensor],
    G: Tensor,
    lr: float | Tensor,
    count: int,
    whiten: bool,
) -> None:
    """One update of a stack of same-shape matrices with gradients G and the group's knobs `g`:
    momentum, whitening by the cached P's (when `whiten`), the orthogonalizer, unwhitening,
    grafting, weight decay and the step; state in `st` is updated in place. No host syncs, so
    torch.compile captures it whole (`KroneckerOptimizer(compiled=True)`). lr and count, the
    values that change from step to step, are arguments of their own rather than read from `g`,
    so torch.compile takes them as inputs (lr as a 0-d tensor when compiled, count as a symbol)
    instead of recompiling for each value."""
    m, n = params[0].shape
    sides = _SIDE_FACTORS[g["sides"]] if whiten else ()
    M_in = momentum_step(st["momentum_buffer"], G, g["momentum"], g["momentum_style"], count)
    pre = {s: st[f"P_{s}"] for s in sides}
    post = {s: st[f"P_{s}_post"] for s in sides}
    X = pc.whiten(M_in, pre.get("L"), pre.get("R"))
    Y = direction(g, st, X, G, pre, count)
    # unwhitening runs in its cached P's precision (unwhiten_dtype), then back to the state's
    dtype = next(iter(post.values())).dtype if post else Y.dtype
    U = pc.unwhiten(Y.to(dtype), post.get("L"), post.get("R")).to(M_in.dtype)
    U = graft_update(g, st, U, Y, M_in, G, count, whiten)
    st["update_rms"].copy_(frobenius_norm(U).flatten() / math.sqrt(m * n))
    apply_update(g, params, st, U, lr, m, n)


def direction(
    g: Knobs, st: dict[str, Tensor], X: Tensor, G: Tensor, pre: dict[str, Tensor], count: int
) -> Tensor:
    """The orthogonalizer applied to the whitened momentum X."""
    if g["orthogonalizer"] == "adam":
        Xg = pc.whiten(G, pre.get("L"), pre.get("R"))
        return adam_normalize(X, Xg, st["V"], g["beta2"], g["adam_eps"], count)
    method = g["ns"] if g["orthogonalizer"] == "newton_schulz" else g["orthogonalizer"]
    return orthogonalize(X, method, g["ns_steps"], ns_dtype(g, X))


def ns_dtype(g: Knobs, like: Tensor) -> torch.dtype:
    """Newton-Schulz's working precision: the group's `ns_dtype`, else bf16 on CUDA and fp32 (or
    the state's, if wider) elsewhere."""
    return g["ns_dtype"] or (
        torch.bfloat16 if like.is_cuda else torch.promote_types(like.dtype, torch.float32)
    )


def unwhiten_dtype(g: Knobs, like: Tensor) -> torch.dtype:
    """Precision of the unwhitening matmuls: Newton-Schulz's, whose output is already rounded to
    it (in bf16 that adds 10% to NS's own error, where bf16 *whitening* of the input multiplies it
    by 3-45: benchmarks/whiten_precision.py); the state's for the other orthogonalizers."""
    return ns_dtype(g, like) if g["orthogonalizer"] == "newton_schulz" else like.dtype


def graft_update(
    g: Knobs,
    st: dict[str, Tensor],
    U: Tensor,
    Y: Tensor,
    M_in: Tensor,
    G: Tensor,
    count: int,
    whitened: bool,
) -> Tensor:
    """Rescale U to the norm of the orthogonalizer's output or of Adam's step."""
    if g["graft"] == "orthogonalizer" and whitened:
        return graft(U, frobenius_norm(Y), frobenius_norm(U))
    if g["graft"] == "adam":
        b2 = g["beta2"]
        st["graft_v"].mul_(b2).addcmul_(G, G, value=1.0 - b2)
        A = M_in / ((st["graft_v"] / (1.0 - b2**count)).sqrt() + g["adam_eps"])
        return graft(U, frobenius_norm(A), frobenius_norm(U)) if whitened else A
    return U


def apply_update(
    g: Knobs,
    params: list[Tensor],
    st: dict[str, Tensor],
    U: Tensor,
    lr: float | Tensor,
    m: int,
    n: int,
) -> None:
    """W <- W - lr s U with decoupled weight decay before or after; the iterate average."""
    wd, style = g["weight_decay"], g["weight_decay_style"]
    s = lr_multiplier(g["lr_scale"], m, n)
    if wd and style == "decoupled":
        torch._foreach_mul_(params, 1.0 - lr * wd)
    step = list(U.to(params[0].dtype).unbind(0))
    if isinstance(lr, Tensor):  # compiled: a multiply by the lr tensor (alpha takes only numbers)
        torch._foreach_add_(params, torch._foreach_mul(step, -lr * s))
    else:
        torch._foreach_add_(params, step, alpha=-lr * s)
    if g["average_rate"]:
        W = torch.stack(params).to(st["average"].dtype)
        st["average"].add_(W - st["average"], alpha=1.0 - g["average_rate"])
    if wd and style != "decoupled":
        torch._foreach_mul_(params, 1.0 - lr * wd * (s if style == "after_scaled" else 1.0))


# (function, COMPILE_OPTIONS) -> the function under torch.compile
_COMPILED: dict[tuple[Callable[..., Any], tuple[tuple[str, Any], ...]], Callable[..., Any]] = {}
COMPILE_OPTIONS: dict[str, Any] = {}  # extra torch.compile arguments, e.g. a cheap test backend
# Graphs one function may keep: one per bucket shape and knob set, plus the symbolic-count
# variant of each (torch's default of 8 would send models with several shapes back to eager).
RECOMPILE_LIMIT = 64


def compiled(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """`fn` under torch.compile, one wrapper per function and COMPILE_OPTIONS. Shapes and knobs
    are specialized; tensor arguments (lr) are inputs and int arguments (step counts) become
    symbolic after their first change, so LR schedules and step counts do not recompile."""
    key = (fn, tuple(sorted(COMPILE_OPTIONS.items())))
    if key not in _COMPILED:
        limit = torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT)
        _COMPILED[key] = limit(torch.compile(fn, **COMPILE_OPTIONS))
    return _COMPILED[key]


# ---- validation --------------------------------------------------------------------------------


def _check(ok: bool, name: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"invalid {name}={value!r}: expected {allowed}")


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_group(group: Knobs) -> None:
    """Raise ValueError naming the first invalid knob of a param group and its allowed values."""
    g = group
    for name, allowed in CHOICES.items():
        _check(g[name] in allowed, name, g[name], " | ".join(map(repr, allowed)))
    for name in _NONNEGATIVE:
        _check(_is_number(g[name]) and g[name] >= 0, name, g[name], "a finite number >= 0")
    _check(
        g["post_alpha"] is None or (_is_number(g["post_alpha"]) and g["post_alpha"] >= 0),
        "post_alpha",
        g["post_alpha"],
        "None or a finite number >= 0",
    )
    for name in _POSITIVE:
        _check(_is_number(g[name]) and g[name] > 0, name, g[name], "a finite number > 0")
    for name in _UNIT:
        _check(_is_number(g[name]) and 0 <= g[name] < 1, name, g[name], "a number in [0, 1)")
    for name, low in _COUNTS.items():
        _check(
            isinstance(g[name], int) and not isinstance(g[name], bool) and g[name] >= low,
            name,
            g[name],
            f"an integer >= {low}",
        )
    for name in _FLAGS:
        _check(isinstance(g[name], bool), name, g[name], "True or False")
    _check(
        g["ns_dtype"] is None
        or (isinstance(g["ns_dtype"], torch.dtype) and g["ns_dtype"].is_floating_point),
        "ns_dtype",
        g["ns_dtype"],
        "None or a floating torch.dtype",
    )
    for p in g["params"]:
        _check(
            p.ndim == 2,
            "params",
            f"a tensor of shape {tuple(p.shape)}",
            "2-D weight matrices only (route embeddings, head, gains and biases to AdamW/Lion)",
        )


def closure_loss(closure: Callable[[], float] | None) -> float | None:
    """Evaluate an optional closure with gradients enabled (torch.optim's step convention)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


# ---- the engine --------------------------------------------------------------------------------


@dataclass
class _Bucket:
    """Same-shape matrices of one param group and their stacked state, plus the whitening
    matrices derived from it (state keys the parameters do not see, so never saved)."""

    params: list[Tensor]
    state: dict[str, Tensor] = field(default_factory=dict)
    step: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    # the (alpha, post_alpha) the cached P's were computed with
    exponents: tuple[float, float] | None = None


def _exponents(group: Knobs) -> tuple[float, float]:
    post = group["post_alpha"]
    return group["alpha"], group["alpha"] if post is None else post


class KroneckerOptimizer(Optimizer):
    """The family engine: per (out, in) = (m, n) matrix, Kronecker-factor statistics L (output
    side, m x m) and R (input side, n x n), an eigen refresh every `precond_freq` steps, and the
    update U = P_L' f(P_L^T M P_R) P_R'^T with P = Q diag(lam^-alpha), P' = Q diag(lam^-post_alpha)
    and f the orthogonalizer, grafted and applied with decoupled weight decay. docs/family.md
    gives each knob's exact meaning; every knob can be set per param group. Subclasses are the
    literature's optimizers as presets: their class body's `preset` lists the knobs they change,
    and the class attribute `preset` then holds their full knob set."""

    preset: Knobs = dict(DEFAULTS)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.preset = {**DEFAULTS, **cls.__dict__.get("preset", {})}

    @classmethod
    def derived(cls, knobs: Knobs) -> Knobs:
        """Knobs whose default follows other knobs (e.g. Shampoo's precond_start)."""
        return {}

    @classmethod
    def resolve_knobs(cls, **knobs: Any) -> Knobs:
        """This optimizer's full knob set with `knobs` applied; derived defaults follow the knobs
        they depend on unless set explicitly. TypeError names unknown knobs."""
        unknown = sorted(set(knobs) - set(DEFAULTS))
        if unknown:
            raise TypeError(
                f"{cls.__name__} got unknown knobs {unknown}; the knobs are {', '.join(DEFAULTS)}"
            )
        full = {**cls.preset, **knobs}
        full.update({k: v for k, v in cls.derived(full).items() if k not in knobs})
        return full

    def __init__(self, params: ParamsT, *, compiled: bool = False, **knobs: Any) -> None:
        self.compiled = compiled  # run the per-bucket math under torch.compile (`compiled`)
        self._buckets: list[list[_Bucket]] | None = None
        self._fisher: dict[int, Tensor] = {}
        self._explicit = set(knobs)  # derived defaults never override these
        super().__init__(params, self.resolve_knobs(**knobs))

    def add_param_group(self, param_group: Knobs) -> None:
        # a group's derived defaults follow the group's own knobs (e.g. sides="left" in Shampoo)
        derived = self.derived({**self.defaults, **param_group})
        param_group.update(
            {k: v for k, v in derived.items() if k not in param_group and k not in self._explicit}
        )
        super().add_param_group(param_group)
        try:
            validate_group(self.param_groups[-1])
        except ValueError:
            self.param_groups.pop()  # do not leave the rejected group in the optimizer
            raise
        self._buckets = None

    # ---- state layout -------------------------------------------------------------------------

    def _init_state(self, p: Tensor, group: Knobs) -> dict[str, Tensor]:
        m, n = p.shape
        wide = torch.promote_types(p.dtype, torch.float32)

        def zeros(*shape: Any, dtype: torch.dtype = wide) -> Tensor:  # dims, or a shape tuple
            return torch.zeros(*shape, dtype=dtype, device=p.device)

        st = {
            "step": torch.zeros((), dtype=torch.int64),
            "momentum_buffer": zeros(m, n),
            "update_rms": zeros((), dtype=torch.float32),
        }
        for side in _SIDE_FACTORS[group["sides"]]:
            k = m if side == "L" else n
            F, lam, Q = _FACTOR_KEYS[side]
            st[F], st[lam], st[Q] = (
                zeros(k, k),
                torch.ones(k, dtype=wide, device=p.device),
                torch.eye(k, dtype=wide, device=p.device),
            )
            st[f"eigh_failures_{side}"] = zeros((), dtype=torch.int64)
            st[f"stat_skips_{side}"] = zeros((), dtype=torch.int64)
        if group["orthogonalizer"] == "adam":
            st["V"] = zeros(m, n)  # second moment in the eigenbasis (SOAP)
        if group["graft"] == "adam":
            st["graft_v"] = zeros(m, n)  # Adam grafting's second moment (Shampoo)
        if group["average_rate"]:
            st["average"] = zeros(m, n)  # iterate average (SPlus)
        return st

    def _build_buckets(self) -> list[list[_Bucket]]:
        """Stack every group's same-shape state into buckets; state entries become views."""
        buckets = []
        for group in self.param_groups:
            by_key: dict[tuple[tuple[int, ...], torch.dtype, torch.device], list[Tensor]] = {}
            for p in group["params"]:
                by_key.setdefault((tuple(p.shape), p.dtype, p.device), []).append(p)
            group_buckets = []
            for params in by_key.values():
                for p in params:
                    if not self.state[p]:
                        self.state[p] = self._init_state(p, group)
                bucket = _Bucket(params)
                for key in self.state[params[0]]:
                    stacked = torch.stack([self.state[p][key] for p in params])
                    bucket.state[key] = stacked
                    for i, p in enumerate(params):
                        self.state[p][key] = stacked[i]
                bucket.step = bucket.state.pop("step")
                group_buckets.append(bucket)
            buckets.append(group_buckets)
        return buckets

    def _ensure_buckets(self) -> list[list[_Bucket]]:
        if self._buckets is None:
            self._buckets = self._build_buckets()
        return self._buckets

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Standard load, but keeps each saved buffer's own dtype (factors stay fp32 or wider)."""
        super().load_state_dict(state_dict)
        saved_ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params):
            for key, value in state_dict["state"].get(pid, {}).items():
                if isinstance(value, Tensor):
                    device = torch.device("cpu") if key == "step" else p.device
                    self.state[p][key] = value.to(device=device, copy=True)
        for group in self.param_groups:  # knobs added since the state was saved
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        self._buckets = None

    # ---- hooks for the training loop ----------------------------------------------------------

    def fisher_params(self) -> list[Tensor]:
        """Parameters whose next `step()` needs a sampled-label gradient (fisher="sampled" on a
        statistics step); hand them over with `set_fisher_grads` before calling `step()`."""
        out = []
        for group in self.param_groups:
            if group["fisher"] != "sampled" or group["sides"] == "none":
                continue
            for p in group["params"]:
                t = int(self.state[p]["step"]) + 1 if self.state.get(p) else 1
                if (t - 1) % group["stat_freq"] == 0:
                    out.append(p)
        return out

    def set_fisher_grads(self, grads: dict[Tensor, Tensor]) -> None:
        """Sampled-label gradients for the coming step, keyed by parameter (used once)."""
        self._fisher = {id(p): g for p, g in grads.items()}

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Swap in the bias-corrected iterate average (groups with average_rate > 0) and restore
        the raw weights on exit, bit for bit; a no-op for groups without one."""
        saved = []
        with torch.no_grad():
            for group, group_buckets in zip(self.param_groups, self._ensure_buckets()):
                rate = group["average_rate"]
                for bucket in group_buckets if rate else ():
                    skip = 1 if group["skip_first_step"] else 0
                    for i, p in enumerate(bucket.params):
                        count = int(bucket.step[i]) - skip
                        if count >= 1:
                            saved.append((p, p.detach().clone()))
                            avg = bucket.state["average"][i] / (1.0 - rate**count)
                            p.copy_(avg.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, raw in saved:
                    p.copy_(raw)

    # ---- the step -----------------------------------------------------------------------------

    @overload
    def step(self, closure: None = None) -> None: ...
    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure_loss(closure)
        for group, group_buckets in zip(self.param_groups, self._ensure_buckets()):
            for bucket in group_buckets:
                if bucket.exponents != _exponents(group):  # new bucket, or alpha changed
                    self._cache_whitening(group, bucket.state, _SIDE_FACTORS[group["sides"]])
                    bucket.exponents = _exponents(group)
                has_grad = [p.grad is not None for p in bucket.params]
                steps = bucket.step.tolist()  # a CPU tensor: no device sync
                if all(has_grad) and len(set(steps)) == 1:
                    self._step_matrices(
                        group, bucket.params, bucket.state, bucket.step, steps[0] + 1
                    )
                    continue
                # Rare: only some matrices got a gradient, so their steps differ; step each
                # group of equal step on copies of its rows, then write them back.
                for s in sorted({s for s, h in zip(steps, has_grad) if h}):
                    rows = [i for i, (si, h) in enumerate(zip(steps, has_grad)) if h and si == s]
                    idx = torch.tensor(rows)
                    sub = {k: v[idx.to(v.device)] for k, v in bucket.state.items()}
                    sub_steps = bucket.step[idx]
                    self._step_matrices(
                        group, [bucket.params[i] for i in rows], sub, sub_steps, s + 1
                    )
                    for k, v in sub.items():
                        bucket.state[k][idx.to(v.device)] = v
                    bucket.step[idx] = sub_steps
        self._fisher = {}
        return loss

    def _step_matrices(
        self, group: Knobs, params: list[Tensor], st: dict[str, Tensor], steps: Tensor, t: int
    ) -> None:
        """Step `t` for a stack of same-shape matrices (state `st` updated in place): the
        statistics and update run through `self._math` (compiled when asked), the eigen refresh
        eagerly between them, since it alone needs the host (finiteness checks, fallbacks)."""
        g = group
        steps += 1
        grads = cast("list[Tensor]", [p.grad for p in params])  # all set: step() checked
        G = torch.stack(grads).to(st["momentum_buffer"].dtype)
        if not g["refresh_after_update"]:
            self._statistics(g, params, st, G, t)
        count = t - 1 if g["skip_first_step"] else t  # updates of the moments so far
        if count >= 1:
            whiten = g["sides"] != "none" and t >= g["precond_start"]
            lr = g["lr"]
            if self.compiled:  # a tensor: the graph then takes any lr without specializing on it
                lr = torch.tensor(lr, dtype=torch.float32, device=G.device)
            self._math(update_matrices)(g, params, st, G, lr, count, whiten)
        if g["refresh_after_update"]:
            self._statistics(g, params, st, G, t)

    def _math(self, fn: Callable[_P, _R]) -> Callable[_P, _R]:
        return compiled(fn) if self.compiled else fn

    def _statistics(
        self, g: Knobs, params: list[Tensor], st: dict[str, Tensor], G: Tensor, t: int
    ) -> None:
        """Update the factor statistics on statistics steps and refresh the eigen-pairs when due."""
        sides = _SIDE_FACTORS[g["sides"]]
        if not sides:
            return
        if (t - 1) % g["stat_freq"] == 0:
            Gs = G if g["fisher"] == "empirical" else self._sampled_grads(params).to(G.dtype)
            self._math(accumulate_statistics)(st, Gs, sides, g["precond_beta"])
        if refresh_due(g, t):
            count = (t - 1) // g["stat_freq"] + 1  # statistics updates so far
            m, n = G.shape[-2:]
            for side in sides:
                self._refresh(g, st, side, count, n if side == "L" else m, first=t == 1)
            self._cache_whitening(g, st, sides)

    def _sampled_grads(self, params: list[Tensor]) -> Tensor:
        missing = [i for i, p in enumerate(params) if id(p) not in self._fisher]
        if missing:
            raise RuntimeError(
                f"{type(self).__name__} with fisher='sampled' needs sampled-label gradients on "
                "this step: pass opt.set_fisher_grads({param: grad}) for opt.fisher_params() "
                "before opt.step() (mousse's trainer does), or use fisher='empirical'"
            )
        return torch.stack([self._fisher[id(p)] for p in params])

    def _refresh(
        self, g: Knobs, st: dict[str, Tensor], side: str, count: int, other_dim: int, first: bool
    ) -> None:
        """Eigen refresh of one side's factors (the first refresh, from the identity basis,
        always by eigh); state kept in the eigenbasis follows a QR refresh's column order."""
        F, lam, Q = _FACTOR_KEYS[side]
        factor = pc.normalized(
            st[F], count, g["precond_beta"], g["bias_correction"], g["factor_norm"], other_dim
        )
        new_lam, new_Q, failed, order = pc.refresh(
            factor,
            st[lam],
            st[Q],
            g["eps"],
            st[F].dtype,
            "eigh" if first else g["refresh"],
            g["eig_floor"],
        )
        st[lam].copy_(new_lam)
        st[Q].copy_(new_Q)
        st[f"eigh_failures_{side}"] += failed
        if order is not None and "V" in st:
            st["V"].copy_(permute_basis_state(st["V"], order, side))

    @staticmethod
    def _cache_whitening(group: Knobs, st: dict[str, Tensor], sides: tuple[str, ...]) -> None:
        """P = Q diag(lam^-alpha) and P' = Q diag(lam^-post_alpha) for the given sides, so a step
        only multiplies by them: P in the state's precision, P' in the unwhitening's."""
        alpha, post_alpha = _exponents(group)
        for side in sides:
            _, lam, Q = _FACTOR_KEYS[side]
            dtype = unwhiten_dtype(group, st[Q])
            st[f"P_{side}"] = pc.inverse_root_basis(st[lam], st[Q], alpha, st[Q].dtype)
            st[f"P_{side}_post"] = (
                st[f"P_{side}"]
                if (post_alpha, dtype) == (alpha, st[Q].dtype)
                else pc.inverse_root_basis(st[lam], st[Q], post_alpha, dtype)
            )

    # ---- read-outs ----------------------------------------------------------------------------

    def telemetry(self) -> list[dict[str, Tensor]]:
        """Per matrix (in param-group order): eigenvalue range and condition number of each
        factor's cached eigenbasis, update RMS, eigh failures and skipped statistics updates.
        Values stay tensors on the parameter's device: reading them is the caller's sync."""
        out = []
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if not st:
                    continue
                row = {"update_rms": st["update_rms"]}
                for side in _SIDE_FACTORS[group["sides"]]:
                    lam = st[_FACTOR_KEYS[side][1]]
                    row[f"lam_{side}_min"], row[f"lam_{side}_max"] = lam.min(), lam.max()
                    row[f"cond_{side}"] = lam.max() / lam.min()
                    row[f"eigh_failures_{side}"] = st[f"eigh_failures_{side}"]
                    row[f"stat_skips_{side}"] = st[f"stat_skips_{side}"]
                out.append(row)
        return out


# ---- the named presets -------------------------------------------------------------------------


class Mousse(KroneckerOptimizer):
    """Mousse (arXiv 2603.09697): Muon whitened by Shampoo's Kronecker factors, the engine's
    defaults. Per step: momentum M <- mu M + G; factors L, R as EMAs of G G^T, G^T G; every
    `precond_freq` steps (from step 1) an eigh refresh of the bias-corrected, trace-normalized
    factors; U = P_L NS(P_L^T M P_R) P_R^T with P = Q diag(lam^-alpha), grafted to ||NS(.)||_F;
    W <- W (1 - lr wd) - lr sqrt(m/n) U. alpha = 0 is exactly Muon's update."""


class Muon(KroneckerOptimizer):
    """Muon (Keller Jordan): no preconditioning. Defaults are torch.optim.Muon's: Nesterov
    momentum 0.95, the (3.4445, -4.7750, 2.0315) schedule, lr 1e-3, weight decay 0.1 and the LR
    rule sqrt(max(1, m/n)) (lr_scale="muon"; "rms" is torch's "match_rms_adamw").
    `nesterov=False` selects heavy-ball momentum."""

    preset = dict(
        lr=1e-3,
        weight_decay=0.1,
        momentum_style="nesterov",
        sides="none",
        alpha=0.0,
        graft="none",
        ns="muon",
        lr_scale="muon",
    )

    def __init__(
        self, params: ParamsT, nesterov: bool | None = None, *, compiled: bool = False, **knobs: Any
    ) -> None:
        if nesterov is not None:
            knobs["momentum_style"] = "nesterov" if nesterov else "heavy_ball"
        super().__init__(params, compiled=compiled, **knobs)


class Shampoo(KroneckerOptimizer):
    """Shampoo with Distributed Shampoo's default hyperparameters: EMA first moment
    (bias-corrected), factor EMAs with beta 0.999 and bias correction, `L^-1/4 M R^-1/4` (no
    orthogonalization, exponent 1/8 before and after; 1/4 each when one-sided, i.e. the single
    side's inverse square root), eigenvalues of L + eps I clamped at eps = 1e-12, Adam grafting
    (beta2 0.999, eps 1e-8), refresh every 100 steps and the grafted Adam step alone before
    `precond_start` (default: precond_freq + 1).

    Unlike Distributed Shampoo's defaults, every matrix is preconditioned whole: no blocking of
    dimensions above its `max_preconditioner_dim` (1024) into blocks, and no treating of small
    matrices (m n <= 1024) as one vector. On a matrix at most 1024 on a side with m n > 1024 the
    two rules coincide."""

    preset = dict(
        lr=1e-3,
        momentum=0.9,
        momentum_style="ema",
        weight_decay=0.0,
        alpha=0.125,
        orthogonalizer="identity",
        graft="adam",
        factor_norm="none",
        precond_beta=0.999,
        eps=1e-12,
        eig_floor="clamp",
        precond_freq=100,
        precond_start=101,
        beta2=0.999,
        adam_eps=1e-8,
        lr_scale="none",
    )

    @classmethod
    def derived(cls, knobs: Knobs) -> Knobs:
        return {
            "precond_start": knobs["precond_freq"] + 1,
            "alpha": 0.125 if knobs["sides"] == "both" else 0.25,
        }


class SOAP(KroneckerOptimizer):
    """SOAP (Vyas et al. 2024): Adam run in Shampoo's eigenbasis. The first call only builds the
    factors and bases; each later step rotates the gradient and EMA momentum into the basis,
    takes Adam's step there (betas 0.95, 0.95, eps 1e-8), rotates back and applies weight decay
    0.01 after the update; factors (EMA 0.95) update after the step and the basis is refreshed
    every 10 steps by one power iteration + QR (the second moment follows the column order, the
    first moment is kept in the original space so it rotates exactly)."""

    preset = dict(
        lr=3e-3,
        momentum=0.95,
        momentum_style="ema",
        beta2=0.95,
        adam_eps=1e-8,
        weight_decay=0.01,
        weight_decay_style="after",
        alpha=0.0,
        post_alpha=0.0,
        orthogonalizer="adam",
        graft="none",
        factor_norm="none",
        bias_correction=False,
        precond_beta=0.95,
        eps=1e-30,
        eig_floor="clamp",
        precond_freq=10,
        refresh="qr",
        refresh_after_update=True,
        skip_first_step=True,
        lr_scale="none",
    )


class SPlus(KroneckerOptimizer):
    """SPlus (Frans, Levine and Abbeel 2025): U = Q_L sign(Q_L^T M Q_R) Q_R^T with EMA momentum
    (0.9), bases from the factor EMAs (0.999) recomputed after the update on step 1 and on every
    multiple of 100 (the authors' schedule), lr scaled by 2/(m+n), weight decay 0.01 after the update (same scale), and an
    iterate average (rate 0.999) that `averaged_weights()` swaps in for evaluation."""

    preset = dict(
        lr=0.1,
        momentum=0.9,
        momentum_style="ema",
        weight_decay=0.01,
        weight_decay_style="after_scaled",
        alpha=0.0,
        post_alpha=0.0,
        orthogonalizer="sign",
        graft="none",
        factor_norm="none",
        bias_correction=False,
        precond_beta=0.999,
        eps=1e-30,
        eig_floor="clamp",
        precond_freq=100,
        refresh_schedule="multiples",
        refresh_after_update=True,
        average_rate=0.999,
        lr_scale="mean_dim",
    )


class TNT(KroneckerOptimizer):
    """TNT, Tensor Normal Training (Ren and Goldfarb 2021): heavy-ball momentum (0.9) on the
    gradient, preconditioned by (Lh + eps I)^-1 M (Rh + eps I)^-1 (exponent 1/2 before and after,
    no orthogonalization) with factors from sampled-label gradients (`fisher="sampled"`: the
    trainer supplies them; "empirical" uses the gradient), EMA 0.9, "same-trace" normalized,
    refreshed every statistics step during the first `precond_freq` (20) steps, then every
    `precond_freq`. Bias correction of the factor EMA stands in for the paper's warm start."""

    preset = dict(
        lr=1e-4,
        momentum=0.9,
        weight_decay=0.0,
        alpha=0.5,
        orthogonalizer="identity",
        graft="none",
        factor_norm="same_trace",
        precond_beta=0.9,
        eps=0.01,
        eig_floor="clamp",
        precond_freq=20,
        refresh_warmup=20,
        fisher="sampled",
        lr_scale="none",
    )

    @classmethod
    def derived(cls, knobs: Knobs) -> Knobs:
        return {"refresh_warmup": knobs["precond_freq"]}


class SpecGD(KroneckerOptimizer):
    """Spectral gradient descent: W <- W - lr U V^T with U S V^T the SVD of the raw gradient,
    (near-)zero singular values dropped; no momentum, no preconditioning."""

    preset = dict(
        lr=0.02,
        momentum=0.0,
        weight_decay=0.0,
        sides="none",
        alpha=0.0,
        orthogonalizer="exact",
        graft="none",
        lr_scale="none",
    )


OPTIMIZERS: dict[str, type[KroneckerOptimizer]] = {
    "mousse": Mousse,
    "muon": Muon,
    "shampoo": Shampoo,
    "soap": SOAP,
    "splus": SPlus,
    "tnt": TNT,
    "specgd": SpecGD,
}
