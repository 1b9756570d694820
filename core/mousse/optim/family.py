"""The engine of the Kronecker-whitened optimizer family: one torch optimizer whose knobs
(`knobs.TABLE`, docs/family.md) are a pre/post whitening exponent, the preconditioned sides, an
orthogonalizer, a momentum style, grafting, factor normalization and the refresh schedule.

A thin shell around the math of `step`: same-shape matrices of a param group are stacked into one
bucket, whose state lives in batched tensors (each parameter's `state` entries are views into
them), so whitening, Newton-Schulz and eigh run once per shape rather than once per matrix. The
literature's optimizers are recipes of these knobs (`recipes`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, ParamSpec, TypeVar, cast, overload

import torch
from torch import Tensor
from torch.optim import Optimizer

from .knobs import KNOB_DEFAULTS, check_knobs, check_together
from .refresher import InFlight, Worker, refresh_on_host, run_refresh, stagger_phases
from .step import (
    SIDE_FACTORS,
    BucketState,
    RefreshKnobs,
    StepKnobs,
    accumulate_statistics,
    as_matrices,
    as_weight,
    cache_whitening,
    compute_refresh,
    exponents,
    held_refresh,
    hold_refresh,
    install_refresh,
    matrix_shape,
    refresh_input,
    update_matrices,
)

if TYPE_CHECKING:
    from torch.optim.optimizer import ParamsT, StateDict
    from typing_extensions import Unpack

    from .knobs import KnobArgs

_P = ParamSpec("_P")
_R = TypeVar("_R")
# A param group's knobs (and "params"), or a set of knobs: name -> value. Any: torch types its
# param groups so (`Optimizer.param_groups: list[dict[str, Any]]`), and the knobs' values vary.
Knobs = dict[str, Any]
# Saved state entries, by side: running factor, eigenvalues, eigenbasis.
_FACTOR_KEYS = {"L": ("L", "lam_L", "Q_L"), "R": ("R", "lam_R", "Q_R")}

# Delayed refreshes of CPU-resident matrices are computed at their step, in the training thread:
# a second thread's torch work would share the training's cores, and once it has run, its
# OpenMP team slows every later step of the process (small's plain step 2.6x, on 2 cores). The
# result is the same either way; tests switch the thread on to check that.
BACKGROUND_ON_CPU = False
# (function, COMPILE_OPTIONS) -> the function under torch.compile. Any: functions of any
# signature, and torch.compile's keyword arguments, whose types differ from one to the next
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


def validate_group(group: Knobs) -> None:
    """Raise ValueError naming the first invalid knob of a param group and its allowed values."""
    check_knobs({k: group[k] for k in KNOB_DEFAULTS})
    check_together(group)
    if not isinstance(group["transposed"], bool):
        raise ValueError(
            f"invalid transposed={group['transposed']!r}: expected True (the group's weights are "
            "stored (in, out), as transformers' Conv1D stores them) or False"
        )
    for p in group["params"]:
        if p.ndim < 2:
            raise ValueError(
                f"invalid params=a tensor of shape {tuple(p.shape)}: expected weight matrices "
                "or convolution weights, optimized as (out, in x kernel) matrices (route "
                "embeddings, head, gains and biases to AdamW/Lion)"
            )


def closure_loss(closure: Callable[[], float] | None) -> float | None:
    """Evaluate an optional closure with gradients enabled (torch.optim's step convention)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def check_orientation(groups: list[Knobs], saved: list[Knobs]) -> None:
    """ValueError when a saved state's groups hold weights of another orientation than
    `groups` (a state saved before `transposed` existed holds (out, in) ones only)."""
    differ = [
        i
        for i, (g, s) in enumerate(zip(groups, saved, strict=False))
        if g["transposed"] != s.get("transposed", False)
    ]
    if differ:
        raise ValueError(
            f"the optimizer state of param groups {differ} was saved for weights of the other "
            "orientation ('transposed': weights stored (in, out), such as GPT-2's Conv1D, are "
            "optimized as the (out, in) matrices they are; older mousse optimized them as "
            "stored), so it cannot be continued: start the run afresh, or finish it with the "
            "mousse that started it"
        )


def _keeps_pending(group: Knobs) -> bool:
    """Whether a group's state holds pending delayed refreshes (refresh_delay on a side)."""
    return bool(group["refresh_delay"]) and group["sides"] != "none"


def _signature(cls: type[KroneckerOptimizer]) -> inspect.Signature:
    """The constructor's signature with every knob a keyword argument at the class's own
    default (derived ones resolved), so help() lists them; the code takes them as **knobs."""
    own = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
    kept = [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
    knobs = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=value)
        for name, value in cls.resolve_knobs().items()
    ]
    return inspect.Signature([*kept, *knobs])


def _stagger(buckets: list[_Bucket], group: Knobs) -> None:
    """Give each matrix of a group's buckets its refresh phase, balancing the eigen work (about
    k^3 per factor of width k) over the `precond_freq` steps between refreshes."""
    rows = [(b, i) for b in buckets for i in range(len(b.params))]
    shapes = [matrix_shape(b.params[i], group["transposed"]) for b, i in rows]
    widths = [dict(zip("LR", shape, strict=True)) for shape in shapes]
    costs = [sum(w[side] ** 3 for side in SIDE_FACTORS[group["sides"]]) for w in widths]
    for (b, i), phase in zip(rows, stagger_phases(costs, group["precond_freq"]), strict=True):
        b.refreshes.phases[i] = phase


# ---- the engine --------------------------------------------------------------------------------


@dataclass
class _Bucket:
    """Same-shape matrices of one param group and their stacked state, plus the whitening
    matrices derived from it (state keys the parameters do not see, so never saved)."""

    params: list[Tensor]
    state: BucketState
    step: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    # the (alpha, post_alpha) the cached P's were computed with
    exponents: tuple[float, float] | None = None
    refreshes: _Refreshes = field(default_factory=lambda: _Refreshes([]))


@dataclass
class _Refreshes:
    """When a bucket's matrices refresh: each one's phase (refresh_schedule="staggered"), the
    step from which each one's pending delayed refresh is used (0: none; a CPU tensor, so
    reading it never syncs a device; None without refresh_delay), and the delayed refreshes
    still being computed (none when `background` is off: they are then computed at once)."""

    phases: list[int]
    pending: Tensor | None = None
    inflight: list[InFlight] = field(default_factory=list)
    background: bool = True

    def rows(self, idx: list[int]) -> _Refreshes:
        """The schedule of the matrices `idx`, computing delayed refreshes at once."""
        pending = None if self.pending is None else self.pending[torch.tensor(idx)]
        return _Refreshes([self.phases[i] for i in idx], pending, background=False)


class KroneckerOptimizer(Optimizer):
    """The family engine: per (out, in) = (m, n) matrix, Kronecker-factor statistics L (output
    side, m x m) and R (input side, n x n), an eigen refresh every `precond_freq` steps, and the
    update U = P_L' f(P_L^T M P_R) P_R'^T with P = Q diag(lam^-alpha), P' = Q diag(lam^-post_alpha)
    and f the orthogonalizer, grafted and applied with decoupled weight decay. docs/family.md
    gives each knob's exact meaning; every knob can be set per param group. A group whose
    weights are stored (in, out), as transformers' GPT-2 `Conv1D` stores them, says so with
    `"transposed": True` (or every group, with the argument `transposed=True`): each is then
    optimized as the (out, in) matrix it is, lr scale, sides and refresh alike. Subclasses are the
    literature's optimizers as recipes: their class body's `recipe` lists the knobs they change,
    and the class attribute `recipe` then holds their full knob set."""

    recipe: ClassVar[Knobs] = dict(KNOB_DEFAULTS)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.recipe = {**KNOB_DEFAULTS, **cls.__dict__.get("recipe", {})}
        cls.__signature__ = _signature(cls)  # type: ignore[attr-defined]

    @classmethod
    def derived(cls, knobs: Knobs) -> Knobs:
        """Knobs whose default follows other knobs (e.g. Shampoo's precond_start)."""
        return {}

    @classmethod
    def resolve_knobs(cls, **knobs: Unpack[KnobArgs]) -> Knobs:
        """This optimizer's full knob set with `knobs` applied; derived defaults follow the knobs
        they depend on unless set explicitly. TypeError names unknown knobs."""
        unknown = sorted(set(knobs) - set(KNOB_DEFAULTS))
        if unknown:
            raise TypeError(
                f"{cls.__name__} got unknown knobs {unknown}; the knobs are {', '.join(KNOB_DEFAULTS)}"
            )
        full = {**cls.recipe, **knobs}
        full.update({k: v for k, v in cls.derived(full).items() if k not in knobs})
        return full

    def __init__(
        self,
        params: ParamsT,
        *,
        compiled: bool = False,
        transposed: bool = False,
        **knobs: Unpack[KnobArgs],
    ) -> None:
        self.compiled = compiled  # run the per-bucket math under torch.compile (`compiled`)
        self._buckets: list[list[_Bucket]] | None = None
        self._worker = Worker()  # delayed refreshes (refresh_delay > 0)
        self._fisher: dict[int, Tensor] = {}
        self._explicit = set(knobs)  # derived defaults never override these
        super().__init__(params, {**self.resolve_knobs(**knobs), "transposed": transposed})

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
        m, n = matrix_shape(p, group["transposed"])
        wide = torch.promote_types(p.dtype, torch.float32)

        # Any: torch.zeros takes dims or one shape tuple, two overloads no single type matches
        def zeros(*shape: Any, dtype: torch.dtype = wide) -> Tensor:  # dims, or a shape tuple
            return torch.zeros(*shape, dtype=dtype, device=p.device)

        st = {
            "step": torch.zeros((), dtype=torch.int64),
            "momentum_buffer": zeros(m, n),
            "update_rms": zeros((), dtype=torch.float32),
        }
        for side in SIDE_FACTORS[group["sides"]]:
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
        if _keeps_pending(group):
            st["refresh_pending"] = torch.zeros((), dtype=torch.int64)  # step it is used from
            for side in SIDE_FACTORS[group["sides"]]:
                k = m if side == "L" else n
                st[f"pending_lam_{side}"] = torch.ones(k, dtype=wide, device=p.device)
                st[f"pending_Q_{side}"] = torch.eye(k, dtype=wide, device=p.device)
                if "V" in st:  # the qr refresh's column order, for V (SOAP)
                    st[f"pending_order_{side}"] = torch.arange(k, device=p.device)
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
                    elif _keeps_pending(group) and "refresh_pending" not in self.state[p]:
                        # a delay set on resume: the loaded state lacks the pending buffers
                        self.state[p] = {**self._init_state(p, group), **self.state[p]}
                stacked = {}
                for key in self.state[params[0]]:
                    stacked[key] = torch.stack([self.state[p][key] for p in params])
                    for i, p in enumerate(params):
                        self.state[p][key] = stacked[key][i]
                step = stacked.pop("step")
                pending = stacked.pop("refresh_pending", None)
                bucket = _Bucket(params, BucketState.from_saved(stacked), step)
                bucket.refreshes = _Refreshes([0] * len(params), pending)
                group_buckets.append(bucket)
            if group["refresh_schedule"] == "staggered":
                _stagger(group_buckets, group)
            buckets.append(group_buckets)
        return buckets

    def _ensure_buckets(self) -> list[list[_Bucket]]:
        if self._buckets is None:
            self._buckets = self._build_buckets()
        return self._buckets

    def load_state_dict(self, state_dict: StateDict) -> None:
        """Standard load, but keeps each saved buffer's own dtype (factors stay fp32 or wider).
        A state saved with other weight orientations (`transposed`) is refused: its buffers
        are those of the transposed matrices."""
        check_orientation(self.param_groups, state_dict["param_groups"])
        self.finish_refreshes()  # nothing of the replaced state may still be computing
        super().load_state_dict(state_dict)
        saved_ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params, strict=True):
            for key, value in state_dict["state"].get(pid, {}).items():
                if isinstance(value, Tensor):
                    on_host = key in ("step", "refresh_pending")  # read every step: no sync
                    device = torch.device("cpu") if on_host else p.device
                    self.state[p][key] = value.to(device=device, copy=True)
        for group in self.param_groups:  # knobs added since the state was saved
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        self._buckets = None

    def state_dict(self) -> StateDict:
        """The standard state dict; delayed refreshes still being computed are waited for and
        saved as pending, so a resumed run uses them on the same step."""
        self.finish_refreshes()
        return super().state_dict()

    def finish_refreshes(self) -> None:
        """Wait for the delayed refreshes being computed and keep them as pending."""
        for bucket in (b for group_buckets in self._buckets or [] for b in group_buckets):
            for job in bucket.refreshes.inflight:
                hold_refresh(bucket.state, job.side, self._worker.result(job), job.rows)
            bucket.refreshes.inflight.clear()

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
            for group, group_buckets in zip(self.param_groups, self._ensure_buckets(), strict=True):
                rate = group["average_rate"]
                for bucket in group_buckets if rate else ():
                    average = cast(Tensor, bucket.state.average)  # kept when rate > 0
                    skip = 1 if group["skip_first_step"] else 0
                    for i, p in enumerate(bucket.params):
                        count = int(bucket.step[i]) - skip
                        if count >= 1:
                            saved.append((p, p.detach().clone()))
                            avg = average[i] / (1.0 - rate**count)
                            p.copy_(as_weight(avg, p, group["transposed"]).to(p.dtype))
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
        for group, group_buckets in zip(self.param_groups, self._ensure_buckets(), strict=True):
            for bucket in group_buckets:
                if bucket.exponents != exponents(group):  # new bucket, or alpha changed
                    cache_whitening(group, bucket.state)
                    bucket.exponents = exponents(group)
                has_grad = [p.grad is not None for p in bucket.params]
                steps = bucket.step.tolist()  # a CPU tensor: no device sync
                if all(has_grad) and len(set(steps)) == 1:
                    self._step_matrices(
                        group,
                        bucket.params,
                        bucket.state,
                        bucket.step,
                        steps[0] + 1,
                        bucket.refreshes,
                    )
                    continue
                # Rare: only some matrices got a gradient, so their steps differ; step each
                # group of equal step on copies of its rows, then write them back.
                self.finish_refreshes()
                for s in sorted({s for s, h in zip(steps, has_grad, strict=True) if h}):
                    rows = [
                        i
                        for i, (si, h) in enumerate(zip(steps, has_grad, strict=True))
                        if h and si == s
                    ]
                    idx = torch.tensor(rows)
                    sub, sub_steps = bucket.state.rows(idx), bucket.step[idx]
                    sub_refreshes = bucket.refreshes.rows(rows)
                    self._step_matrices(
                        group,
                        [bucket.params[i] for i in rows],
                        sub,
                        sub_steps,
                        s + 1,
                        sub_refreshes,
                    )
                    bucket.state.put_rows(idx, sub)
                    bucket.step[idx] = sub_steps
                    if bucket.refreshes.pending is not None:
                        assert sub_refreshes.pending is not None
                        bucket.refreshes.pending[idx] = sub_refreshes.pending
        self._fisher = {}
        return loss

    def _step_matrices(
        self,
        group: Knobs,
        params: list[Tensor],
        st: BucketState,
        steps: Tensor,
        t: int,
        refreshes: _Refreshes,
    ) -> None:
        """Step `t` for a stack of same-shape matrices (state `st` updated in place): the
        statistics and update run through `self._math` (compiled when asked), the eigen refresh
        eagerly between them, since it alone needs the host (finiteness checks, fallbacks)."""
        g = group
        steps += 1
        grads = cast("list[Tensor]", [p.grad for p in params])  # all set: step() checked
        G = as_matrices(grads, g["transposed"]).to(st.momentum_buffer.dtype)
        if not g["refresh_after_update"]:
            self._statistics(g, params, st, G, t, refreshes)
        count = t - 1 if g["skip_first_step"] else t  # updates of the moments so far
        if count >= 1:
            whiten = g["sides"] != "none" and t >= g["precond_start"]
            lr = g["lr"]
            if self.compiled:  # a tensor: the graph then takes any lr without specializing on it
                lr = torch.tensor(lr, dtype=torch.float32, device=G.device)
            self._math(update_matrices)(StepKnobs.of(g), params, st, G, lr, count, whiten)
        if g["refresh_after_update"]:
            self._statistics(g, params, st, G, t, refreshes)

    def _math(self, fn: Callable[_P, _R]) -> Callable[_P, _R]:
        return compiled(fn) if self.compiled else fn

    def _statistics(
        self, g: Knobs, params: list[Tensor], st: BucketState, G: Tensor, t: int, r: _Refreshes
    ) -> None:
        """Use the delayed refreshes due at step t, update the factor statistics on statistics
        steps, and refresh the matrices whose refresh is due: at once, or (`refresh_delay`) for
        use `refresh_delay` steps later, computed in the background meanwhile."""
        k = RefreshKnobs.of(g)
        if not k.factor_sides:
            return
        self._use_pending(g, k, st, t, r)
        if (t - 1) % k.stat_freq == 0:
            Gs = G if k.fisher == "empirical" else self._sampled_grads(g, params).to(G.dtype)
            self._math(accumulate_statistics)(st, Gs, k.precond_beta)
        due = [i for i, phase in enumerate(r.phases) if k.due(t, phase)]
        if not due:
            return
        count = (t - 1) // k.stat_freq + 1  # statistics updates so far
        rows = None if len(due) == len(r.phases) else torch.tensor(due)
        later = k.delayed(t)
        compute = functools.partial(
            compute_refresh,
            method="eigh" if t == 1 else k.refresh,  # the first from the identity basis
            eps=k.eps,
            floor=k.eig_floor,
            alpha=k.alpha,
        )
        m, n = G.shape[-2:]
        for side in k.factor_sides:
            inputs = refresh_input(k, st.sides[side], count, n if side == "L" else m, rows)
            on_host = refresh_on_host(G.device, m if side == "L" else n, k.refresh_device)
            if not later:
                install_refresh(st, side, run_refresh(compute, inputs, on_host), rows)
                continue
            assert r.pending is not None  # kept when refresh_delay > 0
            idx = torch.tensor(due)
            use_at = t + k.refresh_delay
            r.pending[idx] = use_at
            if r.background and (G.is_cuda or BACKGROUND_ON_CPU):
                r.inflight.append(self._worker.submit(side, idx, use_at, compute, inputs, on_host))
            else:
                hold_refresh(st, side, run_refresh(compute, inputs, on_host), idx)
        if not later:
            cache_whitening(g, st)

    def _use_pending(
        self, g: Knobs, k: RefreshKnobs, st: BucketState, t: int, r: _Refreshes
    ) -> None:
        """Install the delayed refreshes whose step has come (waiting for any not ready)."""
        if r.pending is None:
            return
        for job in [job for job in r.inflight if job.use_at <= t]:
            hold_refresh(st, job.side, self._worker.result(job), job.rows)
            r.inflight.remove(job)
        due = (r.pending == t).nonzero().flatten()
        if not len(due):
            return
        rows = None if len(due) == len(r.pending) else due
        for side in k.factor_sides:
            install_refresh(st, side, held_refresh(st, side, due), rows)
        r.pending[due] = 0
        cache_whitening(g, st)

    def _sampled_grads(self, g: Knobs, params: list[Tensor]) -> Tensor:
        missing = [i for i, p in enumerate(params) if id(p) not in self._fisher]
        if missing:
            raise RuntimeError(
                f"{type(self).__name__} with fisher='sampled' needs sampled-label gradients on "
                "this step: pass opt.set_fisher_grads({param: grad}) for opt.fisher_params() "
                "before opt.step() (mousse's trainer does), or use fisher='empirical'"
            )
        return as_matrices([self._fisher[id(p)] for p in params], g["transposed"])

    # ---- read-outs ----------------------------------------------------------------------------

    def whitening_cache_bytes(self) -> int:
        """Bytes of the cached whitening matrices P and P' (derived from the state at each
        refresh, never saved; P' may be P itself)."""
        cached = {
            id(t): t
            for group_buckets in self._buckets or []
            for bucket in group_buckets
            for side in bucket.state.sides.values()
            for t in (side.P, side.P_post)
            if t is not None
        }
        return sum(t.nbytes for t in cached.values())

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
                for side in SIDE_FACTORS[group["sides"]]:
                    lam = st[_FACTOR_KEYS[side][1]]
                    row[f"lam_{side}_min"], row[f"lam_{side}_max"] = lam.min(), lam.max()
                    row[f"cond_{side}"] = lam.max() / lam.min()
                    row[f"eigh_failures_{side}"] = st[f"eigh_failures_{side}"]
                    row[f"stat_skips_{side}"] = st[f"stat_skips_{side}"]
                out.append(row)
        return out


KroneckerOptimizer.__signature__ = _signature(KroneckerOptimizer)  # type: ignore[attr-defined]
