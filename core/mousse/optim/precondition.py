"""Shampoo's Kronecker factors for the family: running statistics, eigen refresh, whitening.

All functions act on batches: factors (B, k, k), eigenvalues (B, k), bases (B, k, k).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

# Looked up at call time so tests can inject failures.
eigh = torch.linalg.eigh


def accumulate(F: Tensor, G: Tensor, beta: float, side: str) -> Tensor:
    """EMA update `F <- beta F + (1-beta) C` in place, C = G G^T (left) or G^T G (right).

    A matrix whose contribution would not be finite (e.g. gradients near 1e20 overflow fp32
    squares; |C_ij| <= ||G||_F^2 bounds every entry) keeps its previous statistics.
    Returns the per-matrix bool mask of skipped updates.
    """
    G = G.to(F.dtype)
    finite = torch.isfinite(G.square().sum(dim=(-2, -1)))
    G = torch.where(finite[:, None, None], G, 0.0)
    C = G @ G.mT if side == "left" else G.mT @ G
    decay = torch.full(finite.shape, beta, dtype=F.dtype, device=F.device).masked_fill_(
        ~finite, 1.0
    )
    F.mul_(decay[:, None, None]).add_(C, alpha=1.0 - beta)
    return ~finite


FactorNorm = Literal["trace", "same_trace", "none"]
FACTOR_NORMS: tuple[str, ...] = get_args(FactorNorm)


def normalized(
    F: Tensor, count: int, beta: float, bias_correction: bool, norm: str, other_dim: int
) -> Tensor:
    """The factor as refreshed (a new tensor): bias-corrected for `count` EMA updates, then scaled
    by `norm`: "trace" to mean eigenvalue 1 (Mousse), "same_trace" F sqrt(dim / (other_dim tr F))
    (TNT: L and R then carry equal shares of tr(L kron R)), or "none". Scaled in fp64, so
    factors with tiny or huge traces neither under- nor overflow."""
    scale = torch.ones(F.size(0), dtype=torch.float64, device=F.device)
    if bias_correction:
        scale = scale / (1.0 - beta**count)
    if norm != "none":
        trace = F.diagonal(dim1=-2, dim2=-1).sum(-1, dtype=torch.float64) * scale
        ok = torch.isfinite(trace) & (trace > 0)
        trace = torch.where(ok, trace, 1.0)
        dim = F.size(-1)
        factor = dim / trace if norm == "trace" else torch.sqrt(dim / (other_dim * trace))
        scale = torch.where(ok, scale * factor, scale)
    return (F.double() * scale[:, None, None]).to(F.dtype)


RefreshMethod = Literal["eigh", "qr", "root"]
REFRESHES: tuple[str, ...] = get_args(RefreshMethod)
# Eigenvalue floor after eigh(F + eps I): "shift" lifts the spectrum so its minimum is eps
# (Mousse), "clamp" raises each eigenvalue to at least eps (Shampoo, TNT).
EigFloor = Literal["shift", "clamp"]
EIG_FLOORS: tuple[str, ...] = get_args(EigFloor)


def _damped(F: Tensor, eps: float) -> Tensor:
    return F + eps * torch.eye(F.size(-1), dtype=F.dtype, device=F.device)


def _floored(lam: Tensor, eps: float, floor: str) -> Tensor:
    if floor == "clamp":
        return lam.clamp(min=eps)
    return lam + (-lam.amin(dim=-1, keepdim=True)).clamp(min=0) + eps


def _eigh_floored(F: Tensor, eps: float, floor: str) -> tuple[Tensor, Tensor, None]:
    lam, Q = eigh(_damped(F, eps))
    return _floored(lam, eps, floor), Q, None


def _qr_floored(F: Tensor, Q_prev: Tensor, eps: float, floor: str) -> tuple[Tensor, Tensor, Tensor]:
    """SOAP's warm start: one power iteration from the previous basis, re-orthonormalized by QR.

    The previous basis's columns are first put in descending order of their Rayleigh quotients
    diag(Q^T F Q), so Gram-Schmidt meets the dominant directions first (orthogonal iteration);
    the eigenvalue estimates are the Rayleigh quotients of the new basis, floored like eigh's.
    Also returns that column order (new column j continues old column order[j]).
    """
    F = _damped(F, eps)
    FQ = F @ Q_prev
    order = (Q_prev * FQ).sum(-2).argsort(dim=-1, descending=True)
    Q, _ = torch.linalg.qr(FQ.gather(-1, order.unsqueeze(-2).expand_as(FQ)))
    return _floored((Q * (F @ Q)).sum(-2), eps, floor), Q, order


def root_order(alpha: float) -> int:
    """The p of alpha = 1/p (0 for alpha = 0, where the root is the identity); ValueError when
    alpha is not of that form, as the matmul-only root needs an integer p."""
    if alpha == 0:
        return 0
    p = round(1.0 / alpha)
    if p < 1 or abs(1.0 / alpha - p) > 1e-9:
        raise ValueError(
            f"refresh='root' needs alpha of the form 1/p (0.125, 0.25, 0.5, 1) or 0, got {alpha}; "
            "use refresh='eigh' for other exponents"
        )
    return p


ROOT_MAX_ITERS = 100
ROOT_TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def inverse_root_newton(
    A: Tensor, p: int, max_iters: int = ROOT_MAX_ITERS
) -> tuple[Tensor, Tensor]:
    """A^(-1/p) of a stack of symmetric positive definite matrices by the coupled Newton
    iteration (Guo and Higham 2006, as Shampoo implementations use it): matmuls only, so a GPU
    spends it in GEMMs. X -> A^(-1/p) while M = X^p A -> I; started from X = c^(1/p) I,
    M = c A with c = (p + 1) / (2 ||A||_F), which puts the spectrum of M in (0, (p+1)/2].
    Returns (X, converged mask): a matrix whose max |M - I| is still above the dtype's
    tolerance after `max_iters` (or not finite) is not converged."""
    eye = torch.eye(A.size(-1), dtype=A.dtype, device=A.device).expand_as(A)
    c = (p + 1) / (2 * torch.linalg.matrix_norm(A).clamp(min=torch.finfo(A.dtype).tiny))
    X = eye * c[:, None, None] ** (1.0 / p)
    M = A * c[:, None, None]
    tol = ROOT_TOL.get(A.dtype, 1e-4)
    for _ in range(max_iters):
        T = ((p + 1) * eye - M) / p
        X = X @ T
        M = torch.linalg.matrix_power(T, p) @ M
        if bool((M - eye).abs().amax() <= tol):  # one host sync an iteration, on the refresh
            break
    error = (M - eye).abs().amax(dim=(-2, -1))
    return X, torch.isfinite(error) & (error <= tol)


def _root_floored(F: Tensor, eps: float, floor: str, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """(ones, P, converged): P = (F + eps I)^-alpha after the eps floor, computed without an
    eigendecomposition. The floor assumes F is positive semi-definite, as factor statistics are
    (up to rounding): "shift" is then F + 2 eps I, "clamp" F + eps I. Stored as the pair
    (lam, Q) = (1, P), so that Q diag(lam^-alpha) = P as for an eigen-pair."""
    p = root_order(alpha)
    lam = torch.ones(F.shape[:-1], dtype=F.dtype, device=F.device)
    if p == 0:
        eye = torch.eye(F.size(-1), dtype=F.dtype, device=F.device).expand_as(F).clone()
        return lam, eye, torch.ones(F.size(0), dtype=torch.bool, device=F.device)
    A = _damped(F, 2 * eps if floor == "shift" else eps)
    X, converged = inverse_root_newton(A, p)
    return lam, (X + X.mT) / 2, converged


def _all_finite(*tensors: Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def refresh(
    F: Tensor,
    lam_prev: Tensor,
    Q_prev: Tensor,
    eps: float,
    dtype: torch.dtype,
    method: str = "eigh",
    floor: str = "shift",
    alpha: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Eigen-pairs of `F + eps I`, eigenvalues floored at eps (`floor`), for a batch of factors.

    method "eigh" decomposes exactly; "qr" refines the previous pair by one power iteration + QR
    (two matmuls and a QR instead of an eigendecomposition; converges to the eigh pair over
    refreshes of slowly changing factors), and falls back to eigh when its result is not finite;
    "root" computes the whitening matrix P = (F + eps I)^-alpha itself by matmuls
    (`inverse_root_newton`) and returns it as the pair (1, P), falling back to eigh for the
    matrices where the iteration does not converge.
    eigh tries `dtype` (fp32 or wider), retries in fp64 on failure or non-finite output, then
    matrix by matrix; a matrix that still fails keeps its previous pair. Returns (lam, Q, failed
    mask, order): order is the qr refresh's column order (None when eigh ran), so state kept in
    the eigenbasis can follow its columns. The finiteness checks read the result on the host,
    once per refresh (CUDA's eigh syncs anyway; for qr this check is the refresh's only sync).
    """
    if method == "root":
        lam, P, converged = _root_floored(F.to(dtype), eps, floor, alpha)
        if bool(converged.all()):
            failed = torch.zeros(F.size(0), dtype=torch.bool, device=F.device)
            return lam.to(lam_prev.dtype), P.to(Q_prev.dtype), failed, None
        exact = refresh(F[~converged], lam_prev[~converged], Q_prev[~converged], eps, dtype)
        lam, P = lam.to(lam_prev.dtype), P.to(Q_prev.dtype)
        lam[~converged], P[~converged] = exact[0], exact[1]
        failed = torch.zeros(F.size(0), dtype=torch.bool, device=F.device)
        failed[~converged] = exact[2]
        return lam, P, failed, None
    attempts = [("qr", dtype)] if method == "qr" else []
    attempts += [("eigh", d) for d in dict.fromkeys((dtype, torch.float64))]
    for how, attempt_dtype in attempts:
        try:
            lam, Q, order = (
                _qr_floored(F.to(attempt_dtype), Q_prev.to(attempt_dtype), eps, floor)
                if how == "qr"
                else _eigh_floored(F.to(attempt_dtype), eps, floor)
            )
        except RuntimeError:
            continue
        if _all_finite(lam, Q):
            failed = torch.zeros(F.size(0), dtype=torch.bool, device=F.device)
            return lam.to(lam_prev.dtype), Q.to(Q_prev.dtype), failed, order
    lam, Q = lam_prev.clone(), Q_prev.clone()
    failed = torch.ones(F.size(0), dtype=torch.bool, device=F.device)
    for i in range(F.size(0)):
        try:
            lam_i, Q_i, _ = _eigh_floored(F[i : i + 1].to(torch.float64), eps, floor)
        except RuntimeError:
            continue
        if _all_finite(lam_i, Q_i):
            lam[i], Q[i], failed[i] = lam_i[0], Q_i[0], False
    return lam, Q, failed, None


def inverse_root_basis(lam: Tensor, Q: Tensor, alpha: float, dtype: torch.dtype) -> Tensor:
    """P = Q diag(lam^-alpha): whitening is P_L^T M P_R, unwhitening P_L Y P_R^T."""
    return (Q * lam.pow(-alpha).unsqueeze(-2)).to(dtype)


def whiten(M: Tensor, P_L: Tensor | None, P_R: Tensor | None) -> Tensor:
    """P_L^T M P_R, with a missing side being the identity."""
    if P_L is not None:
        M = P_L.mT @ M
    if P_R is not None:
        M = M @ P_R
    return M


def unwhiten(Y: Tensor, P_L: Tensor | None, P_R: Tensor | None) -> Tensor:
    """P_L Y P_R^T: the same negative powers applied again (not their inverses)."""
    if P_L is not None:
        Y = P_L @ Y
    if P_R is not None:
        Y = Y @ P_R.mT
    return Y
