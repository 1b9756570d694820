"""Mousse and Muon as standard torch optimizers: a thin shell around the pure functions in
`orthogonalize` and `precondition`.

Same-shape matrices of a param group are stacked into one bucket: their state lives in batched
tensors (each parameter's `state` entries are views into them), so whitening, Newton-Schulz and
eigh run once per shape rather than once per matrix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import precondition as pc
from .orthogonalize import ORTHOGONALIZERS, frobenius_norm, orthogonalize

SIDES = ("both", "left", "right")
LR_SCALES = {
    "spectral": lambda m, n: math.sqrt(m / n),
    "muon": lambda m, n: math.sqrt(max(1.0, m / n)),
    "rms": lambda m, n: 0.2 * math.sqrt(max(m, n)),
    "none": lambda m, n: 1.0,
}
_SIDE_FACTORS = {"both": ("L", "R"), "left": ("L",), "right": ("R",), "none": ()}
# State entries, by side: running factor, eigenvalues, eigenbasis.
_FACTOR_KEYS = {"L": ("L", "lam_L", "Q_L"), "R": ("R", "lam_R", "Q_R")}


def lr_multiplier(rule: str, m: int, n: int) -> float:
    """Learning-rate scale for an (m, n) = (fan_out, fan_in) matrix under the named rule."""
    return LR_SCALES[rule](m, n)


def graft(U: Tensor, gamma: Tensor, norm_U: Tensor) -> Tensor:
    """Rescale each matrix of U from Frobenius norm `norm_U` to `gamma` (shapes (B, 1, 1));
    zero stays zero."""
    return U * (gamma / norm_U.clamp(min=torch.finfo(U.dtype).tiny))


def closure_loss(closure):
    """Evaluate an optional closure with gradients enabled (torch.optim's step convention)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _check(ok: bool, name: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"invalid {name}={value!r}: expected {allowed}")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_group(group: dict, sides: Iterable[str]) -> None:
    """Raise ValueError naming the first invalid knob of a param group and its allowed values."""
    g = group
    _check(_is_number(g["lr"]) and g["lr"] >= 0, "lr", g["lr"], "a finite number >= 0")
    for name in ("momentum", "precond_beta"):
        _check(_is_number(g[name]) and 0 <= g[name] < 1, name, g[name], "a number in [0, 1)")
    _check(_is_number(g["weight_decay"]) and g["weight_decay"] >= 0, "weight_decay",
           g["weight_decay"], "a finite number >= 0")
    _check(_is_number(g["alpha"]) and g["alpha"] >= 0, "alpha", g["alpha"], "a finite number >= 0")
    _check(g["sides"] in sides, "sides", g["sides"], " | ".join(map(repr, sides)))
    _check(g["ns"] in ORTHOGONALIZERS, "ns", g["ns"], " | ".join(map(repr, ORTHOGONALIZERS)))
    _check(g["refresh"] in pc.REFRESHES, "refresh", g["refresh"],
           " | ".join(map(repr, pc.REFRESHES)))
    for name in ("ns_steps", "precond_freq"):
        _check(isinstance(g[name], int) and not isinstance(g[name], bool) and g[name] >= 1,
               name, g[name], "an integer >= 1")
    _check(_is_number(g["eps"]) and g["eps"] > 0, "eps", g["eps"], "a finite number > 0")
    _check(g["lr_scale"] in LR_SCALES, "lr_scale", g["lr_scale"], " | ".join(map(repr, LR_SCALES)))
    for name in ("nesterov", "trace_norm", "graft", "bias_correction"):
        _check(isinstance(g[name], bool), name, g[name], "True or False")
    _check(g["ns_dtype"] is None or (isinstance(g["ns_dtype"], torch.dtype)
                                     and g["ns_dtype"].is_floating_point),
           "ns_dtype", g["ns_dtype"], "None or a floating torch.dtype")
    for p in g["params"]:
        _check(p.ndim == 2, "params", f"a tensor of shape {tuple(p.shape)}",
               "2-D weight matrices only (route embeddings, head, gains and biases to AdamW/Lion)")


@dataclass
class _Bucket:
    """Same-shape matrices of one param group and their stacked state, plus the whitening
    matrices P_L, P_R derived from it (state keys the parameters do not see, so never saved)."""

    params: list[Tensor]
    state: dict[str, Tensor] = field(default_factory=dict)
    step: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    alpha: float | None = None  # the alpha the cached P_L, P_R were computed with


class Mousse(Optimizer):
    """Mousse: Muon whitened by Shampoo's Kronecker factors (arXiv 2603.09697).

    Per (out, in) = (m, n) matrix and step: momentum M <- mu M + G; factors L <- b L + (1-b) G G^T
    (the OUTPUT side, m x m) and R <- b R + (1-b) G^T G (the INPUT side, n x n); every
    `precond_freq` steps (from step 1) an eigen refresh of the bias-corrected, trace-normalized
    factors; then U = P_L NS(P_L^T M P_R) P_R^T with P = Q diag(lam^-alpha) (cached at each
    refresh), grafted to the norm of NS(.) and applied as W <- W (1 - lr wd) - lr * lr_scale(m, n) * U.

    sides: "both", "left" (L only, output side) or "right" (R only, input side).
    refresh: "eigh" (exact) | "qr" (SOAP's warm start: one power iteration + QR from the previous
    basis; the first refresh always uses eigh).
    ns: "you5" | "muon" | "polar_express" (Newton-Schulz schedules, `ns_steps` iterations) | "exact".
    lr_scale: "spectral" sqrt(m/n) | "muon" sqrt(max(1, m/n)) | "rms" 0.2 sqrt(max(m, n)) | "none".
    ns_dtype: Newton-Schulz precision; default bf16 on CUDA, fp32 (or the param's, if wider) on CPU.
    alpha = 0 gives exactly Muon's update. Every knob can be set per param group.
    """

    _sides = SIDES

    def __init__(
        self,
        params,
        lr: float = 0.06,
        momentum: float = 0.95,
        nesterov: bool = False,
        weight_decay: float = 0.01,
        alpha: float = 0.125,
        sides: str = "both",
        trace_norm: bool = True,
        precond_freq: int = 10,
        precond_beta: float = 0.95,
        eps: float = 1e-5,
        graft: bool = True,
        bias_correction: bool = True,
        refresh: str = "eigh",
        ns: str = "you5",
        ns_steps: int = 5,
        lr_scale: str = "spectral",
        ns_dtype: torch.dtype | None = None,
    ):
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, alpha=alpha,
            sides=sides, trace_norm=trace_norm, precond_freq=precond_freq,
            precond_beta=precond_beta, eps=eps, graft=graft, bias_correction=bias_correction,
            refresh=refresh, ns=ns, ns_steps=ns_steps, lr_scale=lr_scale, ns_dtype=ns_dtype,
        )
        self._buckets: list[list[_Bucket]] | None = None
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        try:
            validate_group(self.param_groups[-1], self._sides)
        except ValueError:
            self.param_groups.pop()  # do not leave the rejected group in the optimizer
            raise
        self._buckets = None

    # ---- state layout -------------------------------------------------------------------------

    def _init_state(self, p: Tensor, group: dict) -> dict[str, Tensor]:
        m, n = p.shape
        wide = torch.promote_types(p.dtype, torch.float32)
        st = {
            "step": torch.zeros((), dtype=torch.int64),
            "momentum_buffer": torch.zeros(m, n, dtype=wide, device=p.device),
            "update_rms": torch.zeros((), dtype=torch.float32, device=p.device),
        }
        for side in _SIDE_FACTORS[group["sides"]]:
            k = m if side == "L" else n
            F, lam, Q = _FACTOR_KEYS[side]
            st[F] = torch.zeros(k, k, dtype=wide, device=p.device)
            st[lam] = torch.ones(k, dtype=wide, device=p.device)
            st[Q] = torch.eye(k, dtype=wide, device=p.device)
            st[f"eigh_failures_{side}"] = torch.zeros((), dtype=torch.int64, device=p.device)
            st[f"stat_skips_{side}"] = torch.zeros((), dtype=torch.int64, device=p.device)
        return st

    def _build_buckets(self) -> list[list[_Bucket]]:
        """Stack every group's same-shape state into buckets; state entries become views."""
        buckets = []
        for group in self.param_groups:
            by_key: dict[tuple, list[Tensor]] = {}
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

    def load_state_dict(self, state_dict: dict) -> None:
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

    # ---- the step -----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        if self._buckets is None:
            self._buckets = self._build_buckets()
        for group, group_buckets in zip(self.param_groups, self._buckets):
            for bucket in group_buckets:
                if bucket.alpha != group["alpha"]:  # new bucket (built or loaded), or alpha changed
                    self._cache_whitening(group, bucket.state, _SIDE_FACTORS[group["sides"]])
                    bucket.alpha = group["alpha"]
                has_grad = [p.grad is not None for p in bucket.params]
                if all(has_grad):
                    self._step_bucket(group, bucket.params, bucket.state, bucket.step, None)
                elif any(has_grad):  # rare: update only the matrices that got a gradient
                    idx = torch.tensor([i for i, h in enumerate(has_grad) if h])
                    sub = {k: v[idx.to(v.device)] for k, v in bucket.state.items()}
                    params = [bucket.params[i] for i in idx.tolist()]
                    self._step_bucket(group, params, sub, bucket.step, idx)
                    for k, v in sub.items():
                        bucket.state[k][idx.to(v.device)] = v
        return loss

    def _step_bucket(self, group: dict, params: list[Tensor], st: dict[str, Tensor],
                     steps: Tensor, idx: Tensor | None) -> None:
        """One Mousse step for a stack of same-shape matrices (state `st` updated in place)."""
        if idx is None:
            steps += 1
            step_list = steps.tolist()
        else:
            steps[idx] += 1
            step_list = steps[idx].tolist()
        p0 = params[0]
        m, n = p0.shape
        M = st["momentum_buffer"]
        G = torch.stack([p.grad for p in params]).to(M.dtype)
        mu = group["momentum"]
        M.mul_(mu).add_(G)
        M_in = G + mu * M if group["nesterov"] else M

        P = {}
        due = [(s - 1) % group["precond_freq"] == 0 for s in step_list]
        for side in _SIDE_FACTORS[group["sides"]]:
            F = _FACTOR_KEYS[side][0]
            skipped = pc.accumulate(st[F], G, group["precond_beta"], "left" if side == "L" else "right")
            st[f"stat_skips_{side}"] += skipped
            if any(due):
                self._refresh(group, st, side, due, step_list)
                self._cache_whitening(group, st, (side,))
            P[side] = st[f"P_{side}"]

        ns_dtype = group["ns_dtype"] or (
            torch.bfloat16 if p0.is_cuda else torch.promote_types(M.dtype, torch.float32)
        )
        X = pc.whiten(M_in, P.get("L"), P.get("R"))
        Y = orthogonalize(X, group["ns"], group["ns_steps"], ns_dtype)
        U = pc.unwhiten(Y, P.get("L"), P.get("R"))
        norm_U = frobenius_norm(U)
        if group["graft"] and P:
            gamma = frobenius_norm(Y)
            U, norm_U = graft(U, gamma, norm_U), gamma
        st["update_rms"].copy_(norm_U.flatten() / math.sqrt(m * n))

        lr = group["lr"]
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1.0 - lr * group["weight_decay"])
        torch._foreach_add_(params, list(U.to(p0.dtype).unbind(0)),
                            alpha=-lr * lr_multiplier(group["lr_scale"], m, n))

    @staticmethod
    def _cache_whitening(group: dict, st: dict[str, Tensor], sides: Iterable[str]) -> None:
        """P = Q diag(lam^-alpha) for the given sides, so a step only multiplies by it."""
        for side in sides:
            _, lam, Q = _FACTOR_KEYS[side]
            st[f"P_{side}"] = pc.inverse_root_basis(st[lam], st[Q], group["alpha"], st[Q].dtype)

    def _refresh(self, group: dict, st: dict[str, Tensor], side: str, due: list[bool],
                 step_list: list[int]) -> None:
        """Eigen refresh of one side's factors for the matrices that are due (the first refresh,
        from the identity basis, always by eigh)."""
        F, lam, Q = _FACTOR_KEYS[side]
        # Matrices of a bucket normally share one step; group by step for the bias correction.
        by_step: dict[int, list[int]] = {}
        for i, d in enumerate(due):
            if d:
                by_step.setdefault(step_list[i], []).append(i)
        for s, rows in sorted(by_step.items()):
            pick = slice(None) if len(rows) == len(due) else torch.tensor(rows, device=st[F].device)
            factor = pc.normalized(st[F][pick], s, group["precond_beta"],
                                   group["bias_correction"], group["trace_norm"])
            new_lam, new_Q, failed = pc.refresh(factor, st[lam][pick], st[Q][pick], group["eps"],
                                                st[F].dtype, group["refresh"] if s > 1 else "eigh")
            st[lam][pick] = new_lam
            st[Q][pick] = new_Q
            st[f"eigh_failures_{side}"][pick] += failed

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


class Muon(Mousse):
    """Muon (Keller Jordan) on Mousse's code path with no preconditioning.

    Defaults are torch.optim.Muon's: Nesterov momentum, the (3.4445, -4.7750, 2.0315) schedule,
    lr 1e-3, weight decay 0.1 and its LR rule sqrt(max(1, m/n)) (lr_scale="muon"; "rms" is
    torch's "match_rms_adamw").
    """

    _sides = ("none",)

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns: str = "muon",
        ns_steps: int = 5,
        lr_scale: str = "muon",
        ns_dtype: torch.dtype | None = None,
    ):
        super().__init__(
            params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
            alpha=0.0, sides="none", graft=False, ns=ns, ns_steps=ns_steps, lr_scale=lr_scale,
            ns_dtype=ns_dtype,
        )
