"""Orthogonalization: Newton-Schulz schedules and the exact SVD polar factor.

Matrices are built as U diag(s) V^T with chosen singular values, so the exact polar factor U V^T
and the per-direction gains of an NS schedule can be read off directly: `D = U^T Y V` must be
(nearly) diagonal, and its diagonal holds the output singular value for each input direction.

"Relative" singular values below are relative to the Frobenius norm, x_i = s_i / ||s||_2, because
every schedule normalizes its input by the Frobenius norm. The bands were computed from the
composed scalar polynomial of each schedule (fp64, dense grid on x in [thr, 1]):

    muon           x >= 2e-3 : [0.6818, 1.2024]
    you5           x >= 1e-2 : [0.9778, 1.0318]    (global max 1.1450)
    polar_express  x >= 1e-3 : [0.8466, 1.1411]    (input / 1.02 first)

fp32 follows the polynomial to ~1e-5, so the bands get a 2e-3 margin. bf16 loses input
directions below its rounding floor (~4e-3 relative), so in bf16 the thresholds are raised to
3e-3 (1e-2 for you5) and the margins widened to what bf16 arithmetic actually reaches over many
seeds (worst observed deviation from the polynomial: muon 0.015, you5 0.003 (x >= 1e-2),
polar_express 0.037, whose first coefficient 8.16 amplifies rounding most; worst off-diagonal
mass of the strong directions over 15 seeds: muon 0.059, you5 0.016, polar_express 0.042).
"""

from __future__ import annotations

import math

import pytest
import torch

from mousse.optim.orthogonalize import orthogonalize

# The coefficients, copied from their sources (docs/published.md), independently of the engine's table.
SPEC_SCHEDULES = {
    "muon": dict(coeffs=[(3.4445, -4.7750, 2.0315)], eps=1e-7, scale=1.0, clamp=True),
    "you5": dict(
        coeffs=[
            (4.0848, -6.8946, 2.9270),
            (3.9505, -6.3029, 2.6377),
            (3.7418, -5.5913, 2.3037),
            (2.8769, -3.1427, 1.2046),
            (2.8366, -3.0525, 1.2012),
        ],
        eps=1e-8,
        scale=1.0,
        clamp=False,
    ),
    "polar_express": dict(
        coeffs=[
            (8.1566, -22.4833, 15.8788),
            (4.0429, -2.8089, 0.5000),
            (3.8917, -2.7725, 0.5061),
            (3.2858, -2.3681, 0.4645),
            (2.3465, -1.7098, 0.4232),
        ],
        eps=1e-6,
        scale=1.02,
        clamp=False,
    ),
}
NS_NAMES = list(SPEC_SCHEDULES)

# (threshold on x, low, high, global max) from the composed polynomials, see module docstring.
BANDS = {
    "muon": (2e-3, 0.6818, 1.2024, 1.2024),
    "you5": (1e-2, 0.9778, 1.0318, 1.1450),
    "polar_express": (1e-3, 0.8466, 1.1411, 1.1411),
}
# dtype -> schedule -> (threshold floor, margin on the band, max relative off-diagonal mass)
TOLS = {
    torch.float32: {n: (0.0, 2e-3, 1e-4) for n in NS_NAMES},
    torch.bfloat16: {
        "muon": (3e-3, 0.02, 0.08),
        "you5": (1e-2, 0.01, 0.03),
        "polar_express": (3e-3, 0.04, 0.06),
    },
}

SHAPES = [(40, 40), (64, 32), (32, 64)]


def rand_orth(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    """Random (rows x cols) matrix with orthonormal columns, fp64."""
    Q, R = torch.linalg.qr(torch.randn(rows, cols, dtype=torch.float64, generator=g))
    return Q * torch.sign(R.diagonal()).unsqueeze(0)


def build(m: int, n: int, s: torch.Tensor, g: torch.Generator):
    """X = U diag(s) V^T in fp64, with U (m x k), V (n x k) orthonormal, k = len(s)."""
    k = s.numel()
    U, V = rand_orth(m, k, g), rand_orth(n, k, g)
    return (U * s) @ V.T, U, V


def spectrum(kind: str, k: int) -> torch.Tensor:
    if kind == "well":  # condition number 10
        return torch.linspace(1.0, 0.1, k, dtype=torch.float64)
    if kind == "ill":  # condition number 1e6
        return torch.logspace(0, -6, k, dtype=torch.float64)
    raise AssertionError(kind)


def composed_map(name: str, x: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The scalar polynomial an NS schedule applies to each normalized singular value."""
    coeffs = SPEC_SCHEDULES[name]["coeffs"]
    for i in range(steps):
        a, b, c = coeffs[min(i, len(coeffs) - 1)]
        x = a * x + b * x**3 + c * x**5
    return x


def normalized_singular_values(name: str, s: torch.Tensor) -> torch.Tensor:
    sch = SPEC_SCHEDULES[name]
    fro = torch.linalg.vector_norm(s)
    if sch["clamp"]:
        return s / torch.clamp(fro, min=sch["eps"])
    return s / (fro * sch["scale"] + sch["eps"])


# ---- fp64: the implementation is exactly the spec's polynomial -------------------------------


@pytest.mark.parametrize("name", NS_NAMES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("steps", [3, 5, 7])
def test_ns_fp64_applies_the_spec_polynomial(name, shape, steps):
    g = torch.Generator().manual_seed(1)
    m, n = shape
    s = spectrum("ill", min(m, n))
    X, U, V = build(m, n, s, g)
    Y = orthogonalize(X.unsqueeze(0), name, steps, torch.float64)[0]
    assert Y.dtype == torch.float64
    expected = (U * composed_map(name, normalized_singular_values(name, s), steps)) @ V.T
    torch.testing.assert_close(Y, expected, rtol=0, atol=1e-11)


# ---- fp32 / bf16: bands and singular directions vs the exact polar factor ---------------------


@pytest.mark.parametrize("name", NS_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["well", "ill"])
def test_ns_band_and_directions(name, dtype, kind):
    thr, lo, hi, gmax = BANDS[name]
    thr_floor, margin, off_tol = TOLS[dtype][name]
    thr = max(thr, thr_floor)
    g = torch.Generator().manual_seed(2)
    for m, n in SHAPES:
        k = min(m, n)
        s = spectrum(kind, k)
        # A batch of three independent matrices with the same spectrum.
        mats = [build(m, n, s, g) for _ in range(3)]
        X = torch.stack([x for x, _, _ in mats]).float()
        Y = orthogonalize(X, name, 5, dtype)
        assert Y.shape == X.shape and Y.dtype == torch.float32
        x = s / torch.linalg.vector_norm(s)
        top = x >= thr
        assert top.sum() >= 4, "the spectrum must exercise the band"
        for b, (_, U, V) in enumerate(mats):
            Yb = Y[b].double()
            D = U.T @ Yb @ V  # k x k; diagonal = output singular value per input direction
            d = D.diagonal()
            # Output singular values of the strong directions land in the schedule's band ...
            assert d[top].min() >= lo - margin, (d[top].min(), lo)
            assert d[top].max() <= hi + margin, (d[top].max(), hi)
            # ... and no direction is ever inflated past the schedule's global maximum.
            assert torch.linalg.matrix_norm(Yb, ord=2) <= gmax + margin
            # Directions: Y maps each strong right singular vector v_i to d_i u_i and each strong
            # u_i back to d_i v_i (the polar factor's singular vectors), with nothing else.
            Ut, Vt, dt = U[:, top], V[:, top], d[top]
            off_rows = torch.linalg.norm(Ut.T @ Yb - dt[:, None] * Vt.T) / torch.linalg.norm(dt)
            off_cols = torch.linalg.norm(Yb @ Vt - Ut * dt) / torch.linalg.norm(dt)
            assert off_rows <= off_tol and off_cols <= off_tol, (off_rows, off_cols)
            if dtype == torch.float32 or kind == "well":
                # Nothing of Y lies outside span(U) x span(V) or off the diagonal. (Not for bf16
                # on ill-conditioned input: rounding the input to bf16 adds noise at ~4e-3 of
                # the norm in every direction, which NS then amplifies like any weak direction.)
                leak = torch.linalg.norm(Yb - U @ torch.diag(d) @ V.T) / torch.linalg.norm(Yb)
                assert leak <= off_tol, leak
            if kind == "well":
                # Every direction is strong: Y is the polar factor up to the band's width.
                P = U @ V.T
                rel = torch.linalg.norm(Yb - P) / torch.linalg.norm(P)
                width = max(1 - lo, hi - 1) + margin + off_tol
                assert rel <= width, (rel, width)
                # and the (signed) gains are all positive: no direction is flipped.
                assert d.min() > 0


def test_you5_and_polar_express_tighter_than_muon_on_well_conditioned():
    """you5 and Polar Express are the schedules that land closer to the polar factor."""
    g = torch.Generator().manual_seed(3)
    s = spectrum("well", 48)
    X, U, V = build(48, 48, s, g)
    P = U @ V.T
    err = {
        name: float(
            torch.linalg.norm(
                orthogonalize(X[None].float(), name, 5, torch.float32)[0].double() - P
            )
            / torch.linalg.norm(P)
        )
        for name in NS_NAMES
    }
    assert err["you5"] < 0.03 and err["polar_express"] < 0.15
    assert err["you5"] < err["muon"] and err["polar_express"] < err["muon"]


@pytest.mark.parametrize("name", NS_NAMES)
def test_batch_is_per_matrix(name):
    """Each matrix of a batch is normalized and iterated on its own (scales differ by 1e12)."""
    g = torch.Generator().manual_seed(4)
    X0 = build(24, 40, spectrum("ill", 24), g)[0]
    X1 = build(24, 40, spectrum("well", 24), g)[0]
    X = torch.stack([X0, X1 * 1e6, X0 * 1e12]).float()
    Y = orthogonalize(X, name, 5, torch.float32)
    for b in range(X.size(0)):
        Yb = orthogonalize(X[b : b + 1], name, 5, torch.float32)[0]
        torch.testing.assert_close(Y[b], Yb, rtol=0, atol=1e-6)
    # Scale does not matter (Frobenius normalization) far above the eps floors: eps / ||X||_F
    # is at most 1e-6 here (polar_express), which moves the output by ~1e-6.
    torch.testing.assert_close(Y[0], Y[2], rtol=0, atol=1e-5)


# ---- exact polar ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [*SHAPES, (1, 7), (7, 1)])
@pytest.mark.parametrize("kind", ["well", "ill4"])
def test_exact_equals_UVt(shape, kind):
    g = torch.Generator().manual_seed(5)
    m, n = shape
    k = min(m, n)
    s = spectrum("well", k) if kind == "well" else torch.logspace(0, -4, k, dtype=torch.float64)
    X, U, V = build(m, n, s, g)
    Y = orthogonalize(torch.stack([X, 3.0 * X]), "exact", 5, torch.float64)
    # Perturbation of the polar factor is ~ eps_64 / s_min: 1e-16 / 1e-4 = 1e-12.
    torch.testing.assert_close(Y[0], U @ V.T, rtol=0, atol=1e-11)
    torch.testing.assert_close(Y[1], U @ V.T, rtol=0, atol=1e-11)


def test_exact_rank_deficient_maps_null_directions_to_zero():
    g = torch.Generator().manual_seed(6)
    s = torch.tensor([1.0, 0.5, 0.25, 0.0, 0.0, 0.0], dtype=torch.float64)
    X, U, V = build(10, 6, s, g)
    Y = orthogonalize(X[None], "exact", 5, torch.float64)[0]
    torch.testing.assert_close(Y, U[:, :3] @ V[:, :3].T, rtol=0, atol=1e-12)


def test_exact_in_fp32_close_to_fp64():
    g = torch.Generator().manual_seed(7)
    X, U, V = build(40, 24, spectrum("well", 24), g)
    Y = orthogonalize(X[None].float(), "exact", 5, torch.float32)[0]
    assert Y.dtype == torch.float32
    torch.testing.assert_close(Y.double(), U @ V.T, rtol=0, atol=2e-6)


# ---- equivariance -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*NS_NAMES, "exact"])
@pytest.mark.parametrize("shape", SHAPES)
def test_rotation_equivariance_fp64(name, shape):
    """NS(Q^T X P) = Q^T NS(X) P: the identity behind 'alpha = 0 is Muon'."""
    g = torch.Generator().manual_seed(8)
    m, n = shape
    X = torch.randn(m, n, dtype=torch.float64, generator=g)
    Q, P = rand_orth(m, m, g), rand_orth(n, n, g)
    lhs = orthogonalize((Q.T @ X @ P)[None], name, 5, torch.float64)[0]
    rhs = Q.T @ orthogonalize(X[None], name, 5, torch.float64)[0] @ P
    torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-12)


# ---- extremes ---------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.bfloat16, torch.float64, torch.float16]
DTYPE_IDS = ["fp32", "bf16", "fp64", "fp16"]


@pytest.mark.parametrize("name", [*NS_NAMES, "exact"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_zero_matrix_maps_to_zero(name, dtype):
    in_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    for shape in [(5, 7), (7, 5), (6, 6)]:
        Z = torch.zeros(2, *shape, dtype=in_dtype)
        Y = orthogonalize(Z, name, 5, dtype)
        assert Y.dtype == in_dtype
        assert torch.equal(Y, torch.zeros_like(Y))


@pytest.mark.parametrize("name", [*NS_NAMES, "exact"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_huge_and_tiny_entries_stay_finite(name, dtype):
    in_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.Generator().manual_seed(9)
    X = torch.randn(3, 24, 40, dtype=torch.float64, generator=g)
    # Reference far above the eps floors (eps / ||X||_F would otherwise show at 1e-8 .. 1e-6).
    base = orthogonalize((X * 1e10).to(in_dtype), name, 5, dtype).double()
    # Agreement with the unscaled result: fp32/fp64 differ only by rounding; bf16 rounds the
    # scaled input differently (scale factors are not powers of two), so allow bf16 NS noise.
    atol = {torch.float32: 5e-6, torch.bfloat16: 0.05, torch.float64: 1e-12, torch.float16: 0.01}[
        dtype
    ]
    # 1e20: squares overflow fp32; 3e37: so does ||X||_F. (fp16 overflows at 65504 and its
    # smallest subnormal is 6e-8, below the schedules' eps: normalization must happen first.)
    for scale in (1e20, 1e30, 3e37):
        Y = orthogonalize((X * scale).to(in_dtype), name, 5, dtype)
        assert torch.isfinite(Y).all(), scale
        torch.testing.assert_close(Y.double(), base, rtol=0, atol=atol)
    for scale in (1e-20, 1e-38):
        Y = orthogonalize((X * scale).to(in_dtype), name, 5, dtype)
        assert torch.isfinite(Y).all(), scale
        if name == "exact":  # the polar factor is scale-free
            torch.testing.assert_close(Y.double(), base, rtol=0, atol=atol)
        else:  # below the schedules' eps the input is (by design) not blown up to norm 1
            assert Y.abs().max() <= 1e-6
    # Mixed batch: one zero, one huge, one tiny matrix are each handled on their own.
    mixed = torch.stack([torch.zeros_like(X[0]), X[1] * 1e20, X[2] * 1e-20]).to(in_dtype)
    Y = orthogonalize(mixed, name, 5, dtype)
    assert torch.isfinite(Y).all()
    assert torch.equal(Y[0], torch.zeros_like(Y[0]))
    torch.testing.assert_close(Y[1].double(), base[1], rtol=0, atol=atol)


def test_ns_output_dtype_and_no_input_mutation():
    X = torch.randn(2, 8, 12)
    X0 = X.clone()
    for name in NS_NAMES:
        for dt in DTYPES:
            Y = orthogonalize(X, name, 5, dt)
            assert Y.dtype == X.dtype and Y.shape == X.shape
            assert torch.equal(X, X0)
    assert not math.isnan(float(orthogonalize(X, "exact", 5, torch.float32).sum()))
