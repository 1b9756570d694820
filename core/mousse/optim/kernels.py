"""Triton kernels for the two symmetric products of Newton-Schulz, and the torch fallback.

Per NS iteration `A = X X^T` and `B = b A + c A A` are symmetric, so each kernel computes only the
tiles on and below the diagonal and writes every tile twice, at (i, j) and mirrored at (j, i): about
half the multiply work of a general matmul (docs/published.md). Both accumulate in fp32 and write the
input's dtype; both take a batch (B, m, k) on the second grid axis and any strides (so
`sym_gram(X.mT)` gives `X^T X` without a copy).

Dispatch (`gram`, `poly`): the kernels run only on CUDA, with triton importable, and from a size
threshold per operation; otherwise the torch ops run (the CPU path is plain torch, and triton is
imported lazily, never by `import mousse`). `MOUSSE_TRITON=0|1|auto` forces them off / on
(any size, still CUDA only) / by threshold (default).
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

# Smallest Gram / polynomial output side m (of an m x m result) that goes to the kernels: the
# measured crossovers on an H100 in bf16 (benchmarks/README.md, GPU). There cuBLAS wins up to 2048
# (the kernels at 0.5-0.8x); the Gram kernel breaks even at 3072 and is 1.45x at 4096, the
# polynomial kernel 1.13x at 4096. `mousse bench --device cuda` measures both on the GPU at hand
# and prints the thresholds to set with MOUSSE_GRAM_MIN_DIM / MOUSSE_POLY_MIN_DIM.
GRAM_MIN_DIM = 3072
POLY_MIN_DIM = 4096
MIN_DIM = {"gram": "GRAM_MIN_DIM", "poly": "POLY_MIN_DIM"}  # read at call time, so patchable
MAX_BATCH = 65535  # the batch rides on grid axis 1, limited to 2^16 - 1 programs
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

if TYPE_CHECKING:  # for mypy, which sees them as Any: triton ships no type information
    import triton
    import triton.language as tl
else:
    triton = tl = None  # bound by _kernel() on first use


_TRITON_OK: bool | None = None


def triton_available() -> bool:
    """Whether triton imports (checked once, only when a CUDA tensor asks; a plain global
    rather than functools.cache, so torch.compile reads it as a guarded constant)."""
    global _TRITON_OK
    if _TRITON_OK is None:
        try:
            import triton

            _TRITON_OK = hasattr(triton, "jit")
        except Exception:  # ImportError, or a broken install (missing libs)
            _TRITON_OK = False
    return _TRITON_OK


def triton_mode() -> str:
    """MOUSSE_TRITON: "0" (never), "1" (always on CUDA), "auto" (by size; the default)."""
    mode = os.environ.get("MOUSSE_TRITON", "auto").strip().lower() or "auto"
    if mode not in ("0", "1", "auto"):
        raise ValueError(f"MOUSSE_TRITON must be 0, 1 or auto, got {mode!r}")
    return mode


def min_dim(op: str) -> int:
    """The size threshold of `op` ("gram" or "poly"): MOUSSE_GRAM_MIN_DIM / MOUSSE_POLY_MIN_DIM
    when set (e.g. to what `mousse bench` measured), else the module's default."""
    name = MIN_DIM[op]
    value = os.environ.get(f"MOUSSE_{name}", "").strip()
    if not value:
        default: int = globals()[name]
        return default
    if not value.isdigit():
        raise ValueError(f"MOUSSE_{name} must be a whole number of rows, got {value!r}")
    return int(value)


def use_triton(X: Tensor, op: str = "gram") -> bool:
    """Whether `op` ("gram" or "poly") on the (B, m, k) batch X goes to a Triton kernel."""
    if not X.is_cuda or X.dim() != 3 or X.dtype not in DTYPES or X.size(0) > MAX_BATCH:
        return False
    mode = triton_mode()
    if mode == "0" or not triton_available():
        return False
    return mode == "1" or X.size(-2) >= min_dim(op)


def gram(X: Tensor) -> Tensor:
    """X @ X^T per matrix of the batch: the one-triangle kernel where it pays, else torch."""
    out: Tensor = torch.ops.mousse.sym_gram(X) if use_triton(X, "gram") else X @ X.mT
    return out


def poly(A: Tensor, b: float, c: float) -> Tensor:
    """b*A + c*(A @ A) per symmetric matrix of the batch: kernel where it pays, else torch."""
    if use_triton(A, "poly"):
        out: Tensor = torch.ops.mousse.sym_poly(A, b, c)
        return out
    return torch.baddbmm(A, A, A, beta=b, alpha=c)


# Untyped on purpose: triton.jit reads the annotations (tl.constexpr marks compile-time values).
def _syrk(  # type: ignore[no-untyped-def]
    X,
    A,
    C,
    m,
    k,
    sxb,
    sxm,
    sxk,
    sab,
    sam,
    san,
    scb,
    scm,
    scn,
    alpha,
    beta,
    HAS_A: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BM: tl.constexpr,
    BK: tl.constexpr,
):
    """C = alpha X X^T (+ beta A), one lower-triangle tile (i, j) per program, written twice."""
    t = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    # Lower-triangle tile t = i (i + 1) / 2 + j, j <= i; fix up the float estimate of i by one.
    i = ((tl.sqrt(8.0 * t + 1.0) - 1.0) * 0.5).to(tl.int32)
    i = tl.where((i + 1) * (i + 2) // 2 <= t, i + 1, i)
    i = tl.where(i * (i + 1) // 2 > t, i - 1, i)
    j = t - i * (i + 1) // 2
    rm = i * BM + tl.arange(0, BM)
    rn = j * BM + tl.arange(0, BM)
    rk = tl.arange(0, BK)
    X = X + b * sxb
    acc = tl.zeros((BM, BM), dtype=tl.float32)
    for k0 in range(0, k, BK):
        kk = k0 + rk
        x = tl.load(
            X + rm[:, None] * sxm + kk[None, :] * sxk,
            mask=(rm[:, None] < m) & (kk[None, :] < k),
            other=0.0,
        )
        y = tl.load(
            X + rn[None, :] * sxm + kk[:, None] * sxk,  # X[rn, kk]^T, (BK, BM)
            mask=(rn[None, :] < m) & (kk[:, None] < k),
            other=0.0,
        )
        if UPCAST:  # interpreter only, see _launch
            x, y = x.to(tl.float32), y.to(tl.float32)
        acc = tl.dot(x, y, acc, input_precision=PRECISION)
    mask = (rm[:, None] < m) & (rn[None, :] < m)
    acc = acc * alpha
    if HAS_A:
        a = tl.load(A + b * sab + rm[:, None] * sam + rn[None, :] * san, mask=mask, other=0.0)
        acc += beta * a.to(tl.float32)
    if i == j:  # make the diagonal tile exactly symmetric (a + a^T is, bit for bit)
        acc = (acc + tl.trans(acc)) * 0.5
    out = acc.to(C.dtype.element_ty)
    C = C + b * scb
    tl.store(C + rm[:, None] * scm + rn[None, :] * scn, out, mask=mask)
    if i != j:
        tl.store(
            C + rn[:, None] * scm + rm[None, :] * scn,
            tl.trans(out),
            mask=(rn[:, None] < m) & (rm[None, :] < m),
        )


@functools.cache
def _kernel() -> Any:  # Any: a triton JIT function, untyped (see above)
    """Import triton and jit the kernel (on first use only)."""
    global triton, tl
    import triton
    import triton.language as tl

    return triton.jit(_syrk)


def _launch(
    X: Tensor, A: Tensor | None, alpha: float, beta: float, block_m: int | None, block_k: int | None
) -> Tensor:
    if X.dim() != 3 or X.dtype not in DTYPES:
        raise ValueError(f"expected a (B, m, k) batch in {DTYPES}, got {tuple(X.shape)} {X.dtype}")
    B, m, k = X.shape
    kernel = _kernel()
    # The interpreter (CPU tests) mishandles bf16: tl.dot multiplies the bit patterns (triton#11584)
    # and fp32 -> bf16 truncates. There, bf16 tiles go to fp32 before the dot (exact: what the
    # GPU's bf16 dot computes) and the result is rounded by torch. The GPU kernel is unchanged.
    upcast = X.dtype == torch.bfloat16 and type(kernel).__name__ == "InterpretedFunction"
    C = torch.empty((B, m, m), device=X.device, dtype=torch.float32 if upcast else X.dtype)
    if B == 0 or m == 0:
        return C.to(X.dtype)
    if k == 0:
        return (C.zero_() if A is None else C.copy_(A).mul_(beta)).to(X.dtype)
    bm = block_m or (128 if m > 64 else 64 if m > 32 else 32)
    bk = block_k or (32 if X.dtype == torch.float32 else 64)
    # fp32 follows torch's matmul precision setting (tf32 unless "highest"); 16-bit ignores it.
    ieee = X.dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest"
    T = -(-m // bm)
    As = A if A is not None else C  # unused when HAS_A is False
    kernel[(T * (T + 1) // 2, B)](
        X,
        As,
        C,
        m,
        k,
        *X.stride(),
        *As.stride(),
        *C.stride(),
        float(alpha),
        float(beta),
        HAS_A=A is not None,
        UPCAST=upcast,
        PRECISION="ieee" if ieee else "tf32",
        BM=bm,
        BK=bk,
        num_warps=8 if bm >= 128 else 4,
        num_stages=3,
    )
    return C.to(X.dtype)


def sym_gram(X: Tensor, *, block_m: int | None = None, block_k: int | None = None) -> Tensor:
    """X @ X^T for each matrix of the (B, m, k) batch X, in X's dtype (fp32 accumulation).

    Runs wherever triton runs (CUDA, or CPU tensors under TRITON_INTERPRET=1); `block_m` (>= 16,
    a power of two) and `block_k` override the tile sizes, for tests and tuning.
    """
    return _launch(X, None, 1.0, 0.0, block_m, block_k)


def sym_poly(
    A: Tensor, b: float, c: float, *, block_m: int | None = None, block_k: int | None = None
) -> Tensor:
    """b*A + c*(A @ A) for each symmetric matrix of the (B, n, n) batch A, in A's dtype.

    Computes A @ A as A A^T and mirrors the lower tiles, so A must be symmetric; the result is
    exactly symmetric. fp32 accumulation, one rounding at the end.
    """
    if A.dim() != 3 or A.size(-1) != A.size(-2):
        raise ValueError(f"expected a (B, n, n) batch, got {tuple(A.shape)}")
    return _launch(A, A, c, b, block_m, block_k)


# The kernels as torch operators (mousse::sym_gram, mousse::sym_poly), which is how `gram` and
# `poly` call them: torch.compile then keeps each launch as one opaque node with a known output
# shape instead of tracing the Python launcher.
@torch.library.custom_op("mousse::sym_gram", mutates_args=())
def _sym_gram_op(X: Tensor) -> Tensor:
    return sym_gram(X)


@torch.library.custom_op("mousse::sym_poly", mutates_args=())
def _sym_poly_op(A: Tensor, b: float, c: float) -> Tensor:
    return sym_poly(A, b, c)


@_sym_gram_op.register_fake
def _(X: Tensor) -> Tensor:
    return X.new_empty(X.shape[:-1] + X.shape[-2:-1])


@_sym_poly_op.register_fake
def _(A: Tensor, b: float, c: float) -> Tensor:
    return torch.empty_like(A)
