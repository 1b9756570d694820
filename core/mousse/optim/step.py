"""The family's step for one bucket of same-shape matrices, as small pure functions over typed
inputs: `StepKnobs` (the group's knobs the math reads, frozen) and `BucketState` (the stacked
state, updated in place). The engine (`family.KroneckerOptimizer`) is the shell that builds them
and calls these, eagerly or under torch.compile.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

import torch
from torch import Tensor

from . import precondition as pc
from .orthogonalize import frobenius_norm, orthogonalize

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

LR_SCALES: dict[str, Callable[[int, int], float]] = {
    "spectral": lambda m, n: math.sqrt(m / n),
    "muon": lambda m, n: math.sqrt(max(1.0, m / n)),
    "rms": lambda m, n: 0.2 * math.sqrt(max(m, n)),
    "mean_dim": lambda m, n: 2.0 / (m + n),
    "none": lambda m, n: 1.0,
}
SIDE_FACTORS = {"both": ("L", "R"), "left": ("L",), "right": ("R",), "none": ()}


def oriented_shape(shape: Sequence[int], transposed: bool) -> tuple[int, ...]:
    """A weight's shape in (out, in, k...) order: as stored, or with its first two dimensions
    swapped for a weight stored (in, out, k...), such as transformers' GPT-2 `Conv1D`."""
    return (shape[1], shape[0], *shape[2:]) if transposed else tuple(shape)


def flat_shape(shape: Sequence[int]) -> tuple[int, int]:
    """The (out, in x k...) matrix of an (out, in, k...) shape: a convolution weight's
    flattening, as Keller Jordan's Muon does; a matrix's own shape."""
    return shape[0], math.prod(shape[1:])


def matrix_shape(p: Tensor, transposed: bool = False) -> tuple[int, int]:
    """The (out, in) matrix a weight is optimized as: itself (or its transpose, for a weight
    stored (in, out)), or for a convolution weight its `flat_shape`."""
    return flat_shape(oriented_shape(p.shape, transposed))


def as_matrices(tensors: list[Tensor], transposed: bool = False) -> Tensor:
    """A stack of the tensors (weights or their gradients) as their `matrix_shape` matrices."""
    if transposed:
        tensors = [t.transpose(0, 1) for t in tensors]
    return torch.stack([t.reshape(t.shape[0], -1) for t in tensors])


def as_weight(U: Tensor, p: Tensor, transposed: bool = False) -> Tensor:
    """A `matrix_shape` matrix U back in the layout of the weight p (the inverse of
    `as_matrices`): a view, transposed for a weight stored (in, out)."""
    W = U.view(oriented_shape(p.shape, transposed))
    return W.transpose(0, 1) if transposed else W


class GroupKnobs:
    """A frozen, typed view of some of a param group's knobs (a dataclass's fields name them),
    one object per distinct set of values (`of`), so a compiled step sees the same object, and
    the same constants, from step to step."""

    sides: str

    @classmethod
    def of(cls: type[_K], group: Mapping[str, object]) -> _K:
        values = tuple(group[f.name] for f in fields(cast("type[DataclassInstance]", cls)))
        key = (cls, values)
        if key not in _INTERNED:
            if len(_INTERNED) >= 512:  # bounded: a momentum schedule makes a new set every step
                _INTERNED.clear()
            _INTERNED[key] = cls(*values)
        return cast(_K, _INTERNED[key])

    @property
    def factor_sides(self) -> tuple[str, ...]:
        """The preconditioned factors: 'L' (output side), 'R' (input side)."""
        return SIDE_FACTORS[self.sides]


_K = TypeVar("_K", bound=GroupKnobs)
_INTERNED: dict[tuple[type[GroupKnobs], tuple[object, ...]], GroupKnobs] = {}


@dataclass(frozen=True)
class StepKnobs(GroupKnobs):
    """The knobs of one param group that the per-bucket math reads (lr, which schedules change
    every step, is an argument of its own)."""

    momentum: float
    momentum_style: str
    weight_decay: float
    weight_decay_style: str
    sides: str
    orthogonalizer: str
    ns: str
    ns_steps: int
    ns_dtype: torch.dtype | None
    graft: str
    beta2: float
    adam_eps: float
    lr_scale: str
    average_rate: float
    precond_beta: float
    transposed: bool  # the group's weights are stored (in, out): see `as_matrices`


@dataclass(frozen=True)
class RefreshKnobs(GroupKnobs):
    """The knobs of one param group that the factor statistics and the refresh read: when
    (`due`, `delayed`), where and how."""

    sides: str
    fisher: str
    stat_freq: int
    precond_beta: float
    precond_freq: int
    refresh_warmup: int
    refresh_schedule: str
    refresh_delay: int
    refresh_device: str
    refresh: str
    bias_correction: bool
    factor_norm: str
    eps: float
    eig_floor: str
    alpha: float

    def due(self, t: int, phase: int = 0) -> bool:
        """Whether step t refreshes a matrix of this `phase` (`refresh_due`)."""
        return refresh_due(
            t,
            precond_freq=self.precond_freq,
            stat_freq=self.stat_freq,
            refresh_warmup=self.refresh_warmup,
            refresh_schedule=self.refresh_schedule,
            phase=phase,
        )

    def delayed(self, t: int) -> bool:
        """Whether a refresh due at step t is used `refresh_delay` steps later rather than at
        once: never the first refresh nor those of `refresh_warmup`, which build the
        preconditioner."""
        return self.refresh_delay > 0 and t > 1 and t > self.refresh_warmup


@dataclass
class SideState:
    """One side's state for a stack of matrices: the running factor, its eigenvalues and basis,
    counters, and the whitening matrices cached from them (P before the orthogonalizer, P' after;
    never saved, recomputed from lam and Q)."""

    factor: Tensor
    lam: Tensor
    Q: Tensor
    eigh_failures: Tensor
    stat_skips: Tensor
    # a delayed refresh computed but not yet used (refresh_delay > 0): its pair and, with state
    # kept in the eigenbasis (SOAP's V), the qr refresh's column order
    pending_lam: Tensor | None = None
    pending_Q: Tensor | None = None
    pending_order: Tensor | None = None
    P: Tensor | None = None
    P_post: Tensor | None = None


@dataclass
class BucketState:
    """The stacked state of a bucket. Its tensors are the ones the parameters' `state` entries
    are views of, so updating them in place is updating the optimizer's state."""

    momentum_buffer: Tensor
    update_rms: Tensor
    sides: dict[str, SideState] = field(default_factory=dict)
    V: Tensor | None = None  # second moment in the eigenbasis (SOAP)
    graft_v: Tensor | None = None  # Adam grafting's second moment (Shampoo)
    average: Tensor | None = None  # iterate average (SPlus)

    # the saved state's names (torch.optim state entries) of each side's tensors
    SAVED: ClassVar[dict[str, str]] = {"factor": "{}", "lam": "lam_{}", "Q": "Q_{}"}
    COUNTERS: ClassVar[dict[str, str]] = {
        "eigh_failures": "eigh_failures_{}",
        "stat_skips": "stat_skips_{}",
    }
    PENDING: ClassVar[dict[str, str]] = {
        "pending_lam": "pending_lam_{}",
        "pending_Q": "pending_Q_{}",
    }
    PENDING_ORDER: ClassVar[dict[str, str]] = {"pending_order": "pending_order_{}"}

    @classmethod
    def from_saved(cls, state: Mapping[str, Tensor]) -> BucketState:
        """The typed view of a dict with the saved state's names ('L', 'lam_L', 'Q_L', ...)."""
        names = {**cls.SAVED, **cls.COUNTERS}
        optional = {**cls.PENDING, **cls.PENDING_ORDER}

        def side(s: str) -> SideState:
            def saved(attr: str) -> Tensor:
                return state[names[attr].format(s)]

            def maybe(attr: str) -> Tensor | None:
                return state.get(optional[attr].format(s))

            return SideState(
                factor=saved("factor"),
                lam=saved("lam"),
                Q=saved("Q"),
                eigh_failures=saved("eigh_failures"),
                stat_skips=saved("stat_skips"),
                pending_lam=maybe("pending_lam"),
                pending_Q=maybe("pending_Q"),
                pending_order=maybe("pending_order"),
            )

        sides = {s: side(s) for s in ("L", "R") if s in state}
        return cls(
            state["momentum_buffer"],
            state["update_rms"],
            sides,
            state.get("V"),
            state.get("graft_v"),
            state.get("average"),
        )

    def tensors(self) -> Iterator[Tensor]:
        """Every tensor held, cached whitening included, in a fixed order."""
        for name in ("momentum_buffer", "update_rms", "V", "graft_v", "average"):
            if getattr(self, name) is not None:
                yield getattr(self, name)
        for side in self.sides.values():
            yield from (
                getattr(side, f.name) for f in fields(side) if getattr(side, f.name) is not None
            )

    def rows(self, idx: Tensor) -> BucketState:
        """A copy holding only the matrices `idx` (for a step of some of them)."""

        def take(t: Tensor) -> Tensor:
            return t[idx.to(t.device)]

        def maybe(t: Tensor | None) -> Tensor | None:  # None stays None
            return None if t is None else take(t)

        sides = {
            s: SideState(
                factor=take(v.factor),
                lam=take(v.lam),
                Q=take(v.Q),
                eigh_failures=take(v.eigh_failures),
                stat_skips=take(v.stat_skips),
                pending_lam=maybe(v.pending_lam),
                pending_Q=maybe(v.pending_Q),
                pending_order=maybe(v.pending_order),
                P=maybe(v.P),
                P_post=maybe(v.P_post),
            )
            for s, v in self.sides.items()
        }
        return BucketState(
            momentum_buffer=take(self.momentum_buffer),
            update_rms=take(self.update_rms),
            sides=sides,
            V=maybe(self.V),
            graft_v=maybe(self.graft_v),
            average=maybe(self.average),
        )

    def put_rows(self, idx: Tensor, sub: BucketState) -> None:
        """Write back the rows `idx` that `rows` took and a step then changed."""
        for tensor, new in zip(self.tensors(), sub.tensors(), strict=True):
            tensor[idx.to(new.device)] = new


# ---- the math -----------------------------------------------------------------------------------


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


def refresh_due(
    t: int,
    *,
    precond_freq: int,
    stat_freq: int,
    refresh_warmup: int,
    refresh_schedule: str,
    phase: int = 0,
) -> bool:
    """Whether step t (1-based) refreshes the eigen-pairs: on step 1, then every `precond_freq`
    steps counted from it (`refresh_schedule` "offset": 1, F+1, 2F+1, ...), on the multiples of
    `precond_freq` ("multiples": 1, F, 2F, ..., as SPlus's authors' code does) or from the
    matrix's own `phase` in [0, F) ("staggered": 1, 1+phase, 1+phase+F, ...); and on every
    statistics step up to `refresh_warmup`."""
    is_stat = (t - 1) % stat_freq == 0
    start = {"offset": 1, "multiples": 0}.get(refresh_schedule, 1 + phase)
    return t == 1 or (t - start) % precond_freq == 0 or (is_stat and t <= refresh_warmup)


def permute_basis_state(V: Tensor, order: Tensor, side: str) -> Tensor:
    """State indexed by eigenbasis columns (rows for L, columns for R) put in the new order."""
    if side == "L":
        return V.gather(-2, order.unsqueeze(-1).expand_as(V))
    return V.gather(-1, order.unsqueeze(-2).expand_as(V))


def accumulate_statistics(st: BucketState, G: Tensor, beta: float) -> None:
    """EMA statistics of each side's factor from the gradient stack G, in place; a matrix whose
    contribution is not finite is skipped and counted."""
    for name, side in st.sides.items():
        skipped = pc.accumulate(side.factor, G, beta, "left" if name == "L" else "right")
        side.stat_skips.add_(skipped)


def update_matrices(
    k: StepKnobs,
    params: list[Tensor],
    st: BucketState,
    G: Tensor,
    lr: float | Tensor,
    count: int,
    whiten: bool,
) -> None:
    """One update of a stack of same-shape matrices with gradients G: momentum, whitening by the
    cached P's (when `whiten`), the orthogonalizer, unwhitening, grafting, weight decay and the
    step; `st` is updated in place. No host syncs, so torch.compile captures it whole
    (`KroneckerOptimizer(compiled=True)`). lr and count, the values that change from step to
    step, are arguments of their own, so torch.compile takes them as inputs (lr as a 0-d tensor
    when compiled, count as a symbol) instead of recompiling for each value."""
    m, n = G.shape[-2:]
    sides = k.factor_sides if whiten else ()
    M_in = momentum_step(st.momentum_buffer, G, k.momentum, k.momentum_style, count)
    pre = {s: st.sides[s].P for s in sides}
    post = {s: st.sides[s].P_post for s in sides}
    X = pc.whiten(M_in, pre.get("L"), pre.get("R"))
    Y = direction(k, st, X, G, pre, count)
    # unwhitening runs in its cached P's precision (unwhiten_dtype), then back to the state's
    dtype = next(iter(post.values())).dtype if post else Y.dtype  # type: ignore[union-attr]
    U = pc.unwhiten(Y.to(dtype), post.get("L"), post.get("R")).to(M_in.dtype)
    U = graft_update(k, st, U, Y, M_in, G, count, whiten)
    st.update_rms.copy_(frobenius_norm(U).flatten() / math.sqrt(m * n))
    apply_update(k, params, st, U, lr, m, n)


def direction(
    k: StepKnobs, st: BucketState, X: Tensor, G: Tensor, pre: dict[str, Tensor | None], count: int
) -> Tensor:
    """The orthogonalizer applied to the whitened momentum X."""
    if k.orthogonalizer == "adam":
        Xg = pc.whiten(G, pre.get("L"), pre.get("R"))
        assert st.V is not None
        return adam_normalize(X, Xg, st.V, k.beta2, k.adam_eps, count)
    method = k.ns if k.orthogonalizer == "newton_schulz" else k.orthogonalizer
    return orthogonalize(X, method, k.ns_steps, ns_dtype(k, X))


def ns_dtype(k: StepKnobs, like: Tensor) -> torch.dtype:
    """Newton-Schulz's working precision: the group's `ns_dtype`, else bf16 on CUDA and fp32 (or
    the state's, if wider) elsewhere."""
    return k.ns_dtype or (
        torch.bfloat16 if like.is_cuda else torch.promote_types(like.dtype, torch.float32)
    )


def unwhiten_dtype(k: StepKnobs, like: Tensor) -> torch.dtype:
    """Precision of the unwhitening matmuls: Newton-Schulz's, whose output is already rounded to
    it (in bf16 that adds 10% to NS's own error, where bf16 *whitening* of the input multiplies it
    by 3-45: benchmarks/whiten_precision.py); the state's for the other orthogonalizers."""
    return ns_dtype(k, like) if k.orthogonalizer == "newton_schulz" else like.dtype


def graft_update(
    k: StepKnobs,
    st: BucketState,
    U: Tensor,
    Y: Tensor,
    M_in: Tensor,
    G: Tensor,
    count: int,
    whitened: bool,
) -> Tensor:
    """Rescale U to the norm of the orthogonalizer's output or of Adam's step."""
    if k.graft == "orthogonalizer" and whitened:
        return graft(U, frobenius_norm(Y), frobenius_norm(U))
    if k.graft == "adam":
        assert st.graft_v is not None
        b2 = k.beta2
        st.graft_v.mul_(b2).addcmul_(G, G, value=1.0 - b2)
        A = M_in / ((st.graft_v / (1.0 - b2**count)).sqrt() + k.adam_eps)
        return graft(U, frobenius_norm(A), frobenius_norm(U)) if whitened else A
    return U


def apply_update(
    k: StepKnobs,
    params: list[Tensor],
    st: BucketState,
    U: Tensor,
    lr: float | Tensor,
    m: int,
    n: int,
) -> None:
    """W <- W - lr s U with decoupled weight decay before or after; the iterate average."""
    wd, style = k.weight_decay, k.weight_decay_style
    s = lr_multiplier(k.lr_scale, m, n)
    if wd and style == "decoupled":
        torch._foreach_mul_(params, 1.0 - lr * wd)
    step = [
        as_weight(u, p, k.transposed)
        for u, p in zip(U.to(params[0].dtype).unbind(0), params, strict=True)
    ]
    if isinstance(lr, Tensor):  # compiled: a multiply by the lr tensor (alpha takes only numbers)
        torch._foreach_add_(params, torch._foreach_mul(step, -lr * s))
    else:
        torch._foreach_add_(params, step, alpha=-lr * s)
    if k.average_rate:
        assert st.average is not None
        W = as_matrices(params, k.transposed).to(st.average.dtype)
        st.average.add_(W - st.average, alpha=1.0 - k.average_rate)
    if wd and style != "decoupled":
        torch._foreach_mul_(params, 1.0 - lr * wd * (s if style == "after_scaled" else 1.0))


# ---- the refresh (eager: it needs the host for finiteness checks and fallbacks) ----------------


@dataclass
class Refresh:
    """A computed refresh of some matrices of one side: the new pair, which matrices failed
    (kept their previous pair) and the qr refresh's column order (None otherwise)."""

    lam: Tensor
    Q: Tensor
    failed: Tensor
    order: Tensor | None


def refresh_input(
    k: RefreshKnobs, side: SideState, count: int, other_dim: int, rows: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """What a refresh of `rows` (None: all) reads, as new tensors: the factor normalized for
    `count` statistics updates, and the current pair (qr's warm start, eigh's fallback). The
    statistics may change in place while a delayed refresh works on these."""

    def pick(t: Tensor) -> Tensor:
        return t.clone() if rows is None else t[rows]

    factor = pc.normalized(
        side.factor if rows is None else side.factor[rows],  # normalized() returns a new tensor
        count,
        k.precond_beta,
        k.bias_correction,
        k.factor_norm,
        other_dim,
    )
    return factor, pick(side.lam), pick(side.Q)


def compute_refresh(
    factor: Tensor, lam: Tensor, Q: Tensor, *, method: str, eps: float, floor: str, alpha: float
) -> Refresh:
    """The refresh of `refresh_input`'s tensors by `method` (eigh, qr or root), on their device."""
    return Refresh(*pc.refresh(factor, lam, Q, eps, factor.dtype, method, floor, alpha))


def install_refresh(st: BucketState, side: str, r: Refresh, rows: Tensor | None) -> None:
    """Put a computed refresh of `rows` (None: all) in the state: the pair, the failure count,
    and state kept in the eigenbasis reordered after a qr refresh's columns."""
    s = st.sides[side]
    if rows is None:
        s.lam.copy_(r.lam)
        s.Q.copy_(r.Q)
        s.eigh_failures.add_(r.failed)
    else:
        s.lam[rows], s.Q[rows] = r.lam, r.Q
        s.eigh_failures[rows] += r.failed
    if r.order is not None and st.V is not None:
        V = st.V if rows is None else st.V[rows]
        V = permute_basis_state(V, r.order, side)
        if rows is None:
            st.V.copy_(V)
        else:
            st.V[rows] = V


def hold_refresh(st: BucketState, side: str, r: Refresh, rows: Tensor) -> None:
    """Keep a computed delayed refresh of `rows` in the side's pending buffers until its step."""
    s = st.sides[side]
    assert s.pending_lam is not None and s.pending_Q is not None  # kept when refresh_delay > 0
    s.pending_lam[rows], s.pending_Q[rows] = r.lam, r.Q
    s.eigh_failures[rows] += r.failed
    if s.pending_order is not None:
        s.pending_order[rows] = (
            torch.arange(s.lam.size(-1), device=s.lam.device).expand(len(rows), -1)
            if r.order is None
            else r.order
        )


def held_refresh(st: BucketState, side: str, rows: Tensor) -> Refresh:
    """The pending refresh of `rows` as `hold_refresh` kept it (failures already counted)."""
    s = st.sides[side]
    assert s.pending_lam is not None and s.pending_Q is not None
    order = None if s.pending_order is None else s.pending_order[rows]
    failed = torch.zeros(len(rows), dtype=s.eigh_failures.dtype, device=s.lam.device)
    return Refresh(s.pending_lam[rows], s.pending_Q[rows], failed, order)


def exponents(g: Mapping[str, Any]) -> tuple[float, float]:  # Any: a torch param group's values
    """The whitening exponents (alpha, post_alpha) of a group; post_alpha None means alpha."""
    post = g["post_alpha"]
    return g["alpha"], g["alpha"] if post is None else post


def cache_whitening(g: Mapping[str, Any], st: BucketState) -> None:  # Any: as `exponents`
    """P = Q diag(lam^-alpha) and P' = Q diag(lam^-post_alpha) for the group's sides, so a step
    only multiplies by them: P in the state's precision, P' in the unwhitening's."""
    alpha, post_alpha = exponents(g)
    for side in SIDE_FACTORS[g["sides"]]:
        s = st.sides[side]
        dtype = unwhiten_dtype(StepKnobs.of(g), s.Q)
        s.P = pc.inverse_root_basis(s.lam, s.Q, alpha, s.Q.dtype)
        s.P_post = (
            s.P
            if (post_alpha, dtype) == (alpha, s.Q.dtype)
            else pc.inverse_root_basis(s.lam, s.Q, post_alpha, dtype)
        )
