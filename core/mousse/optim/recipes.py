"""The literature's optimizers as recipes of the family's engine: each class only sets defaults
(its body's `recipe` lists the knobs it changes; docs/family.md compares them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from .family import Knobs, KroneckerOptimizer

if TYPE_CHECKING:
    from torch.optim.optimizer import ParamsT
    from typing_extensions import Unpack

    from .knobs import KnobArgs


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

    recipe: ClassVar[Knobs] = dict(
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
        self,
        params: ParamsT,
        nesterov: bool | None = None,
        *,
        compiled: bool = False,
        transposed: bool = False,
        **knobs: Unpack[KnobArgs],
    ) -> None:
        if nesterov is not None:
            knobs["momentum_style"] = "nesterov" if nesterov else "heavy_ball"
        super().__init__(params, compiled=compiled, transposed=transposed, **knobs)


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

    recipe: ClassVar[Knobs] = dict(
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

    recipe: ClassVar[Knobs] = dict(
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

    recipe: ClassVar[Knobs] = dict(
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

    recipe: ClassVar[Knobs] = dict(
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

    recipe: ClassVar[Knobs] = dict(
        lr=0.02,
        momentum=0.0,
        weight_decay=0.0,
        sides="none",
        alpha=0.0,
        orthogonalizer="exact",
        graft="none",
        lr_scale="none",
    )


OPTIMIZER_CLASSES: dict[str, type[KroneckerOptimizer]] = {
    "mousse": Mousse,
    "muon": Muon,
    "shampoo": Shampoo,
    "soap": SOAP,
    "splus": SPlus,
    "tnt": TNT,
    "specgd": SpecGD,
}
